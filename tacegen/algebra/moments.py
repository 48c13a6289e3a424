"""Moment tensors: the reducible Cartesian basis of the Tensor Moment Potential (TMP).

The moment tensor of rank l of a vector r is the plain tensor power

    M_l(r) = r (x) r (x) ... (x) r        (l factors),

symmetric but not traceless (Shapeev's Moment Tensor Potentials; the TMP of the TACE paper
builds its atomic basis from it where TACE projects onto ICTs first).

Compressed symmetric storage
----------------------------
A symmetric rank-l tensor S is stored by its (l+1)(l+2)/2 *symmetric components*
``S_alpha``, one per index pattern alpha = (a, b, c) (a x's, b y's, c z's), in the order of
:func:`tacegen.algebra.polynomial.patterns` (x^l, x^(l-1) y, ..., z^l). Component alpha
stands for ``multinomial(alpha) = l! / (a! b! c!)`` equal entries of the dense 3^l array
(:func:`multiplicities`), so a full contraction of two symmetric tensors is
``sum_alpha multinomial(alpha) S_alpha T_alpha``. For M_l, ``S_alpha = x^a y^b z^c``. For
l <= 1 the symmetric and the reduced (2l+1) storage of :mod:`tacegen.algebra.ict` coincide
(rank 1: x, y, z).

ICT decomposition
-----------------
Every symmetric tensor is a sum of symmetrised products of Kronecker deltas and ICTs of
ranks l, l-2, ...; for a moment tensor, exactly (rational ``a_{l,k}``, :func:`ict_coefficient`)

    M_l(r) = sum_{k=0}^{floor(l/2)} a_{l,k} |r|^{2k} Sym(delta^(x)k (x) r^{l-2k} T_{l-2k}(r/|r|)),

with ``a_{l,0} = 1``. In polynomial form (P_S(u) = S_{i..} u_i ..) this is the harmonic
decomposition ``(r.u)^l = sum_k |u|^{2k} h_{l-2k}(u)``: :func:`harmonic_parts`.

Contractions
------------
:func:`contraction` gives, for moment (or ICT) inputs of ranks l1, l2, the symmetrised
contraction over k index pairs (l3 = l1 + l2 - 2k) or over k pairs plus one Levi-Civita
symbol (l3 = l1 + l2 - 2k - 1): exactly the rule of :mod:`tacegen.algebra.coupling`
(coefficient one on every term of the contraction, then symmetrisation of the l3 free
indices) *without* the detracer, unless the output storage is "reduced" (then the
result's weight-l3 part, the detracer, in reduced coordinates). The table has the format
of :class:`~tacegen.algebra.coupling.Coupling` (``out[m3] += c * a[m1] * b[m2]``) with
``storages`` naming the layout of each slot, so the IR, the optimiser, the cost model and
both printers apply it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from . import polynomial as P
from .coupling import Coupling, contract_polynomials, is_odd_path, storage_size, triangle
from .ict import LMAX_SUPPORTED, _check_rank, basis_polynomials, detrace_polynomial, ict_polynomials, pattern_index, \
    reduced_patterns

SYMMETRIC, REDUCED = "symmetric", "reduced"
STORAGES = (REDUCED, SYMMETRIC)
#: Largest rank of a symmetric tensor here: products of up to 4 moments of rank 6 (the
#: spec's nu and lmax limits); ICT (reduced) slots keep the ICT limit.
MOMENT_RANK_MAX = 24


def symmetric_size(l: int) -> int:
    """(l+1)(l+2)/2: the stored components of a symmetric rank-l tensor."""
    return storage_size(l, SYMMETRIC)


def multiplicities(l: int) -> tuple:
    """How many dense entries each symmetric component stands for: l!/(a! b! c!), in
    ``patterns(l)`` order; they sum to 3^l."""
    return tuple(P.multinomial(a) for a in P.patterns(l))


def moment_components(vector, l: int) -> list:
    """Exact symmetric components of M_l(r): ``r_x^a r_y^b r_z^c`` per pattern (a, b, c).
    Works for Fractions, ints and floats alike."""
    _check_rank(l, "l", LMAX_SUPPORTED)
    x, y, z = vector
    return [x**a * y**b * z**c for a, b, c in P.patterns(l)]


def moment_tensor(vectors, l: int) -> np.ndarray:
    """Float64 symmetric components (..., (l+1)(l+2)/2) of M_l(r) (no normalisation)."""
    _check_rank(l, "l", LMAX_SUPPORTED)
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[-1:] != (3,):
        raise ValueError(f"vectors must have a trailing axis of size 3, got shape {v.shape}")
    exps = np.array(P.patterns(l), dtype=np.int64).reshape(-1, 3)
    return np.prod(v[..., None, :] ** exps, axis=-1)


def components_to_polynomial(components, l: int) -> P.Poly:
    """P_S(u) = sum_alpha multinomial(alpha) S_alpha u^alpha of a symmetric tensor."""
    return {a: Fraction(c) * P.multinomial(a) for a, c in zip(P.patterns(l), components) if c}


def polynomial_to_components(poly: P.Poly, l: int) -> list:
    """Symmetric components of the tensor with polynomial ``poly`` (the inverse map)."""
    return [poly.get(a, Fraction(0)) / P.multinomial(a) for a in P.patterns(l)]


def symmetric_basis_polynomials(l: int) -> tuple:
    """Polynomials of the symmetric basis tensors E_alpha (component alpha = 1, rest 0)."""
    return tuple({a: Fraction(P.multinomial(a))} for a in P.patterns(l))


def _laplacian_eigen(k: int, j: int) -> int:
    """Delta^k (|u|^{2k} h_j) = c h_j for h_j harmonic of degree j, in three dimensions:
    c = prod_{i=1..k} 2i (2j + 2i + 1)."""
    out = 1
    for i in range(1, k + 1):
        out *= 2 * i * (2 * j + 2 * i + 1)
    return out


def harmonic_parts(poly: P.Poly, l: int) -> dict:
    """The harmonic decomposition ``poly = sum_k |u|^{2k} h_{l-2k}`` of a homogeneous
    degree-l polynomial, as ``{k: h_{l-2k}}`` (zero parts omitted). Exact:
    ``h_{l-2k} = detrace(Delta^k poly) / prod_{i=1..k} 2i (2(l-2k) + 2i + 1)``."""
    out = {}
    lap = dict(poly)
    for k in range(l // 2 + 1):
        j = l - 2 * k
        h = P.scale(detrace_polynomial(lap, j), Fraction(1, _laplacian_eigen(k, j)))
        if h:
            out[k] = h
        lap = P.laplacian(lap)
    return out


def recombine(parts: dict) -> P.Poly:
    """``sum_k |u|^{2k} parts[k]``: the inverse of :func:`harmonic_parts`."""
    out: P.Poly = {}
    for k, h in parts.items():
        out = P.add(out, P.mul(P.power(P.SQUARED_NORM, k), h))
    return out


@lru_cache(maxsize=None)
def ict_coefficient(l: int, k: int) -> Fraction:
    """a_{l,k} of the module docstring: the weight of |r|^{2k} Sym(delta^k (x) r^{l-2k}
    T_{l-2k}) in M_l(r) (exact). Computed at r = e_z, where the rank-(l-2k) harmonic part of
    u_z^l is a_{l,k} times the polynomial of T_{l-2k}(e_z); rotation invariance carries it
    to every r."""
    _check_rank(l, "l", LMAX_SUPPORTED)
    if not 0 <= k <= l // 2:
        raise ValueError(f"k={k} is outside the allowed range 0..{l // 2} for l={l}")
    j = l - 2 * k
    h = harmonic_parts({(0, 0, l): Fraction(1)}, l).get(k, {})
    tz = {a: c.get((0, 0, j), Fraction(0)) * P.multinomial(a) for a, c in zip(P.patterns(j), ict_polynomials(j))}
    ref = next(a for a in tz if tz[a])
    return h.get(ref, Fraction(0)) / tz[ref]


def moment_ict_parts(l: int) -> tuple:
    """The irreducible parts of M_l: ``((rank, a_{l,k}), ...)`` for rank = l, l-2, ..."""
    return tuple((l - 2 * k, ict_coefficient(l, k)) for k in range(l // 2 + 1))


# --------------------------------------------------------------------------- contraction tables


@dataclass(frozen=True)
class MomentTable(Coupling):
    """A contraction table between moment tensors (or a moment tensor and an ICT), in the
    format of :class:`Coupling`; ``storages`` says which slots are symmetric. A separate
    type so nothing confuses it with the equivariant ICT coupling of the same ranks.
    ``traces``: traces taken after the contraction (the contracted rank is l3 + 2 traces)."""

    traces: int = 0

    @property
    def pairs(self) -> int:
        """Index pairs contracted between the operands (the Levi-Civita pair not counted)."""
        return (self.l1 + self.l2 - self.l3 - 2 * self.traces - (1 if self.odd else 0)) // 2


def _slot_basis(l: int, storage: str) -> tuple:
    if storage == SYMMETRIC:
        return symmetric_basis_polynomials(l)
    if storage == REDUCED:
        return basis_polynomials(l)
    raise ValueError(f"storage {storage!r} is not allowed; allowed: {', '.join(STORAGES)}")


@lru_cache(maxsize=None)
def contraction(l1: int, l2: int, l3: int, storages: tuple = (SYMMETRIC, SYMMETRIC, SYMMETRIC),
                traces: int = 0) -> MomentTable:
    """Exact table of the symmetrised contraction of a rank-l1 and a rank-l2 tensor into rank
    s = l3 + 2 traces: ``(l1 + l2 - s) // 2`` index pairs, plus one Levi-Civita symbol when
    l1 + l2 - s is odd; then ``traces`` traces (rank s -> l3). ``storages`` = layouts of
    (a, b, out); an output in "reduced" storage is detraced (its weight-l3 part). See the
    module docstring."""
    storages = tuple(storages)
    if len(storages) != 3:
        raise ValueError(f"storages must name three slots, got {storages!r}")
    for name, l, storage in (("l1", l1, storages[0]), ("l2", l2, storages[1]), ("l3", l3, storages[2])):
        _check_rank(l, name, MOMENT_RANK_MAX if storage == SYMMETRIC else LMAX_SUPPORTED)
    if not isinstance(traces, int) or traces < 0:
        raise ValueError(f"traces must be a non-negative integer, got {traces!r}")
    s = l3 + 2 * traces
    _check_rank(s, "contracted rank", MOMENT_RANK_MAX)
    if not triangle(l1, l2, s):
        raise ValueError(
            f"rank {s} is not reachable from l1={l1} x l2={l2}: allowed range {abs(l1 - l2)}..{l1 + l2}")
    ba, bb = _slot_basis(l1, storages[0]), _slot_basis(l2, storages[1])
    _slot_basis(l3, storages[2])
    out_patterns = reduced_patterns(l3) if storages[2] == REDUCED else tuple(P.patterns(l3))
    entries = []
    for m1, pa in enumerate(ba):
        for m2, pb in enumerate(bb):
            poly = contract_polynomials(pa, pb, l1, l2, s)
            for step in range(traces):  # Delta P_S = r(r-1) P_{tr S} for S of rank r
                r = s - 2 * step
                poly = P.scale(P.laplacian(poly), Fraction(1, r * (r - 1)))
            if storages[2] == REDUCED:
                poly = detrace_polynomial(poly, l3)
            for m3, alpha in enumerate(out_patterns):
                c = poly.get(alpha)
                if c:
                    entries.append((m1, m2, m3, c / P.multinomial(alpha)))
    return MomentTable(l1, l2, l3, is_odd_path(l1, l2, s), tuple(entries), traces, storages=storages)


@lru_cache(maxsize=None)
def to_reduced(l: int) -> MomentTable:
    """``out = detrace(S)`` in reduced coordinates, as a table with a rank-0 right operand
    equal to one: entries ``(alpha, 0, m, c)``. The weight-l part of a symmetric tensor."""
    return contraction(l, 0, l, (SYMMETRIC, SYMMETRIC, REDUCED))


def dense_symmetric(components, l: int) -> np.ndarray:
    """Dense (3,)*l array of a symmetric tensor from its components (float or object)."""
    idx = pattern_index(l)
    comps = list(components)
    out = np.empty((3,) * l, dtype=object if comps and isinstance(comps[0], Fraction) else float)
    for index in np.ndindex(*(3,) * l):
        alpha = tuple(index.count(axis) for axis in range(3))
        out[index] = comps[idx[alpha]]
    return out
