"""Projectors onto the irreducible parts of general rank-n tensors (math.md section 1).

Exact checks run on the rational projectors of ``exact_parts`` (scaled to integer
matrices by the common denominator, so every identity is checked with exact integer
arithmetic). Float checks: O(3) commutation, invariance of each image, and the
character of each image (trace of P Q^(x)n), which pins the weight and parity labels.
Multiplicities are compared with math.md and with an independent weight count
(:mod:`tacegen.algebra.characters`).
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from functools import lru_cache
from math import lcm

import numpy as np
import pytest
from hypothesis import given

from conftest import improper_rotations, kron_power, proper_and_improper, proper_rotations, rngs, rotate
from tacegen.algebra.characters import multiplicity_in_product
from tacegen.algebra.projectors import RANK_MAX, exact_parts, multiplicities
from tacegen.algebra.projectors import projectors as _projectors

RANKS = range(1, RANK_MAX + 1)


@lru_cache(maxsize=None)
def projectors(n: int):
    """The library's float projectors, memoised for the session (the arrays are read-only)."""
    parts = _projectors(n)
    for p in parts:
        p.projector.setflags(write=False)
    return parts

# math.md section 1: weight -> number of copies
MATH_MD_MULTIPLICITIES = {
    1: {1: 1},
    2: {0: 1, 1: 1, 2: 1},
    3: {0: 1, 1: 3, 2: 2, 3: 1},
    4: {0: 3, 1: 6, 2: 6, 3: 3, 4: 1},
}


def integer_parts(n: int):
    """(D, [N_i]) with N_i = D * P_i exact int64 matrices, D the common denominator."""
    parts = exact_parts(n)
    for p in parts:
        assert p.matrix.shape == (3**n, 3**n)
        assert all(isinstance(v, Fraction) for v in p.matrix.flat)
    d = 1
    for p in parts:
        for v in p.matrix.flat:
            d = lcm(d, v.denominator)
    mats = []
    for p in parts:
        m = np.array([[int(v * d) for v in row] for row in p.matrix], dtype=np.int64)
        assert (m.astype(object) == p.matrix * d).all()
        mats.append(m)
    # products of two such matrices cannot overflow int64
    assert 3**n * int(max(np.abs(m).max() for m in mats)) ** 2 < 2**62
    return d, mats


def character(j: int, theta: float) -> float:
    """chi_j(theta) = sum_{m=-j..j} cos(m theta): trace of a rotation by theta on weight j."""
    return 1.0 + 2.0 * sum(np.cos(m * theta) for m in range(1, j + 1))


def rotation_angle(r: np.ndarray) -> float:
    return float(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))


@pytest.mark.parametrize("n", RANKS)
def test_exact_idempotent_orthogonal_symmetric_complete(n):
    d, mats = integer_parts(n)
    eye = np.eye(3**n, dtype=np.int64)
    total = np.zeros_like(eye)
    for i, (mi, part) in enumerate(zip(mats, exact_parts(n))):
        assert (mi == mi.T).all(), "symmetric"
        assert (mi @ mi == d * mi).all(), "idempotent"
        assert np.trace(mi) == d * (2 * part.weight + 1), "trace = 2 weight + 1"
        for mj in mats[i + 1:]:
            assert not (mi @ mj).any(), "mutually orthogonal"
        total += mi
    assert (total == d * eye).all(), "sum to the identity"


@pytest.mark.parametrize("n", RANKS)
def test_float_projectors_match_exact_and_are_projectors(n):
    floats = projectors(n)
    exact = exact_parts(n)
    assert len(floats) == len(exact)
    dim = 3**n
    acc = np.zeros((dim, dim))
    for f, e in zip(floats, exact):
        assert (f.weight, f.parity) == (e.weight, e.parity)
        assert f.projector.shape == (3,) * (2 * n)
        p = f.projector.reshape(dim, dim)
        np.testing.assert_allclose(p, e.matrix.astype(float), atol=1e-15)
        np.testing.assert_allclose(p @ p, p, atol=1e-12)
        np.testing.assert_allclose(p, p.T, atol=1e-15)
        assert np.trace(p) == pytest.approx(2 * f.weight + 1, abs=1e-12)
        acc += p
    np.testing.assert_allclose(acc, np.eye(dim), atol=1e-12)


@pytest.mark.parametrize("n", RANKS)
@given(qs=proper_and_improper())
def test_commute_with_rotations(n, qs):
    for q, part in itertools.product(qs, projectors(n)):
        k = kron_power(q, n)
        p = part.projector.reshape(3**n, 3**n)
        np.testing.assert_allclose(p @ k, k @ p, atol=1e-12)


@pytest.mark.parametrize("n", RANKS)
@given(qs=proper_and_improper(), rng=rngs())
def test_image_is_invariant(n, qs, rng):
    """A tensor in the weight-j image stays in that image after any rotation, and leaves
    the image of every other part (their projectors annihilate it). Weight 0: the rotation
    acts as the parity sign (det Q)-wise; weight > 0: it moves the tensor (not fixed)."""
    t = rng.standard_normal((3,) * n)
    parts = projectors(n)
    for q, part in itertools.product(qs, parts):
        p = part.projector
        x = np.tensordot(p, t, axes=n)
        assert np.linalg.norm(x) > 1e-6 * np.linalg.norm(t)  # not vacuous
        y = rotate(x, q)
        np.testing.assert_allclose(np.tensordot(p, y, axes=n), y, atol=1e-12)
        for other in parts:
            if other is not part:
                np.testing.assert_allclose(np.tensordot(other.projector, y, axes=n), 0.0, atol=1e-12)
        if part.weight == 0:
            sign = part.parity if np.linalg.det(q) < 0 else 1
            np.testing.assert_allclose(y, sign * x, atol=1e-12)
        else:
            assert np.linalg.norm(y - x) > 1e-6 * np.linalg.norm(x)


@pytest.mark.parametrize("n", RANKS)
@given(r=proper_rotations(), s=improper_rotations())
def test_character_fixes_weight_and_parity(n, r, s):
    """tr(P R^(x)n) = chi_weight(angle R); tr(P S^(x)n) = parity * chi_weight(angle of -S)."""
    kr, ks = kron_power(r, n), kron_power(s, n)
    theta_r, theta_s = rotation_angle(r), rotation_angle(-s)
    for part in projectors(n):
        p = part.projector.reshape(3**n, 3**n)
        assert np.sum(p * kr.T) == pytest.approx(character(part.weight, theta_r), abs=1e-9)
        assert np.sum(p * ks.T) == pytest.approx(part.parity * character(part.weight, theta_s), abs=1e-9)


# --------------------------------------------------------------------------- multiplicities


@pytest.mark.parametrize("n", RANKS)
def test_multiplicities_math_md_and_weight_count(n):
    mult = multiplicities(n)
    assert mult == MATH_MD_MULTIPLICITIES[n]
    # independent weight count: (R^3)^(x)n is n copies of the vector irrep (1, -1)
    for j in range(0, n + 2):
        count = multiplicity_in_product([((1, -1), 1)] * n, j, (-1) ** n)
        assert count == mult.get(j, 0), j
        assert multiplicity_in_product([((1, -1), 1)] * n, j, -((-1) ** n)) == 0
    # the parts returned agree, and the dimensions add up
    counted: dict = {}
    for part in exact_parts(n):
        counted[part.weight] = counted.get(part.weight, 0) + 1
    assert counted == mult
    assert sum((2 * j + 1) * m for j, m in mult.items()) == 3**n


@pytest.mark.parametrize("n", RANKS)
def test_parity_and_pseudo_tensors(n):
    for part in exact_parts(n):
        assert part.parity == (-1) ** n
        assert part.pseudo == ((-1) ** n != (-1) ** part.weight)
        # ... equivalently an odd number of Levi-Civita (odd, j x 1 -> j) coupling steps
        odd_steps = sum(1 for a, b in zip(part.sequence, part.sequence[1:]) if a == b)
        assert part.sequence[0] == 1 and part.sequence[-1] == part.weight
        assert part.pseudo == (odd_steps % 2 == 1)
    for part in projectors(n):
        assert part.parity == (-1) ** n


# --------------------------------------------------------------------------- rank 2


def test_rank2_explicit_decomposition_exact():
    """A = (tr A / 3) delta + (A - A^T)/2 + sym traceless part (math.md), exactly."""
    rng = np.random.default_rng(7)
    a = np.array([[Fraction(int(rng.integers(-9, 10)), int(rng.integers(1, 6))) for _ in range(3)]
                  for _ in range(3)], dtype=object)
    tr = a[0, 0] + a[1, 1] + a[2, 2]
    delta = np.array([[Fraction(int(i == j)) for j in range(3)] for i in range(3)], dtype=object)
    expected = {
        0: tr / 3 * delta,
        1: (a - a.T) / 2,
        2: (a + a.T) / 2 - tr / 3 * delta,
    }
    parts = exact_parts(2)
    assert [p.weight for p in parts] == [0, 1, 2]
    for part in parts:
        got = part.matrix.dot(a.reshape(9)).reshape(3, 3)
        assert (got == expected[part.weight]).all(), part.weight
    assert [p.pseudo for p in parts] == [False, True, False]


@given(qs=proper_and_improper(), rng=rngs())
def test_rank2_antisymmetric_part_is_a_pseudovector(qs, rng):
    """v_k = (1/2) eps_kij A_ij of the weight-1 part transforms as det(Q) Q v."""
    eps = np.zeros((3, 3, 3))
    for i, j, k in itertools.permutations(range(3)):
        eps[i, j, k] = np.linalg.det(np.eye(3)[[i, j, k]])
    p1 = next(p.projector for p in projectors(2) if p.weight == 1)
    a = rng.standard_normal((3, 3))
    v = 0.5 * np.einsum("kij,ij->k", eps, np.tensordot(p1, a, axes=2))
    for q in qs:
        qa = q @ a @ q.T
        qv = 0.5 * np.einsum("kij,ij->k", eps, np.tensordot(p1, qa, axes=2))
        np.testing.assert_allclose(qv, np.linalg.det(q) * (q @ v), atol=1e-12)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("func", [exact_parts, _projectors, multiplicities])
@pytest.mark.parametrize("bad,exc", [(0, ValueError), (5, ValueError), (-1, ValueError), (2.5, TypeError)])
def test_bad_rank_raises_naming_the_value(func, bad, exc):
    with pytest.raises(exc) as err:
        func(bad)
    assert str(bad) in str(err.value)
