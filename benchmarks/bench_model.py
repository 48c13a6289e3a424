"""E+F benchmark of the generated lmax=3, nu=3 TACE model against MACE, in one run.

    python -m benchmarks.bench_model [--repeats 10] [--threads 2] [--skip-peer] [--sizes 256 2048 16384]

Setup (docs/performance.md): Cu fcc 4x4x4 cubic (256 atoms, a = 3.61 Å, rattled
0.05 Å, seed 0), r_cut 5 Å, 64 channels, 2 layers, random weights; neighbour list built
outside the timed call; median of ``--repeats`` after warm-up, ``--threads`` threads.
Prints: tacegen optimised and unoptimised (naive IR) in float64 and float32, MACE at the
matched setting (subprocess, see benchmarks/peer_mace.py), the ratios, and time per atom
at growing sizes (linear scaling means a flat column).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import cu_fcc, n_rep_for_atoms, run_peer_subprocess, set_threads, time_call
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-peer", action="store_true", help="do not run MACE")
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 2048, 16384])
    args = parser.parse_args()
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
        for n in args.sizes:
            reps = args.repeats if n <= 256 else 3
            t, _ = time_model(opt, n, torch.float64, reps)
            print(f"{n:7d} {t['median']:9.3f} {t['median'] / n * 1e3:8.3f}")


if __name__ == "__main__":
    main()
