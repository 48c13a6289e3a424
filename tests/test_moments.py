"""Moment tensors (TMP basis): storage, exact ICT decomposition, contraction tables."""

from fractions import Fraction
from itertools import permutations

import numpy as np
import pytest

from tacegen.algebra import polynomial as P
from tacegen.algebra.coupling import coupling
from tacegen.algebra.ict import ict_polynomials, pattern_index
from tacegen.algebra.moments import (
    SYMMETRIC, REDUCED, components_to_polynomial, contraction, dense_symmetric, harmonic_parts, ict_coefficient,
    moment_components, moment_ict_parts, moment_tensor, multiplicities, polynomial_to_components, recombine,
    symmetric_size, to_reduced,
)

RNG = np.random.default_rng(7)
EPS = np.zeros((3, 3, 3), dtype=object)
for (i, j, k), s in {(0, 1, 2): 1, (1, 2, 0): 1, (2, 0, 1): 1, (0, 2, 1): -1, (2, 1, 0): -1, (1, 0, 2): -1}.items():
    EPS[i, j, k] = s


def rational_vector():
    return [Fraction(int(RNG.integers(-9, 10)), int(RNG.integers(1, 6))) for _ in range(3)]


def dense_power(r, l):
    out = np.array(Fraction(1), dtype=object)
    for _ in range(l):
        out = np.multiply.outer(out, np.array(r, dtype=object))
    return out


@pytest.mark.parametrize("l", range(7))
def test_storage_and_multiplicities(l):
    assert symmetric_size(l) == (l + 1) * (l + 2) // 2 == len(multiplicities(l))
    assert sum(multiplicities(l)) == 3**l
    r = rational_vector()
    assert np.array_equal(dense_symmetric(moment_components(r, l), l), dense_power(r, l))


def test_float_moments_match_exact():
    v = RNG.normal(size=(5, 3))
    for l in range(5):
        got = moment_tensor(v, l)
        want = np.array([[float(c) for c in moment_components(list(row), l)] for row in v])
        assert np.allclose(got, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("l", range(7))
def test_ict_decomposition_recombines_exactly(l):
    """M_l(r) = sum_k a_{l,k} |r|^{2k} Sym(delta^k (x) r^{l-2k} T_{l-2k}(r_hat)), exactly."""
    for _ in range(3):
        r = rational_vector()
        r2 = sum(c * c for c in r)
        total: P.Poly = {}
        for rank, a in moment_ict_parts(l):
            k = (l - rank) // 2
            t = [sum(c * r[0] ** m[0] * r[1] ** m[1] * r[2] ** m[2] for m, c in poly.items())
                 for poly in ict_polynomials(rank)]  # components of r^j T_j(r_hat)
            sym = P.mul(P.power(P.SQUARED_NORM, k), components_to_polynomial(t, rank))
            total = P.add(total, sym, a * r2**k)
        assert polynomial_to_components(total, l) == moment_components(r, l)
    assert ict_coefficient(l, 0) == 1
    if l >= 2:
        assert ict_coefficient(l, 1) not in (0, 1)  # the lower parts are really there


@pytest.mark.parametrize("l", range(7))
def test_harmonic_parts_are_harmonic_and_complete(l):
    poly = {a: Fraction(int(RNG.integers(-5, 6)), int(RNG.integers(1, 4))) for a in P.patterns(l)}
    poly = {a: c for a, c in poly.items() if c}
    parts = harmonic_parts(poly, l)
    assert recombine(parts) == poly
    for k, h in parts.items():
        assert P.degree(h) == l - 2 * k and P.laplacian(h) == {}


def random_symmetric(l):
    return [Fraction(int(RNG.integers(-6, 7)), int(RNG.integers(1, 4))) for _ in range(symmetric_size(l))]


def dense_contract(a, b, l1, l2, l3):
    """Contract the first k indices of a with those of b, then (odd) eps on one more pair,
    then symmetrise the free indices: the definition, written with dense object arrays."""
    odd = (l1 + l2 - l3) % 2
    k = (l1 + l2 - l3 - odd) // 2
    c = np.tensordot(a, b, axes=(list(range(k)), list(range(k)))) if k else np.multiply.outer(a, b)
    if odd:
        # c indices: (p, I, q, J) with p the first free index of a and q of b
        ra = l1 - k
        c = np.tensordot(EPS, c, axes=([1, 2], [0, ra]))  # (m, I, J)
    free = c.ndim
    perms = list(permutations(range(free)))
    sym = sum(np.transpose(c, p) for p in perms) / Fraction(len(perms)) if free else c
    return sym


@pytest.mark.parametrize("l1,l2,l3", [(1, 1, 0), (1, 1, 1), (1, 1, 2), (2, 1, 1), (2, 1, 2), (2, 1, 3), (2, 2, 0),
                                      (2, 2, 1), (2, 2, 2), (2, 2, 3), (3, 2, 1), (3, 1, 2), (3, 3, 0), (0, 2, 2)])
def test_contraction_table_is_the_symmetrised_contraction(l1, l2, l3):
    table = contraction(l1, l2, l3)
    assert table.dims == tuple(symmetric_size(l) for l in (l1, l2, l3))
    assert table.odd == bool((l1 + l2 - l3) % 2) and table.nnz > 0
    for _ in range(2):
        a, b = random_symmetric(l1), random_symmetric(l2)
        got = dense_symmetric(table.apply(a, b), l3)
        want = dense_contract(dense_symmetric(a, l1), dense_symmetric(b, l2), l1, l2, l3)
        assert np.array_equal(np.asarray(got, dtype=object), np.asarray(want, dtype=object))
        assert any(x != 0 for x in np.asarray(want, dtype=object).ravel())


@pytest.mark.parametrize("l1,l2,l3", [(1, 1, 0), (1, 1, 1), (2, 1, 2), (2, 2, 2), (3, 2, 1), (2, 2, 3)])
def test_reduced_output_on_ict_inputs_is_the_ict_coupling(l1, l2, l3):
    """With ICT inputs and a detraced output, the contraction is exactly the coupling rule."""
    assert contraction(l1, l2, l3, (REDUCED, REDUCED, REDUCED)).entries == coupling(l1, l2, l3).entries


@pytest.mark.parametrize("l", range(5))
def test_to_reduced_is_the_weight_l_part(l):
    """detrace of M_l is r^l T_l(r_hat) in reduced coordinates."""
    r = rational_vector()
    got = to_reduced(l).apply(moment_components(r, l), [Fraction(1)])
    idx = pattern_index(l)
    from tacegen.algebra.ict import reduced_patterns
    want = [sum(c * r[0] ** m[0] * r[1] ** m[1] * r[2] ** m[2] for m, c in ict_polynomials(l)[idx[p]].items())
            for p in reduced_patterns(l)]
    assert got == want


def test_bad_input():
    with pytest.raises(ValueError, match="rank 5 is not reachable"):
        contraction(1, 1, 5)
    with pytest.raises(ValueError, match="storage 'dense'"):
        contraction(1, 1, 0, (SYMMETRIC, "dense", SYMMETRIC))
    with pytest.raises(ValueError, match="k=3"):
        ict_coefficient(4, 3)


@pytest.mark.parametrize("l1,l2,l3,t", [(2, 2, 0, 1), (2, 2, 0, 2), (3, 2, 1, 1), (2, 1, 1, 1), (3, 3, 2, 1)])
def test_traces_after_contraction(l1, l2, l3, t):
    """The traced table equals the plain contraction followed by t dense traces."""
    a, b = random_symmetric(l1), random_symmetric(l2)
    s = l3 + 2 * t
    full = dense_symmetric(contraction(l1, l2, s).apply(a, b), s)
    for _ in range(t):
        full = np.trace(full, axis1=0, axis2=1) if full.ndim > 2 else np.trace(full)
    got = contraction(l1, l2, l3, traces=t)
    assert got.traces == t and got.pairs == (l1 + l2 - s - got.odd) // 2
    assert np.array_equal(np.asarray(dense_symmetric(got.apply(a, b), l3), dtype=object).ravel(),
                          np.asarray(full, dtype=object).ravel())
