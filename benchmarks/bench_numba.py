"""E+F of the Numba back end against the PyTorch back end, identical weights, in one run.

    python -m benchmarks.bench_numba [--sizes 32 256 2048] [--threads 1 2] [--repeats 10] [--md-steps 1000]

Setup as benchmarks/bench_model.py: Cu fcc (a = 3.61 Å, rattled 0.05 Å, seed 0), r_cut 5 Å,
64 channels, 2 layers, lmax 3, nu 3, random weights shared by both back ends, float64;
neighbour list built outside the timed call; median of ``--repeats`` after warm-up. The
first Numba call of a process loads (or, on a cold cache, compiles) the kernels: that
time is printed separately. Then a ``--md-steps`` NVE run of a 32-atom cell through the
ASE calculator with each back end (wall time and energy drift; examples/md_nve.py).
Goal (issue): Numba <= 0.3x PyTorch at 32 atoms and not slower at 2048.

Threads: numba's default OpenMP layer shares PyTorch's libgomp, whose threads spin-wait
between parallel regions; a Numba call launches ~100 short kernels, so on a 2-core machine
2 threads can be slower than 1 (setting OMP_WAIT_POLICY=PASSIVE before Python starts
removes most of it). Both thread counts are printed as measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import cu_fcc, n_rep_for_atoms, set_threads, time_call
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.loader import load

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(ROOT / "generated" / "tace_l3_nu3"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 256, 2048])
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--md-steps", type=int, default=1000)
    parser.add_argument("--md-threads", type=int, default=1,
                        help="threads for the MD runs (1: fastest for 32 atoms on this 2-core machine)")
    args = parser.parse_args()
    package = load(args.model)
    torch.manual_seed(0)
    model = package.TACE(elements=["Cu"], channels=64, r_cut=5.0, layers=2)
    model.requires_grad_(False)
    t0 = time.perf_counter()
    fast = model.numba_backend()
    bind_s = time.perf_counter() - t0
    small = batch_atoms([cu_fcc(n_rep=2)], ["Cu"], 5.0)
    t0 = time.perf_counter()
    fast(small, compute_forces=True, compute_stress=False)
    first_s = time.perf_counter() - t0
    print(f"Numba bind {bind_s:.2f} s, first call (kernel load/compile) {first_s:.2f} s")
    print(f"\nE+F, Cu fcc, 64 channels, 2 layers, lmax 3, nu 3, float64, median of {args.repeats}")
    print(f"{'atoms':>6} {'threads':>7} {'torch s':>9} {'numba s':>9} {'numba/torch':>12}")
    for n in args.sizes:
        batch = batch_atoms([cu_fcc(n_rep=n_rep_for_atoms(n))], ["Cu"], 5.0)
        repeats = args.repeats if n <= 256 else 3
        for threads in args.threads:
            set_threads(threads)
            t_torch = time_call(lambda: model(batch, compute_forces=True, compute_stress=False), repeats)["median"]
            t_numba = time_call(lambda: fast(batch, compute_forces=True, compute_stress=False), repeats)["median"]
            print(f"{n:6d} {threads:7d} {t_torch:9.4f} {t_numba:9.4f} {t_numba / t_torch:11.2f}x")
    if args.md_steps:
        from examples.md_nve import run

        set_threads(args.md_threads)
        print(f"\nNVE MD, 32 Cu atoms, {args.md_steps} steps of 1 fs, {args.md_threads} thread(s)")
        for backend in ("torch", "numba"):
            wall, drift, spread = run(model, 2, args.md_steps, 1.0, backend)
            print(f"  {backend:6} wall {wall:7.2f} s ({wall / args.md_steps * 1e3:6.2f} ms/step)   "
                  f"drift {drift:+.3e} eV/atom   std dev {spread:.3e} eV/atom")


if __name__ == "__main__":
    main()
