"""TMP product basis: moment-tensor contraction trees, their exact rank and their span
relative to the TACE (ICT) product basis over the same input pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tacegen.algebra import polynomial as P
from tacegen.algebra.ict import reduced_patterns
from tacegen.algebra.moments import harmonic_parts, symmetric_basis_polynomials
from tacegen.cache import DiskCache
from tacegen.cli import cli
from tacegen.moment_paths import (
    _MomentEvaluator, derive_moment, enumerate_moment_trees, moment_bound, moment_pieces, tree_level,
)
from tacegen.paths import PRIMES, _couple_mod, derive, greedy_independent_rows, natural_pieces

CASES = [(lmax, nu, L) for lmax in (1, 2, 3) for nu in (2, 3) for L in (0, 1, 2) if L <= nu * lmax]


@pytest.fixture()
def cache(tmp_path):
    return DiskCache(tmp_path)


@pytest.mark.parametrize("lmax,nu,L", CASES)
def test_kept_trees_reach_the_bound_of_the_moment_pieces(lmax, nu, L, cache):
    """nu >= 2: the kept moment trees are as many as the equivariant maps on the ICT parts
    of the moments, which is the TACE count over the same pieces (an independent path)."""
    parity = (-1) ** L
    ms = derive_moment(lmax, nu, L, parity, cache=cache)
    tace_same_pieces = derive(moment_pieces(lmax), nu, L, parity, cache)
    assert ms.complete and len(ms.independent) == ms.bound == len(tace_same_pieces.independent) > 0
    assert len(ms.independent) >= len(derive(natural_pieces(lmax), nu, L, parity, cache).independent)


def test_products_of_high_rank_moments_need_ranks_above_the_ict_limit(cache):
    """(tr tr A_4)^3 lives in the rank-12 product of three rank-4 moments: without
    symmetric intermediates above rank 10 the set would stop one short of the bound."""
    ms = derive_moment(4, 3, 0, 1, cache=cache)
    assert ms.complete and ms.bound == 59
    assert any(t.intermediates[-1] == 12 for t in ms.independent)


def test_pseudo_outputs_also_complete(cache):
    for lmax, nu, L in ((2, 2, 1), (2, 3, 0), (2, 3, 2), (3, 2, 2)):
        ms = derive_moment(lmax, nu, L, -(-1) ** L, cache=cache)
        assert ms.complete and ms.bound == len(derive(moment_pieces(lmax), nu, L, -(-1) ** L, cache).independent)


@pytest.mark.parametrize("lmax", (1, 2, 3))
def test_order_one_relation(lmax, cache):
    """nu = 1: a lone moment is a feature of rank L only for L <= 1 (A_0, A_1): exactly the
    TACE order-1 features there; the traces of higher moments (the lower ICT parts) are
    counted by the bound but are not contraction trees."""
    for L in (0, 1):
        ms = derive_moment(lmax, 1, L, (-1) ** L, cache=cache)
        assert [t.leaves for t in ms.independent] == [(L,)]
        assert len(derive(natural_pieces(lmax), 1, L, (-1) ** L, cache).independent) == 1
        assert ms.bound == len([p for p in moment_pieces(lmax) if p.rank == L])
    if lmax >= 2:
        assert derive_moment(lmax, 1, 2, 1, cache=cache).independent == ()


def _pieces_mod(values, lmax, prime):
    """Reduced coordinates (mod p) of the ICT parts of random symmetric tensors A_l, in
    moment_pieces order: the exact harmonic decomposition applied to each sample."""
    out = []
    for l in range(lmax + 1):
        basis = [harmonic_parts(p, l) for p in symmetric_basis_polynomials(l)]
        for k in range(l // 2 + 1):
            j = l - 2 * k
            M = np.zeros((len(basis), 2 * j + 1), dtype=np.int64)
            for a, parts in enumerate(basis):
                for m, pat in enumerate(reduced_patterns(j)):
                    c = parts.get(k, {}).get(pat, 0) / P.multinomial(pat) if parts.get(k) else 0
                    if c:
                        M[a, m] = c.numerator % prime * pow(c.denominator, -1, prime) % prime
            out.append(values[l] @ M % prime)
    return out


@pytest.mark.parametrize("lmax,nu,L", [(2, 2, 0), (2, 2, 2), (2, 3, 1), (3, 2, 1), (3, 3, 0)])
def test_span_equals_tace_span_over_the_same_pieces(lmax, nu, L, cache):
    """Evaluated at the same random moment tensors, the kept TMP trees and the TACE trees over
    the ICT parts of those moments have the same rank, and so does their union: the spans
    are equal (both rank counts are proven exact by the character bound)."""
    parity, prime = (-1) ** L, PRIMES[0]
    ms = derive_moment(lmax, nu, L, parity, cache=cache)
    tace = derive(moment_pieces(lmax), nu, L, parity, cache)
    samples = -(-2 * ms.bound // (2 * L + 1)) + 3
    ev = _MomentEvaluator(lmax, samples, prime, seed=99)
    tmp_rows = np.stack([ev(t).reshape(-1) for t in ms.independent])
    pieces = moment_pieces(lmax)
    pv = _pieces_mod(ev.values, lmax, prime)
    tace_rows = []
    for tree in tace.independent:
        v = pv[tree.leaves[0]]
        for (l1, l2, l3), leaf in zip(tree.steps(pieces), tree.leaves[1:]):
            v = _couple_mod(v, pv[leaf], l1, l2, l3, prime)
        tace_rows.append(v.reshape(-1))
    tace_rows = np.stack(tace_rows)
    n = ms.bound
    assert len(greedy_independent_rows(tmp_rows, prime)) == n
    assert len(greedy_independent_rows(tace_rows, prime)) == n
    assert len(greedy_independent_rows(np.concatenate([tmp_rows, tace_rows]), prime)) == n


def test_the_bound_counts_multisets_of_moments():
    # A_1 x A_1 -> 0: a.a only; A_2 x A_2 -> 0: (tr A)^2, A:A
    assert moment_bound((1, 1), 0, 1) == 1
    assert moment_bound((2, 2), 0, 1) == 2
    assert moment_bound((1, 2), 1, -1) == 2  # A_2 . a and (tr A_2) a


def test_level_truncation(cache):
    full = derive_moment(3, 3, 0, 1, cache=cache)
    cut = derive_moment(3, 3, 0, 1, level=8, cache=cache)
    assert cut.complete and 0 < len(cut.independent) < len(full.independent)
    assert all(tree_level(t.leaves) <= 8 for t in cut.candidates)
    assert {t.leaves for t in cut.independent} < {t.leaves for t in full.independent}
    with pytest.raises(ValueError, match="level=1 is outside the allowed range 2..64"):
        derive_moment(3, 3, 0, 1, level=1, cache=cache)


def test_candidates_are_cheapest_first():
    trees = enumerate_moment_trees(2, 2, 0, 1)
    for a, b in zip(trees, trees[1:]):
        if tuple(sorted(a.leaves)) == tuple(sorted(b.leaves)):
            assert (a.traces, sum(a.intermediates)) <= (b.traces, sum(b.intermediates))


def test_cli_side_by_side(tmp_path):
    runner = CliRunner()
    env = {"TACEGEN_CACHE_DIR": str(tmp_path), "COLUMNS": "160"}
    res = runner.invoke(cli, ["paths", "--basis", "moment", "--lmax", "2", "--nu", "2", "--L", "0", "--json"], env=env)
    assert res.exit_code == 0, res.output
    rows = {(r["nu"], r["parity"]): r for r in json.loads(res.output)}
    assert rows[(2, 1)]["moment_independent"] == rows[(2, 1)]["moment_bound"] == 5
    assert rows[(2, 1)]["ict_independent"] == 3
    res = runner.invoke(cli, ["paths", "--basis", "moment", "--lmax", "2", "--nu", "2"], env=env)
    assert res.exit_code == 0 and "ICT paths" in res.output and "moment independent" in res.output
    res = runner.invoke(cli, ["paths", "--level", "6"], env=env)
    assert res.exit_code == 2 and "--level applies to --basis moment only" in res.output
    res = runner.invoke(cli, ["paths", "--basis", "spherical"], env=env)
    assert res.exit_code == 2 and "'spherical' is not one of 'ict', 'moment'" in res.output
