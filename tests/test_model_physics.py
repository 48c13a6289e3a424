"""Physics of generated TACE models (math.md section 6): symmetry, derivatives, smoothness.

Models are built from a spec into a temporary folder, loaded with tacegen.runtime.loader,
and instantiated SMALL (6 channels, r_cut 3.5 Å, radial MLP (8,)) with random weights.
float64 unless stated; tolerances are relative to the size of each output.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tacegen
from conftest import SEEDS, haar_orthogonal
from model_helpers import (build_module, evaluate, make_model, numeric_forces, R_CUT, random_crystal,
                           random_molecule, rel_err, transformed)
from tacegen.runtime.calculator import Calculator, model_dtype
from tacegen.runtime.data import batch_atoms
from tacegen.spec import ModelSpec

# torch 2.13 deprecates TorchScript; it is still the deployment path tested here
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")]

MAIN = ModelSpec(lmax=3, nu=3, hidden_lmax=1)   # the committed default build
WIDE = ModelSpec(lmax=2, nu=2, hidden_lmax=2)   # rank-2 hidden features between layers
SPECS = {"l3_nu3_h1": MAIN, "l2_nu2_h2": WIDE}


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("physics_builds")
    return {key: build_module(spec, root / key) for key, spec in SPECS.items()}


@pytest.fixture(scope="module")
def module(modules):
    return modules["l3_nu3_h1"]


@pytest.fixture(scope="module")
def model(module):
    return make_model(module, seed=1)


@pytest.fixture(scope="module")
def models(modules):
    return {key: make_model(mod, seed=2) for key, mod in modules.items()}


def _structure(rng, periodic: bool, symbols=("Cu",)) -> Atoms:
    return random_crystal(rng, symbols=symbols) if periodic else random_molecule(rng, symbols=symbols)


def _meaningful(out) -> bool:
    """Outputs of a physical size. Round-off-sized outputs (forces of a nearly symmetric
    cell, a pair at the cutoff) are differences of much larger terms, so their relative
    error measures that cancellation, not the symmetry."""
    return np.abs(out["forces"]).max() > 1e-3 and np.abs(out["node_energy"]).max() > 1e-4


def _check_symmetry(model, atoms: Atoms, q: np.ndarray, tol: float, rng, energy_tol: float | None = None) -> None:
    t = rng.normal(scale=3.0, size=3)
    perm = rng.permutation(len(atoms))
    ref = evaluate(model, atoms)
    new = evaluate(model, transformed(atoms, q, t, perm))
    # the energy is a sum of node energies: round-off is relative to the terms, not the sum
    energy_tol = energy_tol or tol
    energy_scale = max(abs(ref["energy"][0]), np.abs(ref["node_energy"]).sum())
    assert abs(new["energy"][0] - ref["energy"][0]) < energy_tol * energy_scale
    assert rel_err(new["node_energy"], ref["node_energy"][perm]) < energy_tol
    # F(P(Qr + t)) = P Q F(r); forces are rows, so Q F_i = F_i Q^T
    assert rel_err(new["forces"], (ref["forces"] @ q.T)[perm]) < tol
    if atoms.pbc.all():
        # S(Q) = Q S Q^T (ASE sign convention, symmetric)
        assert rel_err(new["stress"][0], q @ ref["stress"][0] @ q.T) < tol
        assert rel_err(new["virial"][0], q @ ref["virial"][0] @ q.T) < tol
    else:
        assert np.isnan(new["stress"]).all() and np.isnan(ref["stress"]).all()


# ----------------------------------------------------------------------------- symmetry

@pytest.mark.parametrize("key", sorted(SPECS))
@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "crystal"])
@settings(max_examples=12, deadline=None)
@given(seed=SEEDS, proper=st.booleans())
def test_invariance_and_equivariance_float64(models, key, periodic, seed, proper):
    rng = np.random.default_rng(seed)
    atoms = _structure(rng, periodic)
    assume(_meaningful(evaluate(models[key], atoms)))
    q = haar_orthogonal(rng, proper)
    _check_symmetry(models[key], atoms, q, 1e-12, rng)


@pytest.fixture(scope="module")
def model32(module, model):
    """The float64 ``model``'s weights in a float32 model."""
    m = make_model(module, seed=1, dtype=torch.float32)
    m.load_state_dict(model.state_dict())
    return m


# float32: outputs are sums with cancellation, so round-off is relative to the terms,
# not to the result. With edge vectors formed in float64 (see the template), observed over
# 520 random structures: worst 5.1e-6 forces, 9.2e-6 stress, 3.1e-5 node energies; the
# energy outliers come from rounding the transformed *input* positions to float32, which no
# model can undo. A symmetry bug gives O(1) errors.
F32_TOL = 2e-5
F32_ENERGY_TOL = 1e-4


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "crystal"])
@settings(max_examples=12, deadline=None)
@given(seed=SEEDS, proper=st.booleans())
def test_invariance_and_equivariance_float32(model, model32, periodic, seed, proper):
    rng = np.random.default_rng(seed)
    atoms = _structure(rng, periodic)
    ref64 = evaluate(model, atoms)
    assume(_meaningful(ref64))
    q = haar_orthogonal(rng, proper)
    _check_symmetry(model32, atoms, q, F32_TOL, rng, energy_tol=F32_ENERGY_TOL)
    # and float32 computes the same function as float64 (same weights)
    out32 = evaluate(model32, atoms)
    assert abs(out32["energy"][0] - ref64["energy"][0]) < F32_ENERGY_TOL * np.abs(ref64["node_energy"]).sum()
    assert rel_err(out32["forces"], ref64["forces"]) < 10 * F32_TOL


def test_symmetry_test_can_fail(model):
    """Guard against a vacuous symmetry check: a non-rigid change is detected."""
    rng = np.random.default_rng(3)
    atoms = random_molecule(rng, 6)
    q = haar_orthogonal(rng, True)
    ref = evaluate(model, atoms)
    moved = transformed(atoms, q)
    moved.positions[0] += 0.05
    new = evaluate(model, moved)
    assert rel_err(new["energy"], ref["energy"]) > 1e-6
    assert rel_err(new["forces"], ref["forces"] @ q.T) > 1e-4


# ----------------------------------------------------------------------------- derivatives

def _energy(model, atoms: Atoms) -> float:
    batch = batch_atoms(atoms, model.elements, model.r_cut, dtype=model.dtype)
    return float(model(batch, compute_forces=False, compute_stress=False)["energy"][0].detach())


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "crystal"])
def test_forces_match_central_finite_differences(model, periodic):
    rng = np.random.default_rng(11 + periodic)
    atoms = random_crystal(rng, 3) if periodic else random_molecule(rng, 6)
    forces = evaluate(model, atoms)["forces"]
    numeric = numeric_forces(lambda a: _energy(model, a), atoms)
    assert np.abs(forces).max() > 1e-2
    assert rel_err(forces, numeric) < 1e-7


def _strained(atoms: Atoms, strain: np.ndarray) -> Atoms:
    out = atoms.copy()
    deform = np.eye(3) + strain
    out.set_cell(np.asarray(atoms.cell[:]) @ deform, scale_atoms=False)
    out.positions = atoms.positions @ deform
    return out


def test_stress_matches_strain_finite_differences(model):
    """stress_ij = (1/V) dE/deps_ij under the symmetric strain eps = d (e_i e_j^T + e_j e_i^T)/2."""
    atoms = random_crystal(np.random.default_rng(5), 4)
    out = evaluate(model, atoms)
    volume = atoms.get_volume()
    h = 1e-5
    numeric = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            e = np.zeros((3, 3))
            e[i, j] += 0.5
            e[j, i] += 0.5
            numeric[i, j] = numeric[j, i] = (
                _energy(model, _strained(atoms, h * e)) - _energy(model, _strained(atoms, -h * e))) / (2 * h * volume)
    stress = out["stress"][0]
    assert np.abs(stress).max() > 1e-4
    assert rel_err(stress, stress.T) < 1e-14
    assert rel_err(stress, numeric) < 1e-7
    assert rel_err(out["virial"][0], -volume * stress) < 1e-13


# ----------------------------------------------------------------------------- batching

def test_batch_equals_one_by_one(model):
    rng = np.random.default_rng(21)
    structures = [random_molecule(rng, 5), random_crystal(rng, 3), random_molecule(rng, 9),
                  random_crystal(rng, 2), Atoms("Cu", positions=[[0.0, 0.0, 0.0]])]
    together = evaluate(model, structures)
    start = 0
    for b, atoms in enumerate(structures):
        alone = evaluate(model, atoms)
        n = len(atoms)
        if n == 1:  # the isolated atom: exactly the (zero) reference energy, zero forces
            assert together["energy"][b] == alone["energy"][0] == 0.0
            assert np.all(together["forces"][start:start + n] == 0.0) and np.all(alone["forces"] == 0.0)
        else:
            assert rel_err(together["energy"][b], alone["energy"][0]) < 1e-12
            assert rel_err(together["node_energy"][start:start + n], alone["node_energy"]) < 1e-12
            assert rel_err(together["forces"][start:start + n], alone["forces"]) < 1e-12
        np.testing.assert_allclose(together["stress"][b], alone["stress"][0], rtol=1e-12, atol=1e-15)
        assert np.isnan(alone["stress"]).all() != bool(atoms.pbc.all())
        start += n
    np.testing.assert_allclose(np.bincount(np.repeat(np.arange(len(structures)), [len(a) for a in structures]),
                                           weights=together["node_energy"]), together["energy"], rtol=1e-13)
    # an isolated atom has zero forces and the reference energy only
    assert np.all(together["forces"][-1] == 0.0)


@pytest.mark.parametrize("edge_chunk", [10**9, 7], ids=["blocks", "checkpointed-blocks"])
def test_blocked_atomic_basis_equals_unblocked(module, model, edge_chunk):
    """edge_block (blocks of receivers) and edge_chunk (checkpointing them) change speed and
    memory, not results; edges out of receiver order are evaluated unblocked."""
    assert model.blocks[0].edge_block > 10**3  # the fixture's small systems are one block
    chunked = make_model(module, seed=1, edge_block=7, edge_chunk=edge_chunk)
    chunked.load_state_dict(model.state_dict())
    rng = np.random.default_rng(8)
    structures = [random_crystal(rng, 4), random_molecule(rng, 7), random_crystal(rng, 2)]
    ref, out = evaluate(model, structures), evaluate(chunked, structures)
    batch = batch_atoms(structures, model.elements, model.r_cut)
    assert batch["edge_index"].shape[1] > 10 * 7  # many blocks
    for key in ("energy", "node_energy", "forces"):
        assert rel_err(out[key], ref[key]) < 1e-12, key
    np.testing.assert_allclose(out["stress"], ref["stress"], rtol=1e-12, atol=1e-15)
    receivers = batch["edge_index"][1]
    assert chunked.blocks[0].use_blocks(receivers)
    assert not chunked.blocks[0].use_blocks(receivers.flip(0))



@pytest.mark.parametrize("edge_chunk", [10**9, 7], ids=["blocks", "checkpointed-blocks"])
def test_blocked_atomic_basis_trains_as_unblocked(module, model, edge_chunk):
    """The parameter gradient of a force loss (the double backward of training) is the same
    through blocks, checkpointed or not."""
    rng = np.random.default_rng(9)
    batch = batch_atoms([random_crystal(rng, 4), random_molecule(rng, 6)], model.elements, model.r_cut)
    grads = []
    for overrides in ({}, dict(edge_block=7, edge_chunk=edge_chunk)):
        m = make_model(module, seed=1, **overrides)
        m.load_state_dict(model.state_dict())
        m.train()
        out = m(batch, compute_stress=False)
        loss = (out["forces"] ** 2).sum() + out["energy"].sum()
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    for a, b in zip(*grads):
        assert rel_err(b.detach().numpy(), a.detach().numpy()) < 1e-11

# ----------------------------------------------------------------------------- smoothness

@pytest.mark.parametrize("n_atoms", [2, 3], ids=["dimer", "trimer"])
def test_energy_and_forces_continuous_across_cutoff(model, n_atoms):
    def atoms_at(r):
        pos = [[0.0, 0.0, 0.0], [r, 0.0, 0.0]]
        if n_atoms == 3:  # a third atom bonded to atom 0 only (so messages pass through atom 0)
            pos.append([-0.9, 1.7, 0.3])
        return Atoms("Cu" * n_atoms, positions=pos)

    delta = 1e-6
    inside = evaluate(model, atoms_at(R_CUT - delta))
    outside = evaluate(model, atoms_at(R_CUT + delta))
    assert abs(inside["energy"][0] - outside["energy"][0]) < 1e-9
    assert np.abs(inside["forces"] - outside["forces"]).max() < 1e-9
    if n_atoms == 2:
        assert np.all(outside["forces"] == 0.0)
    # the test can fail: well inside the cutoff the pair interacts
    near = evaluate(model, atoms_at(R_CUT - 0.8))
    assert abs(near["energy"][0] - outside["energy"][0]) > 1e-4
    assert np.abs(near["forces"] - outside["forces"]).max() > 1e-4


# ----------------------------------------------------------------------------- elements

@pytest.fixture(scope="module")
def model_cu_o(module):
    return make_model(module, elements=("Cu", "O"), seed=4, atomic_energies=[-1.25, -2.5])


def test_two_element_model_symmetry_and_species(model_cu_o):
    rng = np.random.default_rng(31)
    atoms = random_molecule(rng, 6, symbols=("Cu", "O"))
    atoms.symbols[:2] = ["Cu", "O"]  # both species present
    q = haar_orthogonal(rng, False)
    _check_symmetry(model_cu_o, atoms, q, 1e-12, rng)
    crystal = random_crystal(rng, 4, symbols=("Cu", "O"))
    crystal.symbols[:2] = ["Cu", "O"]
    _check_symmetry(model_cu_o, crystal, haar_orthogonal(rng, True), 1e-12, rng)

    e = evaluate(model_cu_o, atoms)["energy"][0]
    swapped = atoms.copy()
    swapped.symbols = ["O" if s == "Cu" else "Cu" for s in atoms.get_chemical_symbols()]
    one = atoms.copy()
    one.symbols[0] = "O" if one.symbols[0] == "Cu" else "Cu"
    for other in (swapped, one):
        assert abs(evaluate(model_cu_o, other)["energy"][0] - e) > 1e-4
    # the reference energies enter exactly, per species
    lone = evaluate(model_cu_o, [Atoms("Cu"), Atoms("O"), Atoms("CuO", positions=[[0, 0, 0], [9, 0, 0]])])
    np.testing.assert_allclose(lone["energy"], [-1.25, -2.5, -3.75], rtol=0, atol=1e-14)


def test_species_matter_beyond_reference_energies(model_cu_o):
    """Cu2 and O2 dimers at the same distance differ by more than E0 (the embedding matters)."""
    cu2 = evaluate(model_cu_o, Atoms("Cu2", positions=[[0, 0, 0], [2.2, 0, 0]]))
    o2 = evaluate(model_cu_o, Atoms("O2", positions=[[0, 0, 0], [2.2, 0, 0]]))
    learned_cu, learned_o = cu2["energy"][0] + 2.5, o2["energy"][0] + 5.0
    assert abs(learned_cu - learned_o) > 1e-4
    assert abs(learned_cu) > 1e-4 and abs(learned_o) > 1e-4


# ----------------------------------------------------------------------------- TorchScript

@pytest.mark.parametrize("key,layers", [("l3_nu3_h1", 2), ("l3_nu3_h1", 1), ("l3_nu3_h1", 3), ("l2_nu2_h2", 2)])
def test_torchscript_matches_eager(modules, key, layers):
    eager = make_model(modules[key], seed=5, layers=layers)
    scripted = torch.jit.script(eager)
    rng = np.random.default_rng(41)
    batch = batch_atoms([random_molecule(rng, 5), random_crystal(rng, 3)], eager.elements, eager.r_cut)
    ref = eager(batch)
    for model in (scripted, _save_and_load(scripted)):
        out = model(batch)
        assert set(out) == set(ref)
        for k in ref:
            torch.testing.assert_close(out[k], ref[k], rtol=1e-13, atol=1e-15, equal_nan=True)
    # the model contract as the calculator reads it (TorchScript turns the dtype into an int)
    assert scripted.elements == ["Cu"] and scripted.r_cut == R_CUT
    assert model_dtype(scripted) == torch.float64


def test_torchscript_under_no_grad_refuses_instead_of_zero_forces(model):
    """TorchScript cannot switch grad mode on: under no_grad a scripted model must not
    silently return zero forces (the eager model enables grad itself)."""
    scripted = torch.jit.script(model)
    batch = batch_atoms(random_molecule(np.random.default_rng(4), 5), model.elements, model.r_cut)
    ref = model(batch)
    with torch.no_grad():
        eager = model(batch)
        torch.testing.assert_close(eager["forces"], ref["forces"], rtol=1e-13, atol=0)
        with pytest.raises((RuntimeError, torch.jit.Error), match="needs autograd.*no_grad"):
            scripted(batch)
        energy_only = scripted(batch, compute_forces=False, compute_stress=False)
    torch.testing.assert_close(energy_only["energy"], ref["energy"].detach(), rtol=1e-13, atol=0)


def _save_and_load(scripted):
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torchscript_model_in_calculator(module, model, dtype):
    if dtype == torch.float32:
        model = make_model(module, seed=1, dtype=dtype)
    scripted = torch.jit.script(model)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    eager_atoms = atoms.copy()
    atoms.calc = Calculator(scripted)
    eager_atoms.calc = Calculator(model)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert atoms.get_potential_energy() == pytest.approx(eager_atoms.get_potential_energy(), rel=rtol)
    np.testing.assert_allclose(atoms.get_forces(), eager_atoms.get_forces(), rtol=rtol, atol=rtol * 1e-3)
    np.testing.assert_allclose(atoms.get_stress(), eager_atoms.get_stress(), rtol=rtol, atol=rtol * 1e-3)


# ----------------------------------------------------------------------------- bad input

def test_bad_structures_are_named(model):
    with pytest.raises(ValueError, match=r"'Xe'.*\['Cu'\]"):
        batch_atoms(Atoms("CuXe", positions=[[0, 0, 0], [2, 0, 0]]), model.elements, model.r_cut)
    with pytest.raises(ValueError, match="no atoms"):
        batch_atoms(Atoms(), model.elements, model.r_cut)
    flat = Atoms("Cu", positions=[[0, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True)
    with pytest.raises(ValueError, match="(?i)cell|volume|degenerate"):
        batch_atoms(flat, model.elements, model.r_cut)
    with pytest.raises(ValueError, match=r"0\.05.*Å.*0\.1"):
        batch_atoms(Atoms("Cu2", positions=[[0, 0, 0], [0.05, 0, 0]]), model.elements, model.r_cut)


def test_bad_structures_through_the_calculator(model):
    for atoms, pattern in [
        (Atoms("CuO", positions=[[0, 0, 0], [2, 0, 0]]), "'O'"),
        (Atoms("Cu2", positions=[[0, 0, 0], [0.05, 0, 0]]), "closer than"),
        (Atoms("Cu", positions=[[0, 0, 0]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True), "(?i)cell"),
    ]:
        atoms.calc = tacegen.Calculator(model)
        with pytest.raises(ValueError, match=pattern):
            atoms.get_potential_energy()


def test_wrong_dtype_batch_is_refused(model, model32):
    atoms = random_molecule(np.random.default_rng(2), 4)
    with pytest.raises(TypeError, match="float32.*float64"):
        model(batch_atoms(atoms, model.elements, model.r_cut, dtype=torch.float32))
    with pytest.raises(TypeError, match="float64.*float32"):
        model32(batch_atoms(atoms, model.elements, model.r_cut, dtype=torch.float64))


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(elements=[]), ValueError, r"elements.*\[\]"),
    (dict(elements="Cu"), ValueError, "elements.*'Cu'"),
    (dict(elements=["Cu", "Xx"]), ValueError, "'Xx'"),
    (dict(elements=["Cu", "Cu"]), ValueError, "duplicates"),
    (dict(channels=0), ValueError, "channels.*0"),
    (dict(channels=2.5), ValueError, "channels.*2.5"),
    (dict(layers=0), ValueError, "layers.*0"),
    (dict(num_radial=0), ValueError, "num_radial.*0"),
    (dict(r_cut=-1.0), ValueError, "r_cut.*-1.0"),
    (dict(dtype=torch.int32), TypeError, "torch.int32"),
    (dict(atomic_energies=[1.0, 2.0]), ValueError, "2 values for 1 elements"),
])
def test_bad_constructor_arguments_are_named(module, kwargs, error, pattern):
    args = dict(elements=["Cu"], channels=4, r_cut=3.0, radial_hidden=(8,))
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        module.TACE(**args)


# ----------------------------------------------------------------------------- ASE

@pytest.fixture(scope="module")
def cu_cell():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms, neighbours through many images
    atoms.set_cell(np.asarray(atoms.cell[:]) @ np.array([[1.0, 0.03, 0.0], [0.0, 0.98, 0.02], [0.01, 0.0, 1.02]]),
                   scale_atoms=True)
    atoms.rattle(0.08, seed=3)
    return atoms


def test_ase_calculator_matches_model_and_finite_differences(model, cu_cell):
    atoms = cu_cell.copy()
    atoms.calc = Calculator(model)
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    direct = evaluate(model, cu_cell)
    assert energy == pytest.approx(direct["energy"][0], rel=1e-14)
    assert atoms.get_potential_energy(force_consistent=True) == energy
    np.testing.assert_allclose(forces, direct["forces"], rtol=1e-14, atol=1e-16)
    s = direct["stress"][0]
    np.testing.assert_allclose(stress, [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), energy, rtol=1e-13)
    assert np.abs(forces).max() > 1e-3 and np.abs(stress).max() > 1e-4

    numeric_f = calculate_numerical_forces(atoms, eps=1e-5, iatoms=[0, 2], icarts=[0, 1, 2])
    assert numeric_f.shape == (2, 3)
    np.testing.assert_allclose(numeric_f, forces[[0, 2]], rtol=1e-6, atol=1e-8 * np.abs(forces).max())
    numeric_s = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(numeric_s, stress, rtol=1e-6, atol=1e-8 * np.abs(stress).max())


def test_ase_calculator_molecule_has_no_stress(model):
    atoms = random_molecule(np.random.default_rng(9), 5)
    atoms.calc = Calculator(model)
    assert np.isfinite(atoms.get_potential_energy())
    from ase.calculators.calculator import PropertyNotImplementedError
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()
