"""Forces, virial and stress by the strain method, checked by finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import haar_orthogonal
from tacegen.runtime.autograd import apply_strain, derivatives, energy_forces_stress
from tacegen.runtime.data import batch_atoms
from test_runtime_support import PairModel, random_structure

MODEL = PairModel().eval()
PBCS = [(True, True, True), (True, True, False), (False, False, False), (False, True, False)]
seeds = st.integers(0, 2**32 - 1)


def energy(atoms: Atoms) -> float:
    batch = batch_atoms(atoms, MODEL.elements, MODEL.r_cut)
    return MODEL(batch, compute_forces=False, compute_stress=False)["energy"].item()


def evaluate(structures):
    return MODEL(batch_atoms(structures, MODEL.elements, MODEL.r_cut))


def strained(atoms: Atoms, eps: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.positions = atoms.positions @ (np.eye(3) + eps)
    out.cell = atoms.cell[:] @ (np.eye(3) + eps)
    return out


@settings(max_examples=12, deadline=None)
@given(seeds, st.sampled_from(PBCS))
def test_forces_equal_central_finite_differences(seed, pbc):
    atoms = random_structure(np.random.default_rng(seed), pbc=pbc, n_atoms=4)
    forces = evaluate(atoms)["forces"].numpy()
    h = 1e-5
    numerical = np.zeros_like(forces)
    for a in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, k] += h
            minus.positions[a, k] -= h
            numerical[a, k] = -(energy(plus) - energy(minus)) / (2 * h)
    np.testing.assert_allclose(forces, numerical, atol=1e-7, rtol=1e-6)


@settings(max_examples=12, deadline=None)
@given(seeds)
def test_stress_equals_finite_differences_under_strain(seed):
    atoms = random_structure(np.random.default_rng(seed), n_atoms=3)
    out = evaluate(atoms)
    stress, virial = out["stress"][0].numpy(), out["virial"][0].numpy()
    h = 1e-6
    numerical = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = h / 2 if a != b else h  # symmetric strain
            numerical[a, b] = (energy(strained(atoms, eps)) - energy(strained(atoms, -eps))) / (2 * h)
    volume = abs(np.linalg.det(atoms.cell[:]))
    np.testing.assert_allclose(stress, numerical / volume, atol=1e-7)
    np.testing.assert_allclose(virial, -numerical, atol=1e-6)
    np.testing.assert_allclose(virial, virial.T, atol=1e-12)


def test_stress_is_nan_unless_fully_periodic_and_virial_is_finite():
    rng = np.random.default_rng(0)
    structures = [random_structure(rng, pbc=p, n_atoms=3) for p in PBCS]
    out = evaluate(structures)
    periodic = [all(p) for p in PBCS]
    for k, is_periodic in enumerate(periodic):
        assert bool(torch.isnan(out["stress"][k]).all()) == (not is_periodic)
        assert bool(torch.isnan(out["stress"][k]).any()) == (not is_periodic)
    assert torch.isfinite(out["virial"]).all()


def test_molecule_virial_is_sum_of_position_force_products():
    # E depends on positions only, so -dE/deps_ab = sum_i x_ia F_ib (symmetrised)
    atoms = random_structure(np.random.default_rng(5), pbc=(False,) * 3, n_atoms=5)
    out = evaluate(atoms)
    x, f = atoms.positions, out["forces"].numpy()
    expected = x.T @ f
    np.testing.assert_allclose(out["virial"][0].numpy(), 0.5 * (expected + expected.T), atol=1e-10)
    np.testing.assert_allclose(f.sum(axis=0), 0.0, atol=1e-10)  # translation invariance


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_batch_equals_one_by_one(seed):
    rng = np.random.default_rng(seed)
    structures = [random_structure(rng, pbc=PBCS[k % 4]) for k in range(int(rng.integers(2, 6)))]
    out = evaluate(structures)
    start = 0
    for k, atoms in enumerate(structures):
        single = evaluate(atoms)
        n = len(atoms)
        torch.testing.assert_close(out["energy"][k : k + 1], single["energy"])
        torch.testing.assert_close(out["forces"][start : start + n], single["forces"])
        torch.testing.assert_close(out["virial"][k : k + 1], single["virial"])
        torch.testing.assert_close(out["stress"][k : k + 1], single["stress"], equal_nan=True)
        start += n


@settings(max_examples=10, deadline=None)
@given(seeds, st.sampled_from(PBCS))
def test_rotation_and_translation_invariance(seed, pbc):
    """Reference: the unmoved structure. Every example checks a proper rotation and an
    improper one (rotation x inversion; the cell becomes left-handed): forces rotate as
    vectors, stress as a rank-2 tensor, the energy does not change."""
    rng = np.random.default_rng(seed)
    atoms = random_structure(rng, pbc=pbc, n_atoms=int(rng.integers(3, 7)))
    a = evaluate(atoms)
    # not vacuous (zero forces everywhere would make hypothesis fail: no example satisfies this)
    assume(np.abs(a["forces"].numpy()).max() > 1e-4)
    for proper in (True, False):
        rotation = haar_orthogonal(rng, proper)
        assert (np.linalg.det(rotation) > 0) == proper
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T + rng.normal(size=3) * 3
        moved.cell = atoms.cell[:] @ rotation.T
        b = evaluate(moved)
        torch.testing.assert_close(a["energy"], b["energy"], atol=1e-10, rtol=1e-12)
        np.testing.assert_allclose(b["forces"].numpy(), a["forces"].numpy() @ rotation.T, atol=1e-10)
        if all(pbc):
            s = a["stress"][0].numpy()
            np.testing.assert_allclose(b["stress"][0].numpy(), rotation @ s @ rotation.T, atol=1e-10)


def test_isolated_atom_has_zero_forces_and_virial():
    out = evaluate(Atoms("C", positions=[[0, 0, 0]]))
    assert out["forces"].tolist() == [[0.0, 0.0, 0.0]]
    assert torch.all(out["virial"] == 0)
    assert out["energy"].item() == pytest.approx(MODEL.e0[1].item() + MODEL.c)


def test_works_under_no_grad_and_without_requested_derivatives():
    atoms = random_structure(np.random.default_rng(2))
    reference = evaluate(atoms)
    with torch.no_grad():
        out = evaluate(atoms)
    torch.testing.assert_close(out["forces"], reference["forces"])
    batch = batch_atoms(atoms, MODEL.elements, MODEL.r_cut)
    only_energy = MODEL(batch, compute_forces=False, compute_stress=False)
    assert set(only_energy) == {"energy", "node_energy"}
    only_stress = MODEL(batch, compute_forces=False, compute_stress=True)
    assert "forces" not in only_stress
    torch.testing.assert_close(only_stress["stress"], reference["stress"])


def test_training_mode_backpropagates_through_forces():
    """d(sum F^2)/d(depth) from create_graph=True equals a finite difference."""
    atoms = random_structure(np.random.default_rng(7), n_atoms=4)
    batch = batch_atoms(atoms, MODEL.elements, MODEL.r_cut)
    model = PairModel()
    model.train()
    out = model(batch)
    loss = (out["forces"] ** 2).sum() + (out["stress"] ** 2).sum()
    loss.backward()
    grad = model.depth.grad.clone()
    model.eval()
    h = 1e-6
    for a, b in [(0, 0), (1, 2), (1, 1)]:
        with torch.no_grad():
            model.depth[a, b] += h
        up = model(batch)
        with torch.no_grad():
            model.depth[a, b] -= 2 * h
        down = model(batch)
        with torch.no_grad():
            model.depth[a, b] += h
        loss_up = (up["forces"] ** 2).sum() + (up["stress"] ** 2).sum()
        loss_down = (down["forces"] ** 2).sum() + (down["stress"] ** 2).sum()
        numerical = ((loss_up - loss_down) / (2 * h)).item()
        assert grad[a, b].item() == pytest.approx(numerical, rel=1e-5, abs=1e-8)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scripted_halves_give_the_same_result():
    atoms = random_structure(np.random.default_rng(9))
    batch = batch_atoms(atoms, MODEL.elements, MODEL.r_cut)
    strain, derive = torch.jit.script(apply_strain), torch.jit.script(derivatives)
    positions, eps, pos_s, cell_s = strain(batch["positions"], batch["cell"], batch["batch"], 1, True, True)
    node = MODEL.node_energy(batch, pos_s, cell_s)
    out = derive(node.sum().view(1), positions, eps, batch["cell"], batch["pbc"], True, True, False)
    reference = evaluate(atoms)
    for key in ("energy", "forces", "virial", "stress"):
        torch.testing.assert_close(out[key].detach(), reference[key])


def test_energy_fn_with_wrong_shape_is_rejected():
    batch = batch_atoms([Atoms("H"), Atoms("H")], MODEL.elements, MODEL.r_cut)
    with pytest.raises(ValueError, match=r"shape \(2,\), got \(\)"):
        energy_forces_stress(lambda p, c: p.sum(), batch)
