"""The Numba back end of a whole model: which programs, their reverse passes, the weights.

* :func:`spec_programs`: the programs fixed by the spec (geometry, edge basis, one per
  layer kind), forward and reverse; printed at build time into ``numba_model.py``.
* :func:`instance_programs`: the programs fixed by a model instance's constructor
  arguments (radial basis with its cut-off, radial MLPs and readouts with their widths),
  forward and reverse; printed when a PyTorch model is bound to the Numba back end, and
  cached on disk by content hash.
* :func:`convert_state`: the documented conversion of a PyTorch ``TACE`` module's weights
  to the numpy arrays the programs read (see its docstring).

Every reverse program is :func:`tacegen.ir.reverse.reverse` of its forward program; the
chain walker :class:`tacegen.runtime.chain.ModelChain` connects them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..ir import dense_reverse  # noqa: F401  (registers the dense ops and their adjoints)
from ..ir.build import edge_basis_program
from ..ir.model import (
    ewald_program,
    geometry_program,
    layer_kinds,
    les_program,
    radial_basis_program,
    radial_mlp_program,
    readout_program,
)
from ..ir.nodes import Program
from ..ir.reverse import reverse
from ..runtime.chain import LayerInfo, LayerWeights, ModelWeights, reverse_wrt

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
    """Programs of the spec (core blocks as optimised), forward and reverse, and the layer kinds."""
    progs = compiled.optimised if optimised else compiled.naive
    kinds = layer_kinds(progs.interactions, progs.products, compiled.spec.hidden_ranks)
    forward = [geometry_program(), edge_basis_program(compiled.spec.lmax)] + [k.program for k in kinds]
    wrt = dict(REVERSE_WRT)
    wrt.update({k.name: reverse_wrt(k.info()) for k in kinds})
    return with_reverse(forward, wrt), [k.info() for k in kinds]


def instance_programs(r_cut: float, num_radial: int, cutoff_p: int, radial_hidden, readout_hidden: int,
                      channels: int, paths: set, les: dict | None = None) -> dict[str, Program]:
    """Programs that depend on a model instance's sizes and cut-off, forward and reverse;
    with ``les`` (sigma, k_cut, constrained) also the latent Ewald summation."""
    forward = [radial_basis_program(r_cut, num_radial, cutoff_p), readout_program(channels, None),
               readout_program(channels, readout_hidden)]
    forward += [radial_mlp_program(num_radial, radial_hidden, channels, p) for p in sorted(paths)]
    wrt = {p.name: ["lengths"] if p.name == "radial_basis" else ["features"] if p.name.startswith("radial")
           else ["h_out0"] for p in forward}
    if les is not None:  # both variants: charges constrained to a total, or free
        for constrained in (True, False):
            p = les_program(channels, les["sigma"], les["k_cut"], constrained)
            if not constrained:
                p = replace(p, name="long_range_free")
            forward.append(p)
            wrt[p.name] = ["h_out0", "positions", "strain"]
    return with_reverse(forward, wrt)


def ewald_programs(alpha: float, r_cut: float | None, k_cut: float | None, name: str) -> dict[str, Program]:
    """The classic Ewald program for one choice of splitting parameters, and its reverse."""
    return with_reverse([ewald_program(alpha, r_cut, k_cut, name)], {name: ["positions", "strain"]})


def _linears(sequential) -> list:
    import torch

    return [m for m in sequential.modules() if isinstance(m, torch.nn.Linear)]


def convert_state(model, kinds: dict[str, LayerInfo], dtype=np.float64) -> tuple[ModelWeights, dict]:
    """Numpy weights of a generated PyTorch ``TACE`` module, and the instance sizes.

    Conversion (PyTorch name -> program weight):

    * ``embedding`` (elements, C) -> h0 = embedding[z] as (N, C, 1);
    * ``blocks[t].linear_up[k].weight`` (C, C) -> ``up<rank>`` (einsum "ncd,ck->nkd", as is);
    * ``blocks[t].linear_A[l].weight / avg_num_neighbors`` -> ``mixA<l>`` (the neighbour-sum
      normalisation folded into the linear map that follows it);
    * ``linear_B[k]``, ``skip[k]`` -> ``mixB<rank>``, ``skip<rank>``;
    * ``radial.net`` Linear ``weight`` (fan_out, fan_in) -> ``radial<k>`` = weight.T;
    * ``readout`` Linear ``weight`` -> ``readout<k>`` = weight.T;
    * ``product_weights`` (elements, C, trees) -> gathered by element per atom;
    * ``atomic_energies``, ``scale``, ``shift`` as is;
    * long range "les": ``charge_readout.weight`` (1, C) -> ``charge0`` = weight.T.
    """
    def arr(t):
        return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)

    layers = []
    paths = set()
    radial_hidden = readout_hidden = None
    for block in model.blocks:
        name = type(block).__name__.lower()
        if name not in kinds:
            raise ValueError(f"layer class {type(block).__name__} has no Numba program (known: {sorted(kinds)})")
        kind = kinds[name]
        params = {}
        for k, lin in zip(kind.in_ranks, block.linear_up):
            params[f"up{k}"] = arr(lin.weight)
        for l, lin in enumerate(block.linear_A):
            params[f"mixA{l}"] = arr(lin.weight * block.inv_avg_num_neighbors)
        for k, lin in zip(kind.out_ranks, block.linear_B):
            params[f"mixB{k}"] = arr(lin.weight)
        for k, lin in zip(block.skip_ranks, block.skip):
            params[f"skip{k}"] = arr(lin.weight)
        radial_linears = _linears(block.radial.net)
        radial = {f"radial{k}": arr(lin.weight.t()) for k, lin in enumerate(radial_linears)}
        readout_linears = _linears(block.readout)
        readout = {f"readout{k}": arr(lin.weight.t()) for k, lin in enumerate(readout_linears)}
        hidden = tuple(lin.out_features for lin in radial_linears[:-1])
        if radial_hidden is not None and hidden != radial_hidden:
            raise ValueError("all layers must share the radial MLP widths")
        radial_hidden = hidden
        if len(readout_linears) == 2:
            readout_hidden = readout_linears[0].out_features
        paths.add(kind.num_edge_paths)
        layers.append(LayerWeights(name, params, radial, readout, arr(block.product_weights),
                                   f"radial_mlp_{kind.num_edge_paths}",
                                   "readout_linear" if len(readout_linears) == 1 else
                                   f"readout_mlp_{readout_linears[0].out_features}"))
    weights = ModelWeights(arr(model.embedding), arr(model.atomic_energies), float(model.scale),
                           float(model.shift), layers)
    les = None
    if getattr(model, "long_range", "none") == "les":
        weights.long_range = {"charge0": arr(model.charge_readout.weight.t())}
        les = {"sigma": float(model.les_sigma), "k_cut": float(model.les_k_cut)}
    sizes = {"r_cut": float(model.r_cut), "num_radial": int(model.bessel.num_basis),
             "cutoff_p": int(model.cutoff.p), "radial_hidden": radial_hidden,
             "readout_hidden": readout_hidden or 16, "channels": int(model.channels), "paths": paths,
             "les": les}
    return weights, sizes


def render_numba_module(programs: dict[str, Program], title: str, description: str, *, spec=None,
                        kinds: list[LayerInfo] | None = None, bind: bool = False, long_range: bool = False) -> str:
    """Module source: every program as jitted segments plus a Python function, SIGNATURES,
    PROGRAMS (and for a build: SPEC, LAYER_KINDS, ``bind``)."""
    import json

    from .. import __version__
    from ..build import _environment, command_line
    from ..ir.nodes import WeightSpec
    from .numba_printer import GRAPH_CHECK, SENDER_CHECK
    from .numba_segments import render_chain

    from ..ir.long_range import LongRangeOp  # noqa: F401  (registers the long-range ops)
    from .long_range_printer import NUMBA_METHODS, render_numba_long_range

    functions, rendered = [], []
    long_range = long_range or any(type(op) in NUMBA_METHODS for p in programs.values() for op in p.ops)
    for name in programs:
        p = programs[name]
        kernels, lines = render_chain(p)
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
        programs=rendered, functions=functions, layer_kinds=kinds or [],
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
        "The programs fixed by the spec: edge geometry, edge ICTs and one program per layer kind,\n"
        "each with its reverse pass derived in the IR (forces and virial without autograd). The\n"
        "radial basis, radial MLPs and readouts depend on the model instance's constructor\n"
        "arguments; they are printed from the IR when a model is bound (``bind(model)``) and\n"
        "cached on disk. Units: eV, Å.")
    return render_numba_module(programs, "TACE potential (Numba)", description, spec=spec, kinds=kinds,
                               bind=True)


def render_instance_module(sizes: dict, long_range: str = "none") -> str:
    """The instance-specific programs (radial basis, radial MLPs, readouts; the latent Ewald
    summation) as a module; with ``long_range`` other than "none" it also holds the
    electrostatics kernels (the classic Ewald programs are added per splitting choice by
    :func:`python_programs`)."""
    programs = instance_programs(**sizes)
    description = (f"Radial basis, radial MLPs and readouts for r_cut={sizes['r_cut']!r} Å, "
                   f"{sizes['num_radial']} radial functions, radial MLP widths {tuple(sizes['radial_hidden'])}, "
                   f"{sizes['channels']} channels.")
    return render_numba_module(programs, "TACE instance programs (Numba)", description,
                               long_range=long_range != "none")


def python_programs(programs: dict[str, Program]) -> str:
    """Source of programs made only of long-range ops (and sums): plain Python functions
    calling the electrostatics kernels, for ``exec`` in a module that holds those kernels.
    Nothing is compiled, so new Ewald parameters cost no JIT."""
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
