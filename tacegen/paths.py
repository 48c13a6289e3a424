"""Coupling trees of the product basis, pruned to an exactly independent, complete set.

The product basis of correlation order nu couples nu identical copies of the atomic
basis A = (+)_i piece_i (a list of (rank, parity) pieces; for TACE the ranks 0..lmax
with natural parity) down to one output (L, parity). A *candidate* is a left-nested
coupling tree

    (((piece_{i1} x piece_{i2}) -> L_12) x piece_{i3}) -> L_123 ... -> L

with non-decreasing leaves i1 <= i2 <= ... (the copies are identical, and for a fixed
leaf multiset the left-nested trees over one ordering already span every equivariant
map), every intermediate rank allowed by the triangle rule (not capped at lmax), and
output parity equal to the product of the leaf parities (inversion eigenvalues
multiply; an odd, Levi-Civita step changes whether the result is a true or a
pseudo-tensor of its rank, not its inversion eigenvalue).

Because the copies are identical, many candidates are the same function of A (or zero,
such as a x a for a vector). :func:`derive` keeps a linearly independent subset, greedily
in candidate order, by an exact rank computation:

* trees over different leaf multisets are independent (different multi-degree), so the
  rank is computed per multiset;
* each candidate is evaluated at random points A with exact integer arithmetic in the
  prime field GF(p) (every coupling coefficient is a rational with small denominators,
  all coprime to p). A nonzero minor modulo p is a nonzero minor over Q, so the rank found
  is a proven lower bound on the rank of the functions over Q;
* the character count (:mod:`tacegen.algebra.characters`) gives the dimension of the
  space of such maps, an upper bound. The derivation requires the two to meet, which
  proves the kept set both independent and complete. If they do not meet (unlucky
  samples), it retries with more points and another prime, then fails loudly.

Derivations are memoised on disk (:mod:`tacegen.cache`).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from itertools import combinations_with_replacement
from typing import Iterable, Sequence

import numpy as np

from .algebra.characters import multiplicity_in_product
from .algebra.coupling import allowed_outputs, coupling
from .cache import DiskCache

LMAX_LIMIT = 10
NU_LIMIT = 8

# Primes below 2**26: products of two residues stay below 2**52, so sums of up to
# 2**11 such products fit in int64 without overflow.
PRIMES = (67108859, 67108837, 67108819)


@dataclass(frozen=True, order=True)
class Piece:
    """One irreducible input of the atomic basis: weight ``rank``, inversion ``parity``."""

    rank: int
    parity: int

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"piece rank must be a non-negative integer, got {self.rank!r}")
        if self.parity not in (1, -1):
            raise ValueError(f"piece parity must be +1 or -1, got {self.parity!r}")

    @property
    def label(self) -> str:
        return f"{self.rank}{'e' if self.parity == 1 else 'o'}"


def natural_pieces(lmax: int) -> tuple[Piece, ...]:
    """Ranks 0..lmax with natural parity (-1)^l: the TACE atomic basis."""
    return tuple(Piece(l, (-1) ** l) for l in range(lmax + 1))


@dataclass(frozen=True)
class CouplingTree:
    """A left-nested coupling tree.

    ``leaves``: indices into the pieces, non-decreasing. ``intermediates``: the rank after
    each coupling step (length nu - 1; the last one is the output rank L).
    """

    leaves: tuple[int, ...]
    intermediates: tuple[int, ...]

    def steps(self, pieces: Sequence[Piece]) -> list[tuple[int, int, int]]:
        """The coupling steps (l_left, l_right, l_out) in order."""
        out = []
        left = pieces[self.leaves[0]].rank
        for leaf, mid in zip(self.leaves[1:], self.intermediates):
            out.append((left, pieces[leaf].rank, mid))
            left = mid
        return out

    def output_rank(self, pieces: Sequence[Piece]) -> int:
        return self.intermediates[-1] if self.intermediates else pieces[self.leaves[0]].rank

    def parity(self, pieces: Sequence[Piece]) -> int:
        """Inversion eigenvalue of the output: the product of the leaf parities.

        The coupling maps are built from delta and eps, so inverting every input
        multiplies the output by the product of their parities. (An odd step makes
        the output a pseudo-tensor relative to its rank, not a sign of its own.)
        """
        p = 1
        for leaf in self.leaves:
            p *= pieces[leaf].parity
        return p

    def label(self, pieces: Sequence[Piece]) -> str:
        """Readable form, e.g. ``((1o x 1o)->2e x 2e)->0e``."""
        first = pieces[self.leaves[0]]
        text, p = first.label, first.parity
        for leaf, mid in zip(self.leaves[1:], self.intermediates):
            piece = pieces[leaf]
            p *= piece.parity
            text = f"({text} x {piece.label})->{mid}{'e' if p == 1 else 'o'}"
        return text

    def to_json(self) -> list:
        return [list(self.leaves), list(self.intermediates)]

    @classmethod
    def from_json(cls, data) -> "CouplingTree":
        leaves, mids = data
        return cls(tuple(int(x) for x in leaves), tuple(int(x) for x in mids))


def enumerate_trees(pieces: Sequence[Piece], nu: int, L: int, parity: int) -> list[CouplingTree]:
    """All candidate left-nested trees with output (L, parity), in canonical order."""
    ranks = [p.rank for p in pieces]
    out = []
    for leaves in combinations_with_replacement(range(len(pieces)), nu):
        leaf_ranks = [ranks[i] for i in leaves]
        # an intermediate of rank r can still reach L only if |r - L| <= sum of remaining ranks
        def grow(left: int, pos: int, mids: tuple):
            if pos == nu:
                if left == L:
                    out.append(CouplingTree(tuple(leaves), mids))
                return
            remaining = sum(leaf_ranks[pos + 1:])
            for mid in allowed_outputs(left, leaf_ranks[pos]):
                if abs(mid - L) <= remaining:
                    grow(mid, pos + 1, mids + (mid,))

        grow(leaf_ranks[0], 1, ())
    return [t for t in out if t.parity(pieces) == parity]


# ---------------------------------------------------------------------------- exact rank


@lru_cache(maxsize=None)
def _coupling_mod(l1: int, l2: int, l3: int, prime: int) -> np.ndarray:
    """Coupling table as int64 residues mod ``prime``, shape (d1, d2 * d3)."""
    c = coupling(l1, l2, l3)
    table = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1), dtype=np.int64)
    for m1, m2, m3, v in c.entries:
        table[m1, m2, m3] = v.numerator % prime * pow(v.denominator, -1, prime) % prime
    return table.reshape(2 * l1 + 1, -1)


def _couple_mod(a: np.ndarray, b: np.ndarray, l1: int, l2: int, l3: int, prime: int) -> np.ndarray:
    """Vectorised coupling of residue arrays a (S, d1), b (S, d2) -> (S, d3)."""
    t = (a @ _coupling_mod(l1, l2, l3, prime)) % prime
    t = t.reshape(a.shape[0], 2 * l2 + 1, 2 * l3 + 1)
    return np.einsum("sb,sbc->sc", b, t) % prime


class _Evaluator:
    """Evaluates trees at S random points of A, mod p, sharing tree prefixes."""

    def __init__(self, pieces: Sequence[Piece], samples: int, prime: int, seed: int):
        self.pieces = pieces
        self.prime = prime
        rng = np.random.default_rng(seed)
        self.values = [rng.integers(0, prime, size=(samples, 2 * p.rank + 1), dtype=np.int64)
                       for p in pieces]
        self._prefix: dict = {}

    def __call__(self, tree: CouplingTree) -> np.ndarray:
        return self._eval(tree.leaves, tree.intermediates)

    def _eval(self, leaves: tuple, mids: tuple) -> np.ndarray:
        if not mids:
            return self.values[leaves[0]]
        key = (leaves, mids)
        hit = self._prefix.get(key)
        if hit is None:
            left = self._eval(leaves[:-1], mids[:-1])
            l1 = mids[-2] if len(mids) > 1 else self.pieces[leaves[0]].rank
            hit = _couple_mod(left, self.values[leaves[-1]], l1, self.pieces[leaves[-1]].rank,
                              mids[-1], self.prime)
            self._prefix[key] = hit
        return hit


def greedy_independent_rows(rows: np.ndarray, prime: int) -> list[int]:
    """Indices of rows, scanned in order, that increase the rank over GF(prime)."""
    basis: list[tuple[int, np.ndarray]] = []  # (pivot column, normalised row)
    kept = []
    for i, row in enumerate(rows):
        r = row.copy() % prime
        for pivot, b in basis:
            if r[pivot]:
                r = (r - r[pivot] * b) % prime
        nz = np.flatnonzero(r)
        if nz.size == 0:
            continue
        pivot = int(nz[0])
        r = r * pow(int(r[pivot]), -1, prime) % prime
        # keep the basis reduced so later rows need a single pass
        for j, (pj, bj) in enumerate(basis):
            if bj[pivot]:
                basis[j] = (pj, (bj - bj[pivot] * r) % prime)
        basis.append((pivot, r))
        kept.append(i)
    return kept


class IncompletePathSet(RuntimeError):
    """The exact rank could not reach the character count: a derivation defect."""


def _independent_in_group(pieces, group: list[CouplingTree], bound: int, L: int) -> list[CouplingTree]:
    if bound == 0:
        return []
    width = 2 * L + 1
    for attempt, prime in enumerate(PRIMES):
        samples = -(-bound // width) + 2 + 2 * attempt
        ev = _Evaluator(pieces, samples, prime, seed=1000 + attempt)
        rows = np.stack([ev(t).reshape(-1) for t in group])
        kept = greedy_independent_rows(rows, prime)
        if len(kept) == bound:
            return [group[i] for i in kept]
        if len(kept) > bound:
            raise IncompletePathSet(
                f"rank {len(kept)} exceeds the character bound {bound}: the coupling tables are wrong")
    raise IncompletePathSet(
        f"rank stays at {len(kept)} below the character bound {bound} for leaves {group[0].leaves}")


@dataclass(frozen=True)
class PathSet:
    """The product-basis paths for one (pieces, nu, L, parity)."""

    pieces: tuple[Piece, ...]
    nu: int
    L: int
    parity: int
    candidates: tuple[CouplingTree, ...]
    independent: tuple[CouplingTree, ...]
    seconds: float = 0.0
    cached: bool = field(default=False, compare=False)

    @property
    def rejected(self) -> tuple[CouplingTree, ...]:
        keep = set(self.independent)
        return tuple(t for t in self.candidates if t not in keep)

    def to_json(self) -> dict:
        return {
            "pieces": [[p.rank, p.parity] for p in self.pieces],
            "nu": self.nu, "L": self.L, "parity": self.parity,
            "candidates": [t.to_json() for t in self.candidates],
            "independent": [t.to_json() for t in self.independent],
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict, cached: bool = False) -> "PathSet":
        return cls(
            pieces=tuple(Piece(int(r), int(p)) for r, p in data["pieces"]),
            nu=int(data["nu"]), L=int(data["L"]), parity=int(data["parity"]),
            candidates=tuple(CouplingTree.from_json(t) for t in data["candidates"]),
            independent=tuple(CouplingTree.from_json(t) for t in data["independent"]),
            seconds=float(data["seconds"]), cached=cached,
        )


def check_request(pieces: Sequence[Piece], nu: int, L: int, parity: int) -> None:
    """Validate a request; raise ValueError naming the value and the allowed range."""
    for name, value in (("nu", nu), ("L", L)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 1 <= nu <= NU_LIMIT:
        raise ValueError(f"nu={nu} is outside the allowed range 1..{NU_LIMIT}")
    if not pieces:
        raise ValueError("the input pieces are empty: give at least one (rank, parity)")
    for p in pieces:
        if p.rank > LMAX_LIMIT:
            raise ValueError(f"input rank {p.rank} is outside the allowed range 0..{LMAX_LIMIT}")
    reach = nu * max(p.rank for p in pieces)
    if not 0 <= L <= reach:
        raise ValueError(f"L={L} is outside the range the inputs can reach with nu={nu}: 0..{reach}")
    if parity not in (1, -1):
        raise ValueError(f"parity={parity!r} must be +1 or -1")


def derive(pieces: Sequence[Piece], nu: int, L: int, parity: int,
           cache: DiskCache | None = None) -> PathSet:
    """Independent, complete product-basis paths for (pieces, nu, L, parity). Memoised on disk.

    ``pieces``: :class:`Piece` objects or plain ``(rank, parity)`` pairs.
    """
    pieces = tuple(p if isinstance(p, Piece) else Piece(*p) for p in pieces)
    check_request(pieces, nu, L, parity)
    cache = cache if cache is not None else DiskCache()
    request = {"pieces": [[p.rank, p.parity] for p in pieces], "nu": nu, "L": L, "parity": parity}
    hit = cache.get("paths", request)
    if hit is not None:
        try:
            return PathSet.from_json(hit, cached=True)
        except (KeyError, TypeError, ValueError):
            pass  # structurally wrong payload: rebuild
    start = time.perf_counter()
    candidates = enumerate_trees(pieces, nu, L, parity)
    groups: dict[tuple, list[CouplingTree]] = defaultdict(list)
    for t in candidates:
        groups[t.leaves].append(t)
    independent: list[CouplingTree] = []
    for leaves, group in groups.items():
        powers = Counter(leaves)
        bound = multiplicity_in_product(
            (((pieces[i].rank, pieces[i].parity), m) for i, m in sorted(powers.items())), L, parity)
        independent.extend(_independent_in_group(pieces, group, bound, L))
    result = PathSet(pieces, nu, L, parity, tuple(candidates), tuple(independent),
                     round(time.perf_counter() - start, 4))
    cache.put("paths", request, result.to_json())
    return result


def path_table(pieces: Sequence[Piece], nu_max: int, L_values: Iterable[int],
               parities: Iterable[int] = (1, -1), cache: DiskCache | None = None) -> list[PathSet]:
    """PathSets for nu = 1..nu_max, every L and parity requested.

    An L that nu copies cannot reach (L > nu * max rank) gets an empty PathSet, so the
    table has one row per (nu, L, parity).
    """
    pieces = tuple(p if isinstance(p, Piece) else Piece(*p) for p in pieces)
    out = []
    rmax = max(p.rank for p in pieces)
    for nu in range(1, nu_max + 1):
        for L in L_values:
            for parity in parities:
                if L > nu * rmax:
                    out.append(PathSet(pieces, nu, L, parity, (), ()))
                else:
                    out.append(derive(pieces, nu, L, parity, cache))
    return out


# ----------------------------------------------------------------- exact rational checks


def evaluate_exact(tree: CouplingTree, pieces: Sequence[Piece], values: Sequence[Sequence[Fraction]]) -> list:
    """Evaluate a tree with Fractions at reduced coordinates ``values[i]`` of each piece."""
    out = list(values[tree.leaves[0]])
    for (l1, l2, l3), leaf in zip(tree.steps(pieces), tree.leaves[1:]):
        out = coupling(l1, l2, l3).apply(out, values[leaf])
    return out


def rational_rank(rows: list[list[Fraction]]) -> int:
    """Rank of a matrix of Fractions by exact Gaussian elimination."""
    m = [list(r) for r in rows]
    rank, ncols = 0, len(m[0]) if m else 0
    for col in range(ncols):
        pivot = next((i for i in range(rank, len(m)) if m[i][col] != 0), None)
        if pivot is None:
            continue
        m[rank], m[pivot] = m[pivot], m[rank]
        inv = 1 / m[rank][col]
        for i in range(rank + 1, len(m)):
            if m[i][col] != 0:
                f = m[i][col] * inv
                m[i] = [a - f * b for a, b in zip(m[i], m[rank])]
        rank += 1
    return rank
