"""Exact embeddings of irreducible parts into Cartesian tensors of a given index symmetry.

A model reads out a weight-j part as 2j+1 *reduced coordinates* (the storage of
:mod:`tacegen.algebra.ict`: for j = 1 the Cartesian components x, y, z; for j = 2 the
components xx, xy, yy, xz, yz of a symmetric traceless tensor). An output tensor of rank
n is the sum over its parts p of ``M_p x_p``, where ``M_p`` (3^n x (2j+1), exact
Fractions, C order of the n indices) is an equivariant embedding:

    M_p (R^(j) x) = (det Q)^s Q^(x)n (M_p x)      for every orthogonal Q,

with s = 1 for a pseudo part (a part reached through an odd number of Levi-Civita
symbols, whose inversion eigenvalue differs from (-1)^j) and 0 otherwise.

Construction: a *seed* places the ICT t (rank j) on j of the n indices and fills the
rest with Kronecker deltas (n - j even) or with one Levi-Civita symbol contracted with one
index of t plus deltas (n - j odd), in every index order. For each irreducible copy c of
weight j (:func:`tacegen.algebra.projectors.exact_parts`) the first seed with a nonzero
projection gives ``P_c seed``: by Schur's lemma the equivariant map from ICT_j into that
copy is unique up to a scalar, so this is it. The index symmetry of the output is a
projector Pi (average of signed index permutations) commuting with rotations; the parts of
the symmetric class are an independent subset of {Pi P_c seed} found by exact rank, one
per copy of weight j in the class. Their images are independent and together span the
class, so ``decompose`` then ``recombine`` is the identity on it (tested exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from itertools import permutations, product

import numpy as np

from .ict import complete, dense_from_components
from .projectors import exact_parts

SYMMETRY_GROUPS = {
    # symmetry -> (generating signed permutations of the n indices, keep only weight n)
    "general": ((), False),
    "symmetric": ("all", False),
    "symmetric_traceless": ("all", True),
    "antisymmetric": ((((1, 0), -1),), False),
    "piezo": ((((0, 2, 1), 1),), False),
    "elastic": ((((1, 0, 2, 3), 1), ((0, 1, 3, 2), 1), ((2, 3, 0, 1), 1)), False),
}


@lru_cache(maxsize=None)
def ict_embedding(j: int) -> np.ndarray:
    """(3^j, 2j+1) exact map from reduced coordinates to the dense symmetric traceless tensor."""
    cols = []
    for m in range(2 * j + 1):
        e = [Fraction(int(k == m)) for k in range(2 * j + 1)]
        cols.append(np.asarray(dense_from_components(complete(e, j), j), dtype=object).reshape(-1) if j else
                    np.array([Fraction(1) if m == 0 else Fraction(0)], dtype=object))
    return np.stack(cols, axis=1)


def _permutation_matrix(perm: tuple, n: int) -> np.ndarray:
    """(3^n, 3^n) integer matrix of T'[i_0..i_{n-1}] = T[i_perm...]: output index k reads input axis perm[k]."""
    size = 3**n
    out = np.zeros((size, size), dtype=np.int64)
    for flat, idx in enumerate(product(range(3), repeat=n)):
        src = [0] * n
        for k in range(n):
            src[perm[k]] = idx[k]
        out[flat, int(np.ravel_multi_index(src, (3,) * n))] = 1
    return out


@lru_cache(maxsize=None)
def symmetry_projector(n: int, symmetry: str) -> np.ndarray:
    """(3^n, 3^n) exact projector onto the tensors of ``symmetry`` (the group average)."""
    gens, _ = SYMMETRY_GROUPS[symmetry]
    if gens == "all":
        group = {(p, 1) for p in permutations(range(n))}
    else:
        group = {(tuple(range(n)), 1)}
        frontier = list(group)
        while frontier:  # close the generators under composition
            perm, sign = frontier.pop()
            for g, s in gens:
                new = (tuple(perm[g[k]] for k in range(n)), sign * s)
                if new not in group:
                    group.add(new)
                    frontier.append(new)
    total = np.zeros((3**n, 3**n), dtype=np.int64)
    for perm, sign in group:
        total += sign * _permutation_matrix(perm, n)
    return np.vectorize(lambda v: Fraction(int(v), len(group)), otypes=[object])(total)


def _seeds(n: int, j: int):
    """Seed maps (3^n, 2j+1) from reduced weight-j coordinates, in every index order."""
    t = ict_embedding(j).reshape((3,) * j + (2 * j + 1,))
    delta = np.eye(3, dtype=np.int64).astype(object)
    eps = np.zeros((3, 3, 3), dtype=object)
    for (a, b, c), s in {(0, 1, 2): 1, (1, 2, 0): 1, (2, 0, 1): 1, (0, 2, 1): -1, (2, 1, 0): -1,
                         (1, 0, 2): -1}.items():
        eps[a, b, c] = s
    odd = (n - j) % 2
    deltas = (n - j - odd) // 2
    if odd and j == 0:  # a pseudo-scalar: eps on three indices
        if n < 3:
            return
        base = eps.reshape(3, 3, 3, 1) * t.reshape(1, 1, 1, 1)
        deltas = (n - 3) // 2
    elif odd:  # base[i_1..i_{j-1}, a, b, m] = t[i_1.., m] eps[a, b, m] summed over m
        base = np.tensordot(t, eps, axes=([j - 1], [2]))  # (3,)*(j-1) + (2j+1,) + (3, 3)
        base = np.moveaxis(base, j - 1, -1)  # (3,)*(j+1) + (2j+1,)
    else:
        base = np.moveaxis(t, -1, -1)
    for _ in range(deltas):
        base = np.multiply.outer(np.moveaxis(base, -1, 0), delta)
        base = np.moveaxis(base, 0, -1)
    for perm in permutations(range(n)):
        yield np.transpose(base, perm + (n,)).reshape(3**n, 2 * j + 1)


def _is_zero(m: np.ndarray) -> bool:
    return all(v == 0 for v in m.reshape(-1))


@lru_cache(maxsize=None)
def copy_embeddings(n: int) -> tuple:
    """((weight, sequence, M), ...) for every irreducible copy of rank-n tensors (exact)."""
    out = []
    for part in exact_parts(n):
        for seed in _seeds(n, part.weight):
            m = part.matrix.dot(seed)
            if not _is_zero(m):
                out.append((part.weight, part.sequence, m))
                break
        else:  # pragma: no cover - would be a defect of the seeds
            raise RuntimeError(f"no seed reaches the copy {part.sequence} of rank-{n} tensors")
    return tuple(out)


def _rank(rows) -> int:
    """Exact rank of rows of Fractions (Gaussian elimination)."""
    m = [list(r) for r in rows]
    rank = 0
    for col in range(len(m[0]) if m else 0):
        pivot = next((i for i in range(rank, len(m)) if m[i][col] != 0), None)
        if pivot is None:
            continue
        m[rank], m[pivot] = m[pivot], m[rank]
        for i in range(rank + 1, len(m)):
            if m[i][col] != 0:
                f = m[i][col] / m[rank][col]
                m[i] = [a - f * b for a, b in zip(m[i], m[rank])]
        rank += 1
    return rank


@dataclass(frozen=True)
class OutputPart:
    """One irreducible part of an output: weight, inversion parity (+1/-1), pseudo flag and
    the exact embedding ``matrix`` (3^n, 2j+1)."""

    weight: int
    parity: int
    matrix: np.ndarray

    @property
    def natural(self) -> bool:
        return self.parity == (-1) ** self.weight

    @property
    def label(self) -> str:
        return f"{self.weight}{'e' if self.parity == 1 else 'o'}"


@lru_cache(maxsize=None)
def output_parts(n: int, symmetry: str, parity: int) -> tuple:
    """The parts of rank-n tensors of ``symmetry`` with inversion eigenvalue ``parity``,
    ordered by weight; their embeddings span the symmetry class and are independent."""
    if symmetry not in SYMMETRY_GROUPS:
        raise ValueError(f"symmetry {symmetry!r} is not known; allowed: {', '.join(SYMMETRY_GROUPS)}")
    if parity not in (1, -1):
        raise ValueError(f"parity must be +1 or -1, got {parity!r}")
    if n == 1:
        return (OutputPart(1, parity, ict_embedding(1)),)
    pi = symmetry_projector(n, symmetry)
    top_only = SYMMETRY_GROUPS[symmetry][1]
    parts = []
    by_weight: dict = {}
    for weight, _, m in copy_embeddings(n):
        if top_only and weight != n:
            continue
        by_weight.setdefault(weight, []).append(pi.dot(m))
    for weight in sorted(by_weight):
        kept: list = []
        for m in by_weight[weight]:
            if _is_zero(m):
                continue
            rows = [k.reshape(-1) for k in kept] + [m.reshape(-1)]
            if _rank(rows) == len(rows):
                kept.append(m)
        parts += [OutputPart(weight, parity, m) for m in kept]
    return tuple(parts)


def recombine(parts, coordinates) -> np.ndarray:
    """The flat tensor sum_p M_p x_p (exact for Fraction inputs)."""
    total = None
    for part, x in zip(parts, coordinates):
        term = part.matrix.dot(np.asarray(x, dtype=object))
        total = term if total is None else total + term
    return total


def decompose(parts, tensor) -> list:
    """Reduced coordinates x_p with ``recombine(parts, x) == tensor`` for a tensor of the class
    (exact, by solving the stacked embeddings with Fractions)."""
    import sympy

    stacked = sympy.Matrix(np.concatenate([p.matrix for p in parts], axis=1).tolist())
    target = sympy.Matrix([sympy.Rational(v.numerator, v.denominator) if isinstance(v, Fraction) else v
                           for v in np.asarray(tensor, dtype=object).reshape(-1)])
    solution, params = stacked.gauss_jordan_solve(target)
    if params.shape[0]:
        raise ValueError("the part embeddings are not independent")
    out, start = [], 0
    for p in parts:
        d = p.matrix.shape[1]
        out.append([Fraction(int(v.p), int(v.q)) for v in solution[start:start + d]])
        start += d
    return out
