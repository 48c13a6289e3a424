"""PyTorch printer: one ``torch.nn.Module`` class per IR program, as readable source.

A visitor over the ops (one method per op type) returns the lines for that op; the
jinja2 template ``templates/torch_model.py.j2`` holds the fixed scaffolding (embedding,
radial network, channel mixing, readouts, forces). Layout of every value:
``(items, channels, 2l+1)`` or ``(items, 2l+1)`` without channels.

Coupling tables are printed with their exact rational coefficients (as strings) and
turned into float buffers when the module is built, so the source stays exact and
deterministic. Couplings lower to one matmul each (see :mod:`tacegen.ir.cost`): many tiny
ops cost more than FLOPs in a framework.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

from ..algebra.coupling import Coupling
from ..algebra.ict import ict_polynomials, pattern_index, reduced_patterns
from ..ir.nodes import Couple, EdgeICT, Gather, Program, Scale, Scatter, Sum
from .printer import Printer, register


def table_name(c: Coupling) -> str:
    """Buffer name of a table. The equivariant coupling l1 x l2 -> l3 is unique, so its
    ranks name it; any other table with the same ranks (for example a transposed one
    from the reverse pass) gets a suffix derived from its exact entries."""
    if type(c) is Coupling:
        return f"T_{c.l1}_{c.l2}_{c.l3}"
    digest = hashlib.sha256(repr(sorted(c.entries)).encode()).hexdigest()[:8]
    return f"T_{c.l1}_{c.l2}_{c.l3}_{digest}"


def _fraction(c: Fraction) -> str:
    return f'"{c.numerator}/{c.denominator}"' if c.denominator != 1 else f'"{c.numerator}"'


def _is_scaled_identity(c: Coupling) -> Fraction | None:
    """Coefficient s if the table is s * identity with one side a scalar (rank 0)."""
    if c.l1 != 0 and c.l2 != 0:
        return None
    d = c.dims[2]
    if c.nnz != d or (c.dims[1] if c.l1 == 0 else c.dims[0]) != d:
        return None
    coeffs = set()
    for m1, m2, m3, v in c.entries:
        if (m2 if c.l1 == 0 else m1) != m3:
            return None
        coeffs.add(v)
    return coeffs.pop() if len(coeffs) == 1 else None


@register("torch", "core")
class TorchPrinter(Printer):
    """Prints the body of ``forward`` for a program, one block per op (``_print_<Op>``)."""

    def __init__(self, program: Program):
        self.program = program
        self.tables: dict[str, Coupling] = {}

    # -- visitor ---------------------------------------------------------------
    def _print_EdgeICT(self, op: EdgeICT) -> list[str]:
        l = op.out.rank
        if l == 0:
            return [f"{op.out.name} = torch.ones_like({op.direction.name}[:, :1])"]
        polys = ict_polynomials(l)
        idx = pattern_index(l)
        comps = []
        for alpha in reduced_patterns(l):
            terms = []
            for m, c in sorted(polys[idx[alpha]].items(), reverse=True):
                mono = self.monomial(m)
                coef = float(c)
                terms.append(f"{coef!r} * {mono}" if coef != 1.0 else mono)
            comps.append(" + ".join(terms).replace("+ -", "- "))
        lines = [f"# T_{l}(r_hat): {2 * l + 1} reduced components (patterns with at most one z)"]
        lines.append(f"{op.out.name} = torch.stack([")
        lines += [f"    {c}," for c in comps]
        lines.append("], dim=-1)")
        return lines

    def monomial(self, m) -> str:
        names = [f"{ax}{e}" if e > 1 else ax for ax, e in zip("xyz", m) if e]
        self.powers.update((ax, e) for ax, e in zip("xyz", m) if e > 1)
        return " * ".join(names) if names else "1.0"

    def _print_Couple(self, op: Couple) -> list[str]:
        c = op.coupling
        kind = "odd (Levi-Civita)" if c.odd else "even"
        head = f"# {op.comment}: {c.l1} x {c.l2} -> {c.l3}, {kind} path, {c.nnz} nonzeros"
        s = _is_scaled_identity(c)
        L, R = op.left.name, op.right.name
        if s is not None:
            factor = "" if s == 1 else f"{float(s)!r} * "
            left = L if op.left.channels or not op.right.channels else f"{L}.unsqueeze(1)"
            right = R if op.right.channels or not op.left.channels else f"{R}.unsqueeze(1)"
            return [head, f"{op.out.name} = {factor}{left} * {right}"]
        self.tables[table_name(c)] = c
        t = f"self.{table_name(c)}"
        d1, d2, d3 = c.dims
        if op.left.channels and not op.right.channels:
            return [head,
                    f"{op.out.name} = {L} @ ({R} @ {t}.permute(1, 0, 2).reshape({d2}, {d1 * d3}))"
                    f".view(-1, {d1}, {d3})"]
        if op.left.channels == op.right.channels:  # both with channels, or both channel-free
            return [head,
                    f"{op.out.name} = ({L}.unsqueeze(-1) * {R}.unsqueeze(-2)).flatten(-2) @ "
                    f"{t}.view({d1 * d2}, {d3})"]
        raise NotImplementedError("coupling of two channel-free values is not used by the builder")

    def _print_Scale(self, op: Scale) -> list[str]:
        # columns come from one unbind per weight (see forward_body): indexing a column
        # instead would make autograd allocate the whole weight array once per column
        note = f"  # {op.comment}" if op.comment else ""
        return [f"{op.out.name} = {op.src.name} * {op.weight}_columns[{op.index}]{note}"]

    def _print_Sum(self, op: Sum) -> list[str]:
        return [f"{op.out.name} = " + " + ".join(t.name for t in op.terms)]

    def _print_Gather(self, op: Gather) -> list[str]:
        return [f"{op.out.name} = {op.src.name}.index_select(0, senders)"]

    def _print_Scatter(self, op: Scatter) -> list[str]:
        src = op.src.name
        shape = f"[num_nodes, {src}.shape[1], {src}.shape[2]]" if op.src.channels else f"[num_nodes, {src}.shape[1]]"
        return [f"{op.out.name} = {src}.new_zeros({shape}).index_add_(0, receivers, {src})"]

    # -- whole program -----------------------------------------------------------
    def forward_body(self) -> list[str]:
        self.powers: set = set()
        body: list[str] = []
        for op in self.program.ops:
            body += self.print_op(op)
        prelude: list[str] = []
        if any(isinstance(op, EdgeICT) for op in self.program.ops):
            prelude.append("x, y, z = direction.unbind(-1)")
            for ax in "xyz":
                exps = sorted(e for a, e in self.powers if a == ax)
                prev = ax
                for e in range(2, (exps[-1] if exps else 1) + 1):
                    prelude.append(f"{ax}{e} = {prev} * {ax}")
                    prev = f"{ax}{e}"
        for w in self.program.weights:
            prelude.append(f"{w.name}_columns = {w.name}.unsqueeze(-1).unbind(2)  # {w.count} x (items, channels, 1)")
        body = prelude + body
        body.append("return [" + ", ".join(v.name for v in self.program.outputs) + "]")
        return body

    def signature(self) -> str:
        args = [f"{v.name}: Tensor" for v in self.program.inputs]
        args += [f"{w.name}: Tensor" for w in self.program.weights]
        if any(isinstance(op, (Gather, Scatter)) for op in self.program.ops):
            args += ["senders: Tensor", "receivers: Tensor", "num_nodes: int"]
        return ", ".join(["self"] + args)

    def table_lines(self) -> list[str]:
        lines = []
        for name in sorted(self.tables):
            c = self.tables[name]
            entries = ", ".join(f"({m1}, {m2}, {m3}, {_fraction(v)})" for m1, m2, m3, v in c.entries)
            storage = "reduced storage" if set(c.storages) == {"reduced"} else "storages " + ", ".join(c.storages)
            lines.append(f"# {c.l1} x {c.l2} -> {c.l3}: exact coefficients, {storage}")
            lines.append(f'self.register_buffer("{name}", coupling_table('
                         f"{c.dims}, [{entries}], dtype), "
                         f"persistent=False)")
        return lines


def class_name(program: Program) -> str:
    return "".join(part.capitalize() for part in program.name.split("_"))


def render_program(program: Program) -> dict:
    """Pieces the template needs for one program."""
    printer = TorchPrinter(program)
    body = printer.forward_body()
    return {
        "name": program.name,
        "class_name": class_name(program),
        "doc": program.doc,
        "signature": printer.signature(),
        "body": body,
        "tables": printer.table_lines(),
        "inputs": [v.name for v in program.inputs],
        "outputs": [v.name for v in program.outputs],
        "weights": [(w.name, w.count, list(w.labels)) for w in program.weights],
    }


