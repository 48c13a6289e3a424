"""E+F benchmark of the generated lmax=3, nu=3 TACE model against MACE, in one run.

    python -m benchmarks.bench_model [--repeats 10] [--threads 2] [--skip-peer] [--sizes 256 2048 8192]
                                     [--memory-sizes 256 2048 8192]

Setup (docs/performance.md): Cu fcc 4x4x4 cubic (256 atoms, a = 3.61 Å, rattled
0.05 Å, seed 0), r_cut 5 Å, 64 channels, 2 layers, random weights; neighbour list built
outside the timed call; median of ``--repeats`` after warm-up, ``--threads`` threads.
Prints: tacegen optimised and unoptimised (naive IR) in float64 and float32, MACE at the
matched setting (subprocess, see benchmarks/peer_mace.py), the ratios, time per atom
at growing sizes (linear scaling means a flat column; the growth from the first to the
last size is printed) and the memory of E+F at each of ``--memory-sizes`` next to MACE's:
each size runs in a fresh subprocess of each model, which reports its resident memory
before the first call and its peak during the calls (float64; the difference is what E+F
itself needs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import (REPO_ROOT, cu_fcc, n_rep_for_atoms, peak_rss_mb, rss_mb, run_peer_subprocess,
                               set_threads, subprocess_env, time_call)
from tacegen.build import compile_spec, write_build
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.loader import load
from tacegen.spec import ModelSpec


def build_both(tmp: Path):
    spec = ModelSpec(lmax=3, nu=3)
    compiled = compile_spec(spec)
    opt = load(write_build(spec, tmp / "optimised", compiled=compiled))
    naive = load(write_build(spec, tmp / "naive", optimised=False, compiled=compiled))
    return opt, naive


def time_model(package, n_atoms: int, dtype, repeats: int, state=None) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = package.TACE(elements=["Cu"], channels=64, r_cut=5.0, layers=2, dtype=dtype)
    if state is not None:
        model.load_state_dict(state)
    model.requires_grad_(False)  # inference, as the MACE calculator runs its model
    batch = batch_atoms([cu_fcc(n_rep=n_rep_for_atoms(n_atoms))], ["Cu"], 5.0, dtype=dtype)
    result = time_call(lambda: model(batch, compute_forces=True, compute_stress=False), repeats=repeats)
    return result, model.state_dict()


def memory_child(n_atoms: int, threads: int) -> dict:
    """In this (fresh) process: the committed default build, E+F of an n-atom cell, memory."""
    import tacegen

    set_threads(threads)
    torch.manual_seed(0)
    model = tacegen.load(REPO_ROOT / "generated" / "tace_l3_nu3").TACE(
        elements=["Cu"], channels=64, r_cut=5.0, layers=2, dtype=torch.float64)
    model.requires_grad_(False)
    batch = batch_atoms([cu_fcc(n_rep=n_rep_for_atoms(n_atoms))], ["Cu"], 5.0, dtype=torch.float64)
    before = rss_mb()
    t = time_call(lambda: model(batch, compute_forces=True, compute_stress=False), repeats=1, warmup=1)
    return {"atoms": n_atoms, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(), "median_s": t["median"]}


def memory_rows(sizes, threads: int, skip_peer: bool) -> None:
    print(f"\nmemory of E+F (float64, {threads} threads; MB above the resident memory before the first call):")
    print(f"{'atoms':>7} {'tacegen MB':>11} {'MACE MB':>9} {'tacegen/MACE':>13}")
    for n in sizes:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_model", "--memory-child", str(n),
                               "--threads", str(threads)], env=subprocess_env(threads), cwd=REPO_ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{n:7d} tacegen child failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        ours = json.loads(proc.stdout.strip().splitlines()[-1])
        ours_mb = ours["peak_rss_mb"] - ours["rss_before_mb"]
        mace_mb = None
        if not skip_peer:
            try:
                mace = run_peer_subprocess("peer_mace", ["--atoms", str(n), "--dtype", "float64", "--threads",
                                                         str(threads), "--repeats", "1", "--warmup", "1"])
                mace_mb = mace["peak_rss_mb"] - mace["rss_before_mb"]
            except Exception as exc:  # peer missing: say so, keep our figures
                print(f"MACE not measured at {n} atoms: {exc}")
        mace_cols = f"{mace_mb:9.0f} {ours_mb / mace_mb:12.2f}x" if mace_mb else f"{'-':>9} {'-':>13}"
        print(f"{n:7d} {ours_mb:11.0f} {mace_cols}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-peer", action="store_true", help="do not run MACE")
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 2048, 8192])
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[256, 2048, 8192])
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.threads)))
        return
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        opt, naive = build_both(Path(tmp))
        rows = []
        for dtype in (torch.float64, torch.float32):
            name = str(dtype).replace("torch.", "")
            t_opt, state = time_model(opt, 256, dtype, args.repeats)
            t_naive, _ = time_model(naive, 256, dtype, args.repeats, state)
            mace = None
            if not args.skip_peer:
                try:
                    mace = run_peer_subprocess("peer_mace", ["--atoms", "256", "--dtype", name, "--threads",
                                                             str(args.threads), "--repeats", str(args.repeats)])
                except Exception as exc:  # peer missing: say so, keep our figures
                    print(f"MACE not measured: {exc}")
            rows.append((name, t_opt["median"], t_naive["median"], mace["median_s"] if mace else None))
        print(f"\nE+F, 256-atom Cu fcc, 64 channels, 2 layers, lmax 3, nu 3, {args.threads} threads, "
              f"median of {args.repeats}")
        print(f"{'dtype':8} {'tacegen s':>10} {'naive IR s':>11} {'opt/naive':>10} {'MACE s':>8} {'MACE/tacegen':>13}")
        for name, t, tn, tm in rows:
            mace_cols = f"{tm:8.3f} {tm / t:12.2f}x" if tm else f"{'-':>8} {'-':>13}"
            print(f"{name:8} {t:10.3f} {tn:11.3f} {tn / t:9.2f}x {mace_cols}")
        print("\nscaling (float64, tacegen optimised):")
        print(f"{'atoms':>7} {'median s':>9} {'ms/atom':>8}")
        per_atom = []
        for n in args.sizes:
            reps = args.repeats if n <= 256 else 3
            t, _ = time_model(opt, n, torch.float64, reps)
            per_atom.append(t["median"] / n)
            print(f"{n:7d} {t['median']:9.3f} {t['median'] / n * 1e3:8.3f}")
        if len(per_atom) > 1:
            print(f"time per atom grows by {per_atom[-1] / per_atom[0] - 1:+.0%} from {args.sizes[0]} "
                  f"to {args.sizes[-1]} atoms (goal: at most +10%)")
    if args.memory_sizes:
        memory_rows(args.memory_sizes, args.threads, args.skip_peer)


if __name__ == "__main__":
    main()
