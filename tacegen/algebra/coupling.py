"""Coupling two ICTs: the Cartesian Clebsch-Gordan rule l1 x l2 -> l3 (math.md section 2).

For ICTs a (rank l1) and b (rank l2) and |l1 - l2| <= l3 <= l1 + l2 there is exactly one
coupling path (the multiplicity of l3 in l1 x l2 is one):

* even path, l1 + l2 - l3 = 2k: contract k index pairs,
  ``C_{IJ} = a_{p1..pk I} b_{p1..pk J}``, then take the traceless symmetric part;
* odd path, l1 + l2 - l3 = 2k + 1: contract k pairs and one more index of each with the
  Levi-Civita symbol, ``C_{m I J} = eps_{m p q} a_{p1..pk p I} b_{p1..pk q J}``, then take
  the traceless symmetric part. The result has the opposite parity: under an improper
  rotation Q it picks up an extra det(Q).

Normalisation: exactly the sums written above (coefficient one on every term of the
contraction), followed by the detracer of math.md section 1. Nothing is rescaled, so all
coupling coefficients are rational. They equal the spherical Clebsch-Gordan coupling
up to one scalar per (l1, l2, l3), because the coupling space is one dimensional.

In polynomial form (see :mod:`tacegen.algebra.polynomial`), contracting an index pair is
the operator (grad_u . grad_v) and the Levi-Civita step is u . (grad_u x grad_v) applied to
P_a(u) P_b(v) before setting v = u; the factorials below undo the ones derivatives bring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from math import factorial

import numpy as np

from . import polynomial as P
from .ict import (
    LMAX_SUPPORTED,
    _check_rank,
    basis_polynomials,
    dense_pattern_positions,
    detrace_polynomial,
    pattern_index,
    reduced_patterns,
)

# eps_{m p q} as (m, p, q, sign) for the six nonzero entries
LEVI_CIVITA = ((0, 1, 2, 1), (1, 2, 0, 1), (2, 0, 1, 1), (0, 2, 1, -1), (2, 1, 0, -1), (1, 0, 2, -1))


def storage_size(l: int, storage: str) -> int:
    """Stored components of a rank-l tensor: "reduced" 2l+1, "symmetric" (l+1)(l+2)/2."""
    if storage == "reduced":
        return 2 * l + 1
    if storage == "symmetric":
        return (l + 1) * (l + 2) // 2
    raise ValueError(f"storage {storage!r} is not a table storage; allowed: reduced, symmetric")


def triangle(l1: int, l2: int, l3: int) -> bool:
    """True when l3 is reachable from l1 x l2: |l1 - l2| <= l3 <= l1 + l2."""
    return abs(l1 - l2) <= l3 <= l1 + l2


def is_odd_path(l1: int, l2: int, l3: int) -> bool:
    """The path l1 x l2 -> l3 uses a Levi-Civita symbol (flips parity)."""
    return (l1 + l2 - l3) % 2 == 1


def allowed_outputs(l1: int, l2: int) -> range:
    return range(abs(l1 - l2), l1 + l2 + 1)


def couple_polynomials(pa: P.Poly, pb: P.Poly, l1: int, l2: int, l3: int) -> P.Poly:
    """Polynomial of the coupled ICT for input polynomials P_a (degree l1), P_b (degree l2).

    Bilinear in (pa, pb). The inputs need not be harmonic: the map acts on their
    symmetric tensors exactly as the contraction rule above.
    """
    return detrace_polynomial(contract_polynomials(pa, pb, l1, l2, l3), l3)


def contract_polynomials(pa: P.Poly, pb: P.Poly, l1: int, l2: int, l3: int) -> P.Poly:
    """Polynomial of the symmetrised contraction (k pairs, plus one Levi-Civita when
    l1 + l2 - l3 is odd) of the symmetric tensors with polynomials P_a, P_b: the coupling
    rule above without the final detracer (zero outside the triangle rule)."""
    if not triangle(l1, l2, l3):
        return {}
    odd = is_odd_path(l1, l2, l3)
    k = (l1 + l2 - l3 - (1 if odd else 0)) // 2
    used = k + (1 if odd else 0)
    norm = Fraction(factorial(l1 - used) * factorial(l2 - used), factorial(l1) * factorial(l2))
    out: P.Poly = {}
    for beta in P.multi_indices(k):
        weight = norm * factorial(k) / (factorial(beta[0]) * factorial(beta[1]) * factorial(beta[2]))
        da = P.diff_multi(pa, beta)
        db = P.diff_multi(pb, beta)
        if not da or not db:
            continue
        if not odd:
            out = P.add(out, P.mul(da, db), weight)
            continue
        for m, p, q, sign in LEVI_CIVITA:
            term = P.mul(P.diff(da, p), P.diff(db, q))
            if term:
                out = P.add(out, P.mul({P.unit(m): Fraction(1)}, term), weight * sign)
    return out


@dataclass(frozen=True)
class Coupling:
    """The coupling l1 x l2 -> l3 in reduced (2l+1) coordinates.

    ``entries`` is a sparse table of exact coefficients ``(m1, m2, m3, c)`` meaning
    ``out[m3] += c * a[m1] * b[m2]`` for reduced coordinates a, b, out
    (:func:`tacegen.algebra.ict.reduced_patterns`). Structural zeros are never stored.

    ``storages`` names the storage of (a, b, out): "reduced" (2l+1) for the ICT couplings;
    the moment-tensor tables of :mod:`tacegen.algebra.moments` also use "symmetric"
    ((l+1)(l+2)/2 components). ``dims`` are the matching table sizes.
    """

    l1: int
    l2: int
    l3: int
    odd: bool
    entries: tuple
    storages: tuple = field(default=("reduced", "reduced", "reduced"), kw_only=True)

    @property
    def nnz(self) -> int:
        return len(self.entries)

    @property
    def dims(self) -> tuple:
        """Stored components of (a, b, out) per item and channel."""
        return tuple(storage_size(l, s) for l, s in zip((self.l1, self.l2, self.l3), self.storages))

    def dense(self) -> np.ndarray:
        """Float64 array of shape ``dims`` of the table."""
        out = np.zeros(self.dims)
        for m1, m2, m3, c in self.entries:
            out[m1, m2, m3] = float(c)
        return out

    def apply(self, a, b):
        """Exact (or float) evaluation on sequences of reduced coordinates."""
        out = [0] * self.dims[2]
        for m1, m2, m3, c in self.entries:
            out[m3] = out[m3] + c * a[m1] * b[m2]
        return out


@lru_cache(maxsize=None)
def coupling(l1: int, l2: int, l3: int) -> Coupling:
    """Exact reduced-coordinate coupling table for l1 x l2 -> l3 (see module docstring)."""
    for name, l in (("l1", l1), ("l2", l2), ("l3", l3)):
        _check_rank(l, name)
    if not triangle(l1, l2, l3):
        raise ValueError(
            f"l3={l3} is not reachable from l1={l1} x l2={l2}: allowed range {abs(l1 - l2)}..{l1 + l2}")
    ba, bb = basis_polynomials(l1), basis_polynomials(l2)
    red = reduced_patterns(l3)
    entries = []
    for m1, pa in enumerate(ba):
        for m2, pb in enumerate(bb):
            out = couple_polynomials(pa, pb, l1, l2, l3)
            for m3, alpha in enumerate(red):
                c = out.get(alpha)
                if c:
                    entries.append((m1, m2, m3, c / P.multinomial(alpha)))
    return Coupling(l1, l2, l3, is_odd_path(l1, l2, l3), tuple(entries))


def coupling_tensor(l1: int, l2: int, l3: int) -> np.ndarray:
    """Dense float64 coupling of shape (3,)*(l1+l2+l3), index order (a's, b's, out's).

    For ICTs a (rank l1) and b (rank l2), the coupled ICT is
    ``out[K] = sum_{I,J} a[I] b[J] C[I, J, K]``. Zero everywhere outside the triangle
    rule. Applied to general (non-symmetric) inputs it acts on their symmetric parts.
    """
    for name, l in (("l1", l1), ("l2", l2), ("l3", l3)):
        _check_rank(l, name, LMAX_SUPPORTED)
    shape = (3,) * (l1 + l2 + l3)
    if not triangle(l1, l2, l3):
        return np.zeros(shape)
    pats1, pats2 = P.patterns(l1), P.patterns(l2)
    pats3 = P.patterns(l3)
    table = np.zeros((len(pats1), len(pats2), len(pats3)))
    for i, a in enumerate(pats1):
        for j, b in enumerate(pats2):
            out = couple_polynomials({a: Fraction(1)}, {b: Fraction(1)}, l1, l2, l3)
            for k, c in enumerate(pats3):
                v = out.get(c)
                if v:
                    table[i, j, k] = float(v / P.multinomial(c))
    p1, p2, p3 = (dense_pattern_positions(l) for l in (l1, l2, l3))
    dense = table[np.ix_(p1, p2, p3)]
    return dense.reshape(shape)


def reduced_to_symmetric_index(l: int) -> list:
    """Positions of the reduced patterns inside ``patterns(l)`` (for tests and printers)."""
    idx = pattern_index(l)
    return [idx[p] for p in reduced_patterns(l)]
