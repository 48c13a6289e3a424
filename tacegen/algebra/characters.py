"""Multiplicities by weight counting: how many copies of (L, parity) a product space holds.

This is the independent check on :mod:`tacegen.paths`: the number of linearly
independent equivariant polynomial maps Sym^nu(V) -> V_(L, p) equals the multiplicity of
the O(3) irrep (L, p) in Sym^nu(V). For O(3) = SO(3) x {1, -1} it is read off the
character: count the basis vectors of the space by their weight M (eigenvalue of J_z)
and inversion parity; then mult(L, p) = N(M = L, p) - N(M = L + 1, p).

A *piece* is ``(rank, parity)``: an irrep of weight ``rank`` whose inversion eigenvalue
is ``parity`` (+1 or -1). Natural parity means parity = (-1)^rank.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Iterable

Piece = tuple  # (rank, parity)

# A weight distribution: {(M, parity): count}
Distribution = dict


def _convolve(d1: Distribution, d2: Distribution) -> Distribution:
    out: Counter = Counter()
    for (m1, p1), c1 in d1.items():
        for (m2, p2), c2 in d2.items():
            out[(m1 + m2, p1 * p2)] += c1 * c2
    return dict(out)


@lru_cache(maxsize=None)
def symmetric_power_weights(rank: int, parity: int, m: int) -> tuple:
    """Weight distribution of Sym^m of one irrep (rank, parity), as sorted items.

    Counts multisets of m basis vectors (weights -rank..rank) by their total weight.
    """
    # dp[count][total] over basis weights taken in order, each any number of times
    dp = [Counter() for _ in range(m + 1)]
    dp[0][0] = 1
    for w in range(-rank, rank + 1):
        new = [Counter(c) for c in dp]
        for used in range(m + 1):
            for total, c in dp[used].items():
                for extra in range(1, m - used + 1):
                    new[used + extra][total + extra * w] += c
        dp = new
    par = parity**m
    return tuple(sorted(((total, par), c) for total, c in dp[m].items()))


def multiplicity_in_product(pieces_with_powers: Iterable[tuple[Piece, int]], L: int, parity: int) -> int:
    """Multiplicity of (L, parity) in (x)_i Sym^{m_i}(piece_i)."""
    dist: Distribution = {(0, 1): 1}
    for (rank, par), m in pieces_with_powers:
        dist = _convolve(dist, dict(symmetric_power_weights(rank, par, m)))
    return dist.get((L, parity), 0) - dist.get((L + 1, parity), 0)


def multiplicity_in_symmetric_power(pieces: Iterable[Piece], nu: int, L: int, parity: int) -> int:
    """Multiplicity of (L, parity) in Sym^nu(V) for V the direct sum of ``pieces``.

    Counts multisets of nu basis vectors of the whole space directly (one pass over
    all basis vectors), so it shares no code path with the per-leaf-multiset count.
    """
    basis = [(w, par) for rank, par in pieces for w in range(-rank, rank + 1)]
    # dp[count] : Counter{(M, parity): n}
    dp = [Counter() for _ in range(nu + 1)]
    dp[0][(0, 1)] = 1
    for w, par in basis:
        new = [Counter(c) for c in dp]
        for used in range(nu + 1):
            for (total, p), c in dp[used].items():
                for extra in range(1, nu - used + 1):
                    new[used + extra][(total + extra * w, p * par**extra)] += c
        dp = new
    d = dp[nu]
    return d.get((L, parity), 0) - d.get((L + 1, parity), 0)
