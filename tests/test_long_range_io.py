"""Long-range builds (LES and Ewald) with external inputs and tensor outputs (issue 14), PyTorch.

Two small builds (lmax 2, nu 2, hidden_lmax 2) with a total charge, an electric field and a
magnetic field as inputs and a polarizability, a polar vector and a per-atom vector as
outputs. The declared ``total_charge`` is the total the LES latent charges are constrained
to (an Ewald model checks it against its charges); energy, forces, stress, charges, the
model's dipole and the outputs are equivariant under proper and improper rotations with
their parities; forces and field responses (long-range part included) match finite
differences; TorchScript equals eager; the Numba back end refuses clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import haar_orthogonal
from model_helpers import build_module, make_model, numeric_forces, random_crystal, rel_err
from tacegen.runtime.calculator import Calculator
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.inputs import field_response
from tacegen.runtime.responses import atomic_virials, hessian
from tacegen.spec import ModelSpec, SpecError

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")]

INPUTS = ("total_charge", "electric_field", "magnetic_field")
OUTPUTS = ("polarizability", "mu:structure:1:general:o:even", "atomic_dipole")
SYMBOLS = ("H", "C", "O")
IONS = ("Na", "Cl")


def spec(long_range):
    return ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", long_range=long_range, inputs=INPUTS,
                     outputs=OUTPUTS)


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_range_io")
    return {lr: build_module(spec(lr), root / lr) for lr in ("les", "ewald")}


@pytest.fixture(scope="module")
def les(modules):
    model = make_model(modules["les"], elements=SYMBOLS, seed=1)
    with torch.no_grad():
        model.charge_readout.weight.mul_(60.0)  # latent charges O(0.1-1) e
    return model


@pytest.fixture(scope="module")
def ewald(modules):
    return make_model(modules["ewald"], elements=IONS, seed=2, ewald_accuracy=1e-12)


def fields(atoms, rng, total=1.0):
    atoms.info.update(total_charge=total, electric_field=rng.normal(size=3), magnetic_field=rng.normal(size=3))
    return atoms


def molecule(seed=0, total=1.0) -> Atoms:
    rng = np.random.default_rng(seed)
    positions = np.array([[0.0, 0.0, 0.0], [1.2, 0.1, 0.0], [-0.3, 1.1, 0.2], [0.4, -0.5, 1.0], [1.5, 1.2, 0.9]])
    return fields(Atoms("COHHH", positions=positions + 0.05 * rng.normal(size=positions.shape)), rng, total)


def crystal(seed=3, total=-1.0, symbols=SYMBOLS) -> Atoms:
    rng = np.random.default_rng(seed)
    return fields(random_crystal(rng, 4, symbols), rng, total)


def run(model, structures, **kwargs):
    batch = batch_atoms(structures, model.elements, model.r_cut, inputs=model.input_specs)
    return {k: v.detach().numpy() for k, v in model(batch, **kwargs).items()}


def transformed(atoms, q, perm):
    """Positions, cell and the polar field rotated by Q (the axial magnetic field by det Q Q), translated
    (molecules) and permuted."""
    out = atoms.copy()
    out.positions = atoms.positions @ q.T + (0.0 if atoms.pbc.any() else np.array([0.3, -0.2, 0.1]))
    out.cell = np.asarray(atoms.cell[:]) @ q.T
    out.info["electric_field"] = q @ atoms.info["electric_field"]
    out.info["magnetic_field"] = np.linalg.det(q) * (q @ atoms.info["magnetic_field"])
    if atoms.has("initial_charges"):
        out.set_initial_charges(atoms.get_initial_charges())
    return out[perm]


# ----------------------------------------------------------------------------- spec

def test_long_range_builds_refuse_the_names_of_their_own_outputs_and_a_relabelled_total_charge():
    for long_range in ("les", "ewald"):
        for name in ("dipole", "born_charges"):
            with pytest.raises(SpecError, match=f"output '{name}': a long-range model returns its own"):
                ModelSpec(lmax=2, nu=2, hidden_lmax=2, long_range=long_range, outputs=(name,))
        with pytest.raises(SpecError, match="input 'total_charge'.*must be the preset"):
            ModelSpec(lmax=2, nu=2, long_range=long_range, inputs=("total_charge:atom:0:e:even",))
    assert ModelSpec(lmax=2, nu=2, hidden_lmax=2, outputs=("dipole",)).outputs[0].name == "dipole"  # no long range


# ----------------------------------------------------------------------------- LES

def test_latent_charges_follow_the_total_charge_input(les):
    energies = []
    for total in (-1.0, 0.0, 2.0):
        out = run(les, molecule(0, total))
        assert abs(out["charges"].sum() - total) < 1e-12
        energies.append(out["energy"][0])
    assert min(abs(a - b) for a, b in ((energies[0], energies[1]), (energies[1], energies[2]))) > 1e-3
    both = molecule(0, 2.0)
    both.info["charge"] = 2.0  # agreeing atoms.info["charge"] is accepted
    assert run(les, both)["energy"][0] == pytest.approx(energies[2], rel=1e-14)
    both.info["charge"] = 1.0
    with pytest.raises(ValueError, match=r"structure 0: atoms.info\['charge'\] = 1.0 but the input"):
        run(les, both)
    missing = molecule(0)
    del missing.info["total_charge"]
    with pytest.raises(ValueError, match=r"atoms.info\['total_charge'\] is missing"):
        run(les, missing)


@pytest.mark.parametrize("improper", [False, True])
@pytest.mark.parametrize("periodic", [False, True])
def test_les_energy_forces_and_outputs_are_equivariant(les, improper, periodic):
    rng = np.random.default_rng(10 + 2 * improper + periodic)
    atoms = crystal(5) if periodic else molecule(5)
    q, perm = haar_orthogonal(rng, proper=not improper), rng.permutation(len(atoms))
    ref, new = run(les, atoms), run(les, transformed(atoms, q, perm))
    assert abs(ref["long_range_energy"][0]) > 1e-3 and np.abs(ref["charges"]).max() > 1e-2
    assert abs(new["energy"][0] - ref["energy"][0]) < 1e-11 * abs(ref["energy"][0])
    assert rel_err(new["long_range_energy"], ref["long_range_energy"]) < 1e-10
    assert rel_err(new["charges"], ref["charges"][perm]) < 1e-10
    assert rel_err(new["forces"], (ref["forces"] @ q.T)[perm]) < 1e-10
    assert rel_err(new["polarizability"][0], q @ ref["polarizability"][0] @ q.T) < 1e-10
    assert rel_err(new["mu"][0], q @ ref["mu"][0]) < 1e-10
    assert rel_err(new["atomic_dipole"], (ref["atomic_dipole"] @ q.T)[perm]) < 1e-10
    if periodic:
        assert rel_err(new["stress"][0], q @ ref["stress"][0] @ q.T) < 1e-10
    else:
        assert rel_err(new["dipole"][0], q @ ref["dipole"][0]) < 1e-10  # the model's own: sum q_i r_i


def test_les_forces_match_finite_differences_in_a_field(les):
    for atoms in (molecule(1), crystal(2)):
        out = run(les, atoms)
        numeric = numeric_forces(lambda a: float(run(les, a, compute_stress=False)["energy"][0]), atoms)
        assert rel_err(out["forces"], numeric) < 1e-7


def test_field_response_includes_the_long_range_energy(les):
    """-dE/dF by autograd (short range + LES) against central differences of the model's energy."""
    atoms = molecule(3)
    batch = batch_atoms(atoms, les.elements, les.r_cut, inputs=les.input_specs)
    response = field_response(les, batch, "electric_field")[0].numpy()
    numeric = np.zeros(3)
    h = 1e-5
    for a in range(3):
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.info["electric_field"] = atoms.info["electric_field"] + sign * h * np.eye(3)[a]
            energies.append(run(les, moved, compute_forces=False, compute_stress=False)["energy"][0])
        numeric[a] = -(energies[0] - energies[1]) / (2 * h)
    assert rel_err(response, numeric) < 1e-7
    short = -torch.autograd.grad(
        les.node_energies(batch["positions"], batch["cell"],
                          {**batch, "input_electric_field": batch["input_electric_field"].requires_grad_(True)}).sum(),
        batch["input_electric_field"])[0][0].numpy()
    assert rel_err(short, numeric) > 1e-4  # the long-range part depends on the field through the charges


def test_hessian_includes_the_long_range_energy_and_atomic_virials_refuse(les):
    atoms = molecule(4)
    batch = batch_atoms(atoms, les.elements, les.r_cut, inputs=les.input_specs)
    hess = hessian(les, batch).numpy()
    h, n = 1e-5, len(atoms)
    numeric = np.zeros((3 * n, 3 * n))
    for k in range(3 * n):
        forces = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[k // 3, k % 3] += sign * h
            forces.append(run(les, moved, compute_stress=False)["forces"].reshape(-1))
        numeric[k] = -(forces[0] - forces[1]) / (2 * h)
    assert rel_err(hess, numeric) < 1e-6
    with pytest.raises(ValueError, match="long-range part"):
        atomic_virials(les, batch_atoms(crystal(), les.elements, les.r_cut, inputs=les.input_specs))


def test_scripted_les_io_model_equals_eager(les):
    batch = batch_atoms([molecule(6), crystal(7)], les.elements, les.r_cut, inputs=les.input_specs)
    ref = les(batch)
    scripted = torch.jit.script(les)
    out = scripted(batch)
    assert set(out) == set(ref)
    for key in ("energy", "forces", "virial", "charges", "long_range_energy", "polarizability", "mu",
                "atomic_dipole"):
        assert float(ref[key].abs().max()) > 1e-4, key
        torch.testing.assert_close(out[key], ref[key], rtol=1e-12, atol=1e-12, msg=key)
    torch.testing.assert_close(out["dipole"], ref["dipole"], rtol=1e-12, atol=1e-12, equal_nan=True)


def test_calculator_and_the_numba_refusal(les):
    atoms = molecule(8)
    atoms.calc = Calculator(les)
    ref = run(les, atoms)
    assert atoms.get_potential_energy() == pytest.approx(ref["energy"][0], rel=1e-14)
    for key in ("polarizability", "mu", "atomic_dipole", "charges", "dipole"):
        np.testing.assert_allclose(atoms.calc.results[key], ref[key] if key in ("atomic_dipole", "charges")
                                   else ref[key][0], rtol=1e-14)
    atoms.info["total_charge"] = 0.0  # an input change is noticed, not served from the cache
    assert abs(atoms.get_potential_energy() - ref["energy"][0]) > 1e-3
    with pytest.raises(NotImplementedError, match="long-range block 'les', which the Numba back end does not"):
        les.numba_backend()


# ----------------------------------------------------------------------------- Ewald

def ions(seed, periodic):
    rng = np.random.default_rng(seed)
    if periodic:
        atoms = random_crystal(rng, 4, IONS)
    else:
        atoms = Atoms("NaClNaCl", positions=[[0, 0, 0], [2.4, 0.1, 0], [0.2, 2.5, 0.3], [2.3, 2.2, 1.9]])
        atoms.positions += 0.05 * rng.normal(size=(4, 3))
    charges = rng.normal(size=4)
    charges += (0.5 - charges.sum()) / 4
    atoms.set_initial_charges(charges)
    return fields(atoms, rng, total=0.5)


@pytest.mark.parametrize("periodic", [False, True])
def test_ewald_io_forces_and_equivariance(ewald, periodic):
    atoms = ions(20 + periodic, periodic)
    out = run(ewald, atoms)
    assert abs(out["long_range_energy"][0]) > 1e-2
    numeric = numeric_forces(lambda a: float(run(ewald, a, compute_stress=False)["energy"][0]), atoms)
    assert rel_err(out["forces"], numeric) < 1e-7
    rng = np.random.default_rng(periodic)
    q, perm = haar_orthogonal(rng, proper=False), rng.permutation(len(atoms))
    new = run(ewald, transformed(atoms, q, perm))
    assert abs(new["energy"][0] - out["energy"][0]) < 1e-10 * abs(out["energy"][0])
    assert rel_err(new["forces"], (out["forces"] @ q.T)[perm]) < 1e-9
    assert rel_err(new["polarizability"][0], q @ out["polarizability"][0] @ q.T) < 1e-10


def test_ewald_checks_the_total_charge_input_against_its_charges(ewald):
    atoms = ions(30, False)
    atoms.info["total_charge"] = 1.5
    with pytest.raises(ValueError, match=r"structure 0: the input atoms.info\['total_charge'\] = 1.5 but its initial"):
        run(ewald, atoms)
    with pytest.raises(NotImplementedError, match="long-range block 'ewald'"):
        ewald.numba_backend()


def test_time_reversal_and_ir_intensities_from_the_latent_charges(les):
    """Flipping the time-odd magnetic field leaves everything time-even unchanged; the IR intensities of
    an LES model come from its own dipole (its latent charges): |d mu / dQ_k|^2 against central
    differences of the dipole along each normal mode."""
    from tacegen.runtime.responses import vibrations

    atoms = molecule(9)
    flipped = atoms.copy()
    flipped.info["magnetic_field"] = -atoms.info["magnetic_field"]
    ref, new = run(les, atoms), run(les, flipped)
    for key in ("energy", "forces", "charges", "polarizability", "mu"):
        assert rel_err(new[key], ref[key]) < 1e-13, key
    frequencies, intensities = vibrations(les, atoms)
    batch = batch_atoms(atoms, les.elements, les.r_cut, inputs=les.input_specs)
    weighted = hessian(les, batch).numpy() / np.sqrt(np.outer(*(2 * [np.repeat(atoms.get_masses(), 3)])))
    _, modes = np.linalg.eigh(0.5 * (weighted + weighted.T))
    h = 1e-4
    numeric = []
    for k in range(modes.shape[1]):
        step = (modes[:, k] / np.sqrt(np.repeat(atoms.get_masses(), 3))).reshape(-1, 3)
        dipoles = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions += sign * h * step
            dipoles.append(run(les, moved, compute_forces=False, compute_stress=False)["dipole"][0])
        numeric.append(np.sum(((dipoles[0] - dipoles[1]) / (2 * h)) ** 2))
    assert np.all(np.isfinite(frequencies)) and rel_err(intensities, numeric) < 1e-6
