"""NVE molecular dynamics with a generated TACE model through the ASE calculator.

    python examples/md_nve.py [--steps 1000] [--atoms 32] [--dtype float64] [--backend torch|numba|both]

Random weights, so the dynamics is not physical; what it shows is that forces are the
exact gradient of the energy (total energy conserved to the integrator's accuracy) and
how long a step takes on a small cell, where per-call overhead dominates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

import tacegen

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(ROOT / "generated" / "tace_l3_nu3"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--atoms", type=int, default=32, help="4 * n^3 for an fcc Cu cell (32, 108, 256, ...)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", choices=["torch", "numba", "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = round((args.atoms / 4) ** (1 / 3))
    if 4 * n**3 != args.atoms:
        raise SystemExit(f"--atoms must be 4 * n^3 (32, 108, 256, ...), got {args.atoms}")

    dtype = getattr(torch, args.dtype)
    model = tacegen.load(args.model).TACE(elements=["Cu"], channels=64, r_cut=5.0, layers=2, dtype=dtype)
    backends = ["torch", "numba"] if args.backend == "both" else [args.backend]
    print(f"{args.atoms} Cu atoms, {args.steps} NVE steps of {args.timestep} fs, {args.dtype}, {args.threads} threads")
    for backend in backends:
        wall, drift, spread = run(model, n, args.steps, args.timestep, backend)
        print(f"  {backend:6} wall {wall:7.2f} s ({wall / args.steps * 1e3:6.2f} ms/step)   "
              f"drift {drift:+.3e} eV/atom   std dev {spread:.3e} eV/atom")


def run(model, n: int, steps: int, timestep: float, backend: str) -> tuple[float, float, float]:
    """(wall seconds, energy drift per atom, energy standard deviation per atom) of one NVE run."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((n, n, n))
    atoms.rattle(0.05, seed=0)
    atoms.calc = tacegen.Calculator(model, backend=backend)
    atoms.get_potential_energy()  # warm-up (the first Numba call loads or compiles the kernels)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=timestep * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    wall = time.perf_counter() - start
    e = np.array(energies)
    return wall, (e[-1] - e[0]) / len(atoms), e.std() / len(atoms)


if __name__ == "__main__":
    main()
