"""Exact algebra of the reverse pass: transposed coupling tables, the reduced-coordinate
pairing, and the gradients of the edge-ICT polynomials.

Everything the reverse-mode transformation of :mod:`tacegen.ir.reverse` needs beyond the
forward algebra, kept exact (``fractions.Fraction``) like the rest of
:mod:`tacegen.algebra`; only printers and the float accessors at the bottom turn the
coefficients into floats.

Cotangents are covectors
------------------------
A value stored in reduced (2l+1) coordinates x has a cotangent g with the same layout,
paired with it by the plain Euclidean sum ``<g, x> = sum_m g[m] x[m]`` over the stored
coordinates (that is what a vector-Jacobian product of the stored arrays means). This is
*not* the invariant contraction of the tensors (that one uses :func:`tacegen.algebra.ict.gram`),
so a cotangent is not itself an ICT in reduced coordinates, and the transposed tables
below are not the equivariant couplings ``coupling(l3, l2, l1)``: they are the exact
transposes of the stored tables, which is what the chain rule needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from . import polynomial as P
from .coupling import Coupling, storage_size
from .ict import LMAX_SUPPORTED, _check_rank, ict_polynomials, pattern_index, reduced_patterns

SLOTS = ("left", "right")


@dataclass(frozen=True)
class AdjointTable(Coupling):
    """An exact bilinear table of the reverse pass, in :class:`Coupling`'s format.

    ``entries`` ``(m1, m2, m3, c)`` mean ``out[m3] += c * left[m1] * right[m2]`` exactly as
    for a coupling, and ``l1, l2, l3`` are the ranks of left, right and out (so the
    interpreter, the cost model and sparse printers apply it unchanged). It is *not* the
    coupling path ``l1 x l2 -> l3``: two tables with the same ranks may differ, so
    anything that keys tables by ``(l1, l2, l3)`` must key by ``origin`` (or by the
    entries) as well. ``odd`` is inherited from the forward coupling (the parity of
    l1 + l2 - l3 is unchanged by permuting the three ranks).

    ``origin`` says how it was derived, e.g. ``"transpose-left of 1x1->2"`` or
    ``"pairing 2"``; it takes part in equality.
    """

    origin: str


def transpose(c: Coupling, slot: str) -> AdjointTable:
    """The table of the adjoint of ``out = c(a, b)`` with respect to one operand.

    * ``slot="left"``: ``da[m1] += c * dout[m3] * b[m2]``, i.e. a table (dout, b) -> da with
      entries ``(m3, m2, m1, c)`` and ranks ``(l3, l2, l1)``;
    * ``slot="right"``: ``db[m2] += c * a[m1] * dout[m3]``, a table (a, dout) -> db with
      entries ``(m1, m3, m2, c)`` and ranks ``(l1, l3, l2)``.

    Entries are sorted, so the result is deterministic.
    """
    if slot == "left":
        entries = tuple(sorted((m3, m2, m1, v) for m1, m2, m3, v in c.entries))
        return AdjointTable(c.l3, c.l2, c.l1, c.odd, entries, f"transpose-left of {_describe(c)}",
                            storages=(c.storages[2], c.storages[1], c.storages[0]))
    if slot == "right":
        entries = tuple(sorted((m1, m3, m2, v) for m1, m2, m3, v in c.entries))
        return AdjointTable(c.l1, c.l3, c.l2, c.odd, entries, f"transpose-right of {_describe(c)}",
                            storages=(c.storages[0], c.storages[2], c.storages[1]))
    raise ValueError(f"slot must be one of {SLOTS}, got {slot!r}")


def _describe(c: Coupling) -> str:
    base = f"{c.l1}x{c.l2}->{c.l3}"
    return f"[{c.origin}]" if isinstance(c, AdjointTable) else base


@lru_cache(maxsize=None)
def pairing(l: int, storage: str = "reduced") -> AdjointTable:
    """``out[0] = sum_m left[m] * right[m]``: the Euclidean pairing of two rank-l arrays in
    ``storage`` (reduced by default; a rank-0 result). It pairs a cotangent with a primal
    value, e.g. the adjoint of a per-channel weight ``w`` in ``out = w * src`` is
    ``pairing(dout, src)``."""
    _check_rank(l)
    if storage == "reduced":
        return AdjointTable(l, l, 0, False, tuple((m, m, 0, Fraction(1)) for m in range(2 * l + 1)), f"pairing {l}")
    size = storage_size(l, storage)
    return AdjointTable(l, l, 0, False, tuple((m, m, 0, Fraction(1)) for m in range(size)),
                        f"pairing {l} {storage}", storages=(storage, storage, "reduced"))


# --------------------------------------------------------------------------- edge ICT gradients

@lru_cache(maxsize=None)
def ict_gradient_polynomials(l: int) -> tuple:
    """Exact partial derivatives of the edge ICT in reduced coordinates.

    Entry ``[m][k]`` is ``d Y_m / d r_k`` where ``Y_m`` is reduced coordinate m of
    ``r^l T_l(r/|r|)`` (the homogeneous polynomial of :func:`tacegen.algebra.ict.ict_polynomials`
    that :class:`tacegen.ir.nodes.EdgeICT` evaluates, no normalisation) and k = x, y, z.
    Each is an exact polynomial of degree l - 1 (empty for l = 0).
    """
    _check_rank(l, "l", LMAX_SUPPORTED)
    polys = ict_polynomials(l)
    idx = pattern_index(l)
    return tuple(tuple(P.diff(polys[idx[alpha]], k) for k in P.AXES) for alpha in reduced_patterns(l))


@lru_cache(maxsize=None)
def _gradient_table(l: int):
    """(exponents (M, 3), coefficients (2l+1, 3, M)) for evaluating the gradient polynomials."""
    grads = ict_gradient_polynomials(l)
    monos = sorted({m for row in grads for p in row for m in p})
    col = {m: i for i, m in enumerate(monos)}
    C = np.zeros((2 * l + 1, 3, len(monos)))
    for i, row in enumerate(grads):
        for k, p in enumerate(row):
            for m, v in p.items():
                C[i, k, col[m]] = float(v)
    return np.array(monos, dtype=np.int64).reshape(-1, 3), C


def ict_reduced_gradient(vectors, l: int) -> np.ndarray:
    """Float64 Jacobian ``J[..., m, k] = d Y_m / d r_k`` of ``ict_reduced(r, l, normalize=False)``."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[-1:] != (3,):
        raise ValueError(f"vectors must have a trailing axis of size 3, got shape {v.shape}")
    exps, C = _gradient_table(l)
    if not len(exps):
        return np.zeros(v.shape[:-1] + (2 * l + 1, 3))
    monos = np.prod(v[..., None, :] ** exps, axis=-1)  # (..., M)
    return np.einsum("...j,mkj->...mk", monos, C)


def ict_reduced_vjp(vectors, cotangent, l: int) -> np.ndarray:
    """``out[..., k] = sum_m cotangent[..., m] * d Y_m / d r_k`` (float64, shape (..., 3))."""
    J = ict_reduced_gradient(vectors, l)
    return np.einsum("...m,...mk->...k", np.asarray(cotangent, dtype=np.float64), J)
