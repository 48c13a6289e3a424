"""Print a program that mixes equivariant, dense and long-range ops for Numba.

Three printers share the work: :class:`~tacegen.backends.numba_printer.NumbaPrinter` fuses
the equivariant ops (couplings, weights, neighbour sums) into per-item loops;
:class:`~tacegen.backends.numba_dense.DensePrinter` prints the dense ops (matrix products,
activations, geometry) as whole-array statements; the long-range ops
(:mod:`tacegen.ir.long_range`) are calls of the electrostatics kernels
(:mod:`tacegen.backends.long_range_printer`), printed as a plain Python function (the
kernels are jitted and parallel themselves; their float parameters are arguments, so a
new Ewald splitting parameter never recompiles anything). :func:`split` cuts a program
into *segments*, each printable by one of them, and :func:`render_chain` prints one
function per segment plus a plain Python function, named like the program, that calls
them in order (numba functions cannot take the ``params``/``graph`` dicts; the Python
layer costs a few microseconds per segment).

Segments are formed greedily: take every op whose inputs are ready and that the current
printer accepts (``Sum`` and ``Zeros`` go with any), then switch to the printer of the
next ready op. This keeps the number of segments (and passes over memory) small without
reordering anything that depends on anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.dense_ops import Array, ParamSpec
from ..ir.nodes import (
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
    WeightSpec,
    Zeros,
    op_params,
)
from . import long_range_printer as lrp
from .numba_dense import DensePrinter, render_dense_program
from .numba_printer import render_program

CORE, DENSE, LONG_RANGE, EITHER = "core", "dense", "long_range", "either"
CORE_OPS = (EdgeICT, Couple, Scale, Gather, Scatter, EdgeICTGrad, ChannelSum, GatherReceivers, ScatterSenders,
            Stack)


def op_kind(op) -> str:
    if type(op) in lrp.NUMBA_METHODS:
        return LONG_RANGE
    if isinstance(op, (Sum, Zeros)):
        return EITHER
    if isinstance(op, CORE_OPS):
        return CORE
    if DensePrinter.supports(op):
        return DENSE
    raise NotImplementedError(f"no Numba printer handles {type(op).__name__}")


@dataclass(frozen=True)
class Segment:
    kind: str
    program: Program


def split(program: Program) -> list[Segment]:
    """Segments in execution order; each one's inputs are program inputs or earlier outputs."""
    ready = {v.name for v in program.inputs}
    remaining = list(program.ops)
    groups: list[tuple[str, list]] = []
    while remaining:
        kinds = [op_kind(op) for op in remaining if all(v.name in ready for v in op.inputs)]
        kind = next((k for k in kinds if k != EITHER), None) or _either_kind(remaining, ready)
        taken = []
        progress = True
        while progress:
            progress = False
            for op in list(remaining):
                if op_kind(op) in (kind, EITHER) and all(v.name in ready for v in op.inputs):
                    taken.append(op)
                    remaining.remove(op)
                    ready.add(op.out.name)
                    progress = True
        groups.append((kind, taken))
    return [Segment(k, _segment_program(program, f"{program.name}_k{i + 1}", ops, groups[i + 1:]))
            for i, (k, ops) in enumerate(groups)]


def _either_kind(ops, ready) -> str:
    """Printer for ready ops that any printer takes (Sum, Zeros): dense for plain arrays."""
    op = next(op for op in ops if all(v.name in ready for v in op.inputs))
    return DENSE if isinstance(op.out, Array) else CORE


def render_long_range_segment(program: Program) -> dict:
    """A segment of long-range ops as a plain Python function (the template's kernel dict)."""
    args = [v.name for v in program.inputs] + list(lrp.graph_args(program)) + list(lrp.scalar_args(program))
    body = [line for op in program.ops for line in lrp._generic_lines(op, lrp.NUMBA_METHODS, "numba")]
    outs = [v.name for v in program.outputs]
    body.append(f"return ({', '.join(outs)}{',' if len(outs) == 1 else ''})")
    return {"name": program.name, "program": program.name, "doc": program.doc, "signature": ", ".join(args),
            "body": body, "inputs": [v.name for v in program.inputs], "weights": [], "graph": False,
            "by_sender": False, "outputs": outs, "kernels": len(program.ops), "jit": False}


RENDERERS = {CORE: render_program, DENSE: render_dense_program, LONG_RANGE: render_long_range_segment}


def _segment_program(program: Program, name: str, ops: list, later: list) -> Program:
    defined = {op.out.name for op in ops}
    weights = {w.name: w for w in program.weights}
    inputs, seen = [], set()
    used_weights = []
    for op in ops:
        for v in op.inputs:
            if v.name not in defined and v.name not in seen:
                seen.add(v.name)
                inputs.append(v)
        names = [getattr(op, "weight", None)] + [p.name for p in op_params(op)]
        for w in names:
            if isinstance(w, str) and w in weights and weights[w] not in used_weights:
                used_weights.append(weights[w])
    read_later = {v.name for _, group in later for op in group for v in op.inputs}
    read_later |= {v.name for v in program.outputs}
    outputs = tuple(op.out for op in ops if op.out.name in read_later)
    return Program(name, f"Part of {program.name}.", tuple(inputs), tuple(used_weights), tuple(ops),
                   outputs).check()


def render_chain(program: Program, printed: dict | None = None) -> tuple[list[dict], list[str]]:
    """(rendered kernels for the template, lines of the Python function ``program.name``).

    ``printed`` (shared by the programs of one module): printed segment (signature, body) ->
    function name. A segment printed identically before is not printed again: the program
    calls the function printed first (identical kernels are emitted once per module)."""
    printed = {} if printed is None else printed
    kernels = []
    weight_specs = [w.name for w in program.weights if isinstance(w, WeightSpec)]
    params = {w.name for w in program.weights if isinstance(w, ParamSpec)}
    args = [v.name for v in program.inputs] + weight_specs + ["params", "graph"]
    segments = split(program)
    lines = [f"def {program.name}({', '.join(args)}):",
             f'    """{program.doc} IR program {program.name}: {len(program.ops)} ops in {len(segments)} jitted '
             'segment(s)."""']
    program_inputs = set(v.name for v in program.inputs) | set(weight_specs)
    scope = set(program_inputs)
    for seg in segments:
        if seg.kind == CORE:  # arrays of earlier segments have their shapes by construction
            rendered = render_program(seg.program, trusted=frozenset(scope - set(program_inputs)))
        else:
            rendered = RENDERERS[seg.kind](seg.program)
        key = (rendered.get("jit", True), rendered["signature"], tuple(rendered["body"]))
        if key in printed:
            rendered = {**rendered, "name": printed[key]}
        else:
            printed[key] = rendered["name"]
            kernels.append(rendered)
        call = []
        for name in (a.strip() for a in rendered["signature"].split(",") if a.strip()):
            if name in scope:
                call.append(name)
            elif name in params:
                call.append(f'params["{name}"]')
            else:
                call.append(f'graph["{name}"]')
        outs = [v.name for v in seg.program.outputs]
        target = ", ".join(outs) + ("," if len(outs) == 1 else "")
        lines.append(f"    {target} = {rendered['name']}({', '.join(call)})  # {seg.kind}: "
                     f"{len(seg.program.ops)} ops")
        scope |= set(outs)
    outs = [v.name for v in program.outputs]
    lines.append(f"    return ({', '.join(outs)}{',' if len(outs) == 1 else ''})")
    return kernels, lines
