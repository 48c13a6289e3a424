"""Product-basis coupling trees (tacegen.paths): independent, complete, equivariant.

Counts are compared with the spec's fixed numbers and with the independent character
count (``multiplicity_in_symmetric_power``). Independence and completeness are checked
outside the library's modular evaluator: in float64 (trees evaluated with the reduced
coupling tables at random atomic bases, rank by SVD) and exactly (Fractions).
"""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations_with_replacement

import numpy as np
import pytest
import sympy
from hypothesis import given, settings

from conftest import proper_and_improper, reduced_representation
from tacegen.algebra.characters import multiplicity_in_symmetric_power
from tacegen.algebra.coupling import coupling
from tacegen.cache import DiskCache
from tacegen.paths import (
    CouplingTree,
    Piece,
    derive,
    enumerate_trees,
    evaluate_exact,
    natural_pieces,
    rational_rank,
)

NO_CACHE = DiskCache(enabled=False)
GENERAL = (Piece(0, 1), Piece(1, -1), Piece(1, 1))  # scalar, vector, pseudo-vector


def fresh(pieces, nu, L, parity):
    return derive(tuple(pieces), nu, L, parity, cache=NO_CACHE)


def character_count(pieces, nu, L, parity) -> int:
    return multiplicity_in_symmetric_power([(p.rank, p.parity) for p in pieces], nu, L, parity)


def grid():
    """(lmax, nu, L, parity) with L reachable: lmax 0..3 x nu 1..3, plus nu = 4 for lmax <= 2."""
    out = []
    for lmax in range(0, 4):
        for nu in range(1, 5):
            if nu == 4 and lmax > 2:
                continue
            for L in range(0, 5):
                if L > nu * lmax:
                    continue
                for parity in (1, -1):
                    out.append((lmax, nu, L, parity))
    return out


GRID = grid()


# --------------------------------------------------------------------------- float evaluation


def evaluate_float(tree: CouplingTree, pieces, values) -> np.ndarray:
    """Tree at S sample points: values[i] is (S, 2 rank_i + 1); returns (S, 2L+1).

    Uses the reduced coupling tables in float (coupling(...).dense()), not the modular
    evaluator of tacegen.paths.
    """
    out = values[tree.leaves[0]]
    for (l1, l2, l3), leaf in zip(tree.steps(pieces), tree.leaves[1:]):
        out = np.einsum("sa,sb,abc->sc", out, values[leaf], coupling(l1, l2, l3).dense())
    return out


def float_rank(rows) -> int:
    """Numerical rank of sampled feature rows (identically-zero rows count as zero)."""
    rows = [np.asarray(r, dtype=float).reshape(-1) for r in rows]
    if not rows:
        return 0
    m = np.array(rows)
    norms = np.linalg.norm(m, axis=1)
    m = m[norms > 1e-9] / norms[norms > 1e-9, None]
    if not len(m):
        return 0
    s = np.linalg.svd(m, compute_uv=False)
    # exact dependencies leave ~1e-15; genuine directions stay above ~1e-2 here
    return int(np.sum(s > 1e-8))


def random_values(pieces, samples: int, rng) -> list:
    return [rng.standard_normal((samples, 2 * p.rank + 1)) for p in pieces]


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("nu,expected", [(1, 1), (2, 4), (3, 8)])
def test_spec_counts_invariants(nu, expected):
    ps = fresh(natural_pieces(3), nu, 0, 1)
    assert len(ps.independent) == expected


def test_spec_counts_vectors_nu3():
    ps = fresh(natural_pieces(3), 3, 1, -1)
    assert len(ps.candidates) == 19
    assert len(ps.independent) == 12


@pytest.mark.parametrize("lmax,nu,L,parity", GRID)
def test_independent_count_equals_character_count(lmax, nu, L, parity):
    pieces = natural_pieces(lmax)
    ps = fresh(pieces, nu, L, parity)
    assert len(ps.independent) == character_count(pieces, nu, L, parity)
    assert (ps.nu, ps.L, ps.parity, ps.pieces) == (nu, L, parity, pieces)


@pytest.mark.parametrize("nu", [1, 2, 3])
@pytest.mark.parametrize("L", [0, 1, 2, 3])
@pytest.mark.parametrize("parity", [1, -1])
def test_general_pieces_vector_and_pseudovector(nu, L, parity):
    """A vector plus a pseudo-vector (e.g. a magnetic moment) and a scalar."""
    if L > nu:
        with pytest.raises(ValueError):
            fresh(GENERAL, nu, L, parity)
        return
    ps = fresh(GENERAL, nu, L, parity)
    assert len(ps.independent) == character_count(GENERAL, nu, L, parity)
    for t in ps.candidates:
        p = 1
        for leaf in t.leaves:
            p *= GENERAL[leaf].parity
        assert p == parity


def test_general_pieces_known_invariants():
    """s, v, m (scalar, vector, pseudo-vector): the even cubic invariants are s^3, s v.v and
    s m.m, the odd one s v.m; at nu = 2, v.m is a pseudoscalar, v x m is a polar vector
    (next to s v), and the only axial vector is s m (v x v and m x m vanish)."""
    assert len(fresh(GENERAL, 3, 0, 1).independent) == 3
    assert len(fresh(GENERAL, 3, 0, -1).independent) == 1
    assert [t.label(GENERAL) for t in fresh(GENERAL, 2, 0, -1).independent] == ["(1o x 1e)->0o"]
    polar = [t.label(GENERAL) for t in fresh(GENERAL, 2, 1, -1).independent]
    assert sorted(polar) == ["(0e x 1o)->1o", "(1o x 1e)->1o"]
    axial = [t.label(GENERAL) for t in fresh(GENERAL, 2, 1, 1).independent]
    assert axial == ["(0e x 1e)->1e"]


# --------------------------------------------------------------------------- candidates


def brute_force_candidates(pieces, nu, L, parity) -> set:
    """Every left-nested tree over non-decreasing leaves with triangle-allowed steps."""
    out = set()
    for leaves in combinations_with_replacement(range(len(pieces)), nu):
        p = 1
        for leaf in leaves:
            p *= pieces[leaf].parity
        if p != parity:
            continue
        partial = [((), pieces[leaves[0]].rank)]
        for leaf in leaves[1:]:
            r = pieces[leaf].rank
            partial = [(mids + (m,), m) for mids, left in partial for m in range(abs(left - r), left + r + 1)]
        out |= {CouplingTree(tuple(leaves), mids) for mids, last in partial if last == L}
    return out


@pytest.mark.parametrize("lmax,nu,L,parity", [g for g in GRID if g[1] <= 3] + [(2, 4, 2, 1)])
def test_candidates_are_all_left_nested_trees(lmax, nu, L, parity):
    pieces = natural_pieces(lmax)
    cands = enumerate_trees(pieces, nu, L, parity)
    assert len(cands) == len(set(cands))
    assert set(cands) == brute_force_candidates(pieces, nu, L, parity)
    ps = fresh(pieces, nu, L, parity)
    assert ps.candidates == tuple(cands)
    # independent trees are a subsequence of the candidates; rejected is the rest
    it = iter(ps.candidates)
    assert all(any(t == c for c in it) for t in ps.independent)
    assert set(ps.rejected) | set(ps.independent) == set(ps.candidates)
    assert not set(ps.rejected) & set(ps.independent)


# --------------------------------------------------------------------------- independence


def check_float_independence(pieces, nu, L, parity, rng):
    ps = fresh(pieces, nu, L, parity)
    k = len(ps.independent)
    samples = len(ps.candidates) + 6
    values = random_values(pieces, samples, rng)
    kept = [evaluate_float(t, pieces, values) for t in ps.independent]
    assert float_rank(kept) == k, "kept trees are linearly independent"
    for t in ps.rejected:
        assert float_rank(kept + [evaluate_float(t, pieces, values)]) == k, t.label(pieces)
    assert k == character_count(pieces, nu, L, parity)


@pytest.mark.parametrize("lmax,nu,L,parity", GRID)
def test_float_independence_and_completeness(lmax, nu, L, parity):
    rng = np.random.default_rng(hash((lmax, nu, L, parity)) % 2**32)
    check_float_independence(natural_pieces(lmax), nu, L, parity, rng)


@pytest.mark.parametrize("nu,L,parity", [(2, 0, 1), (2, 1, 1), (3, 1, -1), (3, 1, 1), (3, 2, 1)])
def test_float_independence_general_pieces(nu, L, parity):
    check_float_independence(GENERAL, nu, L, parity, np.random.default_rng(nu * 10 + L))


def test_float_rank_detects_dependence():
    """The float rank used above is not blind: a x a -> 1 is zero, duplicates add nothing."""
    pieces = natural_pieces(1)
    values = random_values(pieces, 8, np.random.default_rng(0))
    t = CouplingTree((1, 1), (2,))
    assert float_rank([evaluate_float(CouplingTree((1, 1), (1,)), pieces, values)]) == 0
    v = evaluate_float(t, pieces, values)
    assert float_rank([v, 3 * v]) == 1


def random_fraction_values(pieces, rng) -> list:
    return [[Fraction(int(rng.integers(-6, 7)), int(rng.integers(1, 5))) for _ in range(2 * p.rank + 1)]
            for p in pieces]


EXACT_CASES = [
    (natural_pieces(1), 3, 1, -1),
    (natural_pieces(1), 3, 3, -1),
    (natural_pieces(2), 2, 2, 1),
    (natural_pieces(2), 3, 0, 1),
    (natural_pieces(2), 3, 1, -1),
    (GENERAL, 2, 1, 1),
    (GENERAL, 3, 0, 1),
]


@pytest.mark.parametrize("pieces,nu,L,parity", EXACT_CASES)
def test_exact_rational_independence(pieces, nu, L, parity):
    ps = fresh(pieces, nu, L, parity)
    k = len(ps.independent)
    rng = np.random.default_rng(nu * 100 + L)
    points = [random_fraction_values(pieces, rng) for _ in range(len(ps.candidates) + 3)]

    def row(tree):
        return [x for pt in points for x in evaluate_exact(tree, pieces, pt)]

    kept_rows = [row(t) for t in ps.independent]
    assert rational_rank(kept_rows) == k == character_count(pieces, nu, L, parity)
    all_rows = kept_rows + [row(t) for t in ps.rejected]
    assert rational_rank(all_rows) == k
    # rational_rank itself agrees with sympy's exact rank
    to_sympy = lambda rows: sympy.Matrix([[sympy.Rational(x.numerator, x.denominator) for x in r] for r in rows])
    if all_rows:
        assert to_sympy(all_rows).rank() == k
    # evaluate_exact agrees with the float evaluation
    fvals = [np.array([[float(x) for x in v] for v in (pt[i] for pt in points)]) for i in range(len(pieces))]
    for t in ps.candidates:
        np.testing.assert_allclose(evaluate_float(t, pieces, fvals).reshape(-1),
                                   np.array(row(t), dtype=float), atol=1e-9)


def test_rational_rank_basics():
    F = Fraction
    assert rational_rank([]) == 0
    assert rational_rank([[F(1), F(2)], [F(2), F(4)]]) == 1
    assert rational_rank([[F(0), F(1)], [F(1), F(0)], [F(1), F(1)]]) == 2
    assert rational_rank([[F(1, 3), F(1, 7)], [F(1, 6), F(1, 14)]]) == 1


# --------------------------------------------------------------------------- equivariance


def piece_sign(det: float, rank: int, parity: int) -> int:
    """Extra sign of a (rank, parity) object under Q beyond Q^(x)rank: 1, or parity (-1)^rank
    for improper Q (so that the inversion -I acts by ``parity``)."""
    return 1 if det > 0 else parity * (-1) ** rank


@pytest.mark.parametrize("pieces,nu,L,parity", [
    (natural_pieces(2), 3, 1, -1), (natural_pieces(2), 3, 2, 1), (natural_pieces(3), 3, 1, -1),
    (natural_pieces(2), 3, 1, 1), (GENERAL, 3, 1, 1), (GENERAL, 3, 0, -1), (GENERAL, 2, 1, 1),
])
@settings(max_examples=6)
@given(qs=proper_and_improper())
def test_kept_trees_are_equivariant(pieces, nu, L, parity, qs):
    """Every tree maps rotated inputs (with their parities) to the rotated output (L, parity)."""
    ps = fresh(pieces, nu, L, parity)
    assert ps.independent
    values = random_values(pieces, 3, np.random.default_rng(0))
    for q in qs:
        check_tree_equivariance(ps, pieces, L, parity, values, q)


def check_tree_equivariance(ps, pieces, L, parity, values, q):
    det = np.linalg.det(q)
    rotated = [piece_sign(det, p.rank, p.parity) * v @ reduced_representation(q, p.rank).T
               for p, v in zip(pieces, values)]
    d_out = piece_sign(det, L, parity) * reduced_representation(q, L)
    for t in ps.independent:
        out = evaluate_float(t, pieces, values)
        scale = max(1.0, np.abs(out).max())
        np.testing.assert_allclose(evaluate_float(t, pieces, rotated), out @ d_out.T, atol=1e-10 * scale,
                                   err_msg=t.label(pieces))


# --------------------------------------------------------------------------- intermediates


def test_intermediate_ranks_above_lmax_are_kept_and_needed():
    pieces = natural_pieces(3)
    ps = fresh(pieces, 3, 1, -1)
    high = [t for t in ps.independent if max(t.intermediates[:-1]) > 3]
    assert high, "some kept tree passes through an intermediate rank above lmax"
    values = random_values(pieces, 30, np.random.default_rng(1))
    capped = [evaluate_float(t, pieces, values) for t in ps.candidates if max(t.intermediates) <= 3]
    assert float_rank(capped) < len(ps.independent), "capping intermediates at lmax loses paths"
    # three vectors to rank 3 only through an intermediate rank 2 > lmax = 1
    ps = fresh(natural_pieces(1), 3, 3, -1)
    assert len(ps.independent) == 1 == character_count(natural_pieces(1), 3, 3, -1)
    assert ps.independent[0].intermediates == (2, 3)


# --------------------------------------------------------------------------- bad input and determinism


@pytest.mark.parametrize("nu,L,parity,needle", [
    (0, 0, 1, "nu=0"), (9, 0, 1, "nu=9"), (3, 10, 1, "L=10"), (2, 7, 1, "L=7"), (3, 0, 0, "parity=0"),
    (3, -1, 1, "L=-1"),
])
def test_bad_requests_raise(nu, L, parity, needle):
    with pytest.raises(ValueError) as err:
        fresh(natural_pieces(3), nu, L, parity)
    assert needle in str(err.value)


def test_bad_pieces_raise():
    with pytest.raises(ValueError, match="0"):
        Piece(1, 0)
    with pytest.raises(ValueError, match="-2"):
        Piece(-2, 1)
    with pytest.raises(ValueError, match="empty"):
        derive((), 1, 0, 1, cache=NO_CACHE)
    with pytest.raises(ValueError, match="11"):
        derive((Piece(11, -1),), 1, 0, 1, cache=NO_CACHE)


@pytest.mark.parametrize("pieces,nu,L,parity", [(natural_pieces(3), 3, 1, -1), (natural_pieces(2), 4, 2, 1),
                                                 (GENERAL, 3, 1, 1)])
def test_deterministic(pieces, nu, L, parity):
    a, b = fresh(pieces, nu, L, parity), fresh(pieces, nu, L, parity)
    assert a.candidates == b.candidates
    assert a.independent == b.independent
    ja, jb = a.to_json(), b.to_json()
    ja.pop("seconds"), jb.pop("seconds")
    assert ja == jb
    assert [t.to_json() for t in a.independent] == [t.to_json() for t in b.independent]
