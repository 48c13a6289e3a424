"""Demo: evaluate the generated lmax=3, nu=3 TACE model on a 256-atom rattled Cu fcc cell.

Run after `tacegen build --lmax 3 --nu 3` (the Makefile's `make demo` does both).
Random weights: the numbers show the pipeline works and how fast it is, not physics.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import torch
from ase.build import bulk

import tacegen

ROOT = Path(__file__).resolve().parent.parent


def rattled_cu(repeat: int = 4, a: float = 3.61, stdev: float = 0.05, seed: int = 0):
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((repeat, repeat, repeat))
    atoms.rattle(stdev=stdev, seed=seed)
    return atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(ROOT / "generated" / "tace_l3_nu3"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-numba", action="store_true", help="do not run the Numba back end")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch.manual_seed(0)

    package = tacegen.load(args.model)
    atoms = rattled_cu()
    print(f"structure: {len(atoms)} Cu atoms, fcc a=3.61 Å rattled 0.05 Å, cell {atoms.cell.lengths()}")
    reference = None
    results = {}
    for dtype in (torch.float64, torch.float32):
        model = package.TACE(elements=["Cu"], channels=64, r_cut=5.0, layers=2, dtype=dtype)
        if reference is None:
            reference = model.state_dict()
        else:  # the same weights, rounded to float32
            model.load_state_dict(reference)
        n_params = sum(p.numel() for p in model.parameters())
        calc = tacegen.Calculator(model)
        atoms.calc = calc
        start = time.perf_counter()
        energy = atoms.get_potential_energy()
        first = time.perf_counter() - start
        forces = atoms.get_forces()
        stress = atoms.get_stress()
        times = []
        for _ in range(args.repeats):
            calc.reset()
            start = time.perf_counter()
            atoms.get_potential_energy()
            atoms.get_forces()
            atoms.get_stress()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        if dtype == torch.float64:
            results = {"model": model, "energy": energy, "forces": forces, "stress": stress}
        print(f"\n{str(dtype).replace('torch.', '')}: {n_params} parameters")
        print(f"  energy        {energy:.10f} eV")
        print(f"  max |force|   {np.abs(forces).max():.6f} eV/Å   (sum of forces {np.abs(forces.sum(0)).max():.2e})")
        print(f"  stress (Voigt, eV/Å^3) {np.array2string(stress, precision=6)}")
        print(f"  first call    {first:.3f} s (includes neighbour list)")
        print(f"  E+F+stress    median {median:.3f} s over {args.repeats} calls, "
              f"{median / len(atoms) * 1e3:.3f} ms/atom ({args.threads} threads, neighbour list included)")
    if not args.skip_numba:
        numba_demo(results, atoms, args)


def numba_demo(torch_results: dict, atoms, args) -> None:
    """The same float64 weights through the generated Numba programs (forces and stress from
    the reverse pass derived in the IR), compared with the PyTorch numbers."""
    model = torch_results["model"]
    start = time.perf_counter()
    calc = tacegen.Calculator(model, backend="numba")
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    first = time.perf_counter() - start
    forces, stress = atoms.get_forces(), atoms.get_stress()
    times = []
    for _ in range(args.repeats):
        calc.reset()
        start = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_stress()
        times.append(time.perf_counter() - start)
    print("\nfloat64, Numba back end (same weights)")
    print(f"  energy        {energy:.10f} eV   (PyTorch - Numba: {torch_results['energy'] - energy:+.2e} eV)")
    print(f"  forces        max |PyTorch - Numba| {np.abs(torch_results['forces'] - forces).max():.2e} eV/Å")
    print(f"  stress        max |PyTorch - Numba| {np.abs(torch_results['stress'] - stress).max():.2e} eV/Å^3")
    print(f"  first call    {first:.1f} s (compiles the kernels once; numba caches them next to the build)")
    print(f"  E+F+stress    median {statistics.median(times):.3f} s over {args.repeats} calls")


if __name__ == "__main__":
    main()
