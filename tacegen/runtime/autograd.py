"""Forces, virial and stress from an energy by automatic differentiation.

Units: energy eV, positions Å, forces eV/Å, virial eV, stress eV/Å^3.

Strain method
-------------
A displacement tensor ``eps`` (B, 3, 3), zero-valued and requiring grad, is
symmetrised, ``s = (eps + eps^T) / 2``, and applied to every structure b:

    positions' = positions + positions @ s[batch]      cell' = cell + cell @ s

so each edge vector (row vector) becomes r' = r (1 + s). With E(positions', cell')
the per-structure energies (B,)::

    forces = -dE/dpositions                     (N, 3)
    virial W = -dE/deps                          (B, 3, 3), symmetric
    stress = -W / V = (1/V) dE/deps              (B, 3, 3), ASE sign convention
                                                 (positive = tensile, i.e. the
                                                 energy rises under expansion)

with V = |det(cell)|. Stress is only defined for fully periodic structures;
rows of ``stress`` for structures with any non-periodic direction (molecules,
slabs, wires) are NaN. The virial is returned for all structures.

The symmetrised strain makes the virial symmetric by construction; for a
rotation-invariant energy it equals the derivative with respect to a general
strain.

TorchScript
-----------
:func:`energy_forces_stress` takes a Python callable and is therefore *not*
scriptable. Its two halves are: a generated model's ``forward`` can call
:func:`apply_strain`, evaluate its energy, then :func:`derivatives`, and be
scripted as a whole.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor


def apply_strain(
    positions: Tensor,
    cell: Tensor,
    batch: Tensor,
    num_structures: int,
    compute_forces: bool = True,
    compute_stress: bool = True,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Prepare differentiable inputs.

    Returns ``(positions, displacement, strained_positions, strained_cell)``:
    ``positions`` requires grad if ``compute_forces`` (a fresh leaf unless it
    already required grad); ``displacement`` is the zero (B, 3, 3) tensor ``eps``,
    requiring grad if ``compute_stress``. Evaluate the energy at the strained
    tensors and pass it to :func:`derivatives`.
    """
    if compute_forces and not positions.requires_grad:
        positions = positions.detach().requires_grad_(True)
    displacement = torch.zeros(
        (num_structures, 3, 3), dtype=positions.dtype, device=positions.device
    )
    if not compute_stress:
        return positions, displacement, positions, cell
    displacement.requires_grad_(True)
    sym = 0.5 * (displacement + displacement.transpose(1, 2))
    strained_positions = positions + torch.bmm(
        positions.unsqueeze(1), sym.index_select(0, batch)
    ).squeeze(1)
    strained_cell = cell + torch.bmm(cell, sym)
    return positions, displacement, strained_positions, strained_cell


def derivatives(
    energy: Tensor,
    positions: Tensor,
    displacement: Tensor,
    cell: Tensor,
    pbc: Tensor,
    compute_forces: bool = True,
    compute_stress: bool = True,
    training: bool = False,
) -> Dict[str, Tensor]:
    """Forces, virial and stress from per-structure energies (B,).

    ``positions`` and ``displacement`` are the first two outputs of
    :func:`apply_strain`; ``cell`` (B, 3, 3) is the unstrained cell and ``pbc``
    (B, 3) the periodic flags. ``training=True`` keeps the graph
    (``create_graph``) so a loss on energy, forces or stress can be
    back-propagated. With ``training=False`` and any derivative requested the
    graph is freed and all outputs are returned detached; with no derivative
    requested the energy is returned as given. Inputs the energy does not depend
    on (e.g. an isolated atom) get zero derivatives. Returns ``energy`` and, as
    requested, ``forces``, ``virial``, ``stress``.
    """
    out: Dict[str, Tensor] = {"energy": energy}
    inputs: List[Tensor] = []
    if compute_forces:
        inputs.append(positions)
    if compute_stress:
        inputs.append(displacement)
    if len(inputs) == 0:
        return out

    grads: List[Optional[Tensor]] = [None for _ in inputs]
    if energy.requires_grad:
        grad_outputs: List[Optional[Tensor]] = [torch.ones_like(energy)]
        grads = torch.autograd.grad(
            [energy],
            inputs,
            grad_outputs=grad_outputs,
            retain_graph=training,
            create_graph=training,
            allow_unused=True,
        )

    if not training:
        out["energy"] = energy.detach()
    k = 0
    if compute_forces:
        g = grads[k]
        out["forces"] = -g if g is not None else torch.zeros_like(positions)
        k += 1
    if compute_stress:
        g = grads[k]
        de_deps = g if g is not None else torch.zeros_like(displacement)
        out["virial"] = -de_deps
        volume = torch.linalg.det(cell).abs()
        periodic = pbc.all(dim=1)
        safe_volume = torch.where(periodic, volume, torch.ones_like(volume))
        stress = de_deps / safe_volume.view(-1, 1, 1)
        nan = torch.full_like(stress, float("nan"))
        out["stress"] = torch.where(periodic.view(-1, 1, 1), stress, nan)
    return out


def energy_forces_stress(
    energy_fn: Callable[[Tensor, Tensor], Tensor],
    batch: Dict[str, Tensor],
    compute_forces: bool = True,
    compute_stress: bool = True,
    training: bool = False,
) -> Dict[str, Tensor]:
    """Evaluate ``energy_fn(positions, cell) -> (B,)`` and differentiate it.

    ``batch`` is a dict from :func:`tacegen.runtime.data.batch_atoms` (keys
    ``positions``, ``cell``, ``batch``, ``num_atoms``, ``pbc`` are used); the
    callable receives the strained positions (N, 3) and cell (B, 3, 3) and must
    return per-structure energies in eV. Gradients are enabled inside even if the
    caller runs under ``torch.no_grad()``.

    Returns a dict with ``energy`` (B,) and, when requested, ``forces`` (N, 3),
    ``virial`` (B, 3, 3), ``stress`` (B, 3, 3; NaN for non fully periodic
    structures). See the module docstring for conventions. Not scriptable
    (it takes a Python callable); see :func:`apply_strain` / :func:`derivatives`.
    """
    num_structures = int(batch["num_atoms"].shape[0])
    with torch.enable_grad():
        positions, displacement, strained_positions, strained_cell = apply_strain(
            batch["positions"],
            batch["cell"],
            batch["batch"],
            num_structures,
            compute_forces,
            compute_stress,
        )
        energy = energy_fn(strained_positions, strained_cell)
        if energy.shape != (num_structures,):
            raise ValueError(
                f"energy_fn must return per-structure energies of shape ({num_structures},), "
                f"got {tuple(energy.shape)}"
            )
        out = derivatives(
            energy,
            positions,
            displacement,
            batch["cell"],
            batch["pbc"],
            compute_forces,
            compute_stress,
            training,
        )
    return out
