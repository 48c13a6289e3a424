"""Product-basis contractions of moment tensors (the TMP basis), pruned by exact rank.

The TMP atomic basis is a list of symmetric *moment* tensors A_0 .. A_lmax (A_l of rank l,
inversion parity (-1)^l, :mod:`tacegen.algebra.moments`), where TACE has ICTs. A feature of
correlation order nu and output (L, parity) is a *moment tree*:

    leaves (l_1, ..., l_nu) in any order of their multiset with l_1 <= l_2 (the first step
    is symmetric in its operands; unlike ICT coupling trees, one ordering does not span,
    because the symmetrised intermediates are not irreducible),
    S_1 = A_{l_1};  S_s = Sym(contract(S_{s-1}, A_{l_s}))  (k_s index pairs, possibly one
    Levi-Civita symbol), s = 2 .. nu;  feature = weight-L part of tr^t S_nu,

that is, every step contracts the symmetric intermediate with the next moment tensor and
symmetrises; only the last step takes t >= 0 traces and the traceless part, so the
intermediates are symmetric tensors (no Clebsch-Gordan projection until the end). In the
IR each step is one :class:`~tacegen.algebra.moments.MomentTable` (the last one folds the
traces and the detracer in, with a reduced-storage output). For nu = 1 the feature is the
leaf itself, which is the ICT of rank L only for L <= 1 (ranks 0 and 1 are irreducible), so
order-1 features exist for L <= 1 only.

Selection: candidates are enumerated cheapest first (fewer traces, lower intermediate
ranks) and kept greedily by an exact rank computation in GF(p), exactly as in
:mod:`tacegen.paths`. The upper bound is the character count of the equivariant maps of
multi-degree (m_0, .., m_lmax) on the *decomposed* inputs: A_l = (+)_k V_{l-2k}. When the
two meet, the kept trees span every equivariant polynomial of that degree in the ICT parts
of the moments: the span of the TACE product basis over the same input pieces
(:func:`moment_pieces`). Where they do not meet the rank found is recorded (``bound`` vs
``independent``), never faked; :func:`derive_moment` reports both. Measured: complete for
every order nu >= 2 computed (lmax <= 3 with nu <= 4, lmax 4 with nu 3), which needs the
intermediates to reach rank nu * lmax (up to ``MOMENT_RANK_MAX``), above the ICT limit.

Optional MTP-style selection: ``level`` keeps only trees whose leaves have
``sum_s (2 + 4 mu + l_s) <= level`` with mu = 0 (Shapeev's level of a moment tensor
M_{mu,nu}; the radial index mu is a channel here, not a separate tensor, so it adds
nothing).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations_with_replacement, permutations
from typing import Sequence

import numpy as np

from .algebra.characters import _convolve
from .algebra.moments import MOMENT_RANK_MAX, REDUCED, SYMMETRIC, MomentTable, contraction
from .cache import DiskCache
from .paths import NU_LIMIT, PRIMES, Piece, greedy_independent_rows

LEVEL_RANGE = (2, 64)
LMAX_MOMENT = 6  # the spec's largest lmax


def moment_storage(l: int) -> str:
    """Storage of a moment tensor (or symmetric intermediate) of rank l: ranks 0 and 1 are
    stored like ICTs (the layouts coincide), higher ranks symmetrically."""
    return SYMMETRIC if l >= 2 else REDUCED


def moment_pieces(lmax: int) -> tuple[Piece, ...]:
    """The irreducible parts of A_0 .. A_lmax: ranks l, l-2, ... of A_l, parity (-1)^l."""
    return tuple(Piece(l - 2 * k, (-1) ** l) for l in range(lmax + 1) for k in range(l // 2 + 1))


def tree_level(leaves: Sequence[int]) -> int:
    """MTP level of a tree: sum over its leaves of 2 + l (mu = 0)."""
    return sum(2 + l for l in leaves)


@dataclass(frozen=True)
class MomentTree:
    """Leaves (moment ranks in contraction order), the symmetric rank after each step (length
    nu - 1) and the number of traces the last step takes before its traceless part."""

    leaves: tuple[int, ...]
    intermediates: tuple[int, ...]
    traces: int = 0

    @property
    def output_rank(self) -> int:
        last = self.intermediates[-1] if self.intermediates else self.leaves[0]
        return last - 2 * self.traces

    @property
    def parity(self) -> int:
        return (-1) ** sum(self.leaves)

    def steps(self) -> list[tuple[int, int, int, int]]:
        """(rank of S, rank of the leaf, contracted rank, traces) per step."""
        out, left = [], self.leaves[0]
        for s, (leaf, mid) in enumerate(zip(self.leaves[1:], self.intermediates)):
            last = s == len(self.intermediates) - 1
            out.append((left, leaf, mid, self.traces if last else 0))
            left = mid
        return out

    def tables(self) -> list[MomentTable]:
        """The exact table of each step (the last one with a reduced-storage output)."""
        out = []
        for s, (r, l, mid, t) in enumerate(self.steps()):
            last = s == len(self.intermediates) - 1
            final = mid - 2 * t
            storages = (moment_storage(r), moment_storage(l), REDUCED if last else moment_storage(mid))
            out.append(contraction(r, l, final if last else mid, storages, t if last else 0))
        return out

    def label(self) -> str:
        """Readable form, e.g. ``tr((M2 . M2)->2 . M1)->1``: '.' is a contraction step."""
        text = f"M{self.leaves[0]}"
        for r, l, mid, t in self.steps():
            text = f"({text} . M{l})->{mid}"
        if self.traces:
            text = f"tr^{self.traces} {text}"
        return f"{text} => {self.output_rank}"

    def to_json(self) -> list:
        return [list(self.leaves), list(self.intermediates), self.traces]

    @classmethod
    def from_json(cls, data) -> "MomentTree":
        leaves, mids, traces = data
        return cls(tuple(int(x) for x in leaves), tuple(int(x) for x in mids), int(traces))


def enumerate_moment_trees(lmax: int, nu: int, L: int, parity: int, level: int | None = None) -> list[MomentTree]:
    """All candidate moment trees with output (L, parity), cheapest first."""
    out = []
    for multiset in combinations_with_replacement(range(lmax + 1), nu):
        if (-1) ** sum(multiset) != parity or (level is not None and tree_level(multiset) > level):
            continue
        if nu == 1:
            if multiset[0] == L and L <= 1:
                out.append(MomentTree(multiset, ()))
            continue
        for leaves in sorted(set(permutations(multiset))):
            if leaves[0] <= leaves[1]:
                _grow_trees(leaves, L, out)
    out.sort(key=lambda t: (tuple(sorted(t.leaves)), t.traces, sum(t.intermediates), t.leaves, t.intermediates))
    return out


def _grow_trees(leaves: tuple, L: int, out: list) -> None:
    nu = len(leaves)

    def grow(left: int, pos: int, mids: tuple):
        leaf = leaves[pos]
        for mid in range(abs(left - leaf), min(left + leaf, MOMENT_RANK_MAX) + 1):
            if pos == nu - 1:
                if mid >= L and (mid - L) % 2 == 0:
                    out.append(MomentTree(leaves, mids + (mid,), (mid - L) // 2))
            else:
                grow(mid, pos + 1, mids + (mid,))

    grow(leaves[0], 1, ())


# ---------------------------------------------------------------------------- exact rank


def _table_mod(table: MomentTable, prime: int) -> np.ndarray:
    d1, d2, d3 = table.dims
    out = np.zeros((d1, d2, d3), dtype=np.int64)
    for m1, m2, m3, v in table.entries:
        out[m1, m2, m3] = v.numerator % prime * pow(v.denominator, -1, prime) % prime
    return out.reshape(d1, -1)


class _MomentEvaluator:
    """Evaluates moment trees at S random symmetric tensors A_l mod p, sharing prefixes."""

    def __init__(self, lmax: int, samples: int, prime: int, seed: int):
        rng = np.random.default_rng(seed)
        self.prime = prime
        self.values = [rng.integers(0, prime, size=(samples, (l + 1) * (l + 2) // 2), dtype=np.int64)
                       for l in range(lmax + 1)]
        self._prefix: dict = {}

    def __call__(self, tree: MomentTree) -> np.ndarray:
        value = self.values[tree.leaves[0]]
        key: tuple = (tree.leaves[0],)
        tables = tree.tables()
        for s, (table, leaf) in enumerate(zip(tables, tree.leaves[1:])):
            key = key + (leaf, tree.intermediates[s], tree.traces if s == len(tables) - 1 else 0)
            hit = self._prefix.get(key)
            if hit is None:
                t = (value @ _table_mod(table, self.prime)) % self.prime
                t = t.reshape(value.shape[0], table.dims[1], table.dims[2])
                hit = np.einsum("sb,sbc->sc", self.values[leaf], t) % self.prime
                self._prefix[key] = hit
            value = hit
        return value


def _sym_power_distribution(pieces: Sequence[Piece], m: int) -> dict:
    """Weight distribution {(M, parity): count} of Sym^m of the direct sum of ``pieces``."""
    basis = [(w, p.parity) for p in pieces for w in range(-p.rank, p.rank + 1)]
    dp = [Counter() for _ in range(m + 1)]
    dp[0][(0, 1)] = 1
    for w, par in basis:
        new = [Counter(c) for c in dp]
        for used in range(m + 1):
            for (total, p), c in dp[used].items():
                for extra in range(1, m - used + 1):
                    new[used + extra][(total + extra * w, p * par**extra)] += c
        dp = new
    return dict(dp[m])


@lru_cache(maxsize=None)
def moment_bound(leaves: tuple, L: int, parity: int) -> int:
    """Dimension of the equivariant maps to (L, parity) of multi-degree ``leaves`` in the
    moment tensors (each A_l = (+)_k V_{l-2k}): the character count."""
    dist: dict = {(0, 1): 1}
    for l, m in sorted(Counter(leaves).items()):
        pieces = [Piece(l - 2 * k, (-1) ** l) for k in range(l // 2 + 1)]
        dist = _convolve(dist, _sym_power_distribution(pieces, m))
    return dist.get((L, parity), 0) - dist.get((L + 1, parity), 0)


@dataclass(frozen=True)
class MomentPathSet:
    """The kept moment trees for one (lmax, nu, L, parity[, level]); ``bound`` is the
    character count, ``complete`` says whether the kept set reaches it."""

    lmax: int
    nu: int
    L: int
    parity: int
    level: int | None
    candidates: tuple
    independent: tuple
    bound: int
    seconds: float = 0.0
    cached: bool = field(default=False, compare=False)

    @property
    def complete(self) -> bool:
        return len(self.independent) == self.bound

    def to_json(self) -> dict:
        return {"lmax": self.lmax, "nu": self.nu, "L": self.L, "parity": self.parity, "level": self.level,
                "candidates": [t.to_json() for t in self.candidates],
                "independent": [t.to_json() for t in self.independent],
                "bound": self.bound, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict, cached: bool = False) -> "MomentPathSet":
        return cls(int(data["lmax"]), int(data["nu"]), int(data["L"]), int(data["parity"]),
                   None if data["level"] is None else int(data["level"]),
                   tuple(MomentTree.from_json(t) for t in data["candidates"]),
                   tuple(MomentTree.from_json(t) for t in data["independent"]),
                   int(data["bound"]), float(data["seconds"]), cached)


def check_level(level) -> None:
    if level is None:
        return
    if not isinstance(level, int) or isinstance(level, bool) or not LEVEL_RANGE[0] <= level <= LEVEL_RANGE[1]:
        raise ValueError(f"level={level!r} is outside the allowed range {LEVEL_RANGE[0]}..{LEVEL_RANGE[1]}")


def _independent(trees: list[MomentTree], lmax: int, L: int, bound: int) -> list[MomentTree]:
    if bound == 0 or not trees:
        return []
    width = 2 * L + 1
    best: list[int] = []
    for attempt, prime in enumerate(PRIMES):
        samples = -(-bound // width) + 2 + 2 * attempt
        ev = _MomentEvaluator(lmax, samples, prime, seed=2000 + attempt)
        rows: list = []
        kept: list[int] = []
        # candidates come cheapest first and greedy selection only looks back, so stop
        # evaluating once the bound is reached (same result as scanning all of them)
        for start in range(0, len(trees), 4 * bound):
            rows += [ev(t).reshape(-1) for t in trees[start:start + 4 * bound]]
            kept = greedy_independent_rows(np.stack(rows), prime)
            if len(kept) >= bound:
                break
        if len(kept) > bound:
            raise RuntimeError(f"rank {len(kept)} exceeds the character bound {bound}: the moment tables are wrong")
        if len(kept) == bound:
            return [trees[i] for i in kept]
        if len(kept) > len(best):
            best = kept
    return [trees[i] for i in best]  # the proven lower bound; the set is then incomplete


def derive_moment(lmax: int, nu: int, L: int, parity: int, level: int | None = None,
                  cache: DiskCache | None = None) -> MomentPathSet:
    """Independent moment trees for (lmax, nu, L, parity), memoised on disk."""
    for name, value in (("lmax", lmax), ("nu", nu), ("L", L)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= lmax <= LMAX_MOMENT:
        raise ValueError(f"lmax={lmax} is outside the allowed range 0..{LMAX_MOMENT}")
    if nu * lmax > MOMENT_RANK_MAX:
        raise ValueError(f"nu * lmax = {nu * lmax} exceeds the largest moment rank {MOMENT_RANK_MAX}")
    if not 1 <= nu <= NU_LIMIT:
        raise ValueError(f"nu={nu} is outside the allowed range 1..{NU_LIMIT}")
    if not 0 <= L <= nu * lmax:
        raise ValueError(f"L={L} is outside the range the inputs can reach with nu={nu}: 0..{nu * lmax}")
    if parity not in (1, -1):
        raise ValueError(f"parity={parity!r} must be +1 or -1")
    check_level(level)
    cache = cache if cache is not None else DiskCache()
    request = {"basis": "moment", "rule": "all-orderings, ranks <= 24", "lmax": lmax, "nu": nu, "L": L,
               "parity": parity, "level": level}
    hit = cache.get("moment_paths", request)
    if hit is not None:
        try:
            return MomentPathSet.from_json(hit, cached=True)
        except (KeyError, TypeError, ValueError):
            pass
    start = time.perf_counter()
    candidates = enumerate_moment_trees(lmax, nu, L, parity, level)
    groups: dict[tuple, list[MomentTree]] = defaultdict(list)
    for t in candidates:
        groups[tuple(sorted(t.leaves))].append(t)
    independent: list[MomentTree] = []
    bound = 0
    for leaves in combinations_with_replacement(range(lmax + 1), nu):
        if (-1) ** sum(leaves) != parity or (level is not None and tree_level(leaves) > level):
            continue
        b = moment_bound(leaves, L, parity)
        bound += b
        independent += _independent(groups.get(leaves, []), lmax, L, b)
    result = MomentPathSet(lmax, nu, L, parity, level, tuple(candidates), tuple(independent), bound,
                           round(time.perf_counter() - start, 4))
    cache.put("moment_paths", request, result.to_json())
    return result


def comparison_rows(lmax: int, nu_max: int, L_values, level: int | None = None,
                    cache: DiskCache | None = None) -> list[dict]:
    """Side-by-side counts per (nu, L, parity) for ``tacegen paths --basis moment``:
    moment trees (candidates, kept, character bound over the moment pieces) next to the
    independent ICT (TACE) paths of the same lmax. Both parities, one channel."""
    from .paths import path_table, natural_pieces

    rows = []
    ict = {(ps.nu, ps.L, ps.parity): len(ps.independent)
           for ps in path_table(natural_pieces(lmax), nu_max, L_values, cache=cache)}
    for nu in range(1, nu_max + 1):
        for L in L_values:
            for parity in (1, -1):
                if L > nu * lmax:
                    ms = MomentPathSet(lmax, nu, L, parity, level, (), (), 0)
                else:
                    ms = derive_moment(lmax, nu, L, parity, level, cache)
                rows.append({"lmax": lmax, "nu": nu, "L": L, "parity": parity, "level": level,
                             "moment_candidates": len(ms.candidates), "moment_independent": len(ms.independent),
                             "moment_bound": ms.bound, "complete": ms.complete,
                             "ict_independent": ict[(nu, L, parity)], "seconds": ms.seconds, "cached": ms.cached})
    return rows
