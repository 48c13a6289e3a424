"""The Cartesian Clebsch-Gordan couplings l1 x l2 -> l3 (math.md section 2).

Checked against their defining properties: O(3) equivariance with the parity of the
path, symmetric traceless output, the triangle rule, agreement of the reduced table
with the dense tensor through the storage maps, the normalisation stated in the module
docstring (checked against an independent einsum implementation of the contraction
rule, including dot and cross products), and Schur uniqueness: the space of all
equivariant bilinear maps is solved for numerically and is spanned by the coupling.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given

from conftest import proper_and_improper, reduced_representation, rngs, rotate
from tacegen.algebra import ict
from tacegen.algebra.coupling import (
    Coupling,
    allowed_outputs,
    coupling,
    is_odd_path,
    triangle,
)
from tacegen.algebra.coupling import coupling_tensor as _coupling_tensor


@lru_cache(maxsize=None)
def coupling_tensor(l1: int, l2: int, l3: int) -> np.ndarray:
    """The library's dense coupling, memoised for the test session (read-only)."""
    c = _coupling_tensor(l1, l2, l3)
    c.setflags(write=False)
    return c

PAIRS = [(l1, l2) for l1 in range(4) for l2 in range(4)]
TRIPLES = [(l1, l2, l3) for l1, l2 in PAIRS for l3 in range(abs(l1 - l2), l1 + l2 + 1)]

LEVI = np.zeros((3, 3, 3), dtype=np.int64)
for (i, j, k) in itertools.permutations(range(3)):
    LEVI[i, j, k] = round(np.linalg.det(np.eye(3)[[i, j, k]]))
LEVI_EXACT = np.array(LEVI.tolist(), dtype=object)  # Python ints, for Fraction arithmetic


def random_ict(rng, l: int) -> np.ndarray:
    """A generic rank-l ICT: a random combination of T_l of random directions."""
    if l == 0:
        return np.array(rng.standard_normal())
    n = rng.standard_normal((2 * l + 1, 3))
    c = rng.standard_normal(2 * l + 1)
    return np.tensordot(c, ict.ict_tensor(n, l), axes=1)


def apply_dense(C: np.ndarray, a: np.ndarray, b: np.ndarray, l1: int, l2: int) -> np.ndarray:
    """out[K] = sum_{I,J} a[I] b[J] C[I, J, K]."""
    t = np.tensordot(a, C, axes=(list(range(l1)), list(range(l1))))
    return np.tensordot(b, t, axes=(list(range(l2)), list(range(l2))))


def dense_of_reduced(v, l: int) -> np.ndarray:
    return ict.dense_from_components(np.array([float(x) for x in ict.complete(list(v), l)]), l)


def reduced_of_dense(t: np.ndarray, l: int) -> np.ndarray:
    return np.array(ict.reduce(ict.components_from_dense(t, l), l), dtype=float)


def contraction_rule(a: np.ndarray, b: np.ndarray, l1: int, l2: int, l3: int) -> np.ndarray:
    """Independent implementation of the module docstring's rule with its normalisation.

    even: contract k pairs, detrace; odd: contract k pairs and one more index of each with
    eps_{m p q} (new index first), detrace. Coefficient one on every term.
    """
    odd = (l1 + l2 - l3) % 2
    k = (l1 + l2 - l3 - odd) // 2
    x = np.tensordot(a, b, axes=(list(range(k)), list(range(k))))  # (a rest, b rest)
    if odd:
        eps = LEVI_EXACT if x.dtype == object else LEVI
        x = np.tensordot(eps, x, axes=([1, 2], [0, l1 - k]))
    assert x.ndim == l3
    return ict.detrace(x) if l3 else x


def is_symmetric(t: np.ndarray, atol: float) -> bool:
    for i, j in itertools.combinations(range(t.ndim), 2):
        perm = list(range(t.ndim))
        perm[i], perm[j] = j, i
        if not np.allclose(t.transpose(perm), t, atol=atol):
            return False
    return True


# --------------------------------------------------------------------------- equivariance


@pytest.mark.parametrize("l1,l2", PAIRS)
@given(qs=proper_and_improper(), rng=rngs())
def test_equivariance_with_path_parity(l1, l2, qs, rng):
    """out(Qa, Qb) = det(Q)^odd Q^(x)l3 out(a, b) for proper and improper Q."""
    a, b = random_ict(rng, l1), random_ict(rng, l2)
    for q, l3 in itertools.product(qs, allowed_outputs(l1, l2)):
        qa, qb = (rotate(a, q) if l1 else a), (rotate(b, q) if l2 else b)
        det = round(np.linalg.det(q))
        C = coupling_tensor(l1, l2, l3)
        out = apply_dense(C, a, b, l1, l2)
        sign = det if is_odd_path(l1, l2, l3) else 1
        expected = sign * (rotate(out, q) if l3 else out)
        scale = max(1.0, np.abs(out).max())
        np.testing.assert_allclose(apply_dense(C, qa, qb, l1, l2), expected, atol=1e-11 * scale,
                                   err_msg=f"{l1}x{l2}->{l3}")


@pytest.mark.parametrize("l1,l2,l3", TRIPLES)
def test_output_symmetric_traceless_nonzero(l1, l2, l3):
    rng = np.random.default_rng(17 * l1 + 5 * l2 + l3)
    C = coupling_tensor(l1, l2, l3)
    assert C.shape == (3,) * (l1 + l2 + l3)
    out = apply_dense(C, random_ict(rng, l1), random_ict(rng, l2), l1, l2)
    scale = np.abs(out).max()
    assert scale > 1e-3, "generic inputs must give a nonzero coupling"
    assert is_symmetric(out, 1e-12 * scale)
    for i, j in itertools.combinations(range(l3), 2):
        np.testing.assert_allclose(np.trace(out, axis1=i, axis2=j), 0, atol=1e-12 * scale)


@pytest.mark.parametrize("l1,l2", PAIRS)
def test_zero_and_error_outside_triangle(l1, l2):
    for l3 in range(0, l1 + l2 + 3):
        inside = abs(l1 - l2) <= l3 <= l1 + l2
        assert triangle(l1, l2, l3) == inside
        if inside:
            continue
        C = coupling_tensor(l1, l2, l3)
        assert C.shape == (3,) * (l1 + l2 + l3)
        assert not C.any()
        with pytest.raises(ValueError) as err:
            coupling(l1, l2, l3)
        msg = str(err.value)
        for value in (f"l1={l1}", f"l2={l2}", f"l3={l3}"):
            assert value in msg


def test_bad_rank_arguments():
    with pytest.raises(ValueError, match="-1"):
        coupling(-1, 1, 1)
    with pytest.raises(TypeError, match="1.5"):
        coupling(1, 1.5, 1)
    with pytest.raises(ValueError, match="11"):
        _coupling_tensor(11, 1, 10)


# --------------------------------------------------------------------------- reduced table


@pytest.mark.parametrize("l1,l2,l3", TRIPLES)
def test_reduced_table_agrees_with_dense_tensor(l1, l2, l3):
    """complete(apply(reduce a, reduce b)) == dense coupling of a and b, and .dense() == apply."""
    rng = np.random.default_rng(1000 + 17 * l1 + 5 * l2 + l3)
    c = coupling(l1, l2, l3)
    assert isinstance(c, Coupling) and (c.l1, c.l2, c.l3) == (l1, l2, l3)
    assert c.odd == is_odd_path(l1, l2, l3)
    table = c.dense()
    assert table.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    assert c.nnz == np.count_nonzero(table) > 0
    C = coupling_tensor(l1, l2, l3)
    for _ in range(2):
        va, vb = rng.standard_normal(2 * l1 + 1), rng.standard_normal(2 * l2 + 1)
        a, b = dense_of_reduced(va, l1), dense_of_reduced(vb, l2)
        reduced_out = np.array(c.apply(va, vb), dtype=float)
        np.testing.assert_allclose(np.einsum("i,j,ijk->k", va, vb, table), reduced_out, atol=1e-12)
        dense_out = apply_dense(C, a, b, l1, l2)
        np.testing.assert_allclose(dense_of_reduced(reduced_out, l3), dense_out,
                                   atol=1e-11 * max(1, np.abs(dense_out).max()))
        np.testing.assert_allclose(reduced_of_dense(dense_out, l3), reduced_out, atol=1e-11 * max(1, np.abs(reduced_out).max()))


@pytest.mark.parametrize("l1,l2,l3", [t for t in TRIPLES if t[0] <= 2 and t[1] <= 2])
def test_reduced_table_exact_on_rationals(l1, l2, l3):
    """apply on Fractions is exact and equals the exact contraction rule on dense tensors."""
    rng = np.random.default_rng(2000 + 17 * l1 + 5 * l2 + l3)
    va = [Fraction(int(rng.integers(-5, 6)), int(rng.integers(1, 4))) for _ in range(2 * l1 + 1)]
    vb = [Fraction(int(rng.integers(-5, 6)), int(rng.integers(1, 4))) for _ in range(2 * l2 + 1)]
    out = coupling(l1, l2, l3).apply(va, vb)
    assert all(isinstance(x, (Fraction, int)) for x in out)
    a = ict.dense_from_components(ict.complete(va, l1), l1)
    b = ict.dense_from_components(ict.complete(vb, l2), l2)
    expected = contraction_rule(np.asarray(a, dtype=object), np.asarray(b, dtype=object), l1, l2, l3)
    got = ict.dense_from_components([Fraction(x) for x in ict.complete(out, l3)], l3)
    assert (np.asarray(got, dtype=object) == np.asarray(expected, dtype=object)).all()


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("l1,l2,l3", TRIPLES)
def test_stated_normalisation(l1, l2, l3):
    """coupling_tensor is exactly the contraction rule of the docstring (no rescaling)."""
    rng = np.random.default_rng(3000 + 17 * l1 + 5 * l2 + l3)
    a, b = random_ict(rng, l1), random_ict(rng, l2)
    got = apply_dense(coupling_tensor(l1, l2, l3), a, b, l1, l2)
    np.testing.assert_allclose(got, contraction_rule(a, b, l1, l2, l3), atol=1e-11 * max(1, np.abs(got).max()))


@given(rngs())
def test_even_110_is_dot_and_odd_111_is_cross(rng):
    a, b = rng.standard_normal(3), rng.standard_normal(3)
    assert apply_dense(coupling_tensor(1, 1, 0), a, b, 1, 1) == pytest.approx(a @ b, rel=1e-13, abs=1e-13)
    np.testing.assert_allclose(apply_dense(coupling_tensor(1, 1, 1), a, b, 1, 1), np.cross(a, b), atol=1e-13)
    # the reduced coordinates of a vector are (x, y, z): the tables say the same thing
    assert coupling(1, 1, 0).apply(list(a), list(b))[0] == pytest.approx(a @ b, rel=1e-13, abs=1e-13)
    np.testing.assert_allclose(coupling(1, 1, 1).apply(list(a), list(b)), np.cross(a, b), atol=1e-13)


def test_dot_and_cross_tables_exact():
    assert set(coupling(1, 1, 0).entries) == {(0, 0, 0, 1), (1, 1, 0, 1), (2, 2, 0, 1)}
    cross = {(m1, m2, m3, c) for m1, m2, m3, c in coupling(1, 1, 1).entries}
    expected = {(p, q, m, int(LEVI[m, p, q])) for m, p, q in itertools.product(range(3), repeat=3)
                if LEVI[m, p, q]}
    assert cross == expected


# --------------------------------------------------------------------------- Schur uniqueness


def equivariant_bilinear_maps(l1: int, l2: int, l3: int, rotations, improper, improper_sign):
    """Solution space of the commutation constraints M(D1 a, D2 b) = s D3 M(a, b).

    Unknown: M[m1, m2, m3] in reduced coordinates (out_k = sum M_ijk a_i b_j). Each
    constraint matrix A_Q is stacked through its Gram matrix sum_Q A_Q^T A_Q, whose null
    space is the common null space. Returns (eigenvalues ascending, eigenvectors as columns).
    """
    d1, d2, d3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
    gram = np.zeros((d1 * d2 * d3,) * 2)
    for q, s in [(q, 1.0) for q in rotations] + [(improper, improper_sign)]:
        D1, D2, D3 = (reduced_representation(q, l) for l in (l1, l2, l3))
        A = np.kron(np.kron(D1.T, D2.T), np.eye(d3)) - s * np.kron(np.eye(d1 * d2), D3)
        gram += A.T @ A
    return np.linalg.eigh(gram)


def null_dimension(eigenvalues) -> int:
    return int(np.sum(eigenvalues < 1e-10 * max(eigenvalues[-1], 1.0)))


SCHUR_CASES = [(l1, l2, l3) for l1 in range(3) for l2 in range(3) for l3 in range(0, 6)]


@pytest.mark.parametrize("l1,l2,l3", SCHUR_CASES)
def test_schur_uniqueness(l1, l2, l3):
    """The equivariant bilinear maps l1 x l2 -> l3 form a 1-d space spanned by the coupling
    (with the path's parity), and a 0-d space outside the triangle rule."""
    from conftest import haar_orthogonal

    rng = np.random.default_rng(4000 + 17 * l1 + 5 * l2 + l3)
    rots = [haar_orthogonal(rng, True) for _ in range(3)]
    imp = haar_orthogonal(rng, False)
    odd = (l1 + l2 - l3) % 2 == 1
    w, v = equivariant_bilinear_maps(l1, l2, l3, rots, imp, -1.0 if odd else 1.0)
    if not triangle(l1, l2, l3):
        assert null_dimension(w) == 0
        return
    assert null_dimension(w) == 1
    m = v[:, 0]
    table = coupling(l1, l2, l3).dense().reshape(-1)
    cos = abs(m @ table) / (np.linalg.norm(m) * np.linalg.norm(table))
    assert cos == pytest.approx(1.0, abs=1e-9)
    # the opposite parity admits no map at all
    w, _ = equivariant_bilinear_maps(l1, l2, l3, rots, imp, 1.0 if odd else -1.0)
    assert null_dimension(w) == 0
