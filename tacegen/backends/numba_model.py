"""The Numba back end of a whole model: which programs, and their reverse passes.

* :func:`spec_programs`: every program of the model, forward and reverse, printed at build
  time into ``numba_model.py``; a model instance's sizes and scalars are run-time
  arguments, so binding a model prints nothing;
* the conversion of a PyTorch ``TACE`` module's weights to what the programs read is
  run-time code: :func:`tacegen.runtime.numba_weights.convert_state`.

Every reverse program is :func:`tacegen.ir.reverse.reverse` of its forward program; the
chain walker :class:`tacegen.runtime.chain.ModelChain` connects them.
"""

from __future__ import annotations

from ..ir import dense_reverse  # noqa: F401  (registers the dense ops and their adjoints)
from ..ir.model import (
    ewald_program,
    geometry_program,
    layer_kinds,
    les_program,
    radial_basis_program,
    radial_hidden_program,
    radial_out_program,
    readout_program,
)
from ..ir.nodes import Program
from ..ir.reverse import reverse
from ..runtime.chain import LayerInfo, reverse_wrt

REVERSE_WRT = {"geometry": ["positions", "strain"], "edge_basis": ["direction"], "radial_basis": ["lengths"]}


def with_reverse(programs: list[Program], wrt: dict) -> dict[str, Program]:
    """name -> program for each program and its reverse (``<name>_reverse``)."""
    out = {}
    for p in programs:
        out[p.name] = p
        r = reverse(p, wrt[p.name])
        out[r.name] = r
    return out


def spec_programs(compiled, optimised: bool = True) -> tuple[dict[str, Program], list[LayerInfo]]:
    """Every program of a build (core blocks as optimised), forward and reverse, and the
    layer kinds: geometry, edge basis, one per layer kind, the radial basis, the radial MLP
    layers (``radial_hidden``, ``radial_out_<paths>`` per layer kind's edge paths), the
    readouts and, with a long range, its programs (LES: ``long_range`` and
    ``long_range_free``; Ewald: ``ewald`` and ``coulomb``). Sizes and scalars of a model
    instance are run-time arguments (:mod:`tacegen.ir.model`)."""
    spec = compiled.spec
    progs = compiled.optimised if optimised else compiled.naive
    kinds = layer_kinds(progs.interactions, progs.products, spec.hidden_ranks)
    forward = [geometry_program(), progs.edge_basis] + [k.program for k in kinds]
    forward += [radial_basis_program(), radial_hidden_program()]
    forward += [radial_out_program(n) for n in sorted({k.num_edge_paths for k in kinds})]
    forward += [readout_program(False), readout_program(True)]
    wrt = dict(REVERSE_WRT)
    wrt.update({k.name: reverse_wrt(k.info()) for k in kinds})
    wrt.update({p.name: ["x"] for p in forward if p.name.startswith("radial_") and p.name != "radial_basis"})
    wrt.update({"readout_linear": ["h_out0"], "readout_mlp": ["h_out0"]})
    if spec.long_range == "les":
        forward += [les_program(True), les_program(False)]
        wrt.update({name: ["h_out0", "positions", "strain"] for name in ("long_range", "long_range_free")})
    elif spec.long_range == "ewald":
        forward += [ewald_program(True), ewald_program(False)]
        wrt.update({name: ["positions", "strain"] for name in ("ewald", "coulomb")})
    return with_reverse(forward, wrt), [k.info() for k in kinds]


def render_numba_module(programs: dict[str, Program], title: str, description: str, *, spec=None,
                        kinds: list[LayerInfo] | None = None, bind: bool = False, long_range: bool = False) -> str:
    """Module source: every program as jitted segments plus a Python function, SIGNATURES,
    PROGRAMS (and for a build: SPEC, LAYER_KINDS, ``bind``)."""
    import json

    from .. import __version__
    from ..spec import command_line
    from .templates import environment as _environment
    from ..ir.nodes import WeightSpec
    from .numba_printer import GRAPH_CHECK, SENDER_CHECK, collect_helpers
    from .numba_segments import render_chain

    from ..ir.long_range import LongRangeOp  # noqa: F401  (registers the long-range ops)
    from .long_range_printer import NUMBA_METHODS, render_numba_long_range

    functions, rendered, printed = [], [], {}
    long_range = long_range or any(type(op) in NUMBA_METHODS for p in programs.values() for op in p.ops)
    for name in programs:
        p = programs[name]
        kernels, lines = render_chain(p, printed)
        functions += kernels
        specs = [w.name for w in p.weights if isinstance(w, WeightSpec)]
        rendered.append({"name": p.name, "lines": lines, "inputs": repr(tuple(v.name for v in p.inputs)),
                         "weight_specs": repr(tuple(specs)),
                         "args": [v.name for v in p.inputs] + specs + ["params", "graph"],
                         "outputs": [v.name for v in p.outputs]})
    return _environment().get_template("numba_model.py.j2").render(
        version=__version__, spec_hash=spec.hash if spec else "", title=title, description=description,
        command=command_line(spec) if spec else "tacegen (instance-specific programs, rebuilt on demand)",
        spec_json=json.dumps(spec.to_dict(), sort_keys=True) if spec else "",
        programs=rendered, functions=functions, helpers=collect_helpers(functions), layer_kinds=kinds or [],
        any_channels=any(f.get("channels") for f in functions), any_mix=any(f.get("mix") for f in functions),
        any_graph=any(f["graph"] for f in functions), any_sender=any(f["by_sender"] for f in functions),
        graph_check=GRAPH_CHECK, sender_check=SENDER_CHECK, bind=bind,
        long_range_source=render_numba_long_range() if long_range else "")


def render_numba_model(compiled, optimised: bool = True) -> str:
    """``numba_model.py`` of a build: the spec's programs, forward and reverse."""
    spec = compiled.spec
    programs, kinds = spec_programs(compiled, optimised)
    description = (
        f"TACE potential (Numba back end): lmax={spec.lmax}, nu={spec.nu}, hidden ranks "
        f"{list(spec.hidden_ranks)}.\n\n"
        "Every program of the model: edge geometry, edge ICTs, one program per layer kind, the\n"
        "radial basis, the radial MLP layers, the readouts (and the long range), each with its\n"
        "reverse pass derived in the IR (forces and virial without autograd). What a model\n"
        "instance chooses (cut-off, basis size, widths, long-range parameters) reaches them as\n"
        "array shapes and run-time scalars, so nothing is printed when a model is bound\n"
        "(``bind(model)``). Units: eV, Å.")
    return render_numba_module(programs, "TACE potential (Numba)", description, spec=spec, kinds=kinds,
                               bind=True, long_range=spec.long_range != "none")


def python_programs(programs: dict[str, Program]) -> str:
    """Source of programs made only of long-range ops (and sums): plain Python functions
    calling the electrostatics kernels, for ``exec`` in a module that holds those kernels
    (benchmarks; a build prints them into ``numba_model.py``). Nothing is compiled."""
    from .numba_segments import render_chain

    parts = []
    for p in programs.values():
        kernels, lines = render_chain(p)
        for k in kernels:
            if k.get("jit", True):
                raise ValueError(f"{p.name}: segment {k['name']} needs compiling; use render_numba_module")
            body = "\n".join("    " + line for line in k["body"])
            parts.append(f"def {k['name']}({k['signature']}):\n    \"\"\"{k['doc']}\"\"\"\n{body}\n")
        parts.append("\n".join(lines) + "\n")
    return "\n\n".join(parts)


def first_call_seconds(folder) -> dict:
    """Time to bind a small float64 model of the build in ``folder`` to its Numba module and
    to evaluate energy, forces and stress of a 4-atom Cu cell the first time (numba compiles
    every kernel the model uses, or loads them from its cache next to the build) and the
    second time. ``cached``: whether numba's cache held kernels before the call."""
    import time
    from pathlib import Path

    import torch
    from ase.build import bulk

    from ..runtime.data import batch_atoms
    from ..runtime.loader import load

    cache = Path(folder) / "__pycache__"
    cached = cache.is_dir() and any(p.suffix == ".nbi" for p in cache.iterdir())
    package = load(folder)
    torch.manual_seed(0)
    model = package.TACE(elements=["Cu"], channels=8, r_cut=4.0, layers=2)
    start = time.perf_counter()
    fast = model.numba_backend()
    bind = time.perf_counter() - start
    batch = batch_atoms(bulk("Cu", "fcc", a=3.61, cubic=True), ["Cu"], 4.0)
    start = time.perf_counter()
    fast(batch)
    first = time.perf_counter() - start
    start = time.perf_counter()
    fast(batch)
    return {"bind": bind, "first": first, "second": time.perf_counter() - start, "cached": cached}
