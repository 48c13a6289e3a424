"""Numba printer: one ``@numba.njit(parallel=True)`` function per IR program, as readable source.

A visitor over the ops (one method per op type) returns straight-line scalar code for one
item and channel; the scheduler around it decides which loop each op lives in, which
values stay per-item scalars and which are stored as arrays. The jinja2 template
``templates/numba_program.py.j2`` holds the module scaffolding (imports, decorator).
Layout of every array: ``(items, channels, 2l+1)`` or ``(items, 2l+1)`` without channels;
weights ``(items, channels, count)``. The printed function is dtype-generic (numba
specialises on the input dtype; arrays are allocated with the first input's dtype;
scalar temporaries are float64 because the coefficients are float64 literals).

Two emissions, chosen per kernel by what pays: a *per-channel* kernel (ops with channels)
is printed by :mod:`tacegen.backends.numba_channels` as, per item, one call per op of a
small loop kernel over the channels (a Couple loops over its coupling table, a
module-level constant printed once per module); a *channel-free* kernel (edge ICTs and
their derivatives, a few scalars per edge) is printed below as straight-line scalar code,
its couplings unrolled from the exact sparse table when that is one short line
(:meth:`NumbaPrinter.unrolled`), else one call of the table's module-level function
(:func:`coupling_helper`). Coefficients are printed as ``repr(float(Fraction))``;
structural zeros never printed. The rest of this docstring describes the schedule both
share and the scalar emission.

Loops ("kernels"). Ops are grouped by *phase* and channel dependence:

* a per-item op (EdgeICT, Couple, Scale, Sum) runs in the phase of its latest input;
* a Gather reads its node source at another item (``senders[e]``), so the source must be
  complete: the Gather runs one phase after the source is computed (phase 0 for inputs);
* a Scatter runs in the phase of its edge source: it is fused into the loop that computes
  the source.

One kernel per (phase, with/without channels), channel-free kernels first. A kernel with
node and edge work is a ``prange`` over nodes with a sub-loop over that node's incoming
edges, ``receiver_offsets[n]:receiver_offsets[n + 1]`` (edges sorted by receiver, CSR
offsets of shape (N+1,)): each edge belongs to exactly one receiver, so every edge is
visited once and a neighbour sum is a private scalar accumulator of the node that owns it.
No thread ever writes a row another thread writes (no atomics, no races), and the result
does not depend on the thread count. Single-domain kernels are a ``prange`` over their
items. Inside an item the channel loop is the next loop (outside the edge sub-loop), so
every per-item temporary is a scalar: no per-item allocation anywhere.

A value is stored as an array only when it is a program output or is read outside the
kernel that computes it (by a later kernel or by a Gather); otherwise it exists only as
2l+1 scalars inside the loop body.

Reverse-pass ops (:mod:`tacegen.ir.reverse`): EdgeICTGrad (exact derivative polynomials),
Zeros and Stack (a weight-shaped ``(items, channels, count)`` output) are per-item ops.
GatherReceivers is a ``"complete"`` access by ``receivers[e]``. ChannelSum
(``"channels"``) sums a channel value over its channels at one item. It is fused into the
channel loop that computes its source: ``out[item, m] += src`` for each channel in turn
(the output is zeroed at allocation; each item belongs to one loop iteration of the
outer prange and its channels run in order, so the sum is race-free and deterministic),
and the result counts as complete one phase later, so no consumer reads a partial sum.
The per-channel source (an edge ICT's adjoint, (edges, channels, 2l+1)) is then never
stored. ScatterSenders
(``"complete"``) is the neighbour sum by *sender*: it runs once its edge source is
complete, as a node op with a sub-loop over the node's outgoing edges, through a second
CSR over edges sorted by sender (function arguments ``sender_order`` (E,), a permutation,
and ``sender_offsets`` (N+1,); see :func:`sender_csr`), so it is race-free too: node n owns
edges ``sender_order[sender_offsets[n]:sender_offsets[n + 1]]``, summed in edge order.
Those two arguments follow the graph arguments only when the program has a ScatterSenders.
Coupling tables are printed from their entries (AdjointTables label their ``origin``);
nothing is keyed by ranks.

Adding an op type: a per-item op (inputs and output on the same domain) needs one visitor
method ``_print_<OpName>(self, op) -> list[str]`` (:class:`~tacegen.backends.printer.Printer`) that reads inputs with :meth:`read` and names
its outputs with :meth:`define`. A cross-domain op also needs an entry in
:attr:`NumbaPrinter.ACCESS` (``"complete"``: reads its source at another item, like
Gather; ``"reduce"``: accumulates edges into their receiver, like Scatter).
"""

from __future__ import annotations

import builtins
import hashlib
import importlib.util
import keyword
import sys
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..algebra.adjoint import AdjointTable, ict_gradient_polynomials
from ..algebra.ict import ict_polynomials, pattern_index, reduced_patterns
from ..cache import atomic_write_text
from ..runtime.csr import receiver_offsets, sender_csr  # noqa: F401  (re-exported)
from ..ir.nodes import (
    EDGE,
    NODE,
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
    Zeros,
)
from .printer import Printer, register

GRAPH_ARGS = ("senders", "receivers", "receiver_offsets", "num_nodes")
SENDER_ARGS = ("sender_order", "sender_offsets")  # only for programs with a ScatterSenders
GRAPH_CHECK = "_check_graph"  # defined once per module by the template
SENDER_CHECK = "_check_senders"  # likewise, when some program has a ScatterSenders
SHAPE_CHECK = "_check_shape"  # defined once per module by the template: (array, shape, message)
# names the printed code uses besides the program's own: never allowed as value names
RESERVED = frozenset(GRAPH_ARGS) | frozenset(SENDER_ARGS) | {
    "np", "numba", "prange", "num_edges", "channels", "dtype", "n", "e", "c", "range", "ValueError",
    "t", "k", "block", "i", "j", "min",  # per-channel kernels (numba_channels)
    GRAPH_CHECK, SENDER_CHECK, SHAPE_CHECK}
WRAP_TERMS = 4  # terms per printed line in long sums


def _signed_terms(terms: list[tuple[float, str]]) -> list[str]:
    """``coef * product`` terms with their signs; coefficients 1 and -1 are not printed."""
    return _join_signed([(coef < 0, product if abs(coef) == 1.0 else f"{abs(coef)!r} * {product}")
                         for coef, product in terms])


def _join_signed(parts: list[tuple[bool, str]]) -> list[str]:
    """(negative, body) pairs as printable pieces: ``body``, ``+ body``, ``- body``."""
    out = []
    for k, (negative, body) in enumerate(parts):
        if k == 0:
            out.append(f"-{body}" if negative else body)
        else:
            out.append(f"- {body}" if negative else f"+ {body}")
    return out


def _factored_terms(terms: list[tuple[Fraction, str]]) -> list[str]:
    """Exact-coefficient terms grouped by |coefficient| (first appearance order), so that
    each distinct coefficient is multiplied once: ``0.5 * (a0 * b1 + a1 * b0)``."""
    groups: dict[Fraction, list[tuple[bool, str]]] = {}
    for coef, product in terms:
        groups.setdefault(abs(coef), []).append((coef < 0, product))
    parts: list[tuple[bool, str]] = []
    for magnitude, members in groups.items():
        if magnitude == 1:
            parts += members
        elif len(members) == 1:
            parts.append((members[0][0], f"{float(magnitude)!r} * {members[0][1]}"))
        else:
            first = members[0][0]
            inner = _join_signed([(neg != first, product) for neg, product in members])
            parts.append((first, f"{float(magnitude)!r} * ({' '.join(inner)})"))
    return _join_signed(parts)


def coupling_helper(c) -> dict:
    """The module-level function of one coupling table: ``name(a0, .., b0, ..)`` returns the
    stored components ``out[m3] = sum c * a[m1] * b[m2]`` (2l3+1 for ICT tables, (l+1)(l+2)/2
    for symmetric moment storage; one scalar when that is 1).

    Named by the table's content (ranks and a digest of its exact entries), so every use of
    the same table in a module calls one function, printed once (:func:`collect_helpers`)."""
    entries = tuple((m1, m2, m3, Fraction(coef)) for m1, m2, m3, coef in c.entries if coef)
    storages = getattr(c, "storages", ("reduced",) * 3)
    key = (c.l1, c.l2, c.l3, entries) if storages == ("reduced",) * 3 else (c.l1, c.l2, c.l3, storages, entries)
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:8]
    name = f"couple_{c.l1}_{c.l2}_{c.l3}_{digest}"
    left = [f"a{m}" for m in range(c.dims[0])]
    right = [f"b{m}" for m in range(c.dims[1])]
    rows: dict[int, list] = {m3: [] for m3 in range(c.dims[2])}
    for m1, m2, m3, coef in entries:
        rows[m3].append((coef, f"{left[m1]} * {right[m2]}"))
    exprs = [" ".join(_factored_terms(t)) if t else "0.0" for t in rows.values()]
    if len(exprs) == 1:
        body = [f"return {exprs[0]}"]
    else:
        body = [f"return ({exprs[0]},"] + [f"        {e}," for e in exprs[1:-1]] + [f"        {exprs[-1]})"]
    kind = "odd (Levi-Civita)" if c.odd else "even"
    doc = (f"Coupling {c.l1} x {c.l2} -> {c.l3}, {kind} path, {len(entries)} nonzeros: "
           f"out[m3] = sum of c * a[m1] * b[m2] over the table's entries.")
    lines = ["@numba.njit(cache=True, fastmath=False)", f"def {name}({', '.join(left + right)}):",
             f'    """{doc}"""'] + ["    " + line for line in body]
    return {"name": name, "lines": lines}


def collect_helpers(functions: list[dict]) -> list[dict]:
    """The helpers (coupling tables) the rendered ``functions`` call, each once, in order of
    first use."""
    seen: dict[str, dict] = {}
    for f in functions:
        for h in f.get("helpers", ()):
            seen.setdefault(h["name"], h)
    return list(seen.values())


def _parallel_assign(targets: list[str], values: list[str]) -> str:
    """One statement for the components of one value: ``a0, a1 = x0, x1`` (``a0 = x0``)."""
    return f"{', '.join(targets)} = {', '.join(values)}"


def _size(v) -> int:
    """Stored components per item and channel: 2l+1 for a Value, ``count`` for a WeightArray."""
    return v.count if isinstance(v, WeightArray) else v.size


def _assign(target: str, parts: list[str], op: str = "=") -> str:
    """``target = part part ...``, wrapped WRAP_TERMS parts per line inside parentheses."""
    if len(parts) <= WRAP_TERMS:
        return f"{target} {op} " + " ".join(parts)
    rows = [" ".join(parts[i:i + WRAP_TERMS]) for i in range(0, len(parts), WRAP_TERMS)]
    pad = " " * (len(target) + len(op) + 3)
    return f"{target} {op} (" + ("\n" + pad).join(rows) + ")"


class _Namer:
    """Unique identifiers for one function, handed out deterministically."""

    def __init__(self):
        self.taken: set[str] = set()

    def claim(self, name: str) -> str:
        if name in self.taken:
            raise ValueError(f"name {name!r} is used twice")
        self.taken.add(name)
        return name

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.taken or keyword.iskeyword(name) or hasattr(builtins, name):
            name, k = f"{hint}_{k}", k + 1
        self.taken.add(name)
        return name


@dataclass
class _Section:
    """Straight-line code for one item of one domain inside a kernel."""

    domain: str
    index: dict  # domain -> loop variable valid here
    head: list = field(default_factory=list)  # hoisted loads and powers, once per item
    body: list = field(default_factory=list)
    stores: list = field(default_factory=list)
    hoisted: dict = field(default_factory=dict)  # expression -> identifier

    @property
    def lines(self) -> list[str]:
        return _grouped_loads(self.head) + self.body + self.stores


def _grouped_loads(head: list[str]) -> list[str]:
    """Hoisted loads of consecutive components of one array row as one statement:
    ``a_0 = a[n, c, 0]`` and ``a_1 = a[n, c, 1]`` -> ``a_0, a_1 = a[n, c, 0], a[n, c, 1]``."""
    out: list[tuple[str, list, list]] = []  # (row, targets, values)
    for line in head:
        target, _, value = line.partition(" = ")
        row = value.rsplit(",", 1)[0] if value.endswith("]") and "," in value else None
        if row is not None and out and out[-1][0] == row:
            out[-1][1].append(target)
            out[-1][2].append(value)
        else:
            out.append((row, [target], [value]))
    return [_parallel_assign(targets, values) for _, targets, values in out]


@dataclass
class Kernel:
    phase: int
    channels: bool
    ops: list


@register("numba", "core")
class NumbaPrinter(Printer):
    """Prints one numba function (signature and body lines) for a program."""

    # Per-channel kernels as calls of row kernels (numba_channels: 2,473 lines for the default
    # build) or as scalar code with module-level coupling functions (3,144 lines). Measured
    # cold compile of the default build, same machine and load: 172 s CPU with row kernels
    # (LLVM re-optimises every inlined row kernel) against 89 s scalar; so scalar it is.
    ROW_KERNELS = False
    # how an op reads its inputs; ops not listed are per-item ("local")
    ACCESS = {"Gather": "complete", "Scatter": "reduce", "GatherReceivers": "complete",
              "ScatterSenders": "complete", "ChannelSum": "channels"}

    def __init__(self, program: Program, function_name: str | None = None, trusted: frozenset = frozenset()):
        self.program = program
        self.name = function_name or program.name
        self.trusted = frozenset(trusted)  # inputs whose shapes are right by construction: not checked
        self.graph = any(self.access(op) in ("complete", "reduce") for op in program.ops)
        self.by_sender = any(isinstance(op, ScatterSenders) for op in program.ops)
        self.namer = _Namer()
        self._local: dict[str, list[str]] = {}  # value -> scalar identifiers in the current kernel
        self._defined: list[Value] = []  # values computed in the current kernel
        self._init: list[str] = []  # per-node lines before the edge sub-loop
        self._section: _Section | None = None
        self._body: list[str] | None = None
        self.helpers: dict[str, dict] = {}  # coupling tables called by the printed code
        self._check_names()
        self.kernels = self.schedule()
        self.kernel_of = {op.out.name: k for k, kern in enumerate(self.kernels) for op in kern.ops}
        self.stored = self._stored_values()

    # -- analysis --------------------------------------------------------------------
    def access(self, op) -> str:
        return self.ACCESS.get(type(op).__name__, "local")

    def _check_names(self) -> None:
        names = [v.name for v in self.program.inputs] + [w.name for w in self.program.weights]
        names += [op.out.name for op in self.program.ops]
        for name in [self.name] + names:
            if not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED:
                raise ValueError(f"{self.program.name}: {name!r} cannot be a name in printed numba code")
        for name in [self.name] + names:
            self.namer.claim(name)
        for name in RESERVED:
            self.namer.claim(name)
        for v in list(self.program.inputs) + [op.out for op in self.program.ops]:
            if isinstance(v, WeightArray):
                if not v.channels:
                    raise NotImplementedError(f"{v.name}: weight arrays have channels")
                continue
            if v.storage not in ("reduced", "symmetric"):
                raise NotImplementedError(f"{v.name}: only reduced (2l+1) and symmetric storage are printed")

    def schedule(self) -> list[Kernel]:
        """Kernels in execution order; see the module docstring for the rules."""
        phase = {v.name: -1 for v in self.program.inputs}
        kernels: dict[tuple, Kernel] = {}
        for op in self.program.ops:
            kind = self.access(op)
            ins = [phase[v.name] for v in op.inputs]
            if kind == "local":
                if any(v.domain != op.out.domain for v in op.inputs):
                    raise NotImplementedError(
                        f"{type(op).__name__} reads another domain: list it in NumbaPrinter.ACCESS")
                p = max([0] + ins)
            elif kind == "complete":
                p = max(ins) + 1
            elif kind == "channels":  # channel-free sum, accumulated inside the source's channel loop
                if op.out.channels or any(not v.channels or v.domain != op.out.domain for v in op.inputs):
                    raise NotImplementedError(f"{type(op).__name__}: a channel reduction on one domain")
                p = max([0] + ins)
                phase[op.out.name] = p + 1  # complete only after the channel loop
                kernels.setdefault((p, True), Kernel(p, True, [])).ops.append(op)
                continue
            elif kind == "reduce":
                if op.out.domain != NODE or any(v.domain != EDGE for v in op.inputs):
                    raise NotImplementedError(f"{type(op).__name__}: reductions go from edges to nodes")
                p = max([0] + ins)
            else:
                raise ValueError(f"unknown access kind {kind!r}")
            if not op.out.channels and any(v.channels for v in op.inputs):
                raise NotImplementedError(f"{op.out.name}: a channel-free value computed from channel values")
            phase[op.out.name] = p
            kernels.setdefault((p, op.out.channels), Kernel(p, op.out.channels, [])).ops.append(op)
        return [kernels[key] for key in sorted(kernels)]

    def _stored_values(self) -> set:
        """Values that must exist as whole arrays (outputs, or read outside their kernel)."""
        inputs = {v.name for v in self.program.inputs}
        stored = {v.name for v in self.program.outputs} - inputs
        # channel sums are accumulated into their array, channel by channel
        stored |= {op.out.name for op in self.program.ops if self.access(op) == "channels"}
        for op in self.program.ops:
            for v in op.inputs:
                if v.name in inputs:
                    continue
                whole = self.access(op) == "complete"  # read at other items
                if whole or self.kernel_of[v.name] != self.kernel_of[op.out.name]:
                    stored.add(v.name)
        return stored

    # -- helpers for visitor methods -----------------------------------------------------
    def define(self, v: Value) -> list[str]:
        """Scalar identifiers for the components of ``v``, computed in the current item."""
        names = [self.namer.fresh(f"{v.name}_{m}") for m in range(_size(v))]
        self._local[v.name] = names
        self._defined.append(v)
        return names

    def element(self, v: Value, m: int, index: str | None = None) -> str:
        """Array element expression of a stored value (at ``index``, default this item)."""
        item = index or self._section.index[v.domain]
        return f"{v.name}[{item}, c, {m}]" if v.channels else f"{v.name}[{item}, {m}]"

    def read(self, v: Value, m: int) -> str:
        """Component m of ``v`` at the current item (and channel)."""
        local = self._local.get(v.name)
        if local is not None:
            return local[m]
        return self.hoist(f"{v.name}_{m}", self.element(v, m))

    def hoist(self, hint: str, expr: str) -> str:
        """An identifier holding ``expr``, computed once per item at the top of the section."""
        section = self._section
        if expr not in section.hoisted:
            name = self.namer.fresh(hint)
            section.hoisted[expr] = name
            section.head.append(f"{name} = {expr}")
        return section.hoisted[expr]

    def before_edges(self, lines: list[str]) -> None:
        """Lines run once per node before its edge sub-loop (accumulator initialisation)."""
        self._init += lines

    # -- visitor ---------------------------------------------------------------------------
    def unsupported(self, op) -> str:
        return f"the numba printer has no method for {type(op).__name__}"

    def _print_EdgeICT(self, op: EdgeICT) -> list[str]:
        l = op.out.rank
        out = self.define(op.out)
        if l == 0:
            return [f"{out[0]} = 1.0  # T_0"]
        polys = ict_polynomials(l)
        idx = pattern_index(l)
        lines = [f"# T_{l}({op.direction.name}): {2 * l + 1} reduced components (patterns with at most one z)"]
        for name, alpha in zip(out, reduced_patterns(l)):
            terms = [(float(c), self.monomial(op.direction, mono))
                     for mono, c in sorted(polys[idx[alpha]].items(), reverse=True)]
            lines.append(_assign(name, _signed_terms(terms)))
        return lines

    def monomial(self, direction: Value, exps) -> str:
        factors = [self.power(direction, axis, e) for axis, e in enumerate(exps) if e]
        return " * ".join(factors) if factors else "1.0"

    def power(self, direction: Value, axis: int, e: int) -> str:
        """x^e of component ``axis`` of the direction, computed once per edge."""
        ax = "xyz"[axis]
        if e == 1:
            local = self._local.get(direction.name)
            return local[axis] if local is not None else self.hoist(ax, self.element(direction, axis))
        lower = self.power(direction, axis, e - 1)
        return self.hoist(f"{ax}{e}", f"{lower} * {self.power(direction, axis, 1)}")

    def _print_Couple(self, op: Couple) -> list[str]:
        c = op.coupling
        if op.out.channels != (op.left.channels or op.right.channels):
            raise NotImplementedError(f"{op.out.name}: has channels iff an operand has")
        out = self.define(op.out)
        kind = "odd (Levi-Civita)" if c.odd else "even"
        label = f"{op.comment}: " if op.comment else ""
        if isinstance(c, AdjointTable):  # not the coupling path of its ranks: say where it comes from
            lines = [f"# {label}table {c.origin}, ranks {c.l1}, {c.l2} -> {c.l3}, {c.nnz} nonzeros"]
        else:
            lines = [f"# {label}{c.l1} x {c.l2} -> {c.l3}, {kind} path, {c.nnz} nonzeros"]
        if not self.unrolled(c):  # one call of the table's module-level function
            helper = coupling_helper(c)
            self.helpers.setdefault(helper["name"], helper)
            args = [self.read(op.left, m) for m in range(c.dims[0])]
            args += [self.read(op.right, m) for m in range(c.dims[1])]
            return [f"{', '.join(out)} = {helper['name']}({', '.join(args)})  {lines[0]}"]
        by_m3: dict[int, list] = {m3: [] for m3 in range(c.dims[2])}
        for m1, m2, m3, coef in c.entries:
            if coef:
                by_m3[m3].append((coef, f"{self.read(op.left, m1)} * {self.read(op.right, m2)}"))
        for m3, terms in by_m3.items():
            lines.append(_assign(out[m3], _factored_terms(terms) if terms else ["0.0"]))
        return lines

    @staticmethod
    def unrolled(c) -> bool:
        """Cost model of a coupling's printed form: unrolled in place when that is one short
        line (a scalar output of at most WRAP_TERMS products), else a call of the table's
        module-level function (:func:`coupling_helper`: 1 line per use, the table printed
        once per module)."""
        return c.dims[2] == 1 and sum(1 for e in c.entries if e[3]) <= WRAP_TERMS

    def _print_Scale(self, op: Scale) -> list[str]:
        if not op.out.channels:
            raise NotImplementedError("weights are per channel: a Scale output has channels")
        out = self.define(op.out)
        w = self.hoist(f"{op.weight}_{op.index}", self.element(Value(op.weight, 0, op.src.domain), op.index))
        note = f"  # {op.comment}" if op.comment else ""
        return [_parallel_assign(out, [f"{self.read(op.src, m)} * {w}" for m in range(len(out))]) + note]

    def _print_Sum(self, op: Sum) -> list[str]:
        if any(t.channels != op.out.channels for t in op.terms):
            raise NotImplementedError(f"{op.out.name}: a sum of values with and without channels")
        out = self.define(op.out)
        return [_parallel_assign(out, [" + ".join(self.read(t, m) for t in op.terms) for m in range(len(out))])]

    def _print_Gather(self, op: Gather) -> list[str]:
        out = self.define(op.out)
        j = self.hoist("j", "senders[e]")
        return [_parallel_assign(out, [self.element(op.src, m, j) for m in range(len(out))])]

    def _print_Scatter(self, op: Scatter) -> list[str]:
        out = self.define(op.out)
        self.before_edges([" = ".join(out) + " = 0.0"])
        return [_parallel_assign(out, [f"{o} + {self.read(op.src, m)}" for m, o in enumerate(out)])]

    # -- reverse-pass ops ---------------------------------------------------------------------
    def _print_EdgeICTGrad(self, op: EdgeICTGrad) -> list[str]:
        if op.out.channels or op.cotangent.channels or op.out.rank != 1 or op.direction.rank != 1:
            raise NotImplementedError(f"{op.out.name}: EdgeICTGrad is channel-free and rank 1")
        l = op.l
        out = self.define(op.out)
        if l == 0:
            return [f"{o} = 0.0  # T_0 is constant" for o in out]
        grads = ict_gradient_polynomials(l)
        lines = [f"# d<{op.cotangent.name}, T_{l}({op.direction.name})> / d{op.direction.name}: "
                 f"exact derivative polynomials"]
        for k, name in enumerate(out):
            terms = []
            for m, row in enumerate(grads):
                g = self.read(op.cotangent, m)
                for mono, coef in sorted(row[k].items(), reverse=True):
                    if coef:
                        product = g if not any(mono) else f"{g} * {self.monomial(op.direction, mono)}"
                        terms.append((coef, product))
            lines.append(_assign(name, _factored_terms(terms) if terms else ["0.0"]))
        return lines

    def _print_ChannelSum(self, op: ChannelSum) -> list[str]:
        # inside the channel loop: add this channel's contribution (the array starts at zero)
        return [f"{self.element(op.out, m)} += {self.read(op.src, m)}  # sum over channels"
                if m == 0 else f"{self.element(op.out, m)} += {self.read(op.src, m)}"
                for m in range(op.out.size)]

    def _print_GatherReceivers(self, op: GatherReceivers) -> list[str]:
        out = self.define(op.out)
        i = self.hoist("i", "receivers[e]")
        return [_parallel_assign(out, [self.element(op.src, m, i) for m in range(len(out))])]

    def _print_ScatterSenders(self, op: ScatterSenders) -> list[str]:
        if op.out.domain != NODE or op.src.domain != EDGE:
            raise NotImplementedError("ScatterSenders goes from edges to nodes")
        out = self.define(op.out)
        k, es = self.namer.fresh("k"), self.namer.fresh("es")
        n = self._section.index[NODE]
        lines = [f"{o} = 0.0" for o in out]
        lines.append(f"for {k} in range(sender_offsets[{n}], sender_offsets[{n} + 1]):  # edges sent by {n}")
        lines.append(f"    {es} = sender_order[{k}]")
        return lines + [f"    {o} += {self.element(op.src, m, es)}" for m, o in enumerate(out)]

    def _print_Zeros(self, op: Zeros) -> list[str]:
        return [f"{o} = 0.0" for o in self.define(op.out)]

    def _print_Stack(self, op: Stack) -> list[str]:
        if not op.out.channels or len(op.columns) != op.out.count:
            raise NotImplementedError(f"{op.out.name}: a Stack fills every column of a per-channel weight")
        out = self.define(op.out)
        lines = [f"# {op.out.name}: weight-shaped adjoint of {op.weight}"]
        for o, column in zip(out, op.columns):
            if column is None:
                lines.append(f"{o} = 0.0")
            else:
                if (column.rank, column.domain, column.channels) != (0, op.out.domain, True):
                    raise NotImplementedError(f"{column.name}: Stack columns are rank-0 per-channel values")
                lines.append(f"{o} = {self.read(column, 0)}")
        return lines

    # -- kernels ---------------------------------------------------------------------------
    def _run_ops(self, ops, section: _Section) -> None:
        self._section = section
        for op in ops:
            section.body += self.print_op(op)

    def _store(self, section: _Section) -> None:
        self._section = section
        for v in self._defined:
            if v.domain == section.domain and v.name in self.stored:
                local = self._local[v.name]
                section.stores.append(_parallel_assign([self.element(v, m) for m in range(len(local))], local))

    def kernel_lines(self, k: int, kernel: Kernel) -> list[str]:
        self._local: dict[str, list[str]] = {}
        self._defined: list[Value] = []
        self._init: list[str] = []
        stored = [op.out.name for op in kernel.ops if op.out.name in self.stored]
        what = "per channel" if kernel.channels else "channel-free"
        head = [f"# kernel {k + 1} ({what}, phase {kernel.phase}): {len(kernel.ops)} ops; "
                f"stores {', '.join(stored) if stored else 'nothing'}"]
        if kernel.channels and self.ROW_KERNELS:  # loops over channels and coupling tables
            from .numba_channels import kernel_lines

            lines, helpers = kernel_lines(self, kernel, head, self._alloc(kernel))
            for name, helper in helpers.items():
                self.helpers.setdefault(name, helper)
            return lines
        edge_ops = [op for op in kernel.ops if op.out.domain == EDGE]
        node_ops = [op for op in kernel.ops if op.out.domain == NODE]
        fused = bool(node_ops) and (bool(edge_ops) or any(self.access(op) == "reduce" for op in node_ops))
        lines: list[str] = []
        if fused and self.graph:
            edges = _Section(EDGE, {NODE: "n", EDGE: "e"})
            nodes = _Section(NODE, {NODE: "n"})
            self._run_ops([op for op in kernel.ops if op.out.domain == EDGE or self.access(op) == "reduce"], edges)
            self._run_ops([op for op in node_ops if self.access(op) != "reduce"], nodes)
            self._store(edges)
            self._store(nodes)
            inner = self._init + ["for e in range(receiver_offsets[n], receiver_offsets[n + 1]):"]
            inner += _indent(edges.lines or ["pass"]) + nodes.lines
            lines = self._alloc(kernel) + head
            lines.append("for n in prange(num_nodes):  # edges of n: receiver_offsets[n]:receiver_offsets[n + 1]")
            lines += _indent(self._channel_loop(kernel, inner))
            return lines
        lines = self._alloc(kernel) + head
        for domain, ops in ((EDGE, edge_ops), (NODE, node_ops)):
            if not ops:
                continue
            var = "e" if domain == EDGE else "n"
            section = _Section(domain, {domain: var})
            self._run_ops(ops, section)
            self._store(section)
            lines.append(f"for {var} in prange({'num_edges' if domain == EDGE else 'num_nodes'}):")
            lines += _indent(self._channel_loop(kernel, section.lines))
        return lines

    def outer_names(self) -> set:
        """Names of the function body a kernel's loop may read: the arguments, the arrays
        the kernels store, the sizes."""
        return set(self.arguments()) | set(self.stored) | {"num_nodes", "num_edges", "channels"}

    def _channel_loop(self, kernel: Kernel, body: list[str]) -> list[str]:
        return ["for c in range(channels):"] + _indent(body) if kernel.channels else body

    def _alloc(self, kernel: Kernel) -> list[str]:
        lines = []
        for op in kernel.ops:
            v = op.out
            if v.name in self.stored:
                items = "num_edges" if v.domain == EDGE else "num_nodes"
                shape = f"({items}, channels, {_size(v)})" if v.channels else f"({items}, {_size(v)})"
                fill = "zeros" if self.access(op) == "channels" else "empty"  # channel sums accumulate
                lines.append(f"{v.name} = np.{fill}({shape}, dtype)")
        return lines

    # -- whole function ----------------------------------------------------------------------
    def arguments(self) -> list[str]:
        args = [v.name for v in self.program.inputs] + [w.name for w in self.program.weights]
        return args + (list(GRAPH_ARGS) if self.graph else []) + (list(SENDER_ARGS) if self.by_sender else [])

    def signature(self) -> str:
        return ", ".join(self.arguments())

    def _sizes(self) -> list[str]:
        prog = self.program
        arrays = [(v.name, v.domain, v.channels) for v in prog.inputs]
        arrays += [(w.name, w.domain, True) for w in prog.weights]
        used = {v.domain for v in prog.inputs} | {op.out.domain for op in prog.ops} | {w.domain for w in prog.weights}
        lines = []
        if not prog.inputs:
            raise ValueError(f"{prog.name}: a program without inputs has no dtype")
        lines.append(f"dtype = {prog.inputs[0].name}.dtype")
        for domain, var in ((NODE, "num_nodes"), (EDGE, "num_edges")):
            if self.graph:
                if domain == EDGE:
                    lines.append("num_edges = senders.shape[0]")
                continue
            if domain in used:
                first = next((name for name, d, _ in arrays if d == domain), None)
                if first is None:
                    raise ValueError(f"{prog.name}: no input gives the number of {domain} items")
                lines.append(f"{var} = {first}.shape[0]")
        if any(ch for _, _, ch in arrays) or any(op.out.channels for op in prog.ops):
            first = next((name for name, _, ch in arrays if ch), None)
            if first is None:
                raise ValueError(f"{prog.name}: no input gives the number of channels")
            lines.append(f"channels = {first}.shape[1]")
        return lines

    def _checks(self) -> list[str]:
        lines = []
        items = {NODE: ("num_nodes", "nodes"), EDGE: ("num_edges", "edges")}
        prog = self.program
        arrays = [(v.name, v.domain, v.channels, v.size) for v in prog.inputs]
        arrays += [(w.name, w.domain, True, w.count) for w in prog.weights]
        for name, domain, channels, size in arrays:
            if name in self.trusted:
                continue
            count, label = items[domain]
            expected = f"({count}, channels, {size})" if channels else f"({count}, {size})"
            shape = f"({label}, channels, {size})" if channels else f"({label}, {size})"
            lines.append(f'{SHAPE_CHECK}({name}, {expected}, "{name} must have shape {shape}")')
        if self.graph:
            lines.append(f"{GRAPH_CHECK}(senders, receivers, receiver_offsets, num_nodes)  # sorted by receiver, CSR")
        if self.by_sender:
            lines.append(f"{SENDER_CHECK}(senders, sender_order, sender_offsets, num_nodes)  # CSR by sender")
        return lines

    def body(self) -> list[str]:
        """The function body (computed once: identifiers are handed out while printing)."""
        if self._body is None:
            self._body = self._print_body()
        return self._body

    def _print_body(self) -> list[str]:
        lines = self._sizes() + self._checks()
        for k, kernel in enumerate(self.kernels):
            lines += self.kernel_lines(k, kernel)
        outs = [v.name for v in self.program.outputs]
        lines += ["return (" + ", ".join(outs) + ("," if len(outs) == 1 else "") + ")"]
        return lines


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line.replace("\n", "\n    ") if line else line for line in lines]


def render_program(program: Program, function_name: str | None = None, trusted: frozenset = frozenset()) -> dict:
    """Pieces the template needs for one program. ``trusted``: inputs whose shapes are right
    by construction (arrays an earlier segment of the same program allocated), not checked."""
    printer = NumbaPrinter(program, function_name, trusted)
    body = printer.body()
    lines = [row for line in body for row in line.split("\n")]
    return {
        "name": printer.name,
        "program": program.name,
        "doc": program.doc,
        "signature": printer.signature(),
        "body": lines,
        "inputs": [v.name for v in program.inputs],
        "weights": [(w.name, w.count) for w in program.weights],
        "graph": printer.graph,
        "by_sender": printer.by_sender,
        "outputs": [v.name for v in program.outputs],
        "kernels": len(printer.kernels),
        "helpers": list(printer.helpers.values()),
        "channels": any(k.channels for k in printer.kernels),  # calls the template's rows kernels
    }


def render_module(programs, names=None, title: str = "IR programs") -> str:
    """Module source with one jitted function per program (``names`` overrides the function names)."""
    from .. import __version__
    from .templates import environment as _environment

    names = list(names) if names is not None else [p.name for p in programs]
    if len(set(names)) != len(names):
        raise ValueError("function names must be unique within a module")
    functions = [render_program(p, n) for p, n in zip(programs, names)]
    return _environment().get_template("numba_program.py.j2").render(
        version=__version__, title=title, functions=functions, helpers=collect_helpers(functions),
        any_channels=any(f.get("channels") for f in functions), any_mix=any(f.get("mix") for f in functions),
        graph_check=GRAPH_CHECK,
        any_graph=any(f["graph"] for f in functions), sender_check=SENDER_CHECK,
        any_sender=any(f["by_sender"] for f in functions))


# ------------------------------------------------------------------------------- loading

def load_source(source: str, folder: Path | str | None = None, module_name: str | None = None):
    """Write ``source`` to a real file (numba's ``cache=True`` needs one) and import it.

    The file is named by the hash of the source, so the same source in the same folder
    reuses the file (and numba's on-disk cache next to it). ``folder`` defaults to a
    fresh temporary folder.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    module_name = module_name or f"tacegen_numba_{digest}"
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="tacegen-numba-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module_name}.py"
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        atomic_write_text(path, source)  # an unchanged file keeps its stamp: numba's cache stays valid
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def compile_programs(programs, folder: Path | str | None = None, names=None):
    """Render ``programs`` into one module and import it; functions are jitted lazily on first call."""
    return load_source(render_module(programs, names), folder)


def graph_arguments(graph: dict, by_sender: bool = False) -> tuple:
    """(senders, receivers, receiver_offsets, num_nodes) from an interpreter-style graph dict;
    with ``by_sender`` (programs with a ScatterSenders: ``NumbaPrinter(p).by_sender``) also
    (sender_order, sender_offsets) from :func:`sender_csr`."""
    receivers = np.ascontiguousarray(graph["receivers"], dtype=np.int64)
    senders = np.ascontiguousarray(graph["senders"], dtype=np.int64)
    n = int(graph["num_nodes"])
    args = (senders, receivers, receiver_offsets(receivers, n), n)
    return args + sender_csr(senders, n) if by_sender else args
