"""Reverse-mode differentiation as an IR-to-IR transformation.

``reverse(program, wrt)`` turns a forward program into the program of its
vector-Jacobian products: given the forward inputs, the forward weights and one
cotangent per forward output, it recomputes the forward values it needs and returns
``d<cotangents, outputs>/d x`` for every name x in ``wrt`` (forward inputs and weights).
Nothing is hand-written per rank and nothing goes through a framework's autograd: every
adjoint is an IR op with exact coefficients, so any back end that prints the IR prints
the backward pass too.

Conventions
-----------
* Cotangent input of forward output ``O``: ``d_O``, same rank, domain, channels and
  storage as ``O``. Gradient output for ``x`` in ``wrt``: ``d_x``, with the layout of
  ``x``; for a weight ``(items, channels, count)`` a :class:`~tacegen.ir.nodes.WeightArray`
  of that shape. Cotangents pair with values by the plain sum over stored components
  (see :mod:`tacegen.algebra.adjoint`).
* Program layout: the forward ops (recomputation), then the adjoint ops in reverse
  order, single assignment; dead ops are dropped, identical ops shared and one-term
  Sums folded away (:func:`simplify`, local to this module: it knows the reverse-pass
  ops and compares coupling tables by their exact entries).

Adjoint rules (``g`` is the accumulated adjoint of the op's output)
-------------------------------------------------------------------
* ``Couple(out, a, b, T)``: ``da += Couple(g, b, transpose(T, "left"))``,
  ``db += Couple(a, g, transpose(T, "right"))``; an operand without channels (an edge
  ICT) was broadcast over channels, so its adjoint is followed by a
  :class:`~tacegen.ir.nodes.ChannelSum`.
* ``Scale(out, src, w, k)``: ``dsrc += Scale(g, w, k)``; column k of ``dw`` gets
  ``Couple(g, src, pairing(l))`` (rank 0 with channels); columns are assembled by one
  :class:`~tacegen.ir.nodes.Stack` per weight.
* ``Sum``: every term receives ``g`` (no op). ``Gather`` (by senders):
  :class:`~tacegen.ir.nodes.ScatterSenders`. ``Scatter`` (by receivers):
  :class:`~tacegen.ir.nodes.GatherReceivers`.
* ``EdgeICT``: :class:`~tacegen.ir.nodes.EdgeICTGrad` (exact derivative polynomials);
  none for l = 0 (a constant).
* Several contributions to one adjoint are added by a ``Sum``; a value nobody reads
  gets no adjoint; a requested input nobody reads gets :class:`~tacegen.ir.nodes.Zeros`.

Limits: the forward program may contain only the six forward op types (EdgeICT,
Couple, Scale, Sum, Gather, Scatter) and op types registered in :data:`ADJOINT_RULES`
(importing :mod:`tacegen.ir.dense_reverse` registers the dense scaffolding ops); reversing a reverse program (second order) is not
supported. ``Scale`` sources must have channels (as everywhere in the builder).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Sequence

from ..algebra.adjoint import pairing, transpose
from .interpret import EXTENSIONS
from .optimise import drop_dead, share_subtrees
from .nodes import (
    ChannelSum,
    Couple,
    EdgeICT,
    EdgeICTGrad,
    Gather,
    GatherReceivers,
    Program,
    Scale,
    Scatter,
    ScatterSenders,
    Stack,
    Sum,
    Value,
    WeightArray,
    WeightSpec,
    Zeros,
)

FORWARD_OPS = (EdgeICT, Couple, Scale, Sum, Gather, Scatter)
REVERSE_OPS = (EdgeICTGrad, ChannelSum, GatherReceivers, ScatterSenders, Zeros, Stack)

# Extension point: forward op type -> ``rule(reverser, op, g)`` appending adjoint ops with
# ``reverser.emit`` and contributions to ``reverser.contrib[name]``; consulted only for op
# types not in FORWARD_OPS (see tacegen.ir.dense_reverse). The adjoint ops it emits must be
# interpretable (tacegen.ir.interpret.EXTENSIONS).
ADJOINT_RULES: dict = {}


def cotangent_name(name: str) -> str:
    """Name of the cotangent input for forward output ``name``."""
    return f"d_{name}"


def gradient_name(name: str) -> str:
    """Name of the gradient output for forward input or weight ``name``."""
    return f"d_{name}"


class _Names:
    """Fresh value names that clash with nothing already used."""

    def __init__(self, used):
        self.used = set(used)
        self.counts: dict[str, int] = defaultdict(int)

    def reserve(self, name: str) -> str:
        if name in self.used:
            raise ValueError(f"reverse: name {name!r} is already used by the forward program")
        self.used.add(name)
        return name

    def fresh(self, stem: str) -> str:
        while True:
            name = f"{stem}_{self.counts[stem]}"
            self.counts[stem] += 1
            if name not in self.used:
                self.used.add(name)
                return name


def _like(v: Value, name: str, channels: bool | None = None) -> Value:
    if type(v) is not Value:  # extension values (e.g. dense_ops.Array) carry their own layout
        return replace(v, name=name)
    return Value(name, v.rank, v.domain, v.channels if channels is None else channels, v.storage)


class _Reverser:
    def __init__(self, program: Program, wrt: Sequence[str]):
        self.program = program
        self.inputs = {v.name: v for v in program.inputs}
        self.weights = {w.name: w for w in program.weights}
        wrt = tuple(wrt)
        if len(set(wrt)) != len(wrt):
            raise ValueError(f"reverse: duplicate names in wrt {wrt}")
        for name in wrt:
            if name not in self.inputs and name not in self.weights:
                raise ValueError(f"reverse: {name!r} is neither an input nor a weight of {program.name}")
            if name in self.weights and not isinstance(self.weights[name], WeightSpec):
                raise NotImplementedError(f"reverse: no gradient for parameter {name!r}")
        self.wrt = wrt
        for op in program.ops:
            if not isinstance(op, FORWARD_OPS) and type(op) not in ADJOINT_RULES:
                raise NotImplementedError(f"reverse: no adjoint rule for {type(op).__name__}")
        used = set(self.inputs) | set(self.weights) | {op.out.name for op in program.ops}
        self.names = _Names(used)
        self.cotangents = tuple(_like(v, self.names.reserve(cotangent_name(v.name))) for v in program.outputs)
        self.gradient_names = {name: self.names.reserve(gradient_name(name)) for name in wrt}
        # value name -> list of adjoint contributions (Values with the primal's layout)
        self.contrib: dict[str, list[Value]] = defaultdict(list)
        # weight name -> column -> contributions (rank-0 values with channels)
        self.columns: dict[str, dict[int, list[Value]]] = defaultdict(lambda: defaultdict(list))
        self.ops: list = []

    # -- accumulation ------------------------------------------------------------
    def accumulate(self, value: Value, name: str | None = None) -> Value | None:
        """The adjoint of ``value``: its single contribution, or a Sum of them (None if unread).

        With ``name`` the result is always a new value of that name."""
        terms = self.contrib.get(value.name, [])
        if not terms:
            return None
        if len(terms) == 1 and name is None:
            return terms[0]
        out = _like(value, name or self.names.fresh(f"g_{value.name}"))
        self.ops.append(Sum(out, tuple(terms)))
        return out

    def emit(self, op) -> Value:
        self.ops.append(op)
        return op.out

    # -- rules -------------------------------------------------------------------
    def adjoint(self, op, g: Value) -> None:
        if isinstance(op, Sum):
            for t in op.terms:
                self.contrib[t.name].append(g)
        elif isinstance(op, Couple):
            self.couple(op, g)
        elif isinstance(op, Scale):
            if not op.src.channels:
                raise NotImplementedError(f"reverse: Scale of channel-free {op.src.name}")
            d_src = self.emit(Scale(_like(op.src, self.names.fresh(f"g_{op.src.name}")), g, op.weight, op.index,
                                    f"adjoint of {op.out.name}"))
            self.contrib[op.src.name].append(d_src)
            column = Value(self.names.fresh(f"g_{op.weight}{op.index}"), 0, op.src.domain, True)
            self.emit(Couple(column, g, op.src, pairing(op.src.rank, op.src.storage), f"d {op.weight}[{op.index}] from {op.out.name}"))
            self.columns[op.weight][op.index].append(column)
        elif isinstance(op, Gather):
            out = self.emit(ScatterSenders(_like(op.src, self.names.fresh(f"g_{op.src.name}")), g))
            self.contrib[op.src.name].append(out)
        elif isinstance(op, Scatter):
            out = self.emit(GatherReceivers(_like(op.src, self.names.fresh(f"g_{op.src.name}")), g))
            self.contrib[op.src.name].append(out)
        elif isinstance(op, EdgeICT):
            if op.out.rank == 0:
                return  # T_0 = 1: no dependence on the direction
            d = op.direction
            out = self.emit(EdgeICTGrad(_like(d, self.names.fresh(f"g_{d.name}")), d, g))
            self.contrib[d.name].append(out)
        elif type(op) in ADJOINT_RULES:
            ADJOINT_RULES[type(op)](self, op, g)
        else:  # pragma: no cover - rejected in __init__
            raise NotImplementedError(type(op).__name__)

    def couple(self, op: Couple, g: Value) -> None:
        a, b = op.left, op.right
        for slot, target, (left, right) in (("left", a, (g, b)), ("right", b, (a, g))):
            table = transpose(op.coupling, slot)
            channels = left.channels or right.channels
            raw = _like(target, self.names.fresh(f"g_{target.name}"), channels)
            note = f"adjoint ({slot}) of {op.out.name}" + (f": {op.comment}" if op.comment else "")
            value = self.emit(Couple(raw, left, right, table, note))
            if channels and not target.channels:
                value = self.emit(ChannelSum(_like(target, self.names.fresh(f"g_{target.name}")), value))
            self.contrib[target.name].append(value)

    # -- whole program -------------------------------------------------------------
    def run(self, with_forward: bool) -> Program:
        program = self.program
        for v, d in zip(program.outputs, self.cotangents):
            self.contrib[v.name].append(d)
        for op in reversed(program.ops):
            g = self.accumulate(op.out)
            if g is not None:
                self.adjoint(op, g)
        grads = []
        for name in self.wrt:
            target = self.gradient_names[name]
            if name in self.inputs:
                v = self.inputs[name]
                g = self.accumulate(v, target)
                grads.append(g if g is not None else self.emit(Zeros(_like(v, target), v)))
            else:
                w = self.weights[name]
                columns = tuple(self._column(name, k) for k in range(w.count))
                grads.append(self.emit(Stack(WeightArray(target, w.domain, w.count), columns, name)))
        outputs = (tuple(program.outputs) if with_forward else ()) + tuple(grads)
        return Program(
            f"{program.name}_reverse",
            f"Vector-Jacobian products of {program.name} with respect to {', '.join(self.wrt)}, "
            f"for cotangents {', '.join(d.name for d in self.cotangents)}.",
            tuple(program.inputs) + self.cotangents, tuple(program.weights),
            tuple(program.ops) + tuple(self.ops), outputs)

    def _column(self, weight: str, k: int) -> Value | None:
        terms = self.columns.get(weight, {}).get(k, [])
        if not terms:
            return None
        if len(terms) == 1:
            return terms[0]
        out = Value(self.names.fresh(f"g_{weight}{k}"), 0, terms[0].domain, True)
        self.ops.append(Sum(out, tuple(terms)))
        return out


def reverse(program: Program, wrt: Sequence[str], *, with_forward: bool = False,
            simplify_result: bool = True) -> Program:
    """The reverse-mode (vector-Jacobian product) program of ``program`` (see module docstring).

    Inputs: the forward inputs, then one cotangent ``d_<name>`` per forward output.
    Weights: the forward weights. Outputs: ``d_<name>`` for each name in ``wrt`` (after the
    forward outputs if ``with_forward``).
    """
    out = _Reverser(program.check(), wrt).run(with_forward)
    if simplify_result:
        out = simplify(out)
    return validate(out.check())


# ----------------------------------------------------------------------------- clean-up passes
# Local, op-type-generic versions of optimise.drop_dead / share_subtrees: they handle the
# reverse-pass ops and key couplings by their full exact table (two AdjointTables with the
# same ranks may differ), which optimise.share_subtrees does not.

def fold_aliases(program: Program) -> Program:
    """Drop one-term Sums ``x = Sum(y)`` by naming y's producer x, where nothing else reads y."""
    reads: dict[str, int] = defaultdict(int)
    for op in program.ops:
        for v in op.inputs:
            reads[v.name] += 1
    outputs = {v.name for v in program.outputs}
    producer = {op.out.name: i for i, op in enumerate(program.ops)}
    ops = list(program.ops)
    for i, op in enumerate(program.ops):
        if not (isinstance(op, Sum) and len(op.terms) == 1):
            continue
        y = op.terms[0]
        j = producer.get(y.name)
        if j is None or reads[y.name] != 1 or y.name in outputs or replace(y, name=op.out.name) != op.out:
            continue
        ops[j] = replace(ops[j], out=op.out)
        ops[i] = None
    return replace(program, ops=tuple(op for op in ops if op is not None)).check()


def simplify(program: Program) -> Program:
    """Dead-code removal, sharing of identical ops, and folding of one-term Sums."""
    return fold_aliases(drop_dead(share_subtrees(drop_dead(program))))


def validate(program: Program) -> Program:
    """Checks Program.check does not make for the reverse-pass ops; returns the program."""
    weights = {w.name: w for w in program.weights}
    for op in program.ops:
        if not isinstance(op, FORWARD_OPS + REVERSE_OPS) and type(op) not in EXTENSIONS:
            raise ValueError(f"{program.name}: op {type(op).__name__} has no interpretation")
        if isinstance(op, Stack):
            w = weights.get(op.weight)
            if w is None or w.count != len(op.columns) or w.count != op.out.count or w.domain != op.out.domain:
                raise ValueError(f"{program.name}: Stack {op.out.name} does not match weight {op.weight}")
            for c in op.inputs:
                if (c.rank, c.domain, c.channels) != (0, w.domain, True):
                    raise ValueError(f"{program.name}: Stack column {c.name} is not a rank-0 {w.domain} value")
        elif isinstance(op, EdgeICTGrad):
            if (op.out.rank, op.direction.rank, op.out.channels, op.cotangent.channels) != (1, 1, False, False):
                raise ValueError(f"{program.name}: malformed EdgeICTGrad {op.out.name}")
        elif isinstance(op, ChannelSum):
            if op.out.channels or not op.src.channels or op.out.rank != op.src.rank:
                raise ValueError(f"{program.name}: malformed ChannelSum {op.out.name}")
        elif isinstance(op, (GatherReceivers, ScatterSenders, Zeros)):
            src = op.like if isinstance(op, Zeros) else op.src
            if (src.rank, src.channels) != (op.out.rank, op.out.channels):
                raise ValueError(f"{program.name}: malformed {type(op).__name__} {op.out.name}")
    return program
