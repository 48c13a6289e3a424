"""Measurements of a finished run: accuracy, size and cost.

:func:`measure_run` returns one flat dict per run folder:

* ``test_{energy,forces,stress}_{mae,rmse}``: errors of ``best.pt`` on the first test file
  (from the run's ``test.json``, written by ``tacegen train --test``), E meV/atom,
  F meV/Å, S meV/Å^3; absent without test data;
* ``params``: trainable parameters of the model;
* ``build_s``: seconds of a complete cold build of the spec (paths -> IR -> optimiser ->
  printers, written to a temporary folder), in a fresh process
  (:mod:`tacegen.study.buildtime`);
* ``paths``: independent paths of the build, as its REPORT.md lists them: edge coupling
  paths of each interaction program plus product-basis trees of each product program;
* ``mflop_per_atom``: the cost model of :mod:`tacegen.ir.cost` for one forward pass,
  MFLOP per atom: the edge basis once plus, per layer, its interaction and product programs
  times the channels, edge ops weighted by the mean neighbour count of the timing set;
* ``torch_us_per_atom`` (and ``numba_us_per_atom`` when asked): wall time of energy and
  forces of the fixed timing set (one batch), microseconds per atom, the best of several
  repetitions after a warm-up, in this process with ``threads`` torch threads, so every
  variant is timed alike.

The compiler is imported lazily, only for ``build_s``, ``paths`` and ``mflop_per_atom``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from tacegen.study.buildtime import cold_build_seconds
from tacegen.train import checkpoint
from tacegen.train.dataset import AtomsDataset, model_inputs, species_map
from tacegen.train.labels import LabelKeys

_COMPILED: Dict[str, Any] = {}


def test_errors(run_dir: Path) -> Dict[str, Optional[float]]:
    path = Path(run_dir) / "test.json"
    if not path.is_file():
        return {}
    files = json.loads(path.read_text()).get("files", {})
    if not files:
        return {}
    first = next(iter(files.values()))
    return {f"test_{q}_{m}": first.get(f"{q}_{m}") for q in ("energy", "forces", "stress") for m in ("mae", "rmse")}


def compiler_costs(spec: Dict[str, Any], layers: int, channels: int, neighbours: float) -> Dict[str, float]:
    """``build_s``, ``paths`` and ``mflop_per_atom`` of a spec (compiled once per process)."""
    from tacegen.build import compile_spec
    from tacegen.ir.build import edge_paths
    from tacegen.ir.cost import program_cost
    from tacegen.spec import ModelSpec

    model_spec = ModelSpec.from_dict(spec)
    if model_spec.hash not in _COMPILED:
        _COMPILED[model_spec.hash] = (compile_spec(model_spec), cold_build_seconds(spec))
    compiled, seconds = _COMPILED[model_spec.hash]
    progs = compiled.optimised
    paths = 0
    for prog in progs.interactions:
        in_ranks = sorted({v.rank for v in prog.inputs if v.name.startswith("h")})
        paths += len(edge_paths(in_ranks, model_spec.lmax))
    paths += sum(prog.weights[0].count for prog in progs.products)
    items = {"edge": float(neighbours), "node": 1.0}
    flops = program_cost(progs.edge_basis, items).flops
    for layer in range(layers):
        inter = progs.interactions[0] if layer == 0 else progs.interactions[-1]
        prod = progs.products[-1] if layer == layers - 1 else progs.products[0]
        flops += channels * (program_cost(inter, items).flops + program_cost(prod, items).flops)
    return {"build_s": seconds, "paths": paths, "mflop_per_atom": flops / 1e6}


def timing_batch(model, path: str, structures: int, keys: LabelKeys = LabelKeys()):
    """The first ``structures`` structures of ``path`` as one input batch, and its mean neighbours."""
    dataset = AtomsDataset.from_file(path, float(model.r_cut), keys)
    count = min(structures, len(dataset))
    if count == 0:
        raise ValueError(f"timing data {path} holds no structures")
    dtype = next(model.parameters()).dtype
    batch = dataset.collate(list(range(count)), species_map(list(model.elements)), dtype)
    inputs = model_inputs(batch)
    atoms = int(batch["num_atoms"].sum())
    return inputs, atoms, batch["edge_index"].shape[1] / atoms


def seconds_per_call(evaluate, inputs, repeats: int = 5, budget: float = 2.0) -> float:
    """Best wall time of ``evaluate(inputs)`` (energy and forces) after one warm-up call."""
    evaluate(inputs, compute_forces=True, compute_stress=False)
    best = float("inf")
    spent = 0.0
    for k in range(repeats):
        start = time.perf_counter()
        evaluate(inputs, compute_forces=True, compute_stress=False)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget and k >= 1:
            break
    return best


def measure_run(run_dir: Path, timing_data: Optional[str], timing_structures: int = 8, threads: int = 1,
                numba: bool = False) -> Dict[str, Any]:
    """The measurements of the run in ``run_dir`` (see module docstring)."""
    run_dir = Path(run_dir)
    best = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    payload = checkpoint.read(best)
    config = payload["config"]
    keys = LabelKeys(config["energy_key"], config["forces_key"], config["stress_key"], config["virials_key"],
                     config["weight_key"], config["config_type_key"])
    model = checkpoint.load_checkpoint(best)
    out: Dict[str, Any] = dict(test_errors(run_dir))
    out["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        neighbours = 43.0
        if timing_data is not None:
            inputs, atoms, neighbours = timing_batch(model, timing_data, timing_structures, keys)
            out["timing_atoms"] = atoms
            out["torch_us_per_atom"] = 1e6 * seconds_per_call(model, inputs) / atoms
            if numba:
                out["numba_us_per_atom"] = 1e6 * seconds_per_call(model.numba_backend(), inputs) / atoms
        out.update(compiler_costs(payload["spec"], int(payload["model_kwargs"]["layers"]),
                                  int(payload["model_kwargs"]["channels"]), neighbours))
    finally:
        torch.set_num_threads(previous)
    return out

