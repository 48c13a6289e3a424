"""Born effective charges of periodic structures (``compute_born_charges=True``; issue 14).

The phase form of the LES papers (see the generated ``TACE.born_charges``): fixed point charges
give Z*_i = (q_i - mean q) 1 in any triclinic cell; LES charges give Z* unchanged by rigid
and lattice translations and by re-wrapping an atom, and a molecule in a growing periodic
box tends to its finite Z* with the error and the acoustic-sum-rule violation falling as
1/L^2. Rotations of cell and positions are checked with the other symmetries in
test_long_range_model.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from model_helpers import build_module, make_model, random_crystal, rel_err
from tacegen.runtime.data import batch_atoms
from tacegen.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SYMBOLS = ("Cu", "O")
SKEW = np.array([[1.0, 0.0, 0.0], [0.25, 0.95, 0.0], [-0.2, 0.15, 1.05]])  # triclinic, rows: lattice vectors


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("born")
    return {lr: build_module(ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch", long_range=lr), root / lr)
            for lr in ("les", "ewald")}


@pytest.fixture(scope="module")
def les(modules):
    model = make_model(modules["les"], elements=SYMBOLS, seed=0)
    with torch.no_grad():
        model.charge_readout.weight.mul_(60.0)  # latent charges O(0.1-1) e
    return model


def born(model, atoms) -> np.ndarray:
    batch = batch_atoms(atoms, model.elements, model.r_cut)
    out = model(batch, compute_forces=False, compute_stress=False, compute_born_charges=True)
    return out["born_charges"].detach().numpy()


def test_fixed_charges_give_their_centred_charges_in_a_triclinic_cell(modules):
    model = make_model(modules["ewald"], elements=("Na", "Cl"), seed=0)
    rng = np.random.default_rng(0)
    atoms = random_crystal(rng, 5, ("Na", "Cl"))
    charges = rng.normal(size=len(atoms))  # a charged cell: the mean is removed
    atoms.set_initial_charges(charges)
    expected = np.einsum("n,ab->nab", charges - charges.mean(), np.eye(3))
    assert rel_err(born(model, atoms), expected) < 1e-12


def test_les_periodic_born_charges_ignore_translations_and_wrapping(les):
    rng = np.random.default_rng(1)
    atoms = random_crystal(rng, 5, SYMBOLS)
    ref = born(les, atoms)
    charges = les(batch_atoms(atoms, les.elements, les.r_cut), compute_forces=False,
                  compute_stress=False)["charges"].numpy()
    assert rel_err(ref, np.einsum("n,ab->nab", charges - charges.mean(), np.eye(3))) > 1e-3  # q(r) responds
    cell = np.asarray(atoms.cell[:])
    for shift in (cell[0] - 2 * cell[2], rng.normal(size=3)):
        moved = atoms.copy()
        moved.positions += shift
        assert rel_err(born(les, moved), ref) < 1e-10
    wrapped = atoms.copy()
    wrapped.positions[2] += cell[1]  # one atom re-wrapped: the same crystal
    assert rel_err(born(les, wrapped), ref) < 1e-10


def test_a_molecule_in_a_growing_box_tends_to_its_finite_born_charges(les):
    positions = np.array([[0.0, 0.0, 0.0], [1.9, 0.2, 0.1], [-0.4, 1.8, 0.3], [0.6, -0.7, 1.7], [2.1, 1.6, 1.2]])
    molecule = Atoms("CuOOCuO", positions=positions)
    finite = born(les, molecule)
    assert np.abs(finite.sum(axis=0)).max() < 1e-12 * np.abs(finite).max()  # exact sum rule when finite
    errors, sums = [], []
    for length in (32.0, 64.0):
        boxed = Atoms("CuOOCuO", positions=positions + 5.0, cell=length * SKEW, pbc=True)
        periodic = born(les, boxed)
        errors.append(rel_err(periodic, finite))
        sums.append(np.abs(periodic.sum(axis=0)).max() / np.abs(periodic).max())
    # sin(2 pi ds) / 2 pi -> ds: the error and the sum-rule violation fall as 1/L^2 (x4 per doubling)
    assert errors[1] < 2e-2 and 3.0 < errors[0] / errors[1] < 5.0
    assert sums[1] < 2e-2 and 3.0 < sums[0] / sums[1] < 5.0
