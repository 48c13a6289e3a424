"""Printer of the long-range electrostatics ops (:mod:`tacegen.ir.long_range`) for both back ends.

The kernels are jinja2 snippets (``templates/long_range_numba.py.j2``,
``templates/long_range_torch.py.j2``) with the constants (K_E, sphere tolerance, series
coefficients) filled in by this module; generated modules paste them at module level.
The Numba snippet needs ``math``, ``numba``, ``np`` and ``prange`` in the module
namespace, the torch snippet ``math``, ``torch``, ``Tensor``, ``List``, ``Optional`` and
``Tuple`` (see :data:`NUMBA_IMPORTS`, :data:`TORCH_IMPORTS`).

Per op type, ``NUMBA_METHODS[type(op)](op)`` returns the lines computing ``op.out.name``
from arrays named by their IR value names, calling the snippet's kernels; the lines are
valid inside a ``numba.njit`` function and in plain Python. The graph arguments an op's
lines read are ``NUMBA_GRAPH_ARGS[type(op)]``, a subset of :data:`GRAPH_ARGS`
(``senders, receivers, receiver_offsets, sender_order, sender_offsets, batch,
num_nodes, num_structures``; receivers sorted, CSR offsets as in
:mod:`tacegen.backends.numba_printer`). ``TORCH_METHODS`` / ``TORCH_GRAPH_ARGS`` do the
same for the forward ops in torch (forces and stress by autograd there).

:func:`render_numba_program` / :func:`render_torch_program` print a whole program made
of these ops (plus ``Sum`` and ``Zeros`` of the reverse pass) as one function, and
:func:`numba_module_source` / :func:`torch_module_source` a module around the snippets:
used by the tests, and a reference for wiring the lines into generated models.
"""

from __future__ import annotations

import math
from typing import Callable

from .. import __version__
from ..ir import long_range as lr
from ..ir.nodes import Param, Program, Sum, Zeros, op_params
from .printer import PRINTERS, Printer, register

GRAPH_ARGS = ("senders", "receivers", "receiver_offsets", "sender_order", "sender_offsets", "batch",
              "num_nodes", "num_structures")

NUMBA_IMPORTS = "import math\n\nimport numba\nimport numpy as np\nfrom numba import prange\n"
TORCH_IMPORTS = "import math\nfrom typing import List, Optional, Tuple\n\nimport torch\nfrom torch import Tensor\n"

_STRUCTURE_ARGS = ("batch", "num_structures")
_PAIR_ARGS = ("senders", "receivers", "receiver_offsets", "batch", "num_structures")

#: Graph arguments read by the numba lines of each op type (canonical order of GRAPH_ARGS).
NUMBA_GRAPH_ARGS: dict[type, tuple[str, ...]] = {
    lr.ConstrainCharges: _STRUCTURE_ARGS,
    lr.StructureMean: _STRUCTURE_ARGS,
    lr.ReciprocalEnergy: _STRUCTURE_ARGS,
    lr.ReciprocalEnergyGrad: _STRUCTURE_ARGS,
    lr.PairEnergy: _PAIR_ARGS,
    lr.Columns: (),
    # wrt "strain" does not read the sender CSR; wrt "atoms" does
    lr.PairEnergyGrad: ("senders", "receivers", "receiver_offsets", "sender_order", "sender_offsets", "batch",
                        "num_structures"),
}

#: Graph arguments read by the torch lines of each forward op type.
TORCH_GRAPH_ARGS: dict[type, tuple[str, ...]] = {
    lr.ConstrainCharges: _STRUCTURE_ARGS,
    lr.ReciprocalEnergy: _STRUCTURE_ARGS,
    lr.PairEnergy: ("senders", "receivers", "batch", "num_structures"),
}


def _constants() -> dict:
    return {
        "version": __version__,
        "k_e": repr(lr.K_E),
        "sphere_rtol": repr(lr.SPHERE_RTOL),
        "nmax_rtol": repr(lr.NMAX_RTOL),
        "pair_series_x": repr(lr.PAIR_SERIES_X),
        "two_over_sqrt_pi": repr(2.0 / math.sqrt(math.pi)),
        "erf_series": [repr(c) for c in lr.ERF_SERIES],
    }


def _render(template: str) -> str:
    from .templates import environment as _environment

    return _environment().get_template(template).render(**_constants())


def render_numba_long_range() -> str:
    """The Numba kernels (module-level source; see the module docstring for the names it needs)."""
    return _render("long_range_numba.py.j2")


def render_torch_long_range() -> str:
    """The torch functions (module-level source, TorchScript compatible)."""
    return _render("long_range_torch.py.j2")


# ----------------------------------------------------------------------------- numba lines


def _f(x) -> str:
    """A float literal, or the name of a run-time parameter (an argument of the printed function)."""
    return x.name if isinstance(x, Param) else repr(float(x))


def _flag(x: bool, numba: bool) -> str:
    """A boolean argument. In numba lines ``np.bool_(...)``: a bare True/False inside an njit
    caller is typed Literal[bool] and would compile every kernel a second time."""
    return f"np.bool_({bool(x)})" if numba else str(bool(x))


def _numba_strain(op) -> str:
    if op.strain is not None:
        return op.strain.name
    return f"np.zeros((num_structures, 3, 3), {op.positions.name}.dtype)"


def _reciprocal_tail(op, numba: bool = True) -> str:
    return (f"batch, num_structures, {_f(op.gamma)}, {_f(op.k_cut)}, {_f(op.self_coefficient)}, "
            f"{_flag(op.background, numba)}")


def _pair_tail(op, numba: bool = True) -> str:
    r_cut = 0.0 if op.r_cut is None else op.r_cut
    return f"batch, num_structures, {_f(op.alpha)}, {_flag(op.kernel == 'erfc', numba)}, {_f(r_cut)}"


def _numba_constrain(op: lr.ConstrainCharges) -> list[str]:
    total = op.total.name if op.total is not None else f"np.zeros(num_structures, {op.charges.name}.dtype)"
    what = "neutral" if op.total is None else f"total charge {op.total.name}"
    return [f"{op.out.name} = lr_constrain_charges({op.charges.name}, {total}, batch, num_structures)  # {what}"]


def _numba_mean(op: lr.StructureMean) -> list[str]:
    return [f"{op.out.name} = lr_structure_mean({op.src.name}, batch, num_structures)"]


def _numba_reciprocal(op: lr.ReciprocalEnergy) -> list[str]:
    return [f"# {op.out.name}: reciprocal-space energy (gamma = {_f(op.gamma)} Å^2, k_cut = {_f(op.k_cut)} Å^-1)",
            f"{op.out.name} = lr_reciprocal_energy({op.positions.name}, {op.charges.name}, {op.cell.name}, "
            f"{_numba_strain(op)}, {_reciprocal_tail(op)})"]


def _numba_reciprocal_grad(op: lr.ReciprocalEnergyGrad) -> list[str]:
    args = (f"{op.positions.name}, {op.charges.name}, {op.cell.name}, {_numba_strain(op)}, {op.cotangent.name}, "
            f"{_reciprocal_tail(op)}")
    note = f"# {op.out.name}: d(reciprocal energy)/d{op.wrt} times {op.cotangent.name}"
    if op.wrt == "strain":
        return [note, f"{op.out.name} = lr_reciprocal_strain_grad({args})"]
    return [note + " (columns: dE/dr, dE/dq)", f"{op.out.name} = lr_reciprocal_grad({args})"]


def _pair_geometry(op) -> str:
    return f"{op.positions.name}, {op.charges.name}, {op.cell.name}, {op.shifts.name}, {_numba_strain(op)}"


def _numba_pair(op: lr.PairEnergy) -> list[str]:
    return [f"# {op.out.name}: real-space pair energy, {op.kernel}(alpha r)/r, alpha = {_f(op.alpha)} Å^-1",
            f"{op.out.name} = lr_pair_energy({_pair_geometry(op)}, senders, receivers, receiver_offsets, "
            f"{_pair_tail(op)})"]


def _numba_pair_grad(op: lr.PairEnergyGrad) -> list[str]:
    note = f"# {op.out.name}: d(pair energy)/d{op.wrt} times {op.cotangent.name}"
    if op.wrt == "strain":
        return [note, f"{op.out.name} = lr_pair_strain_grad({_pair_geometry(op)}, {op.cotangent.name}, senders, "
                      f"receivers, receiver_offsets, {_pair_tail(op)})"]
    return [note + " (columns: dE/dr, dE/dq)",
            f"{op.out.name} = lr_pair_grad({_pair_geometry(op)}, {op.cotangent.name}, senders, receivers, "
            f"receiver_offsets, sender_order, sender_offsets, {_pair_tail(op)})"]


def _numba_columns(op: lr.Columns) -> list[str]:
    """A C-contiguous copy (kernels are compiled for C arrays); one column gives (items,)."""
    cols = str(op.start) if op.stop - op.start == 1 else f"{op.start}:{op.stop}"
    return [f"{op.out.name} = np.ascontiguousarray({op.src.name}[:, {cols}])"]


#: op type -> lines of numba code computing ``op.out.name`` (forward and adjoint ops).
NUMBA_METHODS: dict[type, Callable[[object], list[str]]] = {
    lr.ConstrainCharges: _numba_constrain,
    lr.StructureMean: _numba_mean,
    lr.ReciprocalEnergy: _numba_reciprocal,
    lr.ReciprocalEnergyGrad: _numba_reciprocal_grad,
    lr.PairEnergy: _numba_pair,
    lr.PairEnergyGrad: _numba_pair_grad,
    lr.Columns: _numba_columns,
}


# ----------------------------------------------------------------------------- torch lines


def _torch_optional(v) -> str:
    return "None" if v is None else v.name


def _torch_constrain(op: lr.ConstrainCharges) -> list[str]:
    return [f"{op.out.name} = lr_constrain_charges({op.charges.name}, {_torch_optional(op.total)}, batch, "
            f"num_structures)"]


def _torch_reciprocal(op: lr.ReciprocalEnergy) -> list[str]:
    return [f"{op.out.name} = lr_reciprocal_energy({op.positions.name}, {op.charges.name}, {op.cell.name}, "
            f"{_torch_optional(op.strain)}, {_reciprocal_tail(op, numba=False)})"]


def _torch_pair(op: lr.PairEnergy) -> list[str]:
    return [f"{op.out.name} = lr_pair_energy({op.positions.name}, {op.charges.name}, {op.cell.name}, "
            f"{op.shifts.name}, {_torch_optional(op.strain)}, senders, receivers, {_pair_tail(op, numba=False)})"]


#: forward op type -> lines of torch code computing ``op.out.name``.
TORCH_METHODS: dict[type, Callable[[object], list[str]]] = {
    lr.ConstrainCharges: _torch_constrain,
    lr.ReciprocalEnergy: _torch_reciprocal,
    lr.PairEnergy: _torch_pair,
}


# ----------------------------------------------------------------------------- whole programs


def graph_args(program: Program, table: dict | None = None) -> tuple[str, ...]:
    """The graph arguments the ops of ``program`` read (``table``: NUMBA_GRAPH_ARGS by
    default), in the order of :data:`GRAPH_ARGS`."""
    table = NUMBA_GRAPH_ARGS if table is None else table
    used = {name for op in program.ops for name in table.get(type(op), ())}
    return tuple(name for name in GRAPH_ARGS if name in used)


class _LongRangePrinter(Printer):
    """Lines of one long-range op (``_print_<Op>`` from the backend's method table), of
    ``Sum`` and of ``Zeros``."""

    array_module = "np"

    def _print_Sum(self, op: Sum) -> list[str]:
        return [f"{op.out.name} = " + " + ".join(t.name for t in op.terms)]

    def _print_Zeros(self, op: Zeros) -> list[str]:
        return [f"{op.out.name} = {self.array_module}.zeros_like({op.like.name})"]

    def unsupported(self, op) -> str:
        return f"the long-range {self.backend} printer has no method for {type(op).__name__}"


def _with_methods(cls: type, methods: dict) -> type:
    for op_type, method in methods.items():
        setattr(cls, f"_print_{op_type.__name__}", staticmethod(method))
    return cls


@register("numba", "long_range")
class NumbaLongRangePrinter(_LongRangePrinter):
    array_module = "np"


@register("torch", "long_range")
class TorchLongRangePrinter(_LongRangePrinter):
    array_module = "torch"


_with_methods(NumbaLongRangePrinter, NUMBA_METHODS)
_with_methods(TorchLongRangePrinter, TORCH_METHODS)


def _generic_lines(op, methods: dict, backend: str) -> list[str]:
    """The lines of ``op`` by the long-range printer of ``backend`` (``methods``: its table)."""
    return PRINTERS[backend]["long_range"]().print_op(op)


def scalar_args(program: Program) -> tuple[str, ...]:
    """The run-time parameters (:class:`~tacegen.ir.nodes.Param`) of ``program``: arguments of
    the printed function after the graph arguments, in the order ``program.weights``
    declares them (scalar :class:`~tacegen.ir.dense_ops.ParamSpec` s of shape ())."""
    declared = tuple(w.name for w in program.weights if getattr(w, "shape", None) == ())
    for op in program.ops:
        for p in op_params(op):
            if p.name not in declared:
                raise ValueError(f"{program.name}: run-time parameter {p.name!r} of {type(op).__name__} is not "
                                 "declared in Program.weights")
    return declared


def _function(program: Program, name: str, methods: dict, table: dict, backend: str, typed: bool) -> list[str]:
    args = graph_args(program, table)
    scalars = scalar_args(program)
    if typed:
        params = [f"{v.name}: Tensor" for v in program.inputs]
        params += [f"{a}: int" if a in ("num_nodes", "num_structures") else f"{a}: Tensor" for a in args]
        params += [f"{a}: float" for a in scalars]
        head = f"def {name}({', '.join(params)}) -> List[Tensor]:"
    else:
        head = f"def {name}({', '.join([v.name for v in program.inputs] + list(args) + list(scalars))}):"
    lines = [head, f'    """{program.doc}"""' if program.doc else '    """IR program."""']
    for op in program.ops:
        lines += ["    " + line for line in _generic_lines(op, methods, backend)]
    outs = ", ".join(v.name for v in program.outputs)
    lines.append(f"    return [{outs}]" if typed else f"    return ({outs}{',' if len(program.outputs) == 1 else ''})")
    return lines


def render_numba_program(program: Program, function_name: str | None = None, jit: bool = False) -> str:
    """``program`` (long-range ops, Sum, Zeros) as one function calling the kernels: arguments
    the program inputs then :func:`graph_args`; returns the tuple of outputs. ``jit=True``
    decorates it with ``numba.njit(cache=True)`` (the kernels are parallel themselves)."""
    lines = _function(program, function_name or program.name, NUMBA_METHODS, NUMBA_GRAPH_ARGS, "numba", False)
    if jit:
        lines.insert(0, "@numba.njit(cache=True, fastmath=False)")
    return "\n".join(lines) + "\n"


def render_torch_program(program: Program, function_name: str | None = None) -> str:
    """A forward ``program`` of long-range ops as one TorchScript-compatible function
    (tensor arguments, ``num_structures: int``) returning the list of its outputs."""
    return "\n".join(_function(program, function_name or program.name, TORCH_METHODS, TORCH_GRAPH_ARGS,
                               "torch", True)) + "\n"


def numba_module_source(programs=(), names=None, jit: bool = False) -> str:
    """A module: imports, the Numba snippet and one function per program."""
    names = list(names) if names is not None else [p.name for p in programs]
    parts = [f'"""Long-range kernels rendered by tacegen {__version__}."""\n', NUMBA_IMPORTS, "",
             render_numba_long_range()]
    parts += ["\n" + render_numba_program(p, n, jit) for p, n in zip(programs, names)]
    return "\n".join(parts)


def torch_module_source(programs=(), names=None) -> str:
    """A module: imports, the torch snippet and one function per forward program."""
    names = list(names) if names is not None else [p.name for p in programs]
    parts = [f'"""Long-range functions rendered by tacegen {__version__}."""\n', TORCH_IMPORTS, "",
             render_torch_long_range()]
    parts += ["\n" + render_torch_program(p, n) for p, n in zip(programs, names)]
    return "\n".join(parts)
