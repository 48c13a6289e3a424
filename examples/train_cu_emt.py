"""Fit a TACE potential to EMT copper, evaluate it, and run NVE MD with it.

    python examples/train_cu_emt.py [--out runs/cu_emt] [--max-time 4m] [--force]

1. Reference data from ASE's EMT: Langevin MD of a 32-atom fcc Cu cell at 300, 600, 900
   and 1200 K (a frame every 10 steps) plus randomly strained and rattled cells; split
   into train.xyz and test.xyz (REF_energy / REF_forces / REF_stress, mace-torch style).
2. ``tacegen train`` (a build made on the fly through the cache) within a wall-clock
   budget, printing the test table at the end.
3. ``tacegen eval`` of best.pt on the test set, with parity plots (PNG) in <out>/plots.
4. NVE MD of a 108-atom cell at 600 K with the trained potential; the energy drift.

On 2 CPU cores the whole example takes about 5 minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np


def make_data(folder: Path, seed: int = 0) -> tuple[str, str]:
    import ase.io
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    rng = np.random.default_rng(seed)
    frames = []

    def label(atoms, config_type):
        copy = atoms.copy()
        copy.calc = EMT()
        copy.info.update(REF_energy=copy.get_potential_energy(), REF_stress=copy.get_stress(),
                         config_type=config_type)
        copy.arrays["REF_forces"] = copy.get_forces()
        copy.calc = None
        frames.append(copy)

    for temperature in (300, 600, 900, 1200):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.calc = EMT()
        thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
        md = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng)
        md.run(50)  # equilibrate
        for _ in range(50):
            md.run(10)
            label(atoms, f"md_{temperature}K")
    for _ in range(60):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        strain = np.eye(3) + 0.04 * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        label(atoms, "strained")
    order = rng.permutation(len(frames))
    test = [frames[k] for k in order[:40]]
    train = [frames[k] for k in order[40:]]
    folder.mkdir(parents=True, exist_ok=True)
    ase.io.write(folder / "train.xyz", train)
    ase.io.write(folder / "test.xyz", test)
    print(f"data: {len(train)} training and {len(test)} test structures of 32 Cu atoms in {folder}")
    return str(folder / "train.xyz"), str(folder / "test.xyz")


def tacegen_cli(*args: str) -> None:
    command = [sys.executable, "-m", "tacegen", *args]
    print("$ tacegen " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def nve(checkpoint: Path, steps: int = 500) -> None:
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    import tacegen

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    atoms.calc = tacegen.Calculator.from_checkpoint(checkpoint)
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(1))
    Stationary(atoms)
    md = VelocityVerlet(atoms, 1.0 * units.fs)
    energies = []
    md.attach(lambda: energies.append(atoms.get_total_energy()), interval=10)
    md.run(steps)
    energies = np.array(energies)
    print(f"NVE, {len(atoms)} atoms, {steps} steps of 1 fs from 600 K: total-energy drift "
          f"{(energies[-1] - energies[0]) * 1e3:+.3f} meV (max deviation {np.abs(energies - energies[0]).max() * 1e3:.3f} "
          f"meV), final temperature {atoms.get_temperature():.0f} K")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/cu_emt")
    parser.add_argument("--max-time", default="4m", help="training wall-clock budget (default 4m)")
    parser.add_argument("--epochs", default="200")
    parser.add_argument("--force", action="store_true", help="replace an existing run folder")
    args = parser.parse_args()
    out = Path(args.out)
    train, test = make_data(out.parent / f"{out.name}_data")
    tacegen_cli("train", "--train", train, "--test", test, "--out", str(out),
                "--lmax", "2", "--nu", "2", "--hidden-lmax", "1", "--channels", "16", "--layers", "2",
                "--r-cut", "4.0", "--radial-hidden", "32,32", "--batch-size", "4", "--lr", "0.01",
                "--energy-weight", "1", "--forces-weight", "10", "--stress-weight", "10",
                "--scheduler", "plateau", "--scheduler-patience", "5",
                "--epochs", args.epochs, "--max-time", args.max_time, "--seed", "0",
                *(["--force"] if args.force else []))
    tacegen_cli("eval", str(out / "best.pt"), test, "--plots", str(out / "plots"))
    nve(out / "best.pt")


if __name__ == "__main__":
    main()
