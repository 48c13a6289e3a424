"""Where the time and memory of a generated PyTorch model go, per op, for E+F.

    python -m benchmarks.profile_model [--atoms 256 8192] [--dtype float64] [--threads 0] [--rows 15]

Runs the committed build generated/tace_l3_nu3 (64 channels, 2 layers, r_cut 5 Å) on
rattled fcc Cu under ``torch.profiler`` and prints, per size, the aten ops sorted by self
CPU time (forward and the backward that gives the forces are both included), with their
share of the total and their self memory, plus the peak RSS of the process. Use it to aim
the next optimisation (issue: PyTorch speed), not to time the model (bench_model does).
"""

from __future__ import annotations

import argparse
import resource

import torch

from benchmarks.common import REPO_ROOT, cu_fcc, n_rep_for_atoms, set_threads


def profile(atoms_count: int, dtype: torch.dtype, rows: int) -> None:
    import tacegen
    from tacegen.runtime.data import batch_atoms

    model = tacegen.load(REPO_ROOT / "generated" / "tace_l3_nu3").TACE(["Cu"], channels=64, layers=2, r_cut=5.0,
                                                                       dtype=dtype)
    atoms = cu_fcc(n_rep_for_atoms(atoms_count))
    batch = batch_atoms(atoms, ["Cu"], 5.0, dtype=dtype)
    model(batch, compute_stress=False)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        model(batch, compute_stress=False)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    print(f"\nE+F, {len(atoms)} atoms, {batch['edge_index'].shape[1]} edges, {dtype}, {torch.get_num_threads()} threads:"
          f" {total / 1e3:.1f} ms of aten self time")
    print(f"{'op':32} {'calls':>6} {'self ms':>9} {'share':>6} {'self MB':>9}")
    for e in events[:rows]:
        print(f"{e.key:32} {e.count:6d} {e.self_cpu_time_total / 1e3:9.1f} {e.self_cpu_time_total / total:6.1%} "
              f"{e.self_cpu_memory_usage / 2**20:9.1f}")
    print(f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--atoms", nargs="+", type=int, default=[256, 8192])
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    for n in args.atoms:
        profile(n, getattr(torch, args.dtype), args.rows)


if __name__ == "__main__":
    main()
