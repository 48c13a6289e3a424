"""E+F of the Numba back end against the PyTorch back end, identical weights, in one run;
and the cold compile / cached start of the Numba module.

    python -m benchmarks.bench_numba [--sizes 32 2048] [--threads default 1] [--repeats 10]
                                     [--compile] [--md-steps 0]

Setup as benchmarks/bench_model.py: Cu fcc (a = 3.61 Å, rattled 0.05 Å, seed 0) and an
ethanol molecule, r_cut 5 Å, 64 channels, 2 layers, lmax 3, nu 3 (``--model``), random
weights shared by both back ends, float64; neighbour list built outside the timed call;
median of ``--repeats`` after warm-up. Every ratio compares two figures of the same run.

Threads: ``default`` is what a user gets without setting anything (PyTorch's default
thread count; the Numba back end chooses its own, see
:func:`tacegen.runtime.numba_driver.parallel_threads`); ``1`` sets one thread for both.
Goals (issue 12): Numba <= 0.3x PyTorch for 32 Cu atoms at default threads, ethanol
<= 5 ms, 2048 Cu atoms not slower per atom than before.

``--compile``: in fresh processes, the first call of a copy of the build folder without
numba's cache (cold: every kernel compiled) and then again from the cache that call left
(goals: <= 30 s cold on 2 cores, <= 2 s from the cache); also the lines and bytes of
``numba_model.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import cu_fcc, n_rep_for_atoms, set_threads, time_call
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.loader import load

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TORCH_THREADS = torch.get_num_threads()

_FIRST_CALL = """
import json, sys, time
t0 = time.perf_counter()
from tacegen.backends.numba_model import first_call_seconds
imported = time.perf_counter() - t0
out = first_call_seconds(sys.argv[1])
out["import"] = imported
print(json.dumps(out))
"""


def compile_figures(folder: Path) -> None:
    """Cold compile and cached start of the Numba module of ``folder``, in fresh processes."""
    source = (folder / "numba_model.py").read_text(encoding="utf-8")
    print(f"numba_model.py: {len(source.splitlines())} lines, {len(source.encode())} bytes")
    with tempfile.TemporaryDirectory(prefix="bench-numba-") as tmp:
        copy = Path(tmp) / folder.name
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("__pycache__"))
        for label in ("cold (compile every kernel)", "cached (numba's on-disk cache)"):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _FIRST_CALL, str(copy)], capture_output=True, text=True,
                                 check=True, cwd=ROOT)
            wall = time.perf_counter() - start
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {label:32} first call {r['first']:7.2f} s  (bind {r['bind']:.2f} s, "
                  f"import {r['import']:.2f} s, process {wall:.2f} s)")


def threads_label(threads: str) -> str:
    return f"default ({DEFAULT_TORCH_THREADS})" if threads == "default" else threads


def use_threads(threads: str) -> None:
    if threads == "default":
        import numba

        torch.set_num_threads(DEFAULT_TORCH_THREADS)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    else:
        set_threads(int(threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "generated" / "tace_l3_nu3"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 2048])
    parser.add_argument("--threads", nargs="*", default=["default", "1"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time the cold compile and the cached start")
    parser.add_argument("--no-ethanol", action="store_true")
    parser.add_argument("--md-steps", type=int, default=0)
    parser.add_argument("--md-threads", type=int, default=1)
    args = parser.parse_args()
    folder = Path(args.model)
    if args.compile:
        compile_figures(folder)
    package = load(folder)
    torch.manual_seed(0)
    cu = package.TACE(elements=["Cu"], channels=64, r_cut=5.0, layers=2)
    cu.requires_grad_(False)
    torch.manual_seed(0)
    organic = package.TACE(elements=["H", "C", "O"], channels=64, r_cut=5.0, layers=2)
    organic.requires_grad_(False)
    t0 = time.perf_counter()
    fast = {id(cu): cu.numba_backend(), id(organic): organic.numba_backend()}
    bind_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast[id(cu)](batch_atoms([cu_fcc(n_rep=2)], ["Cu"], 5.0), compute_forces=True, compute_stress=False)
    first_s = time.perf_counter() - t0
    print(f"Numba bind {bind_s:.2f} s, first call (kernel load/compile) {first_s:.2f} s")
    systems = [(f"Cu {n}", cu, batch_atoms([cu_fcc(n_rep=n_rep_for_atoms(n))], ["Cu"], 5.0)) for n in args.sizes]
    if not args.no_ethanol:
        from ase.build import molecule

        systems.insert(1, ("ethanol", organic, batch_atoms([molecule("CH3CH2OH")], ["H", "C", "O"], 5.0)))
    print(f"\nE+F, 64 channels, 2 layers, {folder.name}, float64, median of {args.repeats} (fewer for big systems)")
    print(f"{'system':>9} {'atoms':>6} {'edges':>7} {'threads':>11} {'torch ms':>9} {'numba ms':>9} "
          f"{'numba us/atom':>14} {'numba/torch':>12}")
    for label, model, batch in systems:
        atoms = int(batch["positions"].shape[0])
        edges = int(batch["edge_index"].shape[1])
        repeats = args.repeats if atoms <= 256 else 3
        for threads in args.threads:
            use_threads(threads)
            run_numba = fast[id(model)]
            t_torch = time_call(lambda: model(batch, compute_forces=True, compute_stress=False), repeats)["median"]
            t_numba = time_call(lambda: run_numba(batch, compute_forces=True, compute_stress=False), repeats)["median"]
            print(f"{label:>9} {atoms:6d} {edges:7d} {threads_label(threads):>11} {t_torch * 1e3:9.2f} "
                  f"{t_numba * 1e3:9.2f} {t_numba / atoms * 1e6:14.1f} {t_numba / t_torch:11.2f}x")
    if args.md_steps:
        from examples.md_nve import run

        set_threads(args.md_threads)
        print(f"\nNVE MD, 32 Cu atoms, {args.md_steps} steps of 1 fs, {args.md_threads} thread(s)")
        for backend in ("torch", "numba"):
            wall, drift, spread = run(cu, 2, args.md_steps, 1.0, backend)
            print(f"  {backend:6} wall {wall:7.2f} s ({wall / args.md_steps * 1e3:6.2f} ms/step)   "
                  f"drift {drift:+.3e} eV/atom   std dev {spread:.3e} eV/atom")


if __name__ == "__main__":
    main()
