"""Tiny labelled data and a tiny model configuration for the training tests.

Data: EMT (ASE's effective-medium potential) energies, forces and stresses of rattled
and strained 4-atom fcc Cu cells, plus a few Cu3 molecules without stress labels are
kept out (separate helper) so files stay uniformly labelled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = dict(lmax=1, nu=2, hidden_lmax=0, channels=4, layers=1, radial_hidden=[8], readout_hidden=4,
            num_radial=4, r_cut=4.0, batch_size=3, ema_decay=0.9, lr=0.01, quiet=True)


def emt_cells(count: int, seed: int = 0, symbols=("Cu",)):
    import ase
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        if len(symbols) > 1:
            atoms.symbols[1] = symbols[1]
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.03 * rng.standard_normal((3, 3))), scale_atoms=True)
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = None
        atoms.info.update(REF_energy=energy, REF_stress=stress, config_type="rattled" if k % 2 else "strained")
        atoms.arrays["REF_forces"] = forces
        out.append(atoms)
    return out


def write(path: Path, structures) -> str:
    import ase.io

    ase.io.write(str(path), structures, format="extxyz")
    return str(path)
