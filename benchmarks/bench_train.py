"""Training-step time of tacegen against mace-torch, measured in the same run.

    python -m benchmarks.bench_train [--dtype float64 float32] [--threads 0 1] [--batch 4]

A step: forward with energy, forces and stress (train mode: the graph is kept for the
double backward), loss = mean squared per-atom energy + forces + stress errors against
fixed random labels, backward, AdamW (amsgrad) step, on a batch of rattled 32-atom fcc
Cu cells. Matched sizes: 64 channels, lmax 3 / max_ell 3, nu 3 / correlation 3, 2 layers,
r_cut 5 Å, radial MLP [64, 64, 64]. ``--threads 0`` is torch's default (as users run it).
Prints median ms per step, the ratio tacegen / MACE and each process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from benchmarks.common import REPO_ROOT, cu_fcc, run_peer_subprocess, set_threads, time_call


def tacegen_step(batch_size: int, dtype_name: str, threads: int, repeats: int = 10, warmup: int = 2) -> dict:
    import torch

    import tacegen
    from tacegen.runtime.data import batch_atoms

    if threads:
        set_threads(threads)
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    structures = [cu_fcc(2, seed=k) for k in range(batch_size)]
    model = tacegen.load(REPO_ROOT / "generated" / "tace_l3_nu3").TACE(["Cu"], channels=64, layers=2, r_cut=5.0,
                                                                       dtype=dtype)
    model.train()
    batch = batch_atoms(structures, ["Cu"], 5.0, dtype=dtype)
    n = batch["positions"].shape[0]
    gen = torch.Generator().manual_seed(1)
    ref_e = torch.randn(batch_size, generator=gen, dtype=dtype)
    ref_f = torch.randn(n, 3, generator=gen, dtype=dtype)
    ref_s = torch.randn(batch_size, 3, 3, generator=gen, dtype=dtype) * 0.01
    per = batch["num_atoms"].to(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, amsgrad=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(batch, compute_forces=True, compute_stress=True)
        loss = (((out["energy"] - ref_e) / per) ** 2).mean() + ((out["forces"] - ref_f) ** 2).mean() \
            + ((out["stress"] - ref_s) ** 2).mean()
        loss.backward()
        optimizer.step()

    t = time_call(step, repeats=repeats, warmup=warmup)
    return {"median_s": t["median"], "min_s": t["min"], "threads": torch.get_num_threads(),
            "num_params": sum(p.numel() for p in model.parameters()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"])
    ap.add_argument("--threads", nargs="+", type=int, default=[0, 1], help="0 = torch's default")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:  # one measurement in a fresh process (threads set before any work)
        print(json.dumps(tacegen_step(args.batch, args.dtype[0], args.threads[0], args.repeats)))
        return
    print(f"training step, batch of {args.batch} x 32-atom Cu, E+F+S loss, backward, AdamW")
    print(f"{'dtype':8} {'threads':>7} {'tacegen ms':>11} {'MACE ms':>9} {'ratio':>6} {'RSS MB t/M':>12} params t/M")
    for dtype in args.dtype:
        for threads in args.threads:
            ours = json.loads(subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_train", "--worker", "--dtype", dtype, "--threads",
                 str(threads), "--batch", str(args.batch), "--repeats", str(args.repeats)],
                cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            peer_args = ["--batch", args.batch, "--dtype", dtype, "--repeats", args.repeats]
            if threads:
                peer_args += ["--threads", threads]
            try:
                peer = run_peer_subprocess("peer_mace_train", peer_args)
            except Exception as error:  # mace-torch missing: report ours alone
                peer = None
                print(f"  (MACE not measured: {str(error).splitlines()[0][:120]})")
            label = threads or f"{ours['threads']} (default)"
            if peer:
                print(f"{dtype:8} {label!s:>7} {ours['median_s'] * 1e3:11.1f} {peer['median_s'] * 1e3:9.1f} "
                      f"{ours['median_s'] / peer['median_s']:6.2f} {ours['peak_rss_mb']:5.0f}/{peer['peak_rss_mb']:5.0f}"
                      f"  {ours['num_params']}/{peer['num_params']}")
            else:
                print(f"{dtype:8} {label!s:>7} {ours['median_s'] * 1e3:11.1f} {'-':>9} {'-':>6} "
                      f"{ours['peak_rss_mb']:5.0f}/-  {ours['num_params']}")


if __name__ == "__main__":
    main()
