"""The particle-mesh (smooth PME) reciprocal sum (tacegen.runtime.mesh) against the direct sums.

Random neutral charges in random triclinic cells; references: the float64 electrostatics
reference (les_energy_periodic, ewald_energy at 1e-12) and the generated models' own
direct path (mesh_min_atoms=0). Goal: 1e-6 relative in energy and forces (force errors
relative to the largest force component), at the default mesh accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms

from model_helpers import _place, build_module, make_model, random_cell, random_molecule
from tacegen.runtime import electrostatics as el
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.mesh import bspline_weights, mesh_reciprocal_energy, mesh_settings
from tacegen.spec import ModelSpec

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")]


def random_system(seed, n):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, (8.0, 11.0), 0.3) * (n / 40) ** (1 / 3)
    positions = rng.uniform(size=(n, 3)) @ cell + rng.normal(scale=5.0, size=(n, 3))  # not wrapped
    q = rng.normal(size=n)
    return (torch.tensor(q - q.mean()), torch.tensor(positions, requires_grad=True), torch.tensor(cell))


def relative(a, b):
    scale = float(b.abs().max())
    assert scale > 1e-6  # a real reference
    return float((a - b).abs().max()) / scale


def test_bspline_weights_partition_unity_and_moduli_order():
    w = bspline_weights(torch.rand(50, dtype=torch.float64), 8)
    torch.testing.assert_close(w.sum(dim=-1), torch.ones(50, dtype=torch.float64), rtol=0, atol=1e-14)
    assert bool((w >= 0).all())
    with pytest.raises(ValueError, match="even"):
        mesh_reciprocal_energy(torch.zeros(1, 3), torch.zeros(1), torch.eye(3), 0.5, 3.0, 0.0, False, 5, 2.0)
    with pytest.raises(ValueError, match="accuracy"):
        mesh_settings(2.0)


@pytest.mark.parametrize("seed,n,sigma,k_cut", [(0, 40, 1.0, math.pi), (1, 120, 1.0, math.pi), (2, 60, 0.7, 4.5)])
def test_les_mesh_equals_direct_sum(seed, n, sigma, k_cut):
    q, positions, cell = random_system(seed, n)
    order, oversampling = mesh_settings(1e-6)
    strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    deform = torch.eye(3, dtype=torch.float64) + strain

    def both(fn):
        energy = fn(positions @ deform, cell @ deform)
        forces, virial = torch.autograd.grad(energy, (positions, strain))
        return energy.detach(), -forces, virial

    ref = both(lambda r, c: el.les_energy_periodic(q, r, c, sigma, k_cut))
    mesh = both(lambda r, c: mesh_reciprocal_energy(r, q, c, 0.5 * sigma * sigma, k_cut,
                                                    1.0 / (sigma * math.sqrt(2.0 * math.pi)), False, order,
                                                    oversampling))
    assert relative(mesh[0], ref[0]) < 1e-6
    assert relative(mesh[1], ref[1]) < 1e-6
    assert relative(mesh[2], ref[2]) < 1e-6


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh_builds")
    return {kind: build_module(ModelSpec(lmax=1, nu=1, hidden_lmax=0, backends="torch", long_range=kind), root / kind)
            for kind in ("les", "ewald")}


def crystal(rng, n, symbols):
    cell = random_cell(rng, (3.0, 4.5), 0.3) * (n / 5) ** (1 / 3)
    return Atoms([symbols[k % 2] for k in range(n)], positions=_place(rng, n, None, 1.0, cell=cell, pbc=True),
                 cell=cell, pbc=True)


@pytest.mark.parametrize("kind", ["les", "ewald"])
def test_models_switch_to_the_mesh_and_agree(modules, kind):
    """mesh_min_atoms: the large periodic structure goes to the mesh, the small one and the
    molecule keep the direct sums; energies, forces and stress within 1e-6 of the direct
    path (Ewald: its own split at a fixed real-space cutoff); TorchScript equals eager."""
    symbols = ("Cu", "O") if kind == "les" else ("Na", "Cl")
    extra = {"ewald_accuracy": 1e-10} if kind == "ewald" else {}
    model = make_model(modules[kind], elements=symbols, seed=0, **extra)
    if kind == "les":
        with torch.no_grad():
            model.charge_readout.weight.mul_(60.0)
    rng = np.random.default_rng(7)
    structures = [random_molecule(rng, 5, symbols), crystal(rng, 12, symbols), crystal(rng, 150, symbols)]
    if kind == "ewald":
        for atoms in structures:
            q = rng.normal(size=len(atoms))
            atoms.set_initial_charges(q - q.mean())
    batch = batch_atoms(structures, model.elements, model.r_cut)
    model.mesh_min_atoms = 0
    direct = model(batch)
    model.mesh_min_atoms = 100
    mesh = model(batch)
    for key in ("long_range_energy", "energy", "forces", "stress"):
        assert relative(mesh[key].nan_to_num(), direct[key].nan_to_num()) < 1e-6, key
    # the small structures keep their path (Ewald: their split no longer counts the large
    # structure, so they move within the Ewald accuracy), the large one really changed path
    torch.testing.assert_close(mesh["long_range_energy"][:2], direct["long_range_energy"][:2], atol=0,
                               rtol=1e-13 if kind == "les" else 1e-8)
    assert float((mesh["long_range_energy"][2] - direct["long_range_energy"][2]).abs()) > 0.0
    scripted = torch.jit.script(model)
    again = scripted(batch)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(again[key], mesh[key], rtol=1e-12, atol=1e-12, equal_nan=True)


def test_ewald_model_mesh_equals_reference_ewald(modules):
    """The Ewald model's mesh path against electrostatics.ewald_energy (1e-12), E and F."""
    model = make_model(modules["ewald"], elements=("Na", "Cl"), seed=0, ewald_accuracy=1e-10, mesh_min_atoms=100)
    rng = np.random.default_rng(8)
    atoms = crystal(rng, 160, ("Na", "Cl"))
    q = rng.normal(size=len(atoms))
    atoms.set_initial_charges(q - q.mean())
    out = model(batch_atoms(atoms, model.elements, model.r_cut))
    positions = torch.tensor(atoms.positions, requires_grad=True)
    ref = el.ewald_energy(torch.tensor(atoms.get_initial_charges()), positions, torch.tensor(atoms.cell.array),
                          accuracy=1e-12)
    forces = -torch.autograd.grad(ref, positions)[0]
    assert abs(float(out["long_range_energy"][0]) - float(ref.detach())) < 1e-6 * abs(float(ref.detach()))
    neutral = atoms.copy()  # the short-range forces alone: the same model without charges
    neutral.set_initial_charges(np.zeros(len(atoms)))
    short = model(batch_atoms(neutral, model.elements, model.r_cut))["forces"]
    assert relative(out["forces"] - short, forces) < 1e-6


def test_long_range_pairs_from_a_given_neighbour_list():
    """long_range_pairs takes the periodic Ewald pairs from the batch's own list when its
    cutoff covers r_cut, else searches them: the same set of (i, j, shift) within r_cut."""
    from tacegen.runtime.long_range import long_range_pairs
    from tacegen.runtime.neighbours import neighbour_pairs

    rng = np.random.default_rng(4)
    structures = [random_molecule(rng, 4, ("Na", "Cl")), crystal(rng, 20, ("Na", "Cl"))]
    batch = batch_atoms(structures, ["Na", "Cl"], 3.0)
    pairs = neighbour_pairs(structures[1].positions, structures[1].cell.array, np.ones(3, bool), 6.0)
    given = dict(batch)
    given["long_range_edge_index"] = torch.tensor(np.stack([pairs.j + 4, pairs.i + 4]))
    given["long_range_edge_shift"] = torch.tensor(pairs.shift, dtype=torch.float64)
    given["long_range_cutoff"] = torch.tensor(6.0)

    def key(graph, r_cut):
        s, r = graph["edge_index"].tolist()
        sh = graph["edge_shift"].tolist()
        pos = batch["positions"].numpy()
        cell = batch["cell"].numpy()[1]
        return sorted((a, b, tuple(c)) for a, b, c in zip(r, s, sh)
                      if a < 4 or np.linalg.norm(pos[b] - pos[a] + np.array(c) @ cell) < r_cut)

    searched = long_range_pairs(batch, True, 5.0)
    listed = long_range_pairs(given, True, 5.0)
    assert len(listed["periodic"]) > len(searched["periodic"])  # the given list (6 Å) was used
    assert key(listed, 5.0) == key(searched, 5.0) and len(key(searched, 5.0)) > 12
    assert key(long_range_pairs(given, True, 7.0), 7.0) == key(long_range_pairs(batch, True, 7.0), 7.0)
