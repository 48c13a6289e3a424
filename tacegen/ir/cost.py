"""A FLOP and memory model of IR programs, per atom and per channel.

Counts are multiply-adds (one multiply + one add = 2 FLOPs) per atom, for one channel;
multiply by the channel count for a layer's total. Edge ops are weighted by the mean
number of neighbours (``items_per_atom["edge"]``, default 43: Cu fcc at r_cut 5 Å).

Two lowerings of a coupling are priced:

* ``sparse``: one multiply-add per nonzero of the exact table (what the Numba printer
  unrolls);
* ``dense``: the table as a dense (d1 d2) x d3 matrix applied to the outer product (what
  the PyTorch printer emits as one matmul, since many tiny ops cost more than FLOPs on a
  framework).

``storage`` prices the same op with symmetric-component or dense 3^l storage, for the
report's comparison with Cartesian models that store full tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from .nodes import Couple, EdgeICT, Gather, Program, Scale, Scatter, Sum, Value

DEFAULT_ITEMS = {"edge": 43.0, "node": 1.0}


@dataclass(frozen=True)
class Cost:
    flops: float      # per atom, per channel, with the sparse coupling lowering
    dense_flops: float  # same with dense matmul couplings
    floats: float     # output floats stored per atom, per channel

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.dense_flops + other.dense_flops, self.floats + other.floats)


ZERO = Cost(0.0, 0.0, 0.0)


def _size(v: Value, storage: str) -> int:
    """Components of ``v``: as stored for "reduced" (the default pricing: a moment-basis value
    is stored symmetrically), else as if every value used ``storage``."""
    if storage == "reduced":
        return v.size
    l = v.rank
    return {"reduced": 2 * l + 1, "symmetric": (l + 1) * (l + 2) // 2, "dense": 3**l}[storage]


def op_cost(op, items_per_atom: dict | None = None, storage: str = "reduced") -> Cost:
    items = (items_per_atom or DEFAULT_ITEMS)[op.out.domain]
    out = _size(op.out, storage)
    floats = items * out * (1 if op.out.channels else 1 / 64)  # channel-free values amortised over 64
    if isinstance(op, Couple):
        d1, d2 = _size(op.left, storage), _size(op.right, storage)
        if storage == "reduced":
            nnz = op.coupling.nnz
        else:  # a dense Cartesian coupling touches every component combination
            nnz = d1 * d2 * out
        dense = d1 * d2 * out + d1 * d2
        if not op.right.channels:  # (table . right) is per item, shared by all channels
            dense = d1 * out
        return Cost(2 * items * nnz, 2 * items * dense, floats)
    if isinstance(op, Scale):
        return Cost(items * out, items * out, floats)
    if isinstance(op, Sum):
        k = max(len(op.terms) - 1, 0)
        return Cost(items * out * k, items * out * k, floats if k else 0.0)
    if isinstance(op, Scatter):
        src_items = (items_per_atom or DEFAULT_ITEMS)[op.src.domain]
        return Cost(src_items * out, src_items * out, floats)
    if isinstance(op, Gather):
        return Cost(0.0, 0.0, floats)
    if isinstance(op, EdgeICT):
        return Cost(0.0, 0.0, floats)  # per edge, not per channel: negligible here
    raise TypeError(type(op).__name__)


def program_cost(program: Program, items_per_atom: dict | None = None, storage: str = "reduced") -> Cost:
    total = ZERO
    for op in program.ops:
        total = total + op_cost(op, items_per_atom, storage)
    return total


def count_ops(program: Program) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in program.ops:
        counts[type(op).__name__] = counts.get(type(op).__name__, 0) + 1
    return counts


