"""Irreducible Cartesian tensors T_l: defining properties (math.md section 1).

Every property is checked against its definition: symmetry, tracelessness, the norm
l!/(2l-1)!!, O(3) equivariance, parity, harmonicity, and an independent brute-force
implementation of the detracer formula of math.md (explicit placements of Kronecker
deltas). Exact checks use Fractions.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import factorial

import numpy as np
import pytest
import sympy
from hypothesis import given, settings

from conftest import proper_and_improper, rngs, rotate, unit_vectors
from tacegen.algebra import ict, polynomial

LMAX = ict.LMAX_SUPPORTED  # 10


def dfact(n: int) -> int:
    """n!! with (-1)!! = 1, written independently of the library."""
    return 1 if n <= 0 else n * dfact(n - 2)


def matchings(positions: tuple, k: int):
    """All sets of k disjoint pairs drawn from ``positions``."""
    if k == 0:
        yield ()
        return
    if len(positions) < 2 * k:
        return
    first, rest = positions[0], positions[1:]
    # pairs containing the first position
    for i, other in enumerate(rest):
        for m in matchings(rest[:i] + rest[i + 1:], k - 1):
            yield ((first, other),) + m
    # matchings not using the first position
    yield from matchings(rest, k)


def brute_force_ict(r, l: int, exact: bool = False) -> np.ndarray:
    """|r|^l T_l(r/|r|) straight from math.md: explicit {delta^k r^(l-2k)} placements.

    With ``exact`` the entries are Fractions (r rational); the |r|^(2k) factors make the
    result polynomial in r, so it is exact for any rational r.
    """
    r = [Fraction(x) for x in r] if exact else [float(x) for x in r]
    r2 = sum(x * x for x in r)
    zero = Fraction(0) if exact else 0.0
    out = np.empty((3,) * l, dtype=object if exact else float)
    pos = tuple(range(l))
    for index in itertools.product(range(3), repeat=l):
        total = zero
        for k in range(l // 2 + 1):
            c = Fraction((-1) ** k * dfact(2 * l - 2 * k - 1), dfact(2 * l - 1))
            c = c if exact else float(c)
            acc = zero
            for m in matchings(pos, k):
                if any(index[a] != index[b] for a, b in m):
                    continue
                used = {p for pair in m for p in pair}
                term = Fraction(1) if exact else 1.0
                for p in pos:
                    if p not in used:
                        term = term * r[index[p]]
                acc = acc + term
            total = total + c * r2**k * acc
        out[index] = total
    return out


def random_fraction(rng, lo=-9, hi=9, den=7) -> Fraction:
    return Fraction(int(rng.integers(lo, hi + 1)), int(rng.integers(1, den + 1)))


def random_rational_vector(rng) -> list:
    while True:
        v = [random_fraction(rng) for _ in range(3)]
        if any(v):
            return v


def random_symmetric_exact(rng, l: int) -> np.ndarray:
    """A random symmetric rank-l tensor of Fractions (symmetrised by explicit averaging)."""
    a = np.empty((3,) * l, dtype=object)
    for idx in itertools.product(range(3), repeat=l):
        a[idx] = random_fraction(rng)
    return symmetrise(a)


def symmetrise(a: np.ndarray) -> np.ndarray:
    l = a.ndim
    perms = list(itertools.permutations(range(l)))
    acc = a.transpose(perms[0]).copy()
    for p in perms[1:]:
        acc = acc + a.transpose(p)
    out = acc / (Fraction(len(perms)) if a.dtype == object else len(perms))
    return np.asarray(out, dtype=a.dtype)


def outer_power(v, l: int) -> np.ndarray:
    out = np.array(Fraction(1) if isinstance(v[0], Fraction) else 1.0, dtype=object if isinstance(v[0], Fraction) else float)
    arr = np.array(v, dtype=out.dtype)
    for _ in range(l):
        out = np.multiply.outer(out, arr)
    return out


def all_traces(t: np.ndarray):
    for i, j in itertools.combinations(range(t.ndim), 2):
        yield (i, j), np.trace(t, axis1=i, axis2=j)


def is_zero(a) -> bool:
    return all(x == 0 for x in np.asarray(a, dtype=object).flat)


# --------------------------------------------------------------------------- float T_l


@given(unit_vectors())
def test_T2_is_nn_minus_delta_over_3(n):
    """math.md's explicit check."""
    np.testing.assert_allclose(ict.ict_tensor(n, 2), np.outer(n, n) - np.eye(3) / 3, atol=1e-14)


@settings(max_examples=3)
@given(unit_vectors())
def test_symmetric_under_every_transposition(n):
    for l in range(2, LMAX + 1):
        t = ict.ict_tensor(n, l)
        assert t.shape == (3,) * l
        for i, j in itertools.combinations(range(l), 2):
            perm = list(range(l))
            perm[i], perm[j] = j, i
            np.testing.assert_allclose(t.transpose(perm), t, atol=1e-14, err_msg=f"l={l} swap {i},{j}")


@settings(max_examples=3)
@given(unit_vectors())
def test_every_single_trace_vanishes(n):
    for l in range(2, LMAX + 1):
        t = ict.ict_tensor(n, l)
        scale = np.sqrt(np.sum(t * t))
        for pair, tr in all_traces(t):
            np.testing.assert_allclose(tr, 0.0, atol=1e-13 * scale, err_msg=f"l={l} trace {pair}")


@settings(max_examples=10)
@given(unit_vectors())
def test_norm_is_l_factorial_over_double_factorial(n):
    for l in range(0, LMAX + 1):
        t = ict.ict_tensor(n, l)
        expected = factorial(l) / dfact(2 * l - 1)
        assert np.sum(t * t) == pytest.approx(expected, rel=1e-12), l


@pytest.mark.parametrize("l", range(0, 7))
@given(qs=proper_and_improper(), n=unit_vectors())
def test_equivariance_proper_and_improper(l, qs, n):
    """T_l(Qn) = Q^(x)l T_l(n) for every orthogonal Q (improper included)."""
    for q in qs:
        np.testing.assert_allclose(ict.ict_tensor(q @ n, l), rotate(ict.ict_tensor(n, l), q), atol=1e-12)


@settings(max_examples=5)
@given(unit_vectors())
def test_parity(n):
    for l in range(0, LMAX + 1):
        np.testing.assert_allclose(ict.ict_tensor(-n, l), (-1) ** l * ict.ict_tensor(n, l), atol=1e-13)


@settings(max_examples=5)
@given(rngs())
def test_unit_normalisation_and_batching(rng):
    """T_l depends on the direction only; leading batch axes are independent evaluations."""
    v = rng.standard_normal((4, 3))
    scales = rng.uniform(0.1, 10.0, size=(4, 1))
    for l in (0, 1, 3, 5):
        batch = ict.ict_tensor(v, l)
        assert batch.shape == (4,) + (3,) * l
        np.testing.assert_allclose(ict.ict_tensor(v * scales, l), batch, atol=1e-12)
        for i in range(4):
            np.testing.assert_allclose(batch[i], ict.ict_tensor(v[i], l), atol=1e-14)


@pytest.mark.parametrize("l", range(0, 6))
@settings(max_examples=10)
@given(n=unit_vectors())
def test_matches_brute_force_formula_of_math_md(l, n):
    np.testing.assert_allclose(ict.ict_tensor(n, l), brute_force_ict(n, l), atol=1e-12)


@settings(max_examples=5)
@given(rngs())
def test_components_reduced_and_polynomial_forms_agree(rng):
    """ict_components (normalize=False) is r^l T_l; ict_reduced are its reduced coordinates."""
    r = rng.standard_normal(3) * 2.0
    for l in range(0, 7):
        comps = ict.ict_components(r, l, normalize=False)
        dense = ict.dense_from_components(comps, l)
        np.testing.assert_allclose(dense, np.linalg.norm(r) ** l * ict.ict_tensor(r, l), atol=1e-11)
        red = ict.ict_reduced(r, l, normalize=False)
        assert red.shape == (2 * l + 1,)
        np.testing.assert_allclose(ict.complete(list(red), l), comps, atol=1e-11)


# --------------------------------------------------------------------------- exact forms


@pytest.mark.parametrize("l", range(0, 5))
def test_symbolic_is_harmonic_and_equals_r_l_T_l(l):
    x, y, z = sympy.symbols("x y z")
    arr = ict.ict_symbolic(l, (x, y, z))
    assert arr.shape == (3,) * l
    flat = [sympy.expand(e) for e in (sympy.flatten(arr) if l else [arr[()]])]
    assert len(flat) == 3**l
    for e in flat:
        assert sympy.expand(sympy.diff(e, x, 2) + sympy.diff(e, y, 2) + sympy.diff(e, z, 2)) == 0
        poly = sympy.Poly(e, x, y, z)
        assert e == 0 or poly.is_homogeneous and poly.total_degree() == l
    rng = np.random.default_rng(l)
    for _ in range(3):
        r = random_rational_vector(rng)
        expected = brute_force_ict(r, l, exact=True)
        subs = {x: sympy.Rational(r[0].numerator, r[0].denominator),
                y: sympy.Rational(r[1].numerator, r[1].denominator),
                z: sympy.Rational(r[2].numerator, r[2].denominator)}
        for flat_index, idx in enumerate(itertools.product(range(3), repeat=l)):
            got = sympy.Rational(flat[flat_index].subs(subs))
            want = expected[idx]
            assert got == sympy.Rational(want.numerator, want.denominator), (l, idx)


@pytest.mark.parametrize("l", range(0, LMAX + 1))
def test_ict_polynomials_harmonic_homogeneous(l):
    polys = ict.ict_polynomials(l)
    assert len(polys) == (l + 1) * (l + 2) // 2
    for p in polys:
        assert p  # no component of r^l T_l vanishes identically
        assert all(sum(m) == l for m in p)
        assert polynomial.laplacian(p) == {}


def test_symbolic_rejects_bad_rank():
    with pytest.raises(ValueError, match="11"):
        ict.ict_symbolic(11)
    with pytest.raises(ValueError, match="-1"):
        ict.ict_tensor([1.0, 0.0, 0.0], -1)
    with pytest.raises(ValueError, match="11"):
        ict.ict_tensor([1.0, 0.0, 0.0], 11)
    with pytest.raises(TypeError, match="2.5"):
        ict.ict_tensor([1.0, 0.0, 0.0], 2.5)


@pytest.mark.parametrize("l", range(0, 5))
def test_detrace_exact_properties(l):
    """detrace is the orthogonal projection onto traceless symmetric tensors (exact)."""
    rng = np.random.default_rng(100 + l)
    basis = [ict.dense_from_components(ict.complete([Fraction(int(i == m)) for i in range(2 * l + 1)], l), l)
             for m in range(2 * l + 1)]
    for _ in range(2):
        s = random_symmetric_exact(rng, l)
        d = ict.detrace(s)
        assert d.dtype == object and all(isinstance(v, Fraction) for v in d.flat)
        assert (symmetrise(d) == d).all()
        for pair, tr in all_traces(d):
            assert is_zero(tr), pair
        assert (ict.detrace(d) == d).all()  # idempotent
        # orthogonal: S - detrace(S) is orthogonal to every traceless symmetric tensor
        rest = s - d
        for e in basis:
            assert np.sum(rest * e) == 0
        # non-symmetric input: symmetrised first
        a = s.copy()
        if l >= 2:
            idx = (0, 1) + (2,) * (l - 2)
            a[idx] += 1
            assert (ict.detrace(a) == ict.detrace(symmetrise(a))).all()


@pytest.mark.parametrize("l", range(0, 5))
def test_detrace_fixes_traceless_tensors(l):
    rng = np.random.default_rng(200 + l)
    v = [random_fraction(rng) for _ in range(2 * l + 1)]
    u = ict.dense_from_components(ict.complete(v, l), l)
    for _, tr in all_traces(u):
        assert is_zero(tr)
    assert (ict.detrace(u) == u).all()


@pytest.mark.parametrize("l", range(0, 6))
def test_detrace_of_outer_power_is_r_l_T_l_exact(l):
    rng = np.random.default_rng(300 + l)
    for _ in range(2):
        r = random_rational_vector(rng)
        got = ict.detrace(outer_power(r, l))
        assert (got == brute_force_ict(r, l, exact=True)).all()
    # unit rational vector: detrace(n^l) = T_l(n), compared with the float accessor
    n = [Fraction(2, 7), Fraction(-3, 7), Fraction(6, 7)]
    got = ict.detrace(outer_power(n, l)).astype(float)
    np.testing.assert_allclose(got, ict.ict_tensor(np.array(n, dtype=float), l), atol=1e-14)


@pytest.mark.parametrize("l", range(0, 9))
def test_detrace_float_matches_exact_and_is_projector(l):
    rng = np.random.default_rng(400 + l)
    s = rng.standard_normal((3,) * l)
    d = ict.detrace(s)
    for _, tr in all_traces(d):
        np.testing.assert_allclose(tr, 0, atol=1e-12)
    np.testing.assert_allclose(ict.detrace(d), d, atol=1e-12)
    if l >= 1:
        n = rng.standard_normal(3)
        np.testing.assert_allclose(ict.detrace(outer_power(list(n), l)),
                                   np.linalg.norm(n) ** l * ict.ict_tensor(n, l), atol=1e-11)


# --------------------------------------------------------------------------- storage maps


@pytest.mark.parametrize("l", range(0, LMAX + 1))
def test_reduced_patterns(l):
    red = ict.reduced_patterns(l)
    assert len(red) == 2 * l + 1 == len(set(red))
    assert all(sum(p) == l and p[2] <= 1 for p in red)


@pytest.mark.parametrize("l", range(0, 7))
def test_storage_round_trips_exact(l):
    rng = np.random.default_rng(500 + l)
    # reduce(complete(v)) == v
    v = [random_fraction(rng) for _ in range(2 * l + 1)]
    comps = ict.complete(v, l)
    assert ict.reduce(comps, l) == v
    # the completion is a traceless symmetric tensor (checked in dense form for small l)
    if l <= 5:
        dense = ict.dense_from_components(comps, l)
        for _, tr in itertools.islice(all_traces(dense), 3):
            assert is_zero(tr)
    # complete(reduce(S)) == S for traceless S (detrace of random rational components)
    s = [random_fraction(rng) for _ in polynomial.patterns(l)]
    t = ict.detrace_components(s, l)
    assert ict.complete(ict.reduce(t, l), l) == t


@pytest.mark.parametrize("l", range(0, LMAX + 1))
def test_gram_symmetric_positive_definite(l):
    g = ict.gram(l)
    d = 2 * l + 1
    assert len(g) == d and all(len(row) == d for row in g)
    assert all(g[i][j] == g[j][i] for i in range(d) for j in range(d))
    # exact LDL^T: all pivots positive <=> positive definite
    m = [list(row) for row in g]
    for k in range(d):
        assert m[k][k] > 0, (l, k)
        for i in range(k + 1, d):
            f = m[i][k] / m[k][k]
            for j in range(k, d):
                m[i][j] -= f * m[k][j]


@pytest.mark.parametrize("l", range(0, LMAX + 1))
def test_gram_is_full_contraction_of_dense_basis(l):
    d = 2 * l + 1
    g = ict.gram(l)
    exact = l <= 4
    basis = []
    for m in range(d):
        e = [Fraction(int(i == m)) for i in range(d)]
        comps = ict.complete(e, l)
        if not exact:
            comps = [float(c) for c in comps]
        basis.append(ict.dense_from_components(comps, l).reshape(-1))
    for i in range(d):
        for j in range(d):
            value = np.sum(basis[i] * basis[j])
            if exact:
                assert value == g[i][j]
            else:
                assert value == pytest.approx(float(g[i][j]), rel=1e-12, abs=1e-12)


@settings(max_examples=5)
@given(unit_vectors())
def test_gram_gives_the_norm_of_T_l(n):
    """Reduced coordinates + gram reproduce the full contraction (and so the norm formula)."""
    for l in range(0, LMAX + 1):
        v = ict.ict_reduced(n, l)
        g = np.array(ict.gram(l), dtype=float)
        assert v @ g @ v == pytest.approx(factorial(l) / dfact(2 * l - 1), rel=1e-10)
