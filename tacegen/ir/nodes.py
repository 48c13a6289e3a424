"""The IR: small frozen dataclasses describing what to compute, with no backend types inside.

A :class:`Program` is a straight-line list of ops over named :class:`Value` s. Every value
lives on a *domain* ("edge": one item per directed edge; "node": one per atom), may have
a channel axis, and holds one ICT of ``rank`` in the reduced (2l+1) storage of
:mod:`tacegen.algebra.ict`. Array layout, for every back end: ``(items, channels, 2l+1)``
or ``(items, 2l+1)`` without channels.

Weights are per-item, per-channel scalars supplied at run time as arrays of shape
``(items, channels, count)`` (for example the radial network's output per edge, or the
product-basis weights gathered by the centre atom's element); a :class:`Scale` op picks one
column.

Coefficients stay exact: a :class:`Couple` holds the :class:`~tacegen.algebra.coupling.Coupling`
with its table of Fractions; only printers turn them into floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..algebra.coupling import Coupling

EDGE, NODE = "edge", "node"
STORAGES = ("reduced", "symmetric", "dense")


@dataclass(frozen=True)
class Value:
    name: str
    rank: int
    domain: str
    channels: bool = True
    storage: str = "reduced"

    @property
    def size(self) -> int:
        """Stored components per item and channel."""
        l = self.rank
        return {"reduced": 2 * l + 1, "symmetric": (l + 1) * (l + 2) // 2, "dense": 3**l}[self.storage]


@dataclass(frozen=True)
class Param:
    """A run-time scalar of a program (a cut-off, a width, a splitting parameter): an op field
    that holds a Param instead of a number reads the value the caller passes by ``name``
    with the program's weights, so the printed code takes it as an argument and one printed
    function serves every value. ``integer``: an int (sizes, polynomial orders), else a
    float. Declare it in ``Program.weights`` with :func:`tacegen.ir.dense_ops.scalar`."""

    name: str
    integer: bool = False


def op_params(op) -> list[Param]:
    """The :class:`Param` fields of ``op``, in field order."""
    from dataclasses import fields

    return [getattr(op, f.name) for f in fields(op) if isinstance(getattr(op, f.name), Param)]


def bind_params(op, weights: dict):
    """``op`` with every :class:`Param` field replaced by its value in ``weights``."""
    from dataclasses import fields, replace

    bound = {f.name: getattr(op, f.name) for f in fields(op) if isinstance(getattr(op, f.name), Param)}
    if not bound:
        return op
    missing = [p.name for p in bound.values() if p.name not in weights]
    if missing:
        raise KeyError(f"{type(op).__name__} -> {op.out.name}: run-time parameter(s) {missing} not given")
    return replace(op, **{k: (int if p.integer else float)(weights[p.name]) for k, p in bound.items()})


@dataclass(frozen=True)
class UnaryOp:
    """Base of the ops that read one value, ``src``."""

    out: Value
    src: Value

    @property
    def inputs(self) -> tuple:
        return (self.src,)


@dataclass(frozen=True)
class EdgeICT:
    """out = r^l T_l(r/|r|) of the edge vectors, evaluated at unit vectors ``direction``."""

    out: Value
    direction: Value

    @property
    def inputs(self) -> tuple:
        return (self.direction,)


@dataclass(frozen=True)
class Couple:
    """out = coupling(left, right) for the exact table ``coupling`` (l1 x l2 -> l3)."""

    out: Value
    left: Value
    right: Value
    coupling: Coupling
    comment: str = ""

    @property
    def inputs(self) -> tuple:
        return (self.left, self.right)


@dataclass(frozen=True)
class Scale:
    """out = src * weight[..., index] (a per-item, per-channel scalar)."""

    out: Value
    src: Value
    weight: str
    index: int
    comment: str = ""

    @property
    def inputs(self) -> tuple:
        return (self.src,)


@dataclass(frozen=True)
class Sum:
    """out = sum of ``terms`` (same rank, domain and channels)."""

    out: Value
    terms: tuple

    @property
    def inputs(self) -> tuple:
        return tuple(self.terms)


@dataclass(frozen=True)
class Gather(UnaryOp):
    """Edge value from the node value of each edge's sender j."""


@dataclass(frozen=True)
class Scatter(UnaryOp):
    """Node value: the sum over the edges whose receiver is that node."""


Op = EdgeICT | Couple | Scale | Sum | Gather | Scatter


# ----------------------------------------------------------------------------- reverse pass
# Ops introduced by the reverse-mode transformation (tacegen.ir.reverse). A cotangent
# ("adjoint") value has exactly the layout of its primal value. The adjoint of a Couple is
# itself a Couple, with an exact transposed table (tacegen.algebra.adjoint.AdjointTable),
# and the adjoint of a Scale's src is a Scale; the ops below cover the rest.


@dataclass(frozen=True)
class WeightArray:
    """A value laid out like a run-time weight: ``(items on domain, channels, count)``.

    Not an ICT (no rank or storage): the last axis holds ``count`` per-channel scalars.
    Produced by :class:`Stack` only (the adjoint of a weight array)."""

    name: str
    domain: str
    count: int
    channels: bool = True


@dataclass(frozen=True)
class EdgeICTGrad:
    """out[e, k] = sum_m cotangent[e, m] * d Y_m / d direction_k (rank-1 edge value, no channels).

    Y = r^l T_l(r/|r|) evaluated as the polynomial :class:`EdgeICT` computes, l =
    ``cotangent.rank``; the derivative polynomials are exact
    (:func:`tacegen.algebra.adjoint.ict_gradient_polynomials`). The vector-Jacobian product of
    EdgeICT."""

    out: Value
    direction: Value
    cotangent: Value

    @property
    def l(self) -> int:
        return self.cotangent.rank

    @property
    def inputs(self) -> tuple:
        return (self.direction, self.cotangent)


@dataclass(frozen=True)
class ChannelSum(UnaryOp):
    """out[i, m] = sum_c src[i, c, m]: a channel-free value from one with channels.

    The adjoint of broadcasting a channel-free operand (an edge ICT) over channels."""


@dataclass(frozen=True)
class GatherReceivers(UnaryOp):
    """Edge value from the node value of each edge's receiver i (the adjoint of Scatter)."""


@dataclass(frozen=True)
class ScatterSenders(UnaryOp):
    """Node value: the sum over the edges whose sender is that node (the adjoint of Gather)."""


@dataclass(frozen=True)
class Zeros:
    """out = zeros shaped like ``like`` (same rank, domain, channels): the adjoint of an input
    that nothing reads."""

    out: Value
    like: Value

    @property
    def inputs(self) -> tuple:
        return (self.like,)


@dataclass(frozen=True)
class Stack:
    """out (a :class:`WeightArray`) = zeros shaped like the run-time weight ``weight``, with
    ``out[:, :, k] = columns[k][:, :, 0]`` for every column that is not None.

    ``columns`` are rank-0 values with channels on the weight's domain, one slot per
    weight column (None: the column is never read, its adjoint is zero). The adjoint of
    a weight array."""

    out: WeightArray
    columns: tuple
    weight: str

    @property
    def inputs(self) -> tuple:
        return tuple(c for c in self.columns if c is not None)


ReverseOp = EdgeICTGrad | ChannelSum | GatherReceivers | ScatterSenders | Zeros | Stack


@dataclass(frozen=True)
class WeightSpec:
    """A run-time weight array of shape (items on ``domain``, channels, ``count``)."""

    name: str
    domain: str
    count: int
    labels: tuple = field(default=(), compare=False)  # one readable label per column


@dataclass(frozen=True)
class Program:
    name: str
    doc: str
    inputs: tuple
    weights: tuple
    ops: tuple
    outputs: tuple

    def check(self) -> "Program":
        """Validate single assignment and that every input of an op is defined before it."""
        defined = {v.name: v for v in self.inputs}
        weights = {w.name: w for w in self.weights}
        for op in self.ops:
            for v in op.inputs:
                if defined.get(v.name) != v:
                    raise ValueError(f"{self.name}: {type(op).__name__} reads undefined value {v.name}")
            if isinstance(op, Scale):
                w = weights.get(op.weight)
                if w is None or not 0 <= op.index < w.count or w.domain != op.src.domain:
                    raise ValueError(f"{self.name}: bad weight reference {op.weight}[{op.index}]")
            if op.out.name in defined:
                raise ValueError(f"{self.name}: value {op.out.name} assigned twice")
            defined[op.out.name] = op.out
        for v in self.outputs:
            if defined.get(v.name) != v:
                raise ValueError(f"{self.name}: output {v.name} is never computed")
        return self
