"""vesin-based neighbour lists against a brute-force reference (this file only)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tacegen.runtime.neighbours import (
    check_cell,
    neighbour_pairs,
    periodic_measure,
    plane_spacings,
)

TOL = 1e-9  # pairs this close to r_cut may go either way


def brute_force(positions, cell, pbc, r_cut):
    """{(i, j, *S): distance} for all pairs with |r_ij| < r_cut + TOL, by enumerating images.

    Image range: |S @ A_p| <= r_cut + max|x_j - x_i|, and |S_k| <= |S @ A_p| * |b_k|
    with b_k the dual vectors of the periodic rows A_p.
    """
    n_images = [0, 0, 0]
    periodic = np.flatnonzero(pbc)
    if periodic.size:
        dual = np.linalg.pinv(cell[periodic])
        extent = np.linalg.norm(positions[:, None] - positions[None], axis=-1).max()
        for col, k in enumerate(periodic):
            n_images[k] = int(np.ceil((r_cut + extent) * np.linalg.norm(dual[:, col])))
    pairs = {}
    for shift in itertools.product(*[range(-m, m + 1) for m in n_images]):
        shift = np.array(shift)
        vec = positions[None, :] - positions[:, None] + shift @ cell
        dist = np.linalg.norm(vec, axis=-1)
        for i, j in zip(*np.nonzero(dist < r_cut + TOL)):
            if i == j and not shift.any():
                continue
            pairs[(int(i), int(j), *shift.tolist())] = float(dist[i, j])
    return pairs


def assert_matches_brute_force(positions, cell, pbc, r_cut):
    pairs = neighbour_pairs(positions, cell, pbc, r_cut)
    got = {
        (int(i), int(j), *s.tolist()): float(d)
        for i, j, s, d in zip(pairs.i, pairs.j, pairs.shift, pairs.distance)
    }
    assert len(got) == len(pairs.i), "duplicate pairs"
    loose = brute_force(positions, cell, pbc, r_cut)
    strict = {key for key, d in loose.items() if d < r_cut - TOL}
    assert strict <= set(got), f"missing pairs {sorted(strict - set(got))[:5]}"
    assert set(got) <= set(loose), f"spurious pairs {sorted(set(got) - set(loose))[:5]}"
    for key, d in got.items():
        assert d == pytest.approx(loose[key], abs=1e-9)
    return pairs


coordinate = st.floats(-6.0, 6.0, allow_nan=False, allow_infinity=False)


@st.composite
def systems(draw):
    """Random triclinic cell, any periodicity, positions wrapped or not, r_cut up to
    larger than the cell (many images); non-periodic cell vectors arbitrary or zero."""
    pbc = np.array(draw(st.tuples(st.booleans(), st.booleans(), st.booleans())))
    lengths = draw(arrays(np.float64, 3, elements=st.floats(1.0, 5.0)))
    skew = draw(arrays(np.float64, (3, 3), elements=st.floats(-0.4, 0.4)))
    cell = np.diag(lengths) + skew * lengths[:, None]
    for k in np.flatnonzero(~pbc):
        choice = draw(st.sampled_from(["keep", "zero", "parallel"]))
        if choice == "zero":
            cell[k] = 0.0
        elif choice == "parallel" and pbc.any():
            cell[k] = cell[np.flatnonzero(pbc)[0]] * 0.5
    if pbc.any():
        rows = cell[pbc]
        assume(np.linalg.cond(rows) < 20)
    n = draw(st.integers(1, 6))
    positions = draw(arrays(np.float64, (n, 3), elements=coordinate))
    r_cut = draw(st.floats(0.5, 6.0))
    return positions, cell, pbc, r_cut


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(systems())
def test_pairs_equal_brute_force(system):
    assert_matches_brute_force(*system)


@settings(max_examples=30, deadline=None)
@given(systems())
def test_pairs_are_symmetric_sorted_and_consistent(system):
    positions, cell, pbc, r_cut = system
    pairs = neighbour_pairs(positions, cell, pbc, r_cut)
    keys = list(zip(pairs.i.tolist(), pairs.j.tolist(), map(tuple, pairs.shift.tolist())))
    assert keys == sorted(keys)
    assert set(keys) == {(j, i, tuple(-x for x in s)) for i, j, s in keys}
    assert not np.any(pairs.shift[:, ~pbc]), "shift along a non-periodic direction"
    vectors = positions[pairs.j] - positions[pairs.i] + pairs.shift @ cell
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), pairs.distance, atol=1e-10)
    assert np.all(pairs.distance < r_cut + TOL)


def test_single_atom_in_small_cell_sees_all_lattice_images():
    # simple cubic a = 1.5 Å, r_cut = 3.2 Å: neighbours are the lattice points
    # 0 < |S| a < r_cut, i.e. |S|^2 in {1, 2, 3, 4} -> 6 + 12 + 8 + 6 = 32
    pairs = neighbour_pairs(np.zeros((1, 3)), 1.5 * np.eye(3), np.ones(3, bool), 3.2)
    assert len(pairs.i) == 32
    assert np.all(pairs.i == 0) and np.all(pairs.j == 0)
    assert sorted(set(np.round(pairs.distance**2 / 1.5**2).astype(int))) == [1, 2, 3, 4]


def test_slab_has_no_images_along_the_vacuum_direction():
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    cell = np.diag([2.0, 2.0, 2.0])  # c would give an image at 2 Å if it were periodic
    pbc = np.array([True, True, False])
    pairs = assert_matches_brute_force(positions, cell, pbc, 2.5)
    assert np.all(pairs.shift[:, 2] == 0)
    # each atom: its 4 in-plane images and the other atom, all at 2 Å (the other
    # atom's in-plane images are 2.83 Å away)
    assert len(pairs.i) == 2 * 5
    np.testing.assert_allclose(pairs.distance, 2.0)


def test_unwrapped_positions_give_the_same_vectors_as_wrapped():
    rng = np.random.default_rng(0)
    cell = np.array([[3.0, 0.0, 0.0], [1.0, 2.8, 0.0], [0.5, 0.7, 3.1]])
    pbc = np.array([True, True, True])
    frac = rng.uniform(0, 1, size=(5, 3))
    wrapped = frac @ cell
    unwrapped = (frac + rng.integers(-3, 4, size=(5, 3))) @ cell

    def vectors(positions):
        p = neighbour_pairs(positions, cell, pbc, 4.0)
        v = positions[p.j] - positions[p.i] + p.shift @ cell
        return sorted(zip(p.i.tolist(), p.j.tolist(), np.round(v, 8).tolist()))

    assert vectors(wrapped) == vectors(unwrapped)


def test_molecule_ignores_the_cell():
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    pbc = np.zeros(3, bool)
    for cell in (np.zeros((3, 3)), np.eye(3)):
        pairs = neighbour_pairs(positions, cell, pbc, 1.5)
        assert sorted(zip(pairs.i.tolist(), pairs.j.tolist())) == [(0, 1), (1, 0)]


def test_periodic_measure_and_plane_spacings():
    cell = np.array([[2.0, 0.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
    assert periodic_measure(cell, np.ones(3, bool)) == pytest.approx(24.0)
    assert periodic_measure(cell, np.array([True, True, False])) == pytest.approx(6.0)
    assert periodic_measure(cell, np.array([False, True, False])) == pytest.approx(np.sqrt(10.0))
    np.testing.assert_allclose(plane_spacings(cell, np.ones(3, bool)), [24 / np.sqrt(160.0), 24 / 8, 24 / 6])
    assert plane_spacings(cell, np.zeros(3, bool)).size == 0


@pytest.mark.parametrize(
    "cell, pbc, fragment",
    [
        (np.zeros((3, 3)), [True, True, True], "volume of 0"),
        (np.diag([1.0, 1.0, 0.0]), [True, True, True], "volume of 0"),
        ([[1, 0, 0], [2, 0, 0], [0, 0, 0]], [True, True, False], "area of 0"),
        (np.zeros((3, 3)), [False, False, True], "length of 0"),
    ],
)
def test_degenerate_periodic_cell_is_rejected(cell, pbc, fragment):
    with pytest.raises(ValueError, match="degenerate periodic cell") as info:
        check_cell(np.asarray(cell, float), np.asarray(pbc))
    assert fragment in str(info.value)
    assert str(list(pbc)) in str(info.value)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"r_cut must be .* got -1.0"):
        neighbour_pairs(np.zeros((2, 3)), np.eye(3), np.ones(3, bool), -1.0)
    with pytest.raises(ValueError, match=r"shape \(N, 3\), got \(2, 2\)"):
        neighbour_pairs(np.zeros((2, 2)), np.eye(3), np.ones(3, bool), 1.0)
    with pytest.raises(ValueError, match="atom 1 is not finite"):
        neighbour_pairs(np.array([[0, 0, 0], [np.nan, 0, 0]]), np.eye(3), np.ones(3, bool), 1.0)
