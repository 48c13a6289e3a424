"""Reference model and structure generators shared by the runtime tests.

``PairModel`` is a small Morse + embedded-density (EAM-like, many-body) potential
that follows the model contract of ``tacegen.runtime.calculator``. The tests in
this file check it against an independent numpy evaluation that uses ASE's own
neighbour list, so the other runtime tests can trust it as a reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list
from torch import Tensor, nn

from tacegen.runtime.autograd import energy_forces_stress
from tacegen.runtime.data import batch_atoms, edge_vectors
from tacegen.runtime.radial import PolynomialCutoff

ELEMENTS = ["H", "C", "O"]


class PairModel(nn.Module):
    """E = sum_i [ e0[s_i] + 1/2 sum_j D_ij phi(r_ij) f(r_ij) + c sqrt(1 + rho_i) ],
    rho_i = sum_j exp(-r_ij) f(r_ij), phi(r) = (1 - exp(-a (r - r0)))^2 - 1 (Morse)."""

    def __init__(self, elements=ELEMENTS, r_cut: float = 3.5, dtype=torch.float64, seed: int = 0):
        super().__init__()
        self.elements = list(elements)
        self.r_cut = float(r_cut)
        self.dtype = dtype
        gen = torch.Generator().manual_seed(seed)
        n = len(self.elements)
        depth = 0.2 + 0.3 * torch.rand(n, n, generator=gen, dtype=torch.float64)
        self.depth = nn.Parameter((0.5 * (depth + depth.T)).to(dtype))
        self.e0 = nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64).to(dtype))
        self.a = 1.3
        self.r0 = 1.4
        self.c = 0.7
        self.cutoff = PolynomialCutoff(self.r_cut, p=6)

    def node_energy(self, batch: dict, positions: Tensor, cell: Tensor) -> Tensor:
        species = batch["species"]
        sender, receiver = batch["edge_index"][0], batch["edge_index"][1]
        vec = edge_vectors(positions, cell, batch["batch"], batch["edge_index"], batch["edge_shift"])
        r = vec.norm(dim=-1)
        f = self.cutoff(r)
        morse = (1.0 - torch.exp(-self.a * (r - self.r0))) ** 2 - 1.0
        pair = self.depth[species[receiver], species[sender]] * morse * f
        n = positions.shape[0]
        zeros = torch.zeros(n, dtype=positions.dtype, device=positions.device)
        pair_sum = zeros.index_add(0, receiver, pair)
        rho = zeros.index_add(0, receiver, torch.exp(-r) * f)
        return self.e0[species] + 0.5 * pair_sum + self.c * torch.sqrt(1.0 + rho)

    def forward(self, batch: dict, compute_forces: bool = True, compute_stress: bool = True) -> dict:
        num_structures = batch["num_atoms"].shape[0]
        node = {}

        def energy_fn(positions: Tensor, cell: Tensor) -> Tensor:
            node["energy"] = self.node_energy(batch, positions, cell)
            total = torch.zeros(num_structures, dtype=positions.dtype, device=positions.device)
            return total.index_add(0, batch["batch"], node["energy"])

        out = energy_forces_stress(
            energy_fn, batch, compute_forces, compute_stress, training=self.training
        )
        out["node_energy"] = node["energy"] if self.training else node["energy"].detach()
        return out


def numpy_energy(model: PairModel, atoms: Atoms) -> float:
    """Independent evaluation of PairModel's energy with ASE's neighbour list."""
    p = model.cutoff.p
    i, j, d = ase_neighbor_list("ijd", atoms, model.r_cut)
    x = d / model.r_cut
    f = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    f = np.where(x < 1, f, 0.0)
    s = np.array([model.elements.index(sym) for sym in atoms.get_chemical_symbols()])
    depth = model.depth.detach().double().numpy()
    e0 = model.e0.detach().double().numpy()
    morse = (1 - np.exp(-model.a * (d - model.r0))) ** 2 - 1
    pair = np.bincount(i, depth[s[i], s[j]] * morse * f, minlength=len(atoms))
    rho = np.bincount(i, np.exp(-d) * f, minlength=len(atoms))
    return float(np.sum(e0[s] + 0.5 * pair + model.c * np.sqrt(1 + rho)))


def random_structure(
    rng: np.random.Generator,
    pbc=(True, True, True),
    n_atoms: int | None = None,
    min_distance: float = 0.9,
    cell_size: float | None = None,
) -> Atoms:
    """Random triclinic structure; atoms at least ``min_distance`` Å apart (images too)."""
    pbc = np.asarray(pbc, dtype=bool)
    n = int(rng.integers(1, 7)) if n_atoms is None else n_atoms
    size = cell_size if cell_size is not None else float(rng.uniform(2.5, 5.0))
    for _ in range(1000):
        cell = size * (np.eye(3) + 0.3 * rng.uniform(-1, 1, size=(3, 3)))
        positions = rng.uniform(-0.2, 1.2, size=(n, 3)) @ cell  # partly unwrapped
        atoms = Atoms(
            symbols=rng.choice(ELEMENTS, size=n).tolist(),
            positions=positions,
            cell=cell if pbc.any() else np.zeros((3, 3)),
            pbc=pbc,
        )
        _, d = ase_neighbor_list("id", atoms, min_distance)
        if d.size == 0:
            return atoms
    raise RuntimeError("could not place atoms")  # pragma: no cover


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False), (False, False, False)])
def test_pair_model_matches_independent_numpy_energy(pbc):
    rng = np.random.default_rng(3)
    model = PairModel()
    for _ in range(5):
        atoms = random_structure(rng, pbc=pbc)
        batch = batch_atoms(atoms, model.elements, model.r_cut)
        energy = model(batch, compute_forces=False, compute_stress=False)["energy"]
        assert energy.item() == pytest.approx(numpy_energy(model, atoms), rel=1e-12, abs=1e-12)


def test_pair_model_node_energies_sum_to_energy():
    rng = np.random.default_rng(4)
    model = PairModel()
    structures = [random_structure(rng), random_structure(rng, pbc=(False,) * 3)]
    out = model(batch_atoms(structures, model.elements, model.r_cut))
    batch = batch_atoms(structures, model.elements, model.r_cut)
    per_structure = torch.zeros(2, dtype=torch.float64).index_add(0, batch["batch"], out["node_energy"])
    torch.testing.assert_close(per_structure, out["energy"])


def test_atomic_energies_as_a_mapping_by_symbol_or_number():
    import pytest

    from tacegen.runtime.elements import atomic_energy_list

    assert atomic_energy_list(["H", "O"], {"O": -2.0, 1: -0.5}) == [-0.5, -2.0]
    assert atomic_energy_list(["H", "O"], [1, 2]) == [1.0, 2.0]
    assert atomic_energy_list(["H"], None) == [0.0]
    with pytest.raises(ValueError, match=r"missing \['O'\], not elements of the model \['C'\]"):
        atomic_energy_list(["H", "O"], {"H": 0.0, "C": 1.0})
    with pytest.raises(ValueError, match="has 1 values for 2 elements"):
        atomic_energy_list(["H", "O"], [1.0])
    with pytest.raises(ValueError, match="neither a chemical symbol nor an atomic number"):
        atomic_energy_list(["H"], {"Hx": 1.0})
