"""Second derivatives and vibrational spectra of a model by autograd (issue 14).

* :func:`hessian`: the dense Hessian d2E / dr_ia dr_jb (3N, 3N) of one structure, eV/Å^2;
* :func:`output_derivatives`: d out_a / dr_ib (N, 3, 3) of a per-structure rank-1 output
  such as the dipole (the Born effective charges Z*_i,ab = d mu_a / d r_ib, e);
* :func:`atomic_virials`: the virial split over atoms (W_i, eV, (N, 3, 3)), summing to the
  model's virial, for local stress and heat-flux analysis;
* :func:`vibrations`: harmonic frequencies (cm^-1; imaginary modes negative) and infrared
  intensities, the squared norm of d mu / dQ_k (e^2 / amu), of the normal modes Q_k of the mass-weighted
  Hessian, with ASE's conversion constants (as :class:`ase.vibrations.Vibrations`).

All take a model following :mod:`tacegen.runtime.calculator`'s contract with a
``node_energies`` method (generated TACE models) and a batch of ONE structure from
:func:`tacegen.runtime.data.batch_atoms` (with ``inputs=model.input_specs`` for a model
with inputs).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from torch import Tensor

from tacegen.runtime.inputs import energies_and_values, output_specs_of


def _one_structure(batch: Dict[str, Tensor]) -> None:
    if batch["num_atoms"].shape[0] != 1:
        raise ValueError(f"expected a batch of one structure, got {batch['num_atoms'].shape[0]}")


def _energy_and_values(model, batch: Dict[str, Tensor], positions: Tensor):
    energy, values = energies_and_values(model, batch, positions)  # long-range part included
    return energy.sum(), values


def hessian(model, batch: Dict[str, Tensor]) -> Tensor:
    """d2E / dr dr of one structure, (3N, 3N) in eV/Å^2 (rows: atom-major, x y z)."""
    _one_structure(batch)
    positions = batch["positions"].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        energy, _ = _energy_and_values(model, batch, positions)
        (grad,) = torch.autograd.grad(energy, positions, create_graph=True)
        flat = grad.reshape(-1)
        rows = []
        for k in range(flat.shape[0]):
            (row,) = torch.autograd.grad(flat[k], positions, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(positions).reshape(-1) if row is None else row.reshape(-1))
    return torch.stack(rows).detach()


def output_derivatives(model, batch: Dict[str, Tensor], name: str = "dipole") -> Tensor:
    """d out_a / d r_ib (N, 3, 3) of the per-structure rank-1 output ``name`` (for the dipole:
    the Born effective charges)."""
    _one_structure(batch)
    outputs = {o["name"]: o for o in output_specs_of(model)}
    if name not in outputs or outputs[name]["per"] != "structure" or int(outputs[name]["rank"]) != 1:
        raise ValueError(f"output {name!r} is not a per-structure rank-1 output of the model; its outputs: "
                         f"{sorted(outputs)}")
    positions = batch["positions"].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        _, values = _energy_and_values(model, batch, positions)
        total = values[name].sum(dim=0)  # (3,): the structure's output
        rows = []
        for a in range(3):
            (row,) = torch.autograd.grad(total[a], positions, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(positions) if row is None else row)
    return torch.stack(rows, dim=1).detach()


def atomic_virials(model, batch: Dict[str, Tensor]) -> Tensor:
    """Per-atom virials (N, 3, 3), eV, of fully periodic structures: each edge e (r_e = r_j - r_i
    + S_e cell) contributes -r_e (x) dE/dr_e, half to its sender and half to its receiver, so
    the atoms' virials sum to the structure's virial ``-dE/d(strain)`` before symmetrisation
    (symmetrise them for a stress). dE/dr_e is read through the lattice shifts:
    dE/dS_e = cell dE/dr_e, which needs an invertible cell (ValueError otherwise)."""
    if getattr(model, "long_range", "none") != "none":
        raise ValueError(f"atomic_virials splits a sum of edge terms; this model's energy has a long-range part "
                         f"({model.long_range}) that is not one")
    if not bool(batch["pbc"].all()):
        raise ValueError("atomic_virials needs fully periodic structures: it reads the edge gradients "
                         "through the lattice shifts (dE/dS = cell dE/dr)")
    shifts = batch["edge_shift"].detach().clone().requires_grad_(True)
    local = dict(batch)
    local["edge_shift"] = shifts
    with torch.enable_grad():
        energy, _ = _energy_and_values(model, local, batch["positions"])
        (d_shift,) = torch.autograd.grad(energy, shifts)
    senders, receivers = batch["edge_index"][0], batch["edge_index"][1]
    cell = batch["cell"].index_select(0, batch["batch"].index_select(0, receivers))  # (E, 3, 3)
    grad = torch.linalg.solve(cell, d_shift.unsqueeze(-1)).squeeze(-1)  # dE/dr_e
    vectors = (batch["positions"].index_select(0, senders) - batch["positions"].index_select(0, receivers)
               + torch.bmm(batch["edge_shift"].unsqueeze(1), cell).squeeze(1))
    w = -0.5 * vectors.unsqueeze(-1) * grad.unsqueeze(-2)  # (E, 3, 3): r_a dE/dr_b
    out = torch.zeros((batch["positions"].shape[0], 3, 3), dtype=w.dtype, device=w.device)
    return (out.index_add(0, senders, w).index_add(0, receivers, w)).detach()


def vibrations(model, atoms, dipole: str = "dipole") -> Tuple[np.ndarray, np.ndarray]:
    """(frequencies in cm^-1, IR intensities in e^2/amu) of the 3N harmonic modes of ``atoms``,
    ascending by eigenvalue; imaginary frequencies are returned negative. Intensities come from
    the derivatives of the declared per-structure output ``dipole``, or, for a model with a
    long-range block and no such output, of its own dipole sum_i (q_i - mean q) r_i (its
    ``born_charges``, charges' dependence on the positions included; periodic cells: the
    phase form, Gamma-point intensities); NaN otherwise."""
    from ase import units

    from tacegen.runtime.calculator import model_tensors_dtype_device
    from tacegen.runtime.data import batch_atoms
    from tacegen.runtime.inputs import input_specs_of

    dtype, device = model_tensors_dtype_device(model)
    batch = batch_atoms(atoms, list(model.elements), float(model.r_cut), dtype=dtype, device=device,
                        inputs=input_specs_of(model))
    h = hessian(model, batch).double().cpu().numpy()
    masses = np.repeat(atoms.get_masses(), 3)
    weighted = h / np.sqrt(np.outer(masses, masses))
    eigenvalues, modes = np.linalg.eigh(0.5 * (weighted + weighted.T))
    scale = units._hbar * 1e10 / np.sqrt(units._e * units._amu)  # sqrt(eV/Å^2/amu) -> eV
    energies = scale * np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues))
    frequencies = energies / units.invcm
    outputs = {o["name"] for o in output_specs_of(model)}
    if dipole in outputs:
        z = output_derivatives(model, batch, dipole).double().cpu().numpy()  # (N, 3a, 3b)
    elif getattr(model, "long_range", "none") != "none":  # periodic cells: the phase-form Born charges
        out = model(batch, compute_forces=False, compute_stress=False, compute_born_charges=True)
        z = out["born_charges"].detach().double().cpu().numpy()
    else:
        return frequencies, np.full(len(frequencies), np.nan)
    dmu_dx = z.transpose(1, 0, 2).reshape(3, -1)  # d mu_a / d x_(ib)
    dmu_dq = dmu_dx @ (modes / np.sqrt(masses)[:, None])  # (3, modes)
    return frequencies, (dmu_dq**2).sum(axis=0)
