"""Peer benchmark: MACE (mace-torch) energy + forces on rattled fcc Cu, random weights.

    python -m benchmarks.peer_mace --atoms 256 --dtype float64 --threads 2 --repeats 10 --json

Model at the setting matched to tacegen's anchor (docs/performance.md): r_max 5 A,
8 Bessel functions, polynomial cutoff p=5, max_ell 3, correlation 3, hidden irreps
64x0e + 64x1o, 2 interactions, MLP 16x0e, radial MLP [64, 64, 64], silu gate, one
element (Cu), zero atomic energies, avg_num_neighbors = the structure's mean. Built as
`mace run_train --model MACE` would (ScaleShiftMACE, RealAgnosticInteractionBlock then
RealAgnosticResidualInteractionBlock, non-reduced CG as in the training CLI default).

The graph (neighbour list) is built with mace's own data pipeline
(config_from_atoms -> AtomicData.from_config -> torch_geometric Batch), as
mace.calculators.MACECalculator does, outside the timed region. The timed call is
model(batch, compute_force=True, compute_stress=False).

e3nn 0.4.4 (pinned by mace-torch) needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 to import
under torch >= 2.6: run this through benchmarks.common.run_peer_subprocess, or set the
variable on the command line of this process only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys

from benchmarks.common import cu_fcc, n_rep_for_atoms, peak_rss_mb, rss_mb, set_threads, time_call

DTYPES = ("float32", "float64")


def _import_mace():
    if "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ:
        print("warning: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is not set; e3nn 0.4.4 may fail "
              "to import (use benchmarks.common.run_peer_subprocess)", file=sys.stderr)
    import warnings

    # e3nn/mace TorchScript-compile their modules at import and construction: noisy, harmless.
    warnings.filterwarnings("ignore", message="The TorchScript type system")
    try:
        import mace  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        raise SystemExit(f"mace-torch is not installed ({exc}); run `make peers`") from exc
    from mace import data as mace_data
    from mace import modules
    from mace.__version__ import __version__
    from mace.tools import torch_geometric, utils

    return mace_data, modules, torch_geometric, utils, __version__


def build_batch(atoms, r_max, mace_data, torch_geometric, utils):
    """mace's own pipeline, as MACECalculator._atoms_to_batch (no padding)."""
    z_table = utils.AtomicNumberTable(sorted(set(int(z) for z in atoms.numbers)))
    config = mace_data.config_from_atoms(atoms, key_specification=mace_data.KeySpecification())
    graph = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max,
                                             heads=["Default"])
    batch = torch_geometric.Batch.from_data_list([graph])
    return batch, z_table


def build_model(modules, z_table, avg_num_neighbors, args):
    import numpy as np
    from e3nn import o3

    return modules.ScaleShiftMACE(
        r_max=args.r_max,
        num_bessel=8,
        num_polynomial_cutoff=args.poly_cutoff,
        max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2,
        num_elements=len(z_table),
        hidden_irreps=o3.Irreps(args.hidden_irreps),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(z_table)),
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=z_table.zs,
        correlation=3,
        gate=modules.gate_dict["silu"],
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        use_reduced_cg=args.reduced_cg,
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )


def run(args) -> dict:
    import torch

    set_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    torch.manual_seed(args.seed)
    mace_data, modules, torch_geometric, utils, version = _import_mace()

    atoms = cu_fcc(n_rep_for_atoms(args.atoms))
    batch, z_table = build_batch(atoms, args.r_max, mace_data, torch_geometric, utils)
    n_atoms = int(batch["positions"].shape[0])
    n_edges = int(batch["edge_index"].shape[1])
    avg_num_neighbors = n_edges / n_atoms

    model = build_model(modules, z_table, avg_num_neighbors, args).to(dtype)
    model.eval()
    for p in model.parameters():  # as MACECalculator
        p.requires_grad = False
    num_params = sum(p.numel() for p in model.parameters())

    # Inputs in the model dtype (as MACECalculator); fresh leaf positions each call.
    base = {k: (v.to(dtype) if torch.is_tensor(v) and torch.is_floating_point(v) else v)
            for k, v in batch.to_dict().items()}
    out = {}

    def call():
        data = dict(base)
        data["positions"] = base["positions"].detach().clone()
        res = model(data, training=False, compute_force=True, compute_stress=False)
        out["energy"] = float(res["energy"].detach().sum())
        out["forces"] = res["forces"]

    rss_before = rss_mb()  # model, graph and inputs in memory, no call made yet
    for _ in range(args.warmup):
        call()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time_call(call, repeats=args.repeats, warmup=0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = max(1, args.repeats)
    forces = out["forces"]
    return {
        "peer": "mace",
        "version": version,
        "atoms": n_atoms,
        "edges": n_edges,
        "avg_num_neighbors": avg_num_neighbors,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "median_s": t["median"],
        "min_s": t["min"],
        "all_s": t["all"],
        # CPU seconds per timed call (all threads): user+sys well below threads x wall
        # means the process was starved by other load on the machine.
        "user_s_per_call": (r1.ru_utime - r0.ru_utime) / n,
        "sys_s_per_call": (r1.ru_stime - r0.ru_stime) / n,
        "minor_faults_per_call": (r1.ru_minflt - r0.ru_minflt) / n,
        "num_params": num_params,
        # memory of E+F itself: the peak during the calls minus what was resident before
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "energy": out["energy"],
        "forces_finite": bool(torch.isfinite(forces).all()),
        "torch": torch.__version__,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--atoms", type=int, default=256, help="4*n^3 atoms: 256, 2048, 16384, ...")
    ap.add_argument("--dtype", choices=DTYPES, default="float64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
    ap.add_argument("--r-max", type=float, default=5.0)
    ap.add_argument("--poly-cutoff", type=int, default=5, help="num_polynomial_cutoff (p)")
    ap.add_argument("--hidden-irreps", default="64x0e + 64x1o")
    ap.add_argument("--reduced-cg", action="store_true",
                    help="use_reduced_cg=True (default False, as mace's training CLI)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    res = run(args)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"mace {res['version']}: {res['atoms']} atoms, {res['edges']} edges, "
              f"{res['dtype']}, {res['threads']} threads, {res['num_params']} params: "
              f"E+F median {res['median_s']:.3f} s (min {res['min_s']:.3f} s, "
              f"{res['repeats']} repeats)")


if __name__ == "__main__":
    main()
