"""Exact projectors decomposing a general rank-n Cartesian tensor into irreducible parts.

Method: the rotation generators (L_a)_{bc} = -eps_{abc} act on the first k factors of
R^3 (x) ... (x) R^3 as J^(k)_a; the Casimirs C_k = -sum_a J^(k)_a J^(k)_a (k = 2..n) are
integer symmetric matrices that commute with each other and with every rotation. Their
joint eigenspaces are labelled by a coupling sequence (j_1 = 1, j_2, ..., j_n = j):
couple the first two vectors to j_2, add the third to get j_3, and so on. Each such
sequence is exactly one irreducible copy of weight j, so the product of Lagrange
interpolation polynomials

    P = prod_k prod_{j' != j_k} (C_k - j'(j'+1)) / (j_k(j_k+1) - j'(j'+1))

is the orthogonal projector onto that copy. All arithmetic is exact (integers, then
Fractions).

Conventions: a projector is returned as an array of shape (3,)*(2n), acting as
``part[I] = sum_J P[I, J] t[J]`` (output indices first). Parity is the inversion
eigenvalue of the part, which is (-1)^n for every part of a rank-n tensor; a part of
weight j is a pseudo-tensor when (-1)^n != (-1)^j, equivalently when its coupling
sequence passes through an odd number of Levi-Civita (odd) steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

import numpy as np

RANK_MAX = 4


def _generators() -> list[np.ndarray]:
    eps = np.zeros((3, 3, 3), dtype=np.int64)
    for (a, b, c), s in {(0, 1, 2): 1, (1, 2, 0): 1, (2, 0, 1): 1,
                         (0, 2, 1): -1, (2, 1, 0): -1, (1, 0, 2): -1}.items():
        eps[a, b, c] = s
    return [-eps[a] for a in range(3)]


@lru_cache(maxsize=None)
def casimir(k: int) -> np.ndarray:
    """Integer Casimir of so(3) on (R^3)^(x)k, eigenvalues j(j+1)."""
    gens = _generators()
    eye = np.eye(3, dtype=np.int64)
    total = np.zeros((3**k, 3**k), dtype=np.int64)
    for L in gens:
        J = np.zeros((3**k, 3**k), dtype=np.int64)
        for pos in range(k):
            factor = np.ones((1, 1), dtype=np.int64)
            for q in range(k):
                factor = np.kron(factor, L if q == pos else eye)
            J += factor
        total -= J @ J
    return total


@lru_cache(maxsize=None)
def _isotypic(k: int, j: int) -> tuple[np.ndarray, int]:
    """Projector onto weight j inside (R^3)^(x)k as (integer numerator, denominator)."""
    C = casimir(k)
    num = np.eye(3**k, dtype=object)
    den = 1
    for jp in range(k + 1):
        if jp == j:
            continue
        num = num.dot((C - jp * (jp + 1) * np.eye(3**k, dtype=np.int64)).astype(object))
        den *= j * (j + 1) - jp * (jp + 1)
    return num, den


def coupling_sequences(n: int) -> list[tuple[int, ...]]:
    """All (j_1=1, j_2, ..., j_n) with j_{k+1} in j_k x 1; one per irreducible copy."""
    seqs = [(1,)]
    for _ in range(n - 1):
        seqs = [s + (j,) for s in seqs for j in range(abs(s[-1] - 1), s[-1] + 2)]
    return seqs


class IrreduciblePart(NamedTuple):
    """One irreducible part: weight, inversion parity (+1/-1) and the projector array."""

    weight: int
    parity: int
    projector: np.ndarray


@dataclass(frozen=True)
class ExactPart:
    """Exact description of one irreducible copy inside rank-n tensors."""

    rank: int
    weight: int
    sequence: tuple  # coupling sequence (1, j_2, ..., j_n = weight)
    parity: int      # inversion eigenvalue, (-1)^rank
    matrix: np.ndarray  # (3^n, 3^n) object array of Fractions

    @property
    def pseudo(self) -> bool:
        """True for a pseudo-tensor: parity differs from the natural (-1)^weight."""
        return self.parity != (-1) ** self.weight


def _check_rank(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"rank n must be an integer, got {n!r}")
    if not 1 <= n <= RANK_MAX:
        raise ValueError(f"rank n={n} is outside the allowed range 1..{RANK_MAX}")


@lru_cache(maxsize=None)
def exact_parts(n: int) -> tuple[ExactPart, ...]:
    """All irreducible copies in rank-n tensors, exact, ordered by (weight, sequence)."""
    _check_rank(n)
    parts = []
    for seq in coupling_sequences(n):
        num = np.eye(3**n, dtype=object)
        den = 1
        for k in range(2, n + 1):
            pk, dk = _isotypic(k, seq[k - 1])
            pk = np.kron(pk, np.eye(3 ** (n - k), dtype=np.int64).astype(object))
            num = num.dot(pk)
            den *= dk
        matrix = np.vectorize(lambda v: Fraction(int(v), den), otypes=[object])(num)
        parts.append(ExactPart(n, seq[-1], seq, (-1) ** n, matrix))
    parts.sort(key=lambda p: (p.weight, p.sequence))
    return tuple(parts)


def projectors(n: int) -> list[IrreduciblePart]:
    """Float64 projectors of rank-n tensors (n = 1..4) onto their irreducible parts.

    One entry per irreducible copy: ``(weight, parity, array)`` with array of shape
    (3,)*(2n). The parts are idempotent, mutually orthogonal, sum to the identity and
    commute with Q^(x)n for every orthogonal Q. See the module docstring for parity.
    """
    out = []
    for part in exact_parts(n):
        arr = part.matrix.astype(np.float64).reshape((3,) * (2 * n))
        out.append(IrreduciblePart(part.weight, part.parity, arr))
    return out


def multiplicities(n: int) -> dict[int, int]:
    """Weight -> number of copies in rank-n tensors (n = 1..4, like the projectors)."""
    _check_rank(n)
    counts: dict[int, int] = {}
    for seq in coupling_sequences(n):
        counts[seq[-1]] = counts.get(seq[-1], 0) + 1
    return dict(sorted(counts.items()))
