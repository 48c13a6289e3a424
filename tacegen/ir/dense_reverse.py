"""Adjoint rules of the ops of :mod:`tacegen.ir.dense_ops`, as IR ops.

Importing this module registers them in :data:`tacegen.ir.reverse.ADJOINT_RULES` (and the
interpreter semantics, by importing :mod:`tacegen.ir.dense_interpret`), so
:func:`tacegen.ir.reverse.reverse` differentiates whole-energy programs.

Rules (``g``: the adjoint of the op's output; every rule only *adds* contributions):

* ``EdgeVectors``: ``d_positions += EdgeVectorsGrad(g, strain)``; ``d_strain +=
  EdgeVectorsStrainGrad(positions, cell, shifts, g)`` (so forces = ``-d_positions`` and
  virial = ``-d_strain`` at zero strain). ``cell`` and ``shifts`` are not differentiated:
  requesting them in ``wrt`` raises NotImplementedError.
* ``EdgeLength`` -> ``EdgeLengthGrad``; ``EdgeDirection`` -> ``EdgeDirectionGrad``;
  ``RadialBasis`` -> ``RadialBasisGrad`` (exact analytic derivative of Bessel x cutoff).
* ``Dense`` -> ``DenseTransposed``; ``ChannelMix`` -> ``ChannelMixTransposed``;
  ``Activation`` -> ``ActivationGrad``; ``Reshape`` -> ``ReshapeLike``; ``Mul`` -> ``Mul``;
  ``NodeSum`` -> ``GatherStructures``.
* ``ScaleBy(src, w, k)``: ``d_src += ScaleBy(g, w, k)``; ``d_w += ScaleByWeightGrad(src, g, w, k)``
  (a full (items, C, P) array with one non-zero column; the P contributions are summed).

Weights of Dense / ChannelMix are constants (inference only): no weight gradients.
"""

from __future__ import annotations

from . import dense_interpret  # noqa: F401  (registers the interpreter semantics)
from . import dense_ops as d
from .reverse import ADJOINT_RULES, _like


def _add(rv, target, op):
    """Emit ``op`` (whose ``out`` is already named) as a contribution to ``target``'s adjoint."""
    rv.contrib[target.name].append(rv.emit(op))


def _grad_value(rv, target):
    return _like(target, rv.names.fresh(f"g_{target.name}"))


def _edge_vectors(rv, op: d.EdgeVectors, g):
    for v in (op.cell, op.shifts):
        if v.name in rv.wrt:
            raise NotImplementedError(f"reverse: EdgeVectors is not differentiated with respect to {v.name!r}")
    _add(rv, op.positions, d.EdgeVectorsGrad(_grad_value(rv, op.positions), g, op.strain))
    if op.strain is not None:
        _add(rv, op.strain, d.EdgeVectorsStrainGrad(_grad_value(rv, op.strain), op.positions, op.cell,
                                                    op.shifts, g))


def _scale_by(rv, op: d.ScaleBy, g):
    if not op.src.channels:
        raise NotImplementedError(f"reverse: ScaleBy of channel-free {op.src.name}")
    _add(rv, op.src, d.ScaleBy(_grad_value(rv, op.src), g, op.weight, op.index, f"adjoint of {op.out.name}"))
    _add(rv, op.weight, d.ScaleByWeightGrad(_grad_value(rv, op.weight), op.src, g, op.weight, op.index))


RULES = {
    d.EdgeVectors: _edge_vectors,
    d.EdgeLength: lambda rv, op, g: _add(rv, op.vectors, d.EdgeLengthGrad(_grad_value(rv, op.vectors), op.vectors, g)),
    d.EdgeDirection: lambda rv, op, g: _add(
        rv, op.vectors, d.EdgeDirectionGrad(_grad_value(rv, op.vectors), op.vectors, g)),
    d.RadialBasis: lambda rv, op, g: _add(rv, op.lengths, d.RadialBasisGrad(
        _grad_value(rv, op.lengths), op.lengths, g, op.r_cut, op.num_basis, op.p)),
    d.Dense: lambda rv, op, g: _add(rv, op.src, d.DenseTransposed(_grad_value(rv, op.src), g, op.weight)),
    d.Activation: lambda rv, op, g: _add(rv, op.src, d.ActivationGrad(_grad_value(rv, op.src), op.src, g,
                                                                       op.normalised)),
    d.ChannelMix: lambda rv, op, g: _add(rv, op.src, d.ChannelMixTransposed(_grad_value(rv, op.src), g, op.weight)),
    d.Reshape: lambda rv, op, g: _add(rv, op.src, d.ReshapeLike(_grad_value(rv, op.src), g, op.src)),
    d.ScaleBy: _scale_by,
    d.Mul: lambda rv, op, g: _add(rv, op.src, d.Mul(_grad_value(rv, op.src), g, op.factor)),
    d.NodeSum: lambda rv, op, g: _add(rv, op.src, d.GatherStructures(_grad_value(rv, op.src), g)),
}

ADJOINT_RULES.update(RULES)
