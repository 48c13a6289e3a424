"""Peer benchmark: one MACE (mace-torch) training step on a batch of rattled 32-atom Cu cells.

    python -m benchmarks.peer_mace_train --batch 4 --dtype float64 [--threads N] --json

Model as benchmarks/peer_mace.py (64x0e + 64x1o, max_ell 3, correlation 3, 2
interactions). A step: forward with forces and stress (training=True, so the graph is
kept for the double backward), loss = mean squared per-atom energy + forces + stress
errors against fixed random labels, backward, AdamW (amsgrad) step. Run it through
benchmarks.common.run_peer_subprocess (e3nn 0.4.4 needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1).
"""

from __future__ import annotations

import argparse
import json
import resource

from benchmarks.common import cu_fcc, set_threads, time_call
from benchmarks.peer_mace import _import_mace, build_model


def run(args) -> dict:
    import torch

    if args.threads:
        set_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    mace_data, modules, torch_geometric, utils, version = _import_mace()
    structures = [cu_fcc(2, seed=k) for k in range(args.batch)]
    z_table = utils.AtomicNumberTable([29])
    graphs = []
    for atoms in structures:
        config = mace_data.config_from_atoms(atoms, key_specification=mace_data.KeySpecification())
        graphs.append(mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=args.r_max, heads=["Default"]))
    batch = torch_geometric.Batch.from_data_list(graphs)
    n_atoms, n_edges = int(batch["positions"].shape[0]), int(batch["edge_index"].shape[1])
    model = build_model(modules, z_table, n_edges / n_atoms, args).to(dtype)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, amsgrad=True)
    base = {k: (v.to(dtype) if torch.is_tensor(v) and torch.is_floating_point(v) else v)
            for k, v in batch.to_dict().items()}
    gen = torch.Generator().manual_seed(1)
    ref_e = torch.randn(args.batch, generator=gen, dtype=dtype)
    ref_f = torch.randn(n_atoms, 3, generator=gen, dtype=dtype)
    ref_s = torch.randn(args.batch, 3, 3, generator=gen, dtype=dtype) * 0.01
    per = torch.full((args.batch,), n_atoms / args.batch, dtype=dtype)

    def step():
        data = dict(base)
        data["positions"] = base["positions"].detach().clone()
        optimizer.zero_grad(set_to_none=True)
        out = model(data, training=True, compute_force=True, compute_stress=True)
        loss = (((out["energy"] - ref_e) / per) ** 2).mean() + ((out["forces"] - ref_f) ** 2).mean() \
            + ((out["stress"] - ref_s) ** 2).mean()
        loss.backward()
        optimizer.step()

    t = time_call(step, repeats=args.repeats, warmup=args.warmup)
    return {"peer": "mace", "version": version, "atoms": n_atoms, "edges": n_edges, "dtype": args.dtype,
            "threads": torch.get_num_threads(), "median_s": t["median"], "min_s": t["min"],
            "num_params": sum(p.numel() for p in model.parameters()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--r-max", type=float, default=5.0)
    ap.add_argument("--poly-cutoff", type=int, default=5)
    ap.add_argument("--hidden-irreps", default="64x0e + 64x1o")
    ap.add_argument("--reduced-cg", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = run(args)
    print(json.dumps(res) if args.json else res)


if __name__ == "__main__":
    main()
