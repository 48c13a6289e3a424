"""Generated models with external inputs and tensor outputs (issue 14), PyTorch back end.

One small build (lmax 2, nu 2, hidden_lmax 2) with every input kind and three outputs:
conditioning on the total charge, time reversal, equivariance under proper and improper
rotations (axial inputs pick up det Q), permutations, field responses against finite
differences, clear errors for bad inputs, the calculator and the Numba refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from model_helpers import build_module, make_model, torch_threads
from tacegen.runtime.calculator import Calculator
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.inputs import field_response
from tacegen.spec import ModelSpec

INPUTS = ("total_charge", "electric_field", "magnetic_field", "fidelity", "initial_charges", "magmom",
          "magmom_vector")
OUTPUTS = ("dipole", "polarizability", "born_charges")
TIME_ODD = ("magnetic_field", "magmom", "magmom_vector")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec = ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", inputs=INPUTS, outputs=OUTPUTS)
    module = build_module(spec, tmp_path_factory.mktemp("io") / "build")
    with torch_threads(1):
        yield make_model(module, elements=("H", "C", "O"), input_categories={"fidelity": 3})


def structure(seed=0) -> Atoms:
    rng = np.random.default_rng(seed)
    positions = np.array([[0.0, 0.0, 0.0], [1.2, 0.1, 0.0], [-0.3, 1.1, 0.2], [0.4, -0.5, 1.0], [1.5, 1.2, 0.9]])
    atoms = Atoms("COHHH", positions=positions + 0.05 * rng.normal(size=positions.shape))
    atoms.info.update(total_charge=1.0, electric_field=rng.normal(size=3), magnetic_field=rng.normal(size=3),
                      fidelity=1)
    atoms.arrays["initial_charges"] = rng.normal(size=len(atoms))
    atoms.arrays["magmom"] = rng.normal(size=len(atoms))
    atoms.arrays["magmom_vector"] = rng.normal(size=(len(atoms), 3))
    return atoms


def run(model, atoms):
    batch = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
    return {k: v.detach().numpy() for k, v in model(batch).items()}


def orthogonal(seed, improper):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q


def transformed(atoms, q, perm=None):
    """Positions and every vector input rotated by Q; axial (1e) inputs pick up det Q."""
    out = atoms.copy()
    det = np.linalg.det(q)
    out.positions = atoms.positions @ q.T + np.array([0.3, -0.2, 0.1])
    out.info["electric_field"] = q @ atoms.info["electric_field"]
    out.info["magnetic_field"] = det * (q @ atoms.info["magnetic_field"])
    out.arrays["magmom_vector"] = det * atoms.arrays["magmom_vector"] @ q.T
    if perm is not None:
        out = out[perm]
    return out


def test_outputs_have_their_shapes_and_are_not_zero(model):
    out = run(model, structure())
    assert out["dipole"].shape == (1, 3) and out["polarizability"].shape == (1, 3, 3)
    assert out["born_charges"].shape == (5, 3, 3)
    for name in OUTPUTS:
        assert np.abs(out[name]).max() > 1e-4, name
    alpha = out["polarizability"][0]
    np.testing.assert_allclose(alpha, alpha.T, atol=1e-12)  # symmetric by construction
    z = out["born_charges"]
    assert np.abs(z - z.transpose(0, 2, 1)).max() > 1e-6  # the 1e (antisymmetric) part is read out


def test_total_charge_conditions_the_energy(model):
    atoms = structure()
    energies = []
    for charge in (-1.0, 0.0, 1.0):
        atoms.info["total_charge"] = charge
        energies.append(run(model, atoms)["energy"][0])
    scale = max(abs(e) for e in energies)
    assert scale > 1e-3
    assert min(abs(energies[0] - energies[1]), abs(energies[1] - energies[2])) > 1e-6 * scale


def test_fidelity_conditions_the_energy(model):
    atoms = structure()
    e = []
    for k in (0, 2):
        atoms.info["fidelity"] = k
        e.append(run(model, atoms)["energy"][0])
    assert abs(e[0] - e[1]) > 1e-8 * max(1.0, abs(e[0]))
    atoms.info["fidelity"] = 3
    with pytest.raises(ValueError, match=r"input 'fidelity' = 3 is outside 0..2"):
        run(model, atoms)


def test_time_reversal_flips_time_odd_inputs_and_leaves_even_outputs(model):
    atoms = structure()
    flipped = atoms.copy()
    flipped.info["magnetic_field"] = -atoms.info["magnetic_field"]
    for key in ("magmom", "magmom_vector"):
        flipped.arrays[key] = -atoms.arrays[key]
    a, b = run(model, atoms), run(model, flipped)
    for key in ("energy", "forces", *OUTPUTS):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-12 * np.abs(a[key]).max())
    # the time-odd inputs matter: flipping one atom's moment (not all) changes the energy
    partial = atoms.copy()
    partial.arrays["magmom"] = atoms.arrays["magmom"] * np.array([1, -1, 1, 1, 1])
    assert abs(run(model, partial)["energy"][0] - a["energy"][0]) > 1e-9
    partial = atoms.copy()
    partial.info["magnetic_field"] = 2.0 * atoms.info["magnetic_field"]
    assert abs(run(model, partial)["energy"][0] - a["energy"][0]) > 1e-9


@pytest.mark.parametrize("improper", [False, True])
def test_equivariance_under_rotations_with_parity_and_permutations(model, improper):
    atoms = structure(1)
    q = orthogonal(7, improper)
    perm = np.array([2, 0, 4, 1, 3])
    a, b = run(model, atoms), run(model, transformed(atoms, q, perm))
    tol = 1e-10
    np.testing.assert_allclose(b["energy"], a["energy"], rtol=tol)
    np.testing.assert_allclose(b["forces"], (a["forces"] @ q.T)[perm], atol=tol * np.abs(a["forces"]).max())
    np.testing.assert_allclose(b["dipole"][0], q @ a["dipole"][0], atol=tol * np.abs(a["dipole"]).max())
    np.testing.assert_allclose(b["polarizability"][0], q @ a["polarizability"][0] @ q.T,
                               atol=tol * np.abs(a["polarizability"]).max())
    z = np.einsum("ab,nbc,dc->nad", q, a["born_charges"], q)[perm]
    np.testing.assert_allclose(b["born_charges"], z, atol=tol * np.abs(z).max())


def test_wrong_parity_labels_break_the_improper_symmetry(model):
    """Guard against a vacuous parity test: under an improper rotation, a magnetic field rotated
    like a polar vector (without det Q; its coupling B . m_i with the correctly rotated moments
    flips sign) or an electric field rotated like an axial one changes the energy."""
    atoms = structure(2)
    q = orthogonal(3, True)
    reference = run(model, atoms)["energy"][0]
    for key, value in (("magnetic_field", q @ atoms.info["magnetic_field"]),
                       ("electric_field", -q @ atoms.info["electric_field"])):
        wrong = transformed(atoms, q)
        wrong.info[key] = value
        assert abs(run(model, wrong)["energy"][0] - reference) > 1e-9, key


def test_field_responses_match_finite_differences(model):
    atoms = structure(3)
    batch = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
    dipole = field_response(model, batch, "electric_field", 1)[0].numpy()
    alpha = field_response(model, batch, "electric_field", 2)[0].numpy()
    h = 1e-4
    fd1, fd2 = np.zeros(3), np.zeros((3, 3))
    base = atoms.info["electric_field"].copy()
    for c in range(3):
        energies, grads = [], []
        for sign in (1, -1):
            shifted = atoms.copy()
            shifted.info["electric_field"] = base + sign * h * np.eye(3)[c]
            b = batch_atoms(shifted, model.elements, model.r_cut, inputs=model.input_specs)
            energies.append(run(model, shifted)["energy"][0])
            grads.append(field_response(model, b, "electric_field", 1)[0].numpy())
        fd1[c] = -(energies[0] - energies[1]) / (2 * h)
        fd2[:, c] = (grads[0] - grads[1]) / (2 * h)
    assert np.abs(dipole).max() > 1e-4 and np.abs(alpha).max() > 1e-4
    np.testing.assert_allclose(dipole, fd1, rtol=1e-6, atol=1e-8 * np.abs(dipole).max())
    np.testing.assert_allclose(alpha, fd2, rtol=1e-6, atol=1e-7 * np.abs(alpha).max())
    np.testing.assert_allclose(alpha, alpha.T, atol=1e-10 * np.abs(alpha).max())


@pytest.mark.parametrize("edit,message", [
    (lambda a: a.info.pop("total_charge"), r"structure 1: atoms.info\['total_charge'\] is missing"),
    (lambda a: a.info.update(electric_field=[1.0, 2.0]), r"structure 1: atoms.info\['electric_field'\] has shape \(2,\)"),
    (lambda a: a.arrays.pop("magmom"), r"structure 1: atoms.arrays\['magmom'\] is missing"),
    (lambda a: a.info.update(fidelity=1.5), r"structure 1: atoms.info\['fidelity'\] = 1.5"),
    (lambda a: a.info.update(magnetic_field=[np.nan, 0, 0]), "NaN or infinite"),
])
def test_bad_input_values_name_the_key_and_the_structure(model, edit, message):
    good, bad = structure(0), structure(1)
    edit(bad)
    with pytest.raises(ValueError, match=message):
        batch_atoms([good, bad], model.elements, model.r_cut, inputs=model.input_specs)


def test_calculator_returns_the_outputs_and_numba_refuses(model):
    atoms = structure(4)
    calc = Calculator(model)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    out = run(model, atoms)
    assert energy == pytest.approx(out["energy"][0], rel=1e-12)
    np.testing.assert_allclose(calc.get_property("polarizability", atoms), out["polarizability"][0])
    np.testing.assert_allclose(calc.get_property("born_charges", atoms), out["born_charges"])
    with pytest.raises(NotImplementedError, match="declares inputs/outputs .* Numba back end"):
        model.numba_backend()
    with pytest.raises(NotImplementedError, match="Numba back end"):
        Calculator(model, backend="numba")


def test_a_batch_equals_its_structures_one_by_one(model):
    structures = [structure(5), structure(6)]
    structures[1].info["fidelity"] = 2
    batch = batch_atoms(structures, model.elements, model.r_cut, inputs=model.input_specs)
    together = {k: v.detach().numpy() for k, v in model(batch).items()}
    alone = [run(model, atoms) for atoms in structures]
    for key in ("energy", "dipole", "polarizability"):
        np.testing.assert_allclose(together[key], np.concatenate([a[key] for a in alone]), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(together["born_charges"], np.concatenate([a["born_charges"] for a in alone]),
                               rtol=1e-12, atol=1e-13)


def test_per_atom_moment_response_matches_finite_differences(model):
    atoms = structure(8)
    batch = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
    torque = field_response(model, batch, "magmom_vector", 1).numpy()
    assert torque.shape == (5, 3) and np.abs(torque).max() > 1e-4
    h, k, c = 1e-5, 3, 1
    energies = []
    for sign in (1, -1):
        shifted = atoms.copy()
        shifted.arrays["magmom_vector"] = atoms.arrays["magmom_vector"].copy()
        shifted.arrays["magmom_vector"][k, c] += sign * h
        energies.append(run(model, shifted)["energy"][0])
    assert torque[k, c] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), rel=1e-6)


RANK3 = ("piezoelectric", "hyperpolarizability", "axial:structure:1:general:e:even",
         "rotation:atom:2:antisymmetric:e:even", "quadrupole")


@pytest.fixture(scope="module")
def rank3_model(tmp_path_factory):
    spec = ModelSpec(lmax=3, nu=1, hidden_lmax=3, backends="torch", inputs=("electric_field",), outputs=RANK3)
    module = build_module(spec, tmp_path_factory.mktemp("io3") / "build")
    with torch_threads(1):
        yield make_model(module, elements=("H", "C", "O"))


def _rotate(t, q):
    for axis in range(1, t.ndim):
        t = np.moveaxis(np.tensordot(t, q, axes=([axis], [1])), -1, axis)
    return t


@pytest.mark.parametrize("improper", [False, True])
def test_rank3_and_pseudo_outputs_are_equivariant_with_their_parity(rank3_model, improper):
    atoms = structure(9)
    q = orthogonal(11, improper)
    det = np.linalg.det(q)
    perm = np.array([4, 3, 2, 1, 0])
    a, b = run(rank3_model, atoms), run(rank3_model, transformed(atoms, q, perm))
    # inversion eigenvalue of the whole tensor: o for rank 3 true tensors, e for the axial vector and
    # the antisymmetric rank 2 (true): a tensor of rank n and parity p picks up (det Q)^s, s = [p != (-1)^n]
    for name, rank, parity, per in (("piezoelectric", 3, -1, "structure"), ("hyperpolarizability", 3, -1, "structure"),
                                    ("axial", 1, 1, "structure"), ("rotation", 2, 1, "atom"),
                                    ("quadrupole", 2, 1, "structure")):
        sign = det if parity != (-1) ** rank else 1.0
        expected = sign * _rotate(a[name], q)
        if per == "atom":
            expected = expected[perm]
        assert np.abs(a[name]).max() > 1e-5, name
        np.testing.assert_allclose(b[name], expected, atol=1e-10 * np.abs(expected).max(), err_msg=name)
    d = a["piezoelectric"][0]
    np.testing.assert_allclose(d, d.transpose(0, 2, 1), atol=1e-12)  # symmetric in the last two indices
    r = a["rotation"]
    np.testing.assert_allclose(r, -r.transpose(0, 2, 1), atol=1e-12)
    quad = a["quadrupole"][0]
    assert abs(np.trace(quad)) < 1e-12 * np.abs(quad).max()


def test_hessian_and_spectrum_agree_with_ase_finite_differences(model, tmp_path):
    from ase.vibrations import Vibrations

    from tacegen.runtime.responses import hessian, output_derivatives, vibrations

    atoms = structure(10)
    batch = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
    h = hessian(model, batch).numpy()
    np.testing.assert_allclose(h, h.T, atol=1e-10 * np.abs(h).max())
    atoms.calc = Calculator(model)
    vib = Vibrations(atoms, name=str(tmp_path / "vib"), delta=1e-4, nfree=2)
    vib.run()
    reference = vib.get_vibrations().get_hessian_2d()
    assert np.abs(reference).max() > 1e-2
    np.testing.assert_allclose(h, reference, atol=1e-6 * np.abs(reference).max())
    frequencies, intensities = vibrations(model, atoms)
    expected = vib.get_frequencies()
    expected = np.where(np.abs(expected.imag) > 0, -np.abs(expected.imag), expected.real)
    np.testing.assert_allclose(np.sort(frequencies), np.sort(expected), atol=0.05)
    # dipole derivatives (Born charges of the model's dipole output) against finite differences
    z = output_derivatives(model, batch, "dipole").numpy()
    step = 1e-5
    for i, b in ((0, 0), (2, 1), (4, 2)):
        shifted = [atoms.copy() for _ in range(2)]
        shifted[0].positions[i, b] += step
        shifted[1].positions[i, b] -= step
        fd = (run(model, shifted[0])["dipole"][0] - run(model, shifted[1])["dipole"][0]) / (2 * step)
        np.testing.assert_allclose(z[i, :, b], fd, rtol=1e-6, atol=1e-9)
    assert np.isfinite(intensities).all() and intensities.max() > 0


def test_periodic_cell_with_moments_keeps_time_reversal_and_gives_stress(model):
    from ase.build import bulk

    atoms = bulk("C", "diamond", a=3.57, cubic=True)
    atoms.rattle(0.05, seed=3)
    rng = np.random.default_rng(4)
    n = len(atoms)
    atoms.info.update(total_charge=0.0, electric_field=np.zeros(3), magnetic_field=rng.normal(size=3), fidelity=0)
    atoms.arrays.update(initial_charges=np.zeros(n), magmom=rng.normal(size=n), magmom_vector=rng.normal(size=(n, 3)))
    a = run(model, atoms)
    assert np.isfinite(a["stress"]).all() and np.abs(a["stress"]).max() > 0
    flipped = atoms.copy()
    flipped.info["magnetic_field"] = -atoms.info["magnetic_field"]
    flipped.arrays["magmom"] = -atoms.arrays["magmom"]
    flipped.arrays["magmom_vector"] = -atoms.arrays["magmom_vector"]
    b = run(model, flipped)
    for key in ("energy", "forces", "stress", "born_charges"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-12 * np.abs(a[key]).max())


def test_one_layer_model_with_inputs_and_the_outputs_need_two_layers(tmp_path):
    spec = ModelSpec(lmax=1, nu=1, hidden_lmax=1, backends="torch", inputs=("electric_field",))
    module = build_module(spec, tmp_path / "b1")
    with torch_threads(1):
        model = make_model(module, elements=("H", "C", "O"), layers=1)
        atoms = structure(12)
        e0 = run(model, atoms)["energy"][0]
        atoms.info["electric_field"] = 2.0 * atoms.info["electric_field"]
        assert abs(run(model, atoms)["energy"][0] - e0) > 1e-9
    spec = ModelSpec(lmax=1, nu=1, hidden_lmax=1, backends="torch", outputs=("dipole",))
    module = build_module(spec, tmp_path / "b2")
    with pytest.raises(ValueError, match=r"outputs \['dipole'\] are read from every layer but the last: .*layers >= 2"):
        make_model(module, elements=("H",), layers=1)


def test_each_fidelity_has_its_own_reference_energies(model):
    atoms = structure(13)
    atoms.info["fidelity"] = 2
    before = run(model, atoms)["energy"][0]
    table = model.inputs.energy_tables[0]
    assert table.shape == (3, 3) and float(table.detach().abs().max()) == 0.0  # zero at construction
    with torch.no_grad():
        table[2, model.elements.index("H")] = 0.25
        table[1, model.elements.index("C")] = 5.0  # another fidelity: no effect here
    try:
        after = run(model, atoms)["energy"][0]
    finally:
        with torch.no_grad():
            table.zero_()
    assert after - before == pytest.approx(3 * 0.25, rel=1e-12)  # three H atoms
    # and its own scale of the learned energy
    zero = make_model_like(model)
    learned = before - run(zero, atoms)["energy"][0]
    assert abs(learned) > 1e-3
    scales = model.inputs.scale_tables[0]
    with torch.no_grad():
        scales[2] = 3.0
    try:
        scaled = run(model, atoms)["energy"][0]
    finally:
        with torch.no_grad():
            scales.fill_(1.0)
    assert scaled - before == pytest.approx(2.0 * learned, rel=1e-10)


def make_model_like(model):
    """A copy of ``model`` whose learned energy is zero (only E0 and shift remain)."""
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.inputs.scale_tables[0].zero_()
    return other


def test_moment_basis_build_takes_the_same_inputs_and_outputs(tmp_path):
    spec = ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", basis="moment", inputs=INPUTS, outputs=OUTPUTS)
    module = build_module(spec, tmp_path / "tmp")
    with torch_threads(1):
        model = make_model(module, elements=("H", "C", "O"), input_categories={"fidelity": 3})
        atoms = structure(1)
        q = orthogonal(7, True)
        perm = np.array([2, 0, 4, 1, 3])
        a, b = run(model, atoms), run(model, transformed(atoms, q, perm))
        flipped = atoms.copy()
        flipped.info["magnetic_field"] = -atoms.info["magnetic_field"]
        flipped.arrays["magmom_vector"] = -atoms.arrays["magmom_vector"]
        flipped.arrays["magmom"] = -atoms.arrays["magmom"]
        c = run(model, flipped)
    np.testing.assert_allclose(b["energy"], a["energy"], rtol=1e-12)
    np.testing.assert_allclose(c["energy"], a["energy"], rtol=1e-12)
    np.testing.assert_allclose(b["polarizability"][0], q @ a["polarizability"][0] @ q.T,
                               atol=1e-12 * np.abs(a["polarizability"]).max())
    z = np.einsum("ab,nbc,dc->nad", q, a["born_charges"], q)[perm]
    np.testing.assert_allclose(b["born_charges"], z, atol=1e-12 * np.abs(z).max())


def test_time_odd_outputs_flip_under_time_reversal_and_rotate_as_axial(tmp_path):
    outputs = ("magnetization:structure:1:general:e:odd", "spin_density:atom:1:general:e:odd")
    spec = ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", inputs=INPUTS, outputs=outputs)
    module = build_module(spec, tmp_path / "odd")
    report = (tmp_path / "odd" / "REPORT.md").read_text()
    assert "time-odd: magnetic_field x h0 -> 1e" in report and "magmom_vector x h2 -> 1e" in report
    with torch_threads(1):
        model = make_model(module, elements=("H", "C", "O"), input_categories={"fidelity": 3})
        atoms = structure(14)
        a = run(model, atoms)
        flipped = atoms.copy()
        flipped.info["magnetic_field"] = -atoms.info["magnetic_field"]
        flipped.arrays["magmom_vector"] = -atoms.arrays["magmom_vector"]
        flipped.arrays["magmom"] = -atoms.arrays["magmom"]
        b = run(model, flipped)
        q = orthogonal(5, True)
        perm = np.array([1, 0, 2, 4, 3])
        c = run(model, transformed(atoms, q, perm))
    for name in ("magnetization", "spin_density"):
        assert np.abs(a[name]).max() > 1e-4
        np.testing.assert_allclose(b[name], -a[name], atol=1e-12 * np.abs(a[name]).max())  # odd
    np.testing.assert_allclose(b["energy"], a["energy"], rtol=1e-12)  # the energy stays even
    det = np.linalg.det(q)  # axial vectors: det Q Q v
    np.testing.assert_allclose(c["magnetization"][0], det * q @ a["magnetization"][0],
                               atol=1e-11 * np.abs(a["magnetization"]).max())
    np.testing.assert_allclose(c["spin_density"], (det * a["spin_density"] @ q.T)[perm],
                               atol=1e-11 * np.abs(a["spin_density"]).max())


def test_calculator_notices_changed_inputs(model):
    atoms = structure(15)
    atoms.calc = Calculator(model)
    e0 = atoms.get_potential_energy()
    atoms.info["electric_field"] = 2.0 * atoms.info["electric_field"]
    e1 = atoms.get_potential_energy()
    atoms.arrays["magmom"] = atoms.arrays["magmom"] * np.array([1, -1, 1, 1, 1])
    e2 = atoms.get_potential_energy()
    assert abs(e1 - e0) > 1e-9 and abs(e2 - e1) > 1e-9
    assert e2 == pytest.approx(run(model, atoms)["energy"][0], rel=1e-12)


def test_atomic_virials_sum_to_the_virial(model):
    from ase.build import bulk

    from tacegen.runtime.responses import atomic_virials

    atoms = bulk("C", "diamond", a=3.57) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    rng = np.random.default_rng(2)
    n = len(atoms)
    atoms.info.update(total_charge=0.5, electric_field=rng.normal(size=3), magnetic_field=rng.normal(size=3), fidelity=0)
    atoms.arrays.update(initial_charges=rng.normal(size=n), magmom=rng.normal(size=n),
                        magmom_vector=rng.normal(size=(n, 3)))
    batch = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
    w = atomic_virials(model, batch).numpy()
    virial = run(model, atoms)["virial"][0]
    assert w.shape == (n, 3, 3) and np.abs(virial).max() > 1e-3
    total = w.sum(axis=0)
    np.testing.assert_allclose(0.5 * (total + total.T), virial, atol=1e-10 * np.abs(virial).max())
    assert np.abs(w - w.mean(axis=0)).max() > 1e-6  # split unevenly over the atoms, not a copy


def test_eval_splits_a_rank2_error_into_its_irreducible_parts(model, tmp_path):
    import ase.io

    from tacegen.train.evaluate import evaluate_files

    structures = [structure(20), structure(21)]
    for k, atoms in enumerate(structures):
        out = run(model, atoms)
        atoms.info["REF_energy"] = float(out["energy"][0])
        atoms.info["REF_alpha"] = (out["polarizability"][0] + 0.1 * (k + 1) * np.eye(3)).reshape(-1)  # 0e error
        z = out["born_charges"].copy()
        z[:, 0, 1] += 0.05  # an error with 1e and 2e parts, no trace
        atoms.arrays["REF_z"] = z.reshape(len(atoms), 9)
    path = tmp_path / "labelled.xyz"
    ase.io.write(path, structures, format="extxyz")
    results, _ = evaluate_files(model, [str(path)], targets=["polarizability=REF_alpha", "born_charges=REF_z"],
                                cache=False)
    r = results["files"][str(path)]
    # extxyz keeps about 8 digits of the labels: "zero" errors are at 1e-6 of the injected ones
    assert r["polarizability_0e_mae"] > 1.0 and r["polarizability_2e_mae"] < 1e-3
    assert r["polarizability_mae"] == pytest.approx(1000 * 0.15 * 3 / 9, rel=1e-4)
    assert r["born_charges_0e_mae"] < 1e-3 and r["born_charges_1e_mae"] > 1.0 and r["born_charges_2e_mae"] > 1.0
