"""Fit dipoles and polarizabilities (tensor targets) and compute an IR spectrum.

Makes its own labelled data: rattled, randomly rotated water-like molecules with EMT
energies and forces (ASE), the dipole of fixed point charges (O -0.8 e, H +0.4 e) and the
polarizability of Applequist's interacting induced-dipole model (atomic polarizabilities
O 0.434 Å^3, H 0.135 Å^3; Applequist, Carl and Fung, JACS 94, 2952 (1972)): a symmetric,
anisotropic, geometry-dependent rank-2 tensor. These are synthetic labels, not quantum
chemistry; they have the symmetries of the real quantities, which is what the model needs.

Then builds a model with outputs ``dipole`` (1o) and ``polarizability`` (0e + 2e), trains
it on all three targets with ``tacegen train --target dipole=REF_dipole --target
polarizability=REF_polarizability``, prints the test errors and the harmonic frequencies
and IR intensities of one molecule from the model's Hessian and dipole derivatives.
(Responses of the energy train the same way: ``--target hessian=KEY``, and for a build with
an ``electric_field`` input ``--target response:electric_field=KEY`` (-dE/dF) and
``response2:electric_field=KEY`` (-d2E/dF2), ``born:electric_field=KEY`` (Born charges);
see README "Inputs and tensor outputs".)

    python examples/train_tensor.py [--epochs 40] [--out runs/tensor]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CHARGES = {"O": -0.8, "H": 0.4}
POLARIZABILITY = {"O": 0.434, "H": 0.135}  # Å^3


def applequist(atoms) -> np.ndarray:
    """Molecular polarizability (3, 3), Å^3, of interacting point polarizabilities."""
    n = len(atoms)
    big = np.zeros((3 * n, 3 * n))
    for i in range(n):
        big[3 * i:3 * i + 3, 3 * i:3 * i + 3] = np.eye(3) / POLARIZABILITY[atoms[i].symbol]
        for j in range(n):
            if i != j:
                r = atoms.positions[i] - atoms.positions[j]
                d = np.linalg.norm(r)
                big[3 * i:3 * i + 3, 3 * j:3 * j + 3] = -(3 * np.outer(r, r) / d**5 - np.eye(3) / d**3)
    b = np.linalg.inv(big)
    return sum(b[3 * i:3 * i + 3, 3 * j:3 * j + 3] for i in range(n) for j in range(n))


def molecules(count: int, seed: int):
    from ase import Atoms
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        atoms.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center="COP")
        alpha = applequist(atoms)
        if np.linalg.eigvalsh(alpha).min() <= 0 or np.trace(alpha) > 6.0:  # equilibrium: 3.0 Å^3
            continue  # too close to Applequist's polarization catastrophe: not a sensible label
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        q = np.array([CHARGES[s] for s in atoms.get_chemical_symbols()])
        atoms.info.update(REF_energy=energy, REF_dipole=q @ atoms.positions,
                          REF_polarizability=alpha.reshape(-1))
        atoms.arrays["REF_forces"] = forces
        out.append(atoms)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", default="runs/tensor")
    args = parser.parse_args()

    import ase.io
    import torch

    from tacegen.build import write_build
    from tacegen.runtime.responses import vibrations
    from tacegen.spec import ModelSpec
    from tacegen.train.checkpoint import load_checkpoint
    from tacegen.train.config import TrainConfig
    from tacegen.train.loop import train

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ase.io.write(out / "train.xyz", molecules(120, 1))
    ase.io.write(out / "test.xyz", molecules(30, 2))
    build = write_build(ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch",
                                  outputs=("dipole", "polarizability")), out / "build", force=True)
    print(f"built {build}: {(build / 'REPORT.md').read_text().split('## Inputs and outputs')[1].strip()}")
    config = TrainConfig.from_sources(
        model=str(build), train=str(out / "train.xyz"), test=[str(out / "test.xyz")], out=str(out / "run"),
        force=True, elements=["H", "O"], r_cut=3.0, channels=16, layers=2, num_radial=6, radial_hidden=[32],
        readout_hidden=16, batch_size=8, lr=0.01, epochs=args.epochs, energy_weight=1.0, forces_weight=10.0,
        targets=["dipole=REF_dipole:100", "polarizability=REF_polarizability:100"], quiet=True)
    run = train(config)
    report = json.loads((run / "test.json").read_text())["files"][str(out / "test.xyz")]
    train_set, test_set = ase.io.read(out / "train.xyz", ":"), ase.io.read(out / "test.xyz", ":")
    baseline = {}  # MAE of always predicting the training mean (what a model that learned nothing scores)
    for key in ("REF_dipole", "REF_polarizability"):
        mean = np.mean([np.asarray(a.info[key]) for a in train_set], axis=0)
        baseline[key] = 1000 * float(np.mean([np.abs(np.asarray(a.info[key]) - mean) for a in test_set]))
    print(f"test errors: energy MAE {report['energy_mae']:.2f} meV/atom, forces MAE {report['forces_mae']:.1f} meV/Å, "
          f"dipole MAE {report['dipole_mae']:.1f} me Å (mean-predictor baseline {baseline['REF_dipole']:.1f}), "
          f"polarizability MAE {report['polarizability_mae']:.2f} 10^-3 Å^3 "
          f"(mean-predictor baseline {baseline['REF_polarizability']:.2f})")
    model = load_checkpoint(run / "best.pt")
    atoms = molecules(1, 3)[0]
    frequencies, intensities = vibrations(model, atoms)
    print("harmonic modes of one molecule above 10 cm^-1 (cm^-1, IR intensity e^2/amu; translations and "
          "rotations are zero modes):")
    for f, i in zip(frequencies, intensities):
        if abs(f) > 10:
            print(f"  {f:9.1f}  {i:.4f}")


if __name__ == "__main__":
    main()
