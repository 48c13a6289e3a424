"""Numba printer of the per-channel kernels: one call per op of small loop kernels.

A per-channel kernel of :class:`~tacegen.backends.numba_printer.NumbaPrinter` (the ops with
channels of one phase, plus their channel sums) is printed as a ``prange`` over blocks of
:data:`BLOCK` items whose body is one call of a serial *kernel function* (module-level,
named by a digest of its text, so identical kernels of different programs are printed
once). Numba's parallel passes then see one call per loop, and each kernel function runs
its items' ops in program order, each op ONE call of a row kernel of the template
(``numba_macros.j2``: ``_couple``, ``_scale``, ``_sum``, ``_add``, ``_copy``,
``_channel_sum``) on views of shape (components, channels), channels innermost:

* a value computed here that no later kernel reads lives in scratch rows ``t[a:b]`` of a
  float64 array (rows, channels), allocated once per block (never per item); rows are
  reused once a value is dead (linear scan over the op order); neighbour sums
  (accumulators) keep their rows over the edge loop and are copied to their array after;
* a value a later kernel reads (:attr:`NumbaPrinter.stored`) is written straight into its
  array, ``v[item].T``; values of earlier kernels are read in place, and a Gather
  (GatherReceivers) is an alias of its source at ``senders[e]`` (``receivers[e]``);
* a Couple calls ``_couple`` with its coupling table, a module-level constant array of rows
  (m1, m2, m3, coefficient) printed once per module (:func:`table_constant`): the loop
  over the table's nonzeros runs once per item and op, the loop over channels inside it.

Summation order of a component is the table's order (exact coefficients printed as
``repr(float(Fraction))``). Race freedom is the scalar printer's: every item belongs to
one block of the outer loop, neighbour sums are owned by their node (receiver CSR, or
sender CSR for ScatterSenders).
"""

from __future__ import annotations

import hashlib
import re
from fractions import Fraction

from ..algebra.adjoint import AdjointTable
from ..ir.nodes import EDGE, NODE, ChannelSum, Couple, Gather, GatherReceivers, Scale, Scatter, ScatterSenders, Stack, \
    Sum, Zeros
from .printer import Printer, register

BLOCK = 16  # items per scratch allocation


def table_constant(c) -> dict:
    """The module-level constant of one coupling table: ``name`` = float64 array (nnz, 4) of
    rows (m1, m2, m3, coefficient), in the table's order; named by its content so equal
    tables share one constant."""
    entries = [(m1, m2, m3, Fraction(coef)) for m1, m2, m3, coef in c.entries if coef]
    digest = hashlib.sha256(repr((c.l1, c.l2, c.l3, entries)).encode()).hexdigest()[:8]
    name = f"TABLE_{c.l1}_{c.l2}_{c.l3}_{digest}"
    kind = "odd (Levi-Civita)" if c.odd else "even"
    rows = ", ".join(f"({m1}, {m2}, {m3}, {float(coef)!r})" for m1, m2, m3, coef in entries)
    return {"name": name, "lines": [f"{name} = np.array([{rows}])  # coupling {c.l1} x {c.l2} -> {c.l3}, {kind} "
                                    f"path, {len(entries)} nonzeros: rows (m1, m2, m3, coefficient)"]}


@register("numba", "channels")
class ChannelKernelPrinter(Printer):
    """Lines of one per-channel kernel of ``parent`` (a NumbaPrinter); see the module docstring."""

    def __init__(self, parent):
        self.parent = parent
        self.slots: dict[str, int] = {}  # value -> first scratch row
        self.alias: dict[str, tuple] = {}  # Gather output -> (source value, index variable)
        self.free: dict[int, list[int]] = {}  # size -> free first rows
        self.num_rows = 0
        self.helpers: dict[str, dict] = {}
        self.item: dict[str, str] = {}  # domain -> loop variable of the current section
        self.head: list[str] = []  # per-item index loads of the current section
        self.init: list[str] = []  # per-node lines before the edge loop

    # -- storage ------------------------------------------------------------------------
    def _take(self, size: int) -> int:
        free = self.free.get(size)
        if free:
            return free.pop()
        first, self.num_rows = self.num_rows, self.num_rows + size
        return first

    def _release(self, name: str, size: int) -> None:
        if name in self.slots:
            self.free.setdefault(size, []).append(self.slots.pop(name))

    def stored(self, v) -> bool:
        return v.name in self.parent.stored

    def rows(self, v) -> str:
        """``v`` at this item as a view: (components, channels), or (components,) without
        channels. Scratch rows ``t[a:b]``; an array ``v[item].T``; a Gather alias
        ``src[j].T``."""
        if v.name in self.slots:
            first = self.slots[v.name]
            return f"t[{first}:{first + _size(v)}]"
        if v.name in self.alias:
            src, index = self.alias[v.name]
            return f"{src.name}[{index}].T" if src.channels else f"{src.name}[{index}]"
        item = self.item[v.domain]
        return f"{v.name}[{item}].T" if v.channels else f"{v.name}[{item}]"

    def index(self, name: str, expr: str) -> str:
        line = f"{name} = {expr}"
        if line not in self.head:
            self.head.append(line)
        return name

    def define(self, v, scratch: bool = False) -> str:
        """Where ``v``, computed here, is written; returns its view: its array at this item
        when a later kernel reads it (stored), else scratch rows (always with ``scratch``)."""
        if scratch or not self.stored(v):
            self.slots[v.name] = self._take(_size(v))
        return self.rows(v)

    def zero(self, v) -> str:
        """The line setting ``v`` (defined here) to zero."""
        if v.name in self.slots:
            return f"{self.rows(v)} = 0.0"
        return f"{v.name}[{self.item[v.domain]}] = 0.0"

    def store(self, v) -> list[str]:
        """Copy ``v`` from its rows to its array (a value a later kernel reads)."""
        return [f"{v.name}[{self.item[v.domain]}] = {self.rows(v)}.T  # store"]

    # -- visitor --------------------------------------------------------------------------
    def _print_Couple(self, op: Couple) -> list[str]:
        c = op.coupling
        out = self.define(op.out)
        kind = "odd (Levi-Civita)" if c.odd else "even"
        label = f"{op.comment}: " if op.comment else ""
        if isinstance(c, AdjointTable):  # not the coupling path of its ranks: say where it comes from
            note = f"  # {label}table {c.origin}, ranks {c.l1}, {c.l2} -> {c.l3}, {c.nnz} nonzeros"
        else:
            note = f"  # {label}{c.l1} x {c.l2} -> {c.l3}, {kind} path, {c.nnz} nonzeros"
        table = table_constant(c)
        self.helpers.setdefault(table["name"], table)
        kernel = {(True, True): "_couple", (True, False): "_couple_right_free",
                  (False, True): "_couple_left_free"}[(op.left.channels, op.right.channels)]
        return [f"{kernel}({out}, {self.rows(op.left)}, {self.rows(op.right)}, {table['name']}){note}"]

    def _print_Scale(self, op: Scale) -> list[str]:
        out = self.define(op.out)
        note = f"  # {op.comment}" if op.comment else ""
        weight = f"{op.weight}[{self.item[op.src.domain]}, :, {op.index}]"
        return [f"_scale({out}, {self.rows(op.src)}, {weight}){note}"]

    def _print_Sum(self, op: Sum) -> list[str]:
        out = self.define(op.out)
        terms = [self.rows(t) for t in op.terms]
        if len(terms) == 1:
            return [f"_copy({out}, {terms[0]})"]
        # left to right, as a + b + c + ...: up to four terms per call, then the partial sum and three more
        lines = [f"_sum({out}, {', '.join(terms[:4])})"]
        for k in range(4, len(terms), 3):
            lines.append(f"_sum({out}, {out}, {', '.join(terms[k:k + 3])})")
        return lines

    def _gather(self, op, index: str) -> list[str]:
        self.alias[op.out.name] = (op.src, index)
        if self.stored(op.out):  # read by another kernel: copied
            return [f"{op.out.name}[{self.item[op.out.domain]}] = {op.src.name}[{index}]  # store"]
        return []

    def _print_Gather(self, op: Gather) -> list[str]:
        return self._gather(op, self.index("j", "senders[e]"))

    def _print_GatherReceivers(self, op: GatherReceivers) -> list[str]:
        return self._gather(op, self.index("i", "receivers[e]"))

    def _print_Scatter(self, op: Scatter) -> list[str]:
        out = self.rows(op.out)  # rows reserved before the edge loop (kernel_lines): live over all edges
        self.init.append(self.zero(op.out))
        return [f"_add({out}, {self.rows(op.src)})"]

    def _print_ChannelSum(self, op: ChannelSum) -> list[str]:
        # the output array starts at zero; this item's channels are added in channel order
        return [f"_channel_sum({op.out.name}[{self.item[op.out.domain]}], {self.rows(op.src)})  # sum over channels"]

    def _print_ScatterSenders(self, op: ScatterSenders) -> list[str]:
        if op.out.domain != NODE or op.src.domain != EDGE:
            raise NotImplementedError("ScatterSenders goes from edges to nodes")
        out = self.define(op.out)
        item = self.item[NODE]
        src = f"{op.src.name}[sender_order[k]].T" if op.src.channels else f"{op.src.name}[sender_order[k]]"
        return [self.zero(op.out),
                f"for k in range(sender_offsets[{item}], sender_offsets[{item} + 1]):  # edges sent by {item}",
                f"    _add({out}, {src})"]

    def _print_Zeros(self, op: Zeros) -> list[str]:
        self.define(op.out)
        return [self.zero(op.out)]

    def _print_Stack(self, op: Stack) -> list[str]:
        if not op.out.channels or len(op.columns) != op.out.count:
            raise NotImplementedError(f"{op.out.name}: a Stack fills every column of a per-channel weight")
        self.define(op.out)
        first = self.slots.get(op.out.name)
        lines = [f"# {op.out.name}: weight-shaped adjoint of {op.weight}"]
        for k, column in enumerate(op.columns):
            target = f"t[{first + k}]" if first is not None else f"{op.out.name}[{self.item[op.out.domain]}, :, {k}]"
            if column is None:
                lines.append(f"{target} = 0.0")
                continue
            if (column.rank, column.domain, column.channels) != (0, op.out.domain, True):
                raise NotImplementedError(f"{column.name}: Stack columns are rank-0 per-channel values")
            lines.append(f"{target} = {self.rows(column)}[0]")
        return lines

    # -- a section: the ops of one item --------------------------------------------------
    def section(self, ops, item: dict) -> list[str]:
        """Lines for one item of ``ops``; rows of values dead after their last use are freed."""
        self.item, self.head = item, []
        last = {}
        for k, op in enumerate(ops):
            for v in op.inputs:
                last[v.name] = k
        body: list[str] = []
        for k, op in enumerate(ops):
            body += self.print_op(op)
            out = op.out
            if out.name in self.slots and out.name not in self._accumulators:
                if self.stored(out):
                    body += self.store(out)
                if out.name not in last:  # read only by later kernels
                    self._release(out.name, _size(out))
            for v in op.inputs:
                if last.get(v.name) == k and not self._kept(v):
                    self._release(v.name, _size(v))
        return self.head + body

    def _kept(self, v) -> bool:
        """Accumulators (Scatter outputs) live across the edge loop: never freed there."""
        return v.name in self._accumulators

    _accumulators: frozenset = frozenset()


def _size(v) -> int:
    from .numba_printer import _size as size

    return size(v)


def kernel_lines(parent, kernel, head: list[str], alloc: list[str]) -> tuple[list[str], dict]:
    """(lines, helpers) of a per-channel kernel of ``parent``."""
    printer = ChannelKernelPrinter(parent)
    edge_ops = [op for op in kernel.ops if op.out.domain == EDGE]
    node_ops = [op for op in kernel.ops if op.out.domain == NODE]
    fused = bool(node_ops) and (bool(edge_ops) or any(parent.access(op) == "reduce" for op in node_ops))
    lines = list(alloc)
    head = head[0].lstrip("# ")
    if fused and parent.graph:
        reduce_ops = [op for op in kernel.ops if op.out.domain == EDGE or parent.access(op) == "reduce"]
        printer._accumulators = frozenset(op.out.name for op in reduce_ops if parent.access(op) == "reduce")
        for op in reduce_ops:  # neighbour sums: rows of their own, never reused inside the edge loop
            if op.out.name in printer._accumulators:
                printer.define(op.out, scratch=True)
        edges = printer.section(reduce_ops, {NODE: "n", EDGE: "e"})
        init = printer.init
        printer.item = {NODE: "n"}
        sums = [line for op in reduce_ops if parent.access(op) == "reduce" and printer.stored(op.out)
                for line in printer.store(op.out)]
        nodes = sums + printer.section([op for op in node_ops if parent.access(op) != "reduce"], {NODE: "n"})
        inner = init + ["for e in range(receiver_offsets[n], receiver_offsets[n + 1]):"]
        inner += _indent(edges or ["pass"]) + nodes
        lines += _blocked(printer, printer.num_rows, "num_nodes", "n", inner,
                          "edges of n: receiver_offsets[n]:receiver_offsets[n + 1]", head)
        return lines, printer.helpers
    for domain, ops in ((EDGE, edge_ops), (NODE, node_ops)):
        if not ops:
            continue
        var = "e" if domain == EDGE else "n"
        body = printer.section(ops, {domain: var})
        lines += _blocked(printer, printer.num_rows, "num_edges" if domain == EDGE else "num_nodes", var, body, "",
                          head)
    return lines, printer.helpers


def _blocked(printer, rows: int, count: str, var: str, body: list[str], note: str, head: str) -> list[str]:
    """``for block in prange(blocks)``: each block of BLOCK items is one call of a serial
    kernel function (module-level, named by its content, printed once per module) that
    allocates the scratch ``t`` of ``rows`` rows and runs ``body`` for its items. The
    parallel loop holds one call: numba's parallel passes and LLVM see small functions."""
    note = f"  # {note}" if note else ""
    inner = [f"for {var} in range(block * {BLOCK}, min({count}, block * {BLOCK} + {BLOCK})):{note}"] + _indent(body)
    if rows:
        inner = [f"t = np.empty(({rows}, channels), np.float64)  # rows of the values this kernel keeps to itself"] \
            + inner
    known = printer.parent.outer_names()
    used = set(re.findall(r"\b[A-Za-z_]\w*\b", "\n".join(line.split("  #")[0] for line in inner)))
    args = ["block"] + sorted(used & known)
    digest = hashlib.sha256(repr((args, inner)).encode()).hexdigest()[:10]
    name = f"_kernel_{digest}"
    printer.helpers.setdefault(name, {"name": name, "lines": [
        "@numba.njit(cache=True, fastmath=False)", f"def {name}({', '.join(args)}):",
        f'    """Items block * {BLOCK} .. block * {BLOCK} + {BLOCK} - 1 of a per-channel kernel over {count}."""']
        + _indent(inner)})
    return [f"for block in prange(({count} + {BLOCK - 1}) // {BLOCK}):  # {BLOCK} items per call; {head}",
            f"    {name}({', '.join(['np.int64(block)'] + args[1:])})"]  # int64 in typing and in lowering


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line if line else line for line in lines]
