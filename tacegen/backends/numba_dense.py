"""Numba printer for the dense IR ops (:mod:`tacegen.ir.dense_ops`): geometry, radial basis,
dense layers, channel mixing, per-structure sums, and their adjoints.

One IR program made only of dense ops (plus the core :class:`~tacegen.ir.nodes.Sum` and
:class:`~tacegen.ir.nodes.Zeros`) is printed as ONE numba function, rendered by the same
template as the core kernels (``templates/numba_program.py.j2``, ``@numba.njit(parallel=True,
cache=True, fastmath=False)``), so both can live in one generated module
(:func:`render_dense_module` accepts pre-rendered dicts of
:func:`tacegen.backends.numba_printer.render_program` too).

Unlike the core printer (which fuses per-item scalar code into few loops), each op here is
one block of whole-array statements, in program order, headed by a comment naming the op
and its output:

* ``Dense`` / ``DenseTransposed``: one ``np.dot`` (BLAS gemm) on 2-D C-contiguous arrays;
  ``ChannelMix`` / ``ChannelMixTransposed``: a transposed copy ``(items, 2l+1, channels)``,
  one gemm, and the transpose back (measured faster than a prange loop for 2l+1 <= 7,
  64 channels, float32 and float64); for rank 0 (2l+1 = 1) a plain reshape and gemm.
* elementwise ops (Activation, ActivationGrad, Mul, Sum) and per-edge geometry: a ``prange``
  over the (flattened) items, scalar temporaries only, no per-item allocation.
* reductions, race-free and independent of the thread count: ``EdgeVectorsGrad`` is a
  prange over nodes summing the node's outgoing edges (sender CSR ``sender_order`` /
  ``sender_offsets``) minus its incoming edges (receiver CSR ``receiver_offsets``), each in
  edge order (as the interpreter's ``np.add.at``); ``EdgeVectorsStrainGrad`` sums each
  node's incoming edges into a float64 partial (prange over nodes), then adds the partials
  into their structure in a serial loop over the nodes (N x 9 adds, cheap); ``NodeSum`` is a
  serial loop over the atoms (N x row adds, cheap).

Arrays: ICT values ``(items, channels, 2l+1)`` or ``(items, 2l+1)``; :class:`Array` s
``(items,) + shape``; vectors ``(items, 3)``; structure arrays ``(num_structures, ...)``;
dense weights (``ParamSpec``) ``shape``. Functions are dtype-generic: arrays are allocated
with the first input's dtype, weights are used in that dtype (``np.asarray(W, dtype)``: no
copy when the caller already passes them in it), scalar temporaries are float64.

Graph arguments follow the inputs and weights, only those the ops need, in the order of
:data:`GRAPH_ORDER`; an op that indexes nodes (senders, receivers) also takes
``num_nodes``, one that reads ``batch`` also ``num_structures``, so every index is checked
before any kernel runs (:func:`dense_graph_arguments` builds them from an interpreter-style
graph dict).
"""

from __future__ import annotations

import builtins
import keyword
import math
import re

from ..ir import dense_ops as d
from ..ir.dense_interpret import normalised_silu_gain
from ..ir.nodes import EDGE, NODE, Param, Program, Sum, Value, Zeros
from .numba_printer import GRAPH_CHECK, SENDER_CHECK, collect_helpers, receiver_offsets, sender_csr
from .printer import Printer, register

STRUCTURE = d.STRUCTURE
GRAPH_ORDER = ("senders", "receivers", "receiver_offsets", "sender_order", "sender_offsets", "batch",
               "num_nodes", "num_structures")
COUNTS = {EDGE: "num_edges", NODE: "num_nodes", STRUCTURE: "num_structures"}
LABELS = {EDGE: "edges", NODE: "nodes", STRUCTURE: "structures"}
# names the printed code uses besides the program's own: never allowed as value names
MIX = "_channel_mix"  # defined once per module by the template (numba_macros.j2)
FAIL_IF = "_fail_if"  # likewise: (condition, message) -> raise ValueError(message) if condition
EDGE_CHECK = "_check_edges"  # likewise: senders and receivers are node indices
BATCH_CHECK = "_check_batch"  # likewise: batch holds structure indices
RESERVED = frozenset(GRAPH_ORDER) | frozenset(COUNTS.values()) | {
    "np", "numba", "prange", "dtype", "abs", "range", "ValueError", GRAPH_CHECK, SENDER_CHECK, MIX, FAIL_IF,
    EDGE_CHECK, BATCH_CHECK}
PI = repr(math.pi)


def _f(x) -> str:
    """A float literal (round-trips exactly), or the name of a run-time parameter."""
    return x.name if isinstance(x, Param) else repr(float(x))


@register("numba", "dense")
class DensePrinter(Printer):
    """Prints one numba function (signature and body lines) for a program of dense ops.

    A visitor (:class:`~tacegen.backends.printer.Printer`): one method
    ``_print_<OpName>(self, op) -> list[str]`` per op type, returning the whole-array
    statements of that op (see the module docstring)."""

    SUPPORTED = (d.EdgeVectors, d.EdgeLength, d.EdgeDirection, d.RadialBasis, d.Dense, d.Activation,
                 d.ChannelMix, d.Reshape, d.Mul, d.NodeSum, d.EdgeVectorsGrad, d.EdgeVectorsStrainGrad,
                 d.EdgeLengthGrad, d.EdgeDirectionGrad, d.RadialBasisGrad, d.DenseTransposed, d.ActivationGrad,
                 d.ChannelMixTransposed, d.ReshapeLike, d.GatherStructures, Sum, Zeros)
    NOT_PRINTED = {d.ScaleBy: "ScaleBy is not supported by the dense numba printer",
                   d.ScaleByWeightGrad: "ScaleByWeightGrad is not supported by the dense numba printer"}

    @classmethod
    def supports(cls, op) -> bool:
        return type(op) in cls.SUPPORTED

    def __init__(self, program: Program, function_name: str | None = None):
        self.program = program
        self.name = function_name or program.name
        for op in program.ops:
            if not self.supports(op):
                kind = type(op).__name__
                raise NotImplementedError(self.NOT_PRINTED.get(type(op), f"the dense numba printer has no method "
                                                                          f"for {kind}"))
        for w in program.weights:
            if not isinstance(w, d.ParamSpec):
                raise NotImplementedError(f"{w.name}: the dense printer takes ParamSpec weights only")
        self.params = {w.name: tuple(int(s) for s in w.shape) for w in program.weights}
        self.input_names = {v.name for v in program.inputs}
        self.taken: set[str] = set()
        self._scoped: set[str] = set()  # every temporary ever handed out inside an op
        self._scope: set[str] = set()  # temporaries of the current op
        self._check_names()
        needed = set()
        for op in program.ops:
            needed |= self.graph_needs(op)
        self.graph_args = tuple(a for a in GRAPH_ORDER if a in needed)
        self._body: list[str] | None = None
        self._counted: set[str] = set()  # inputs that define an item count (not checked against it)
        self._views: dict[tuple, str] = {}  # (kind, value) -> name of a flat / 2-D view already printed
        self.uses_mix = False  # calls the template's channel-mix kernel

    # -- analysis --------------------------------------------------------------------------
    def _check_names(self) -> None:
        names = [v.name for v in self.program.inputs] + list(self.params) + [op.out.name for op in self.program.ops]
        for name in [self.name] + names:
            if not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED:
                raise ValueError(f"{self.program.name}: {name!r} cannot be a name in printed numba code")
        if len(set(names)) != len(names):
            raise ValueError(f"{self.program.name}: a value name is used twice")
        self.taken |= {self.name, *names, *RESERVED}
        for v in list(self.program.inputs) + [op.out for op in self.program.ops]:
            if not isinstance(v, Value):
                raise NotImplementedError(f"{v.name}: {type(v).__name__} values are not printed by the dense printer")
            if v.domain not in COUNTS:
                raise NotImplementedError(f"{v.name}: unknown domain {v.domain!r}")

    @staticmethod
    def graph_needs(op) -> set:
        """Graph arguments an op reads (plus the bounds that validate them)."""
        if isinstance(op, d.EdgeVectors):
            need = {"senders", "receivers", "batch"}
        elif isinstance(op, d.EdgeVectorsGrad):
            need = {"senders", "receivers", "receiver_offsets", "sender_order", "sender_offsets"}
            need |= {"batch"} if op.strain is not None else set()
        elif isinstance(op, d.EdgeVectorsStrainGrad):
            need = {"senders", "receivers", "receiver_offsets", "batch"}
        elif isinstance(op, (d.NodeSum, d.GatherStructures)):
            need = {"batch"}
        else:
            return set()
        need.add("num_nodes")  # bound of senders / receivers / the length of batch
        if "batch" in need:
            need.add("num_structures")  # bound of batch
        return need

    # -- names -------------------------------------------------------------------------------
    def _free(self, name: str, others: set) -> bool:
        """``name`` is unused, and numba's renaming of a reassigned ``name`` (``name.1`` ->
        ``name_1`` in parallel kernels) cannot hit a program value."""
        if name in self.taken or name in others or keyword.iskeyword(name) or hasattr(builtins, name):
            return False
        versions = re.compile(re.escape(name) + r"_\d+")
        return not any(versions.fullmatch(t) for t in self.taken)

    def _fresh(self, hint: str, others: set) -> str:
        # suffixes "_t1", "_t2", ...: never of numba's "<variable>_<version>" form
        name, k = hint, 1
        while not self._free(name, others):
            name, k = f"{hint}_t{k}", k + 1
        return name

    def tmp(self, hint: str) -> str:
        """A temporary local to the current op block (may repeat in other blocks)."""
        name = self._fresh(hint, self._scope)
        self._scope.add(name)
        self._scoped.add(name)
        return name

    def array(self, hint: str) -> str:
        """A function-level array name, unique in the function."""
        name = self._fresh(hint, self._scoped)
        self.taken.add(name)
        return name

    def contiguous(self, v: Value) -> str:
        """``v`` as a C-contiguous array: computed arrays are; inputs are wrapped (no copy
        when they already are)."""
        return f"np.ascontiguousarray({v.name})" if v.name in self.input_names else v.name

    # -- layout helpers ------------------------------------------------------------------------
    @staticmethod
    def ndim(v: Value) -> int:
        if isinstance(v, d.Array):
            return 1 + len(v.shape)
        return 3 if v.channels else 2

    @staticmethod
    def trailing(v: Value, ref: str | None = None) -> list[str]:
        """Printed trailing dimensions of ``v`` (channels read from the array ``ref``)."""
        if isinstance(v, d.Array):
            return [str(s) for s in v.shape]
        if v.channels:
            return [f"{ref or v.name}.shape[1]", str(v.size)]
        return [str(v.size)]

    def row(self, v: Value, ref: str | None = None) -> str:
        """Printed number of scalars per item of ``v``."""
        if isinstance(v, d.Array):
            return str(math.prod(v.shape))
        return " * ".join(self.trailing(v, ref))

    @staticmethod
    def shape_tuple(items: str, dims: list[str]) -> str:
        return f"({items}, {', '.join(dims)})" if dims else f"({items},)"

    @staticmethod
    def describe(v: Value) -> str:
        """Human-readable layout, e.g. ``(edges, 3, 3)`` or ``(nodes, channels, 5)``."""
        if isinstance(v, d.Array):
            dims = [str(s) if s >= 0 else "width" for s in v.shape]
        else:
            dims = (["channels"] if v.channels else []) + [str(v.size)]
        return f"({LABELS[v.domain]}, {', '.join(dims)})" if dims else f"({LABELS[v.domain]},)"

    @staticmethod
    def count(v: Value) -> str:
        return COUNTS[v.domain]

    def head(self, op, what: str = "") -> str:
        text = f"# {type(op).__name__} -> {op.out.name} {self.describe(op.out)}"
        return text + (f": {what}" if what else "")

    def flat(self, v: Value, lines: list[str]) -> str:
        """A 1-D view of the C-contiguous array ``v`` (itself when already 1-D)."""
        if self.ndim(v) == 1:
            return v.name  # indexed directly: any layout
        if ("flat", v.name) not in self._views:  # straight-line code: a view stays valid
            name = self._views[("flat", v.name)] = self.array(f"{v.name}_flat")
            lines.append(f"{name} = {self.contiguous(v)}.reshape({v.name}.size)")
        return self._views[("flat", v.name)]

    def rows(self, v: Value, items: str, lines: list[str]) -> str:
        """A 2-D view ``(items, row)`` of ``v`` (itself when already 2-D and an Array/plain Value)."""
        if self.ndim(v) == 2:
            return v.name
        if ("rows", v.name) not in self._views:
            name = self._views[("rows", v.name)] = self.array(f"{v.name}_rows")
            lines.append(f"{name} = {self.contiguous(v)}.reshape(({items}, {self.row(v)}))")
        return self._views[("rows", v.name)]

    def param(self, name: str, rank: int = 2) -> tuple:
        shape = self.params.get(name)
        if shape is None:
            raise ValueError(f"{self.program.name}: weight {name!r} is not declared in Program.weights")
        if len(shape) != rank:
            raise NotImplementedError(f"{name}: a {rank}-D weight was expected, not {shape}")
        # a negative size is a run-time size (e.g. the channels of a model instance): read it
        # from the weight itself
        return tuple(s if s >= 0 else f"{name}.shape[{k}]" for k, s in enumerate(shape))

    def _same_layout(self, op, *values) -> None:
        for v in values:
            if self.ndim(v) != self.ndim(op.out) or v.domain != op.out.domain:
                raise NotImplementedError(f"{op.out.name}: {type(op).__name__} of {v.name} needs the same layout")

    # -- visitor ---------------------------------------------------------------------------------
    def unsupported(self, op) -> str:
        return self.NOT_PRINTED.get(type(op), f"the dense numba printer has no method for {type(op).__name__}")

    def print_op(self, op) -> list[str]:
        if not self.supports(op):
            raise NotImplementedError(self.unsupported(op))
        self._scope = set()  # temporaries are local to one op's block
        return super().print_op(op)

    # geometry ---------------------------------------------------------------------------------
    def _unstrained(self, op, e: str, i: str, j: str, b: str) -> tuple[list[str], list[str]]:
        """Lines computing r0 = positions[j] - positions[i] + shifts[e] @ cell[b] as 3 scalars."""
        pos, cell, shifts = op.positions.name, op.cell.name, op.shifts.name
        names = [self.tmp(f"r{a}") for a in range(3)]
        lines = []
        for a, name in enumerate(names):
            image = " + ".join(f"{shifts}[{e}, {c}] * {cell}[{b}, {c}, {a}]" for c in range(3))
            lines.append(f"{name} = {pos}[{j}, {a}] - {pos}[{i}, {a}] + ({image})")
        return lines, names

    def _vectors(self, op, domain: str, *values) -> None:
        """Refuse values that are not (items on ``domain``, 3) arrays."""
        for v in values:
            if v.domain != domain or self.ndim(v) != 2 or self.row(v) != "3":
                raise NotImplementedError(f"{op.out.name}: {type(op).__name__} reads {v.name} as "
                                          f"({LABELS[domain]}, 3), not {self.describe(v)}")

    def _matrices(self, op, *values) -> None:
        for v in values:
            if v.domain != STRUCTURE or getattr(v, "shape", None) != (3, 3):
                raise NotImplementedError(f"{op.out.name}: {v.name} must be a (structures, 3, 3) array")

    def _check_geometry(self, op) -> None:
        self._vectors(op, NODE, op.positions)
        self._vectors(op, EDGE, op.shifts)
        self._matrices(op, op.cell, *([op.strain] if getattr(op, "strain", None) is not None else []))

    def _print_EdgeVectors(self, op: d.EdgeVectors) -> list[str]:
        self._check_geometry(op)
        out = op.out.name
        pos, cell, shifts = op.positions.name, op.cell.name, op.shifts.name
        what = f"{pos}[j] - {pos}[i] + {shifts}[e] @ {cell}[b]" + (
            f", times (I + {op.strain.name}[b])" if op.strain is not None else "")
        e, i, j, b = self.tmp("e"), self.tmp("i"), self.tmp("j"), self.tmp("b")
        r0_lines, r0 = self._unstrained(op, e, i, j, b)
        body = [f"{i} = receivers[{e}]", f"{j} = senders[{e}]", f"{b} = batch[{i}]"] + r0_lines
        if op.strain is None:
            body += [f"{out}[{e}, {a}] = {r0[a]}" for a in range(3)]
        else:
            s = op.strain.name
            for a in range(3):  # sum_c r0[c] * (I + strain)[c, a]
                terms = [f"{r0[c]} * {'(1.0 + ' if c == a else ''}{s}[{b}, {c}, {a}]{')' if c == a else ''}"
                         for c in range(3)]
                body.append(f"{out}[{e}, {a}] = " + " + ".join(terms))
        return [self.head(op, what), f"{out} = np.empty((num_edges, 3), dtype)",
                f"for {e} in prange(num_edges):"] + _indent(body)

    def _norm_lines(self, v: str, e: str) -> tuple[list[str], list[str], str]:
        comps = [self.tmp(f"v{a}") for a in range(3)]
        r = self.tmp("r")
        lines = [f"{c} = {v}[{e}, {a}]" for a, c in enumerate(comps)]
        lines.append(f"{r} = np.sqrt({' + '.join(f'{c} * {c}' for c in comps)})")
        return lines, comps, r

    def _print_EdgeLength(self, op: d.EdgeLength) -> list[str]:
        self._vectors(op, EDGE, op.vectors)
        out, e = op.out.name, self.tmp("e")
        lines, _, r = self._norm_lines(op.vectors.name, e)
        return [self.head(op, f"|{op.vectors.name}|"), f"{out} = np.empty({self.count(op.out)}, dtype)",
                f"for {e} in prange({self.count(op.out)}):"] + _indent(lines + [f"{out}[{e}] = {r}"])

    def _print_EdgeDirection(self, op: d.EdgeDirection) -> list[str]:
        self._vectors(op, EDGE, op.vectors)
        out, e = op.out.name, self.tmp("e")
        lines, comps, r = self._norm_lines(op.vectors.name, e)
        lines += [f"{out}[{e}, {a}] = {c} / {r}" for a, c in enumerate(comps)]
        return [self.head(op, f"{op.vectors.name} / |{op.vectors.name}|"),
                f"{out} = np.empty(({self.count(op.out)}, 3), dtype)",
                f"for {e} in prange({self.count(op.out)}):"] + _indent(lines)

    def _print_EdgeLengthGrad(self, op: d.EdgeLengthGrad) -> list[str]:
        self._vectors(op, EDGE, op.vectors)
        if op.cotangent.domain != EDGE or self.ndim(op.cotangent) != 1:
            raise NotImplementedError(f"{op.out.name}: the cotangent of an edge length is an (edges,) array")
        out, e = op.out.name, self.tmp("e")
        lines, comps, r = self._norm_lines(op.vectors.name, e)
        g = self.tmp("g")
        lines.append(f"{g} = {op.cotangent.name}[{e}]")
        lines += [f"{out}[{e}, {a}] = {g} * {c} / {r}" for a, c in enumerate(comps)]
        return [self.head(op, f"{op.cotangent.name} * {op.vectors.name} / |{op.vectors.name}|"),
                f"{out} = np.empty(({self.count(op.out)}, 3), dtype)",
                f"for {e} in prange({self.count(op.out)}):"] + _indent(lines)

    def _print_EdgeDirectionGrad(self, op: d.EdgeDirectionGrad) -> list[str]:
        self._vectors(op, EDGE, op.vectors, op.cotangent)
        out, e = op.out.name, self.tmp("e")
        lines, comps, r = self._norm_lines(op.vectors.name, e)
        u = [self.tmp(f"u{a}") for a in range(3)]
        g = [self.tmp(f"g{a}") for a in range(3)]
        dot = self.tmp("gu")
        lines += [f"{u[a]} = {comps[a]} / {r}" for a in range(3)]
        lines += [f"{g[a]} = {op.cotangent.name}[{e}, {a}]" for a in range(3)]
        lines.append(f"{dot} = {' + '.join(f'{g[a]} * {u[a]}' for a in range(3))}")
        lines += [f"{out}[{e}, {a}] = ({g[a]} - {dot} * {u[a]}) / {r}" for a in range(3)]
        return [self.head(op, "(g - (g . u) u) / |r|, u = r / |r|"),
                f"{out} = np.empty(({self.count(op.out)}, 3), dtype)",
                f"for {e} in prange({self.count(op.out)}):"] + _indent(lines)

    def _print_EdgeVectorsGrad(self, op: d.EdgeVectorsGrad) -> list[str]:
        self._vectors(op, EDGE, op.cotangent)
        self._vectors(op, NODE, op.out)
        if op.strain is not None:
            self._matrices(op, op.strain)
        out, cot = op.out.name, op.cotangent.name
        lines = [self.head(op, "+c_e at senders[e], -c_e at receivers[e]" + (
            f", c_e = {cot}[e] @ (I + {op.strain.name}[b])^T" if op.strain is not None else f", c_e = {cot}[e]"))]
        if op.strain is not None:  # c_e once per edge, then the two neighbour sums read it
            c = self.array(f"{out}_c")
            e, b, s = self.tmp("e"), self.tmp("b"), op.strain.name
            g = [self.tmp(f"g{a}") for a in range(3)]
            body = [f"{b} = batch[receivers[{e}]]"] + [f"{g[a]} = {cot}[{e}, {a}]" for a in range(3)]
            for a in range(3):  # sum_c g[c] * (I + strain)[a, c]
                terms = [f"{g[k]} * {'(1.0 + ' if k == a else ''}{s}[{b}, {a}, {k}]{')' if k == a else ''}"
                         for k in range(3)]
                body.append(f"{c}[{e}, {a}] = " + " + ".join(terms))
            lines += [f"{c} = np.empty((num_edges, 3), dtype)", f"for {e} in prange(num_edges):"] + _indent(body)
            cot = c
            self._scope = set()
        n, k, es, e = self.tmp("n"), self.tmp("k"), self.tmp("es"), self.tmp("e")
        sent = [self.tmp(f"s{a}") for a in range(3)]
        recv = [self.tmp(f"t{a}") for a in range(3)]
        body = [f"{x} = 0.0" for x in sent]
        body.append(f"for {k} in range(sender_offsets[{n}], sender_offsets[{n} + 1]):  # edges sent by {n}")
        body.append(f"    {es} = sender_order[{k}]")
        body += [f"    {x} += {cot}[{es}, {a}]" for a, x in enumerate(sent)]
        body += [f"{x} = 0.0" for x in recv]
        body.append(f"for {e} in range(receiver_offsets[{n}], receiver_offsets[{n} + 1]):  # edges received by {n}")
        body += [f"    {x} += {cot}[{e}, {a}]" for a, x in enumerate(recv)]
        body += [f"{out}[{n}, {a}] = {sent[a]} - {recv[a]}" for a in range(3)]
        lines += ["# race-free: node n sums its own outgoing (sender CSR) and incoming (receiver CSR) edges,",
                  "# each in edge order",
                  f"{out} = np.empty((num_nodes, 3), dtype)",
                  f"for {n} in prange(num_nodes):"] + _indent(body)
        return lines

    def _print_EdgeVectorsStrainGrad(self, op: d.EdgeVectorsStrainGrad) -> list[str]:
        self._check_geometry(op)
        self._vectors(op, EDGE, op.cotangent)
        out, cot = op.out.name, op.cotangent.name
        part = self.array(f"{out}_nodes")
        acc = self.array(f"{out}_sum")
        n, e, j, b = self.tmp("n"), self.tmp("e"), self.tmp("j"), self.tmp("b")
        r0_lines, r0 = self._unstrained(op, e, n, j, b)
        g = [self.tmp(f"g{a}") for a in range(3)]
        s = [[self.tmp(f"s{a}{c}") for c in range(3)] for a in range(3)]
        body = [f"{b} = batch[{n}]"] + [f"{x} = 0.0" for row in s for x in row]
        body.append(f"for {e} in range(receiver_offsets[{n}], receiver_offsets[{n} + 1]):  # edges received by {n}")
        inner = [f"{j} = senders[{e}]"] + r0_lines + [f"{g[c]} = {cot}[{e}, {c}]" for c in range(3)]
        inner += [f"{s[a][c]} += {r0[a]} * {g[c]}" for a in range(3) for c in range(3)]
        body += _indent(inner)
        body += [f"{part}[{n}, {3 * a + c}] = {s[a][c]}" for a in range(3) for c in range(3)]
        m, k = self.tmp("m"), self.tmp("k")
        return [self.head(op, f"sum over the edges of structure b of outer(r0_e, {cot}[e]), r0_e unstrained"),
                "# race-free: a float64 partial per node over its incoming edges (receiver CSR, prange),",
                "# then a serial loop over the nodes adds the partials into their structure (N x 9 adds)",
                f"{part} = np.empty((num_nodes, 9), np.float64)",
                f"for {n} in prange(num_nodes):"] + _indent(body) + [
                f"{acc} = np.zeros((num_structures, 9), np.float64)",
                f"for {m} in range(num_nodes):",
                f"    for {k} in range(9):",
                f"        {acc}[batch[{m}], {k}] += {part}[{m}, {k}]",
                f"{out} = {acc}.astype(dtype).reshape((num_structures, 3, 3))"]

    # radial basis -----------------------------------------------------------------------------
    def _radial_check(self, op, *basis_values) -> None:
        constants = [(name, getattr(op, name), low) for name, low in (("num_basis", 1), ("p", 1), ("r_cut", 0))
                     if not isinstance(getattr(op, name), Param)]
        for name, value, low in constants:
            if not (value >= low if low else value > 0):
                raise ValueError(f"{op.out.name}: needs num_basis >= 1, p >= 1 and r_cut > 0; {name} = {value!r}")
        width = -1 if isinstance(op.num_basis, Param) else op.num_basis
        for v in basis_values:
            if v.domain != op.lengths.domain or getattr(v, "shape", None) not in ((width,), (-1,)):
                raise NotImplementedError(f"{op.out.name}: {v.name} must be an ({LABELS[v.domain]}, "
                                          f"{_f(op.num_basis)}) array")
        if self.ndim(op.lengths) != 1:
            raise NotImplementedError(f"{op.out.name}: lengths must be a 1-D array")

    def _radial_constants(self, op, derivative: bool) -> tuple[list[str], dict]:
        """Lines computing the radial basis' constants once (from literals or run-time
        parameters), in the interpreter's expression order; names by role."""
        n = {k: self.tmp(k) for k in ("rc", "pf", "c1", "c2", "c3", "pref")}
        lines = [f"{n['rc']} = {_f(op.r_cut)}",
                 f"{n['pf']} = float({_f(op.p) if isinstance(op.p, Param) else int(op.p)})",
                 f"{n['c1']} = 0.5 * ({n['pf']} + 1.0) * ({n['pf']} + 2.0)",
                 f"{n['c2']} = {n['pf']} * ({n['pf']} + 2.0)",
                 f"{n['c3']} = 0.5 * {n['pf']} * ({n['pf']} + 1.0)",
                 f"{n['pref']} = np.sqrt(2.0 / {n['rc']}) * (np.pi / {n['rc']})"]
        if derivative:
            n.update({k: self.tmp(k) for k in ("c4", "sq", "wn")})
            lines += [f"{n['c4']} = -0.5 * {n['pf']} * ({n['pf']} + 1.0) * ({n['pf']} + 2.0)",
                      f"{n['sq']} = np.sqrt(2.0 / {n['rc']})", f"{n['wn']} = np.pi / {n['rc']}"]
        return lines, n

    def _cutoff_lines(self, op, r: str, n: dict, derivative: bool) -> tuple:
        """PolynomialCutoff f (and f') of r, in the interpreter's expression order."""
        p = _f(op.p) if isinstance(op.p, Param) else str(int(op.p))
        pm1 = f"({p} - 1)" if isinstance(op.p, Param) else str(int(op.p) - 1)
        x, xp, f = self.tmp("x"), self.tmp("xp"), self.tmp("f")
        lines = [f"{x} = {r} / {n['rc']}", f"{xp} = {x} ** {p}",
                 f"{f} = 1.0 - {n['c1']} * {xp} + {n['c2']} * {xp} * {x} - {n['c3']} * {xp} * {x} * {x} "
                 f"if {x} < 1.0 else 0.0  # cutoff"]
        if not derivative:
            return lines, x, f, None
        df = self.tmp("df")
        lines.append(f"{df} = {n['c4']} * {x} ** {pm1} * (1.0 - {x}) ** 2 / {n['rc']} if {x} < 1.0 else 0.0")
        return lines, x, f, df

    def _bessel_lines(self, x: str, h: str) -> tuple[list[str], str]:
        """sinc(n r / r_cut) as np.sinc: sin(pi t) / (pi t), 1 at t = 0 (B_n = pref * n * sinc)."""
        y, sc = self.tmp("y"), self.tmp("sinc")
        return [f"{y} = {PI} * ({x} * {h})", f"{sc} = np.sin({y}) / {y} if {y} != 0.0 else 1.0"], sc

    def _print_RadialBasis(self, op: d.RadialBasis) -> list[str]:
        self._radial_check(op, op.out)
        out, nb = op.out.name, _f(op.num_basis) if isinstance(op.num_basis, Param) else str(int(op.num_basis))
        constants, n = self._radial_constants(op, False)
        e, k, h = self.tmp("e"), self.tmp("k"), self.tmp("h")
        r = self.tmp("r")
        cut, x, f, _ = self._cutoff_lines(op, r, n, False)
        sinc, sc = self._bessel_lines(x, h)
        body = [f"{r} = {op.lengths.name}[{e}]"] + cut + [f"for {k} in range({nb}):", f"    {h} = {k} + 1.0"]
        body += _indent(sinc) + [f"    {out}[{e}, {k}] = {n['pref']} * {h} * {sc} * {f}"]
        return [self.head(op, f"sqrt(2/r_cut) sin(n pi r/r_cut) / r x cutoff, r_cut = {_f(op.r_cut)}, "
                              f"p = {_f(op.p)}")] + constants + [
                f"{out} = np.empty(({self.count(op.out)}, {nb}), dtype)",
                f"for {e} in prange({self.count(op.out)}):"] + _indent(body)

    def _print_RadialBasisGrad(self, op: d.RadialBasisGrad) -> list[str]:
        self._radial_check(op, op.cotangent)
        out, cot = op.out.name, op.cotangent.name
        nb = _f(op.num_basis) if isinstance(op.num_basis, Param) else str(int(op.num_basis))
        constants, n = self._radial_constants(op, True)
        e, k, h = self.tmp("e"), self.tmp("k"), self.tmp("h")
        r, acc = self.tmp("r"), self.tmp("acc")
        cut, x, f, df = self._cutoff_lines(op, r, n, True)
        sinc, sc = self._bessel_lines(x, h)
        w, wr, db = self.tmp("w"), self.tmp("wr"), self.tmp("db")
        pref, sq = n["pref"], n["sq"]
        inner = [f"{h} = {k} + 1.0"] + sinc + [
            f"{w} = {h} * {n['wn']}",
            f"{wr} = {w} * {r}",
            f"if abs({wr}) < 1e-3:  # series of (w r cos(w r) - sin(w r)) / r^2",
            f"    {db} = {sq} * (-({w} ** 3) * {r} / 3.0 + ({w} ** 5) * {r} ** 3 / 30.0)",
            "else:",
            f"    {db} = {sq} * (({wr} * np.cos({wr}) - np.sin({wr})) / ({r} * {r}))",
            f"{acc} += {cot}[{e}, {k}] * ({db} * {f} + {pref} * {h} * {sc} * {df})"]
        body = [f"{r} = {op.lengths.name}[{e}]"] + cut + [f"{acc} = 0.0", f"for {k} in range({nb}):"]
        body += _indent(inner) + [f"{out}[{e}] = {acc}"]
        return [self.head(op, f"sum_n {cot}[e, n] d/dr (B_n f), r_cut = {_f(op.r_cut)}, p = {_f(op.p)}")
                ] + constants + [
                f"{out} = np.empty({self.count(op.out)}, dtype)",
                f"for {e} in prange({self.count(op.out)}):"] + _indent(body)

    # dense layers -----------------------------------------------------------------------------
    def _gemm(self, op, transposed: bool) -> list[str]:
        fin, fout = self.param(op.weight)
        a, b = (fout, fin) if transposed else (fin, fout)
        for v, width in ((op.src, a), (op.out, b)):
            static = isinstance(width, int) and all(s >= 0 for s in getattr(v, "shape", ()))  # else np.dot checks
            if self.ndim(v) != 2 or (static and int(self.row(v)) != width) or v.domain != op.out.domain:
                raise NotImplementedError(f"{op.out.name}: {type(op).__name__} maps (items, {a}) to (items, {b}); "
                                          f"{v.name} is {self.describe(v)}")
        w = f"{op.weight}.T" if transposed else op.weight
        weight = f"np.asarray({op.weight}, dtype){'.T' if transposed else ''}"  # no copy in the input dtype
        return [self.head(op, f"{op.src.name} @ {w} (BLAS gemm)"),
                f"{op.out.name} = np.dot({self.contiguous(op.src)}, {weight})"]

    def _print_Dense(self, op: d.Dense) -> list[str]:
        return self._gemm(op, False)

    def _print_DenseTransposed(self, op: d.DenseTransposed) -> list[str]:
        return self._gemm(op, True)

    def _mix(self, op, transposed: bool) -> list[str]:
        self.param(op.weight)  # declared, 2-D
        src, out = op.src, op.out
        if not (src.channels and out.channels) or isinstance(src, d.Array) or isinstance(out, d.Array) \
                or src.size != out.size or src.domain != out.domain:
            raise NotImplementedError(f"{out.name}: {type(op).__name__} maps ICT values with channels, same rank")
        w = f"np.asarray({op.weight}, dtype){'.T' if transposed else ''}"  # no copy in the input dtype
        formula = '"nkd,ck->ncd"' if transposed else '"ncd,ck->nkd"'
        head = self.head(op, f"einsum({formula}, {src.name}, {op.weight})")
        self.uses_mix = True  # the template's kernel: transposed copy, one gemm, transposed back; checks c
        return [f"{out.name} = {MIX}({src.name}, {w})  {head}"]

    def _print_ChannelMix(self, op: d.ChannelMix) -> list[str]:
        return self._mix(op, False)

    def _print_ChannelMixTransposed(self, op: d.ChannelMixTransposed) -> list[str]:
        return self._mix(op, True)

    # elementwise -----------------------------------------------------------------------------
    def _elementwise(self, op, what: str, sources: list, expression) -> list[str]:
        """A prange over the flat arrays: ``expression(*elements) -> (lines, value)`` gives the
        loop body for the elements ``source_flat[k]`` (lines define op-local scalars)."""
        self._same_layout(op, *sources)
        out = op.out.name
        lines = [self.head(op, what)]
        flats = [self.flat(v, lines) for v in sources]
        lines.append(f"{out} = np.empty({sources[0].name}.shape, dtype)")
        out_flat = self.flat(op.out, lines)
        k = self.tmp("k")
        body, value = expression(*[f"{f}[{k}]" for f in flats])
        lines.append(f"for {k} in prange({out_flat}.shape[0]):")
        return lines + _indent(body + [f"{out_flat}[{k}] = {value}"])

    @staticmethod
    def _sigmoid(x: str) -> str:
        return f"0.5 * (1.0 + np.tanh(0.5 * {x}))"

    def _print_Activation(self, op: d.Activation) -> list[str]:
        gain = _f(normalised_silu_gain()) if op.normalised else None

        def expression(element):
            x = self.tmp("x")
            silu = f"{x} * ({self._sigmoid(x)})"
            return [f"{x} = {element}"], f"{gain} * ({silu})" if gain else silu

        what = f"normalised SiLU, {gain} * x * sigmoid(x)" if gain else "SiLU, x * sigmoid(x)"
        return self._elementwise(op, what, [op.src], expression)

    def _print_ActivationGrad(self, op: d.ActivationGrad) -> list[str]:
        gain = _f(normalised_silu_gain()) if op.normalised else None

        def expression(element, cotangent):
            x, s = self.tmp("x"), self.tmp("s")
            scale = f"{cotangent} * {gain}" if gain else cotangent
            return ([f"{x} = {element}", f"{s} = {self._sigmoid(x)}"],
                    f"{scale} * ({s} + {x} * {s} * (1.0 - {s}))")

        what = f"{op.cotangent.name} * {gain + ' * ' if gain else ''}silu'({op.src.name}), silu' = s + x s (1 - s)"
        return self._elementwise(op, what, [op.src, op.cotangent], expression)

    def _print_Mul(self, op: d.Mul) -> list[str]:
        factor = _f(op.factor)
        return self._elementwise(op, f"{factor} * {op.src.name}", [op.src], lambda x: ([], f"{factor} * {x}"))

    def _print_Sum(self, op: Sum) -> list[str]:
        terms = list(op.terms)
        first = terms[0].name
        lines = self._elementwise(op, " + ".join(t.name for t in terms), terms, lambda *xs: ([], " + ".join(xs)))
        checks = []
        for t in terms[1:]:
            checks.append(_fail_if(f"{t.name}.shape != {first}.shape",
                                   f"{op.out.name}: {t.name} and {first} must have the same shape"))
        return lines[:1] + checks + lines[1:]

    # layout -------------------------------------------------------------------------------------
    def _print_Reshape(self, op: d.Reshape) -> list[str]:
        src, out = op.src, op.out
        if not isinstance(out, d.Array):
            raise NotImplementedError(f"{out.name}: Reshape produces an Array (its shape is the target)")
        dims = self.trailing(out)
        if any(s < 0 for s in out.shape):  # one run-time size: what the source's row leaves
            if sum(s < 0 for s in out.shape) > 1:
                raise NotImplementedError(f"{out.name}: Reshape with more than one run-time size")
            row = " * ".join(f"{src.name}.shape[{k}]" for k in range(1, self.ndim(src))) or "1"
            known = math.prod(s for s in out.shape if s >= 0)
            size = f"({row}) // {known}" if known != 1 else row
            dims = [size if d == "-1" else d for d in dims]
        return [self.head(op, f"a view of {src.name}"),
                f"{out.name} = {self.contiguous(src)}.reshape({self.shape_tuple(f'{src.name}.shape[0]', dims)})"]

    def _print_ReshapeLike(self, op: d.ReshapeLike) -> list[str]:
        return [self.head(op, f"a view of {op.src.name} shaped like {op.like.name}"),
                f"{op.out.name} = {self.contiguous(op.src)}.reshape({op.like.name}.shape)"]

    def _print_Zeros(self, op: Zeros) -> list[str]:
        return [self.head(op, f"zeros shaped like {op.like.name}"),
                f"{op.out.name} = np.zeros({op.like.name}.shape, dtype)"]

    # structures ---------------------------------------------------------------------------------
    def _print_NodeSum(self, op: d.NodeSum) -> list[str]:
        src, out = op.src, op.out
        if src.domain != NODE or out.domain != STRUCTURE or self.ndim(src) != self.ndim(out):
            raise NotImplementedError(f"{out.name}: NodeSum sums node values into structures")
        shape = self.shape_tuple("num_structures", self.trailing(src))
        lines = [self.head(op, f"sum of {src.name} over the atoms of each structure"),
                 f"{out.name} = np.zeros({shape}, dtype)"]
        n = self.tmp("n")
        lines.append("# serial over the atoms (cheap: N x row adds), in atom order: no race")
        if self.ndim(src) == 1:
            return lines + [f"for {n} in range(num_nodes):", f"    {out.name}[batch[{n}]] += {src.name}[{n}]"]
        k, b = self.tmp("k"), self.tmp("b")
        rows = self.rows(src, "num_nodes", lines)
        acc = self.rows(out, "num_structures", lines)
        return lines + [f"for {n} in range(num_nodes):",
                        f"    {b} = batch[{n}]",
                        f"    for {k} in range({self.row(src)}):",
                        f"        {acc}[{b}, {k}] += {rows}[{n}, {k}]"]

    def _print_GatherStructures(self, op: d.GatherStructures) -> list[str]:
        src, out = op.src, op.out
        if src.domain != STRUCTURE or out.domain != NODE or self.ndim(src) != self.ndim(out):
            raise NotImplementedError(f"{out.name}: GatherStructures reads structure values at each atom")
        n = self.tmp("n")
        shape = self.shape_tuple("num_nodes", self.trailing(src))
        lines = [self.head(op, f"{src.name}[batch[n]]"), f"{out.name} = np.empty({shape}, dtype)"]
        if self.ndim(src) == 1:
            return lines + [f"for {n} in prange(num_nodes):", f"    {out.name}[{n}] = {src.name}[batch[{n}]]"]
        k, b = self.tmp("k"), self.tmp("b")
        rows = self.rows(src, "num_structures", lines)
        acc = self.rows(out, "num_nodes", lines)
        return lines + [f"for {n} in prange(num_nodes):",
                        f"    {b} = batch[{n}]",
                        f"    for {k} in range({self.row(src)}):",
                        f"        {acc}[{n}, {k}] = {rows}[{b}, {k}]"]

    # -- whole function ---------------------------------------------------------------------------
    def arguments(self) -> list[str]:
        return [v.name for v in self.program.inputs] + list(self.params) + list(self.graph_args)

    def signature(self) -> str:
        return ", ".join(self.arguments())

    def _sizes(self) -> list[str]:
        prog = self.program
        if not prog.inputs:
            raise ValueError(f"{prog.name}: a program without inputs has no dtype")
        lines = [f"dtype = {prog.inputs[0].name}.dtype"]
        used = {v.domain for v in prog.inputs} | {op.out.domain for op in prog.ops}
        for domain in (EDGE, NODE, STRUCTURE):
            var = COUNTS[domain]
            if domain not in used or var in self.graph_args:
                continue
            if domain == EDGE and "senders" in self.graph_args:
                lines.append("num_edges = senders.shape[0]")
                continue
            first = next((v.name for v in prog.inputs if v.domain == domain), None)
            if first is None:
                raise ValueError(f"{prog.name}: no input or graph argument gives the number of {LABELS[domain]}")
            lines.append(f"{var} = {first}.shape[0]")
            self._counted.add(first)
        if "senders" in self.graph_args and EDGE not in used:
            lines.append("num_edges = senders.shape[0]")
        return lines

    def _checks(self) -> list[str]:
        lines = []
        for v in self.program.inputs:
            conds = [] if v.name in self._counted else [f"{v.name}.shape[0] != {self.count(v)}"]
            dims = self.trailing(v)
            conds += [f"{v.name}.shape[{1 + k}] != {s}" for k, s in enumerate(dims) if s.isdigit()]
            if conds:
                lines.append(_fail_if(" or ".join(conds), f"{v.name} must have shape {self.describe(v)}"))
        for w, shape in self.params.items():
            conds = [f"{w}.shape[{k}] != {s}" for k, s in enumerate(shape) if s >= 0]
            if conds:
                dims = tuple(s if s >= 0 else "width" for s in shape)
                lines.append(_fail_if(" or ".join(conds), f"{w} must have shape {dims}"))
        args = self.graph_args
        if "receiver_offsets" in args:
            lines.append(f"{GRAPH_CHECK}(senders, receivers, receiver_offsets, num_nodes)  # sorted by receiver, CSR")
        elif "senders" in args:  # serial index checks: cheap, and cheaper to compile than a prange
            lines.append(f"{EDGE_CHECK}(senders, receivers, num_nodes)  # node indices in [0, num_nodes)")
        if "sender_order" in args:
            lines.append(f"{SENDER_CHECK}(senders, sender_order, sender_offsets, num_nodes)  # CSR by sender")
        if "batch" in args:
            lines.append(f"{BATCH_CHECK}(batch, num_nodes, num_structures)  # structure indices")
        return lines

    def body(self) -> list[str]:
        """The function body (computed once: identifiers are handed out while printing)."""
        if self._body is None:
            lines = self._sizes() + self._checks()
            for op in self.program.ops:
                lines += self.print_op(op)
            outs = [v.name for v in self.program.outputs]
            lines += ["return (" + ", ".join(outs) + ("," if len(outs) == 1 else "") + ")"]
            self._body = lines
        return self._body


def _fail_if(condition: str, message: str) -> str:
    """One line raising ``ValueError(message)`` when ``condition`` holds (the template's helper)."""
    return f'{FAIL_IF}({condition}, "{message}")'


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line if line else line for line in lines]


def _weight_columns(shape: tuple) -> str:
    """Fills the template's "{name}: weights with {count} columns." for a dense matrix."""
    dims = [str(s) if s >= 0 else "channels" for s in shape]
    if len(dims) == 1:
        return dims[0]
    return f"{'x'.join(dims[:-1])} rows x {dims[-1]}"


def render_dense_program(program: Program, function_name: str | None = None) -> dict:
    """Pieces the template needs for one program of dense ops (the keys of
    :func:`tacegen.backends.numba_printer.render_program`)."""
    printer = DensePrinter(program, function_name)
    body = printer.body()
    return {
        "name": printer.name,
        "program": program.name,
        "doc": program.doc,
        "signature": printer.signature(),
        "body": body,
        "inputs": [v.name for v in program.inputs],
        "weights": [(name, _weight_columns(shape)) for name, shape in printer.params.items() if shape],
        "graph": "receiver_offsets" in printer.graph_args,  # the template then defines _check_graph
        "by_sender": "sender_order" in printer.graph_args,  # ... and _check_senders
        "outputs": [v.name for v in program.outputs],
        "kernels": len(program.ops),
        "mix": printer.uses_mix,
    }


def render_dense_module(functions, names=None, title: str = "IR programs") -> str:
    """Module source with one jitted function per item of ``functions``: a dict from
    :func:`render_dense_program` or :func:`~tacegen.backends.numba_printer.render_program`
    (used as is), or a Program (printed by :class:`DensePrinter` when it supports every op,
    else by the core printer). ``names`` overrides the function names of Programs."""
    from .. import __version__
    from .templates import environment as _environment
    from .numba_printer import render_program

    functions = list(functions)
    names = list(names) if names is not None else [None] * len(functions)
    if len(names) != len(functions):
        raise ValueError("one name per function")
    rendered = []
    for f, name in zip(functions, names):
        if isinstance(f, dict):
            rendered.append(f)
        elif all(DensePrinter.supports(op) for op in f.ops):
            rendered.append(render_dense_program(f, name))
        else:
            rendered.append(render_program(f, name))
    fnames = [f["name"] for f in rendered]
    if len(set(fnames)) != len(fnames):
        raise ValueError("function names must be unique within a module")
    return _environment().get_template("numba_program.py.j2").render(
        version=__version__, title=title, functions=rendered, helpers=collect_helpers(rendered),
        any_channels=any(f.get("channels") for f in rendered), any_mix=any(f.get("mix") for f in rendered),
        graph_check=GRAPH_CHECK,
        any_graph=any(f["graph"] for f in rendered), sender_check=SENDER_CHECK,
        any_sender=any(f["by_sender"] for f in rendered))


def dense_graph_arguments(program_or_printer, graph: dict) -> tuple:
    """The graph arguments the printed signature of a dense program expects, in order, from an
    interpreter-style graph dict (senders, receivers, num_nodes, batch, num_structures)."""
    printer = program_or_printer if isinstance(program_or_printer, DensePrinter) else DensePrinter(program_or_printer)
    wanted = printer.graph_args
    n = int(graph["num_nodes"])
    values = {}
    if {"senders", "receivers", "receiver_offsets", "sender_order"} & set(wanted):
        values["senders"] = senders = _ints(graph["senders"])
        values["receivers"] = receivers = _ints(graph["receivers"])
        if "receiver_offsets" in wanted:
            values["receiver_offsets"] = receiver_offsets(receivers, n)
        if "sender_order" in wanted:
            values["sender_order"], values["sender_offsets"] = sender_csr(senders, n)
    if "batch" in wanted:
        values["batch"] = _ints(graph["batch"])
        values["num_structures"] = int(graph["num_structures"])
    values["num_nodes"] = n
    return tuple(values[a] for a in wanted)


def _ints(a):
    import numpy as np

    return np.ascontiguousarray(a, dtype=np.int64)
