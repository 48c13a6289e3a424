"""Generated TACE models with a long-range block (ModelSpec.long_range "les" and "ewald").

Models are built SMALL (model_helpers) from lmax=2, nu=2 specs with the PyTorch back end
only, into temporary folders. LES latent charges come from a random ``charge_readout``,
scaled up so the charges are O(0.1-1) e and the long-range energy is far above round-off.
References: tacegen.runtime.electrostatics (float64 LES / Ewald), finite differences,
explicit Coulomb sums, the NaCl Madelung constant. float64 unless stated.
"""

from __future__ import annotations

import inspect
import json
import math
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import SEEDS, haar_orthogonal
from model_helpers import (build_module, make_model, numeric_forces, random_cell, random_crystal, random_molecule,
                           rel_err)
from tacegen.build import command_line
from tacegen.cli import app
from tacegen.runtime import electrostatics as el
from tacegen.runtime.calculator import Calculator
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.long_range import ewald_batch_parameters, long_range_graph
from tacegen.runtime.neighbours import neighbour_pairs
from tacegen.spec import ModelSpec, SpecError

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")]

LES = ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch", long_range="les")
EWALD = ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch", long_range="ewald")
SYMBOLS = ("Cu", "O")
IONS = ("Na", "Cl")
K_E = el.K_E


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_range_builds")
    return {"les": build_module(LES, root / "les"), "ewald": build_module(EWALD, root / "ewald")}


def les_model(modules, seed=0, **kwargs):
    model = make_model(modules["les"], elements=SYMBOLS, seed=seed, **kwargs)
    with torch.no_grad():
        model.charge_readout.weight.mul_(60.0)  # latent charges O(0.1-1) e
    return model


@pytest.fixture(scope="module")
def les(modules):
    return les_model(modules)


@pytest.fixture(scope="module")
def ewald(modules):
    return make_model(modules["ewald"], elements=IONS, seed=0)


@pytest.fixture(scope="module")
def ewald_tight(modules):
    return make_model(modules["ewald"], elements=IONS, seed=0, ewald_accuracy=1e-12)


def run(model, structures, **kwargs):
    batch = batch_atoms(structures, model.elements, model.r_cut, dtype=model.dtype)
    out = model(batch, **kwargs)
    return {k: v.detach().to(torch.float64).numpy() for k, v in out.items()}


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def with_charges(atoms: Atoms, rng, neutral: bool = True) -> Atoms:
    q = rng.normal(size=len(atoms))
    if neutral:
        q -= q.mean()
    atoms.set_initial_charges(q)
    return atoms


def transformed(atoms: Atoms, q=None, shift=None, perm=None) -> Atoms:
    """Positions Q r + t and cell rows rotated, atoms permuted; initial charges and info kept."""
    perm = np.arange(len(atoms)) if perm is None else perm
    pos = atoms.positions @ (np.eye(3) if q is None else q.T) + (0.0 if shift is None else shift)
    cell = np.asarray(atoms.cell[:]) @ (np.eye(3) if q is None else q.T)
    out = Atoms(numbers=atoms.numbers[perm], positions=pos[perm], cell=cell, pbc=atoms.pbc,
                charges=atoms.get_initial_charges()[perm])
    out.info.update(atoms.info)
    return out


def coulomb(q, pos) -> float:
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    i, j = np.triu_indices(len(q), 1)
    return float(K_E * np.sum(q[i] * q[j] / d[i, j]))


# ----------------------------------------------------------------------------- spec, CLI, build


def test_spec_long_range_values_hash_and_command_line():
    with pytest.raises(SpecError) as info:
        ModelSpec(long_range="pme")
    message = str(info.value)
    assert "\n" not in message and "'pme'" in message and "none, les, ewald" in message
    specs = {lr: ModelSpec(lmax=2, nu=2, long_range=lr) for lr in ("none", "les", "ewald")}
    assert len({s.hash for s in specs.values()}) == 3
    assert ModelSpec().long_range == "none" and "--long-range" not in command_line(specs["none"])
    assert command_line(specs["les"]).endswith("--long-range les")
    assert specs["ewald"].name == "tace_l2_nu2_ewald" and specs["none"].name == "tace_l2_nu2"
    assert ModelSpec.from_json(specs["les"].canonical_json()) == specs["les"]


def _app(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "argv", ["tacegen", *args])
    with pytest.raises(SystemExit) as info:
        app()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_cli_long_range(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "lr"
    base = ["build", "--lmax", "1", "--nu", "1", "--hidden-lmax", "0", "--backend", "torch", "--out", str(out_dir)]
    code, out, err = _app(monkeypatch, capsys, base + ["--long-range", "pme"])
    assert code == 2 and err.count("\n") == 1 and "'pme'" in err and "ewald" in err and not out_dir.exists()
    code, out, err = _app(monkeypatch, capsys, base + ["--long-range", "ewald"])
    assert code == 0, err
    record = json.loads((out_dir / "spec.json").read_text())
    assert record["spec"]["long_range"] == "ewald" and record["command"].endswith("--long-range ewald")
    source = (out_dir / "model.py").read_text()
    assert "def lr_ewald_energy(" in source and "def lr_coulomb_energy(" in source


def test_printed_programs_take_parameters_as_arguments(modules):
    """The IR programs are printed as typed functions whose run-time parameters (IR Params)
    are float arguments, computed by the runtime from the model's sigma / alpha; the "none"
    model has none of it."""
    les_args = list(inspect.signature(modules["les"].model.lr_les_energy).parameters)
    assert les_args[-4:] == ["gamma", "k_cut", "self_coefficient", "alpha"] and "senders" in les_args
    ewald_args = list(inspect.signature(modules["ewald"].model.lr_ewald_energy).parameters)
    assert ewald_args[-5:] == ["alpha", "r_cut", "k_cut", "gamma", "self_coefficient"]
    source = inspect.getsource(modules["les"].model)
    assert "les_kernel_parameters(self.les_sigma, self.les_k_cut)" in source
    assert "ewald_kernel_parameters(alpha, k_cut)" in inspect.getsource(modules["ewald"].model)
    from tacegen.build import compile_spec, render_torch

    plain = render_torch(compile_spec(ModelSpec(lmax=1, nu=1, hidden_lmax=0, backends="torch")))
    assert "lr_" not in plain and "long_range" not in plain.replace('"long_range": "none"', "")
    assert "compute_born_charges" not in plain


# ----------------------------------------------------------------------------- runtime helpers


def test_batch_charges_and_long_range_graph():
    rng = np.random.default_rng(1)
    mol, cry = with_charges(random_molecule(rng, 5, IONS), rng), with_charges(random_crystal(rng, 3, IONS), rng)
    cry.info["charge"] = 0.0
    batch = batch_atoms([mol, cry], IONS, 3.0)
    assert np.allclose(batch["charges"].numpy(), np.concatenate([mol.get_initial_charges(),
                                                                 cry.get_initial_charges()]))
    assert np.isnan(batch["total_charge"].numpy()[0]) and batch["total_charge"].numpy()[1] == 0.0
    bad = mol.copy()
    bad.info["charge"] = "one"
    with pytest.raises(ValueError, match=r"info\['charge'\]"):
        batch_atoms(bad, IONS, 3.0)

    les_graph = long_range_graph(batch, "les")
    senders, receivers = les_graph["edge_index"].numpy()
    assert len(receivers) == 20 and np.all(receivers < 5) and np.all(senders != receivers)
    assert np.all(np.diff(receivers) >= 0) and not les_graph["periodic"].any()
    assert len({(i, j) for i, j in zip(receivers, senders)}) == 20

    alpha, r_cut, k_cut = ewald_batch_parameters(batch, 1e-8)
    assert alpha == el.ewald_parameters(3, cry.get_volume(), 1e-8).alpha
    assert r_cut == el.ewald_parameters(3, cry.get_volume(), 1e-8, alpha=alpha).r_cut
    graph = long_range_graph(batch, "ewald", r_cut)
    senders, receivers = graph["edge_index"].numpy()
    periodic = graph["periodic"].numpy()
    pairs = neighbour_pairs(cry.positions, cry.cell.array, np.ones(3, bool), r_cut)
    assert np.array_equal(receivers[periodic], pairs.i + 5) and np.array_equal(senders[periodic], pairs.j + 5)
    assert np.any((receivers == senders) & periodic)  # an atom's own images are pairs too
    assert np.array_equal(graph["edge_shift"].numpy()[periodic], pairs.shift)
    assert np.all(np.diff(receivers) >= 0) and (~periodic).sum() == 20
    assert ewald_batch_parameters(batch_atoms(mol, IONS, 3.0), 1e-8) == (0.0, 0.0, 0.0)

    # several periodic structures: alpha of the largest, the cutoffs of the most demanding
    big, small = random_crystal(rng, 6, IONS), random_crystal(rng, 2, IONS)
    big.set_cell(big.cell.array * 1.3, scale_atoms=True)
    alpha, r_cut, k_cut = ewald_batch_parameters(batch_atoms([small, big], IONS, 3.0), 1e-8)
    ref = [el.ewald_parameters(len(a), a.get_volume(), 1e-8, alpha=alpha) for a in (small, big)]
    assert alpha == el.ewald_parameters(6, big.get_volume(), 1e-8).alpha
    assert r_cut == max(p.r_cut for p in ref) and k_cut == max(p.k_cut for p in ref)


@pytest.mark.parametrize("mode", ["les", "ewald"])
def test_mixed_pbc_is_refused(les, ewald, mode):
    rng = np.random.default_rng(2)
    slab = random_crystal(rng, 3, IONS if mode == "ewald" else SYMBOLS)
    slab.pbc = [True, True, False]
    model = les if mode == "les" else ewald
    good = random_molecule(rng, 4, model.elements)
    with pytest.raises(ValueError, match=r"structure 1 .*pbc=\[True, True, False\]"):
        run(model, [good, slab])


# ----------------------------------------------------------------------------- LES against references


@pytest.mark.parametrize("sigma,k_cut", [(1.0, math.pi), (0.8, 5.0)])
def test_les_energy_matches_reference(modules, sigma, k_cut):
    """E_lr of the model's own charges == electrostatics.les_energy_periodic / les_energy_finite,
    at the defaults and at other constructor arguments (the printed functions read them)."""
    model = les_model(modules, les_sigma=sigma, les_k_cut=k_cut)
    rng = np.random.default_rng(3)
    mol, cry = random_molecule(rng, 7, SYMBOLS), random_crystal(rng, 5, SYMBOLS)
    out = run(model, [mol, cry])
    q = out["charges"]
    assert np.abs(q).max() > 0.05
    ref_mol = float(el.les_energy_finite(t(q[:7]), t(mol.positions), sigma))
    ref_cry = float(el.les_energy_periodic(t(q[7:]), t(cry.positions), t(cry.cell.array), sigma, k_cut))
    assert rel_err(out["long_range_energy"], [ref_mol, ref_cry]) < 1e-12
    short = np.array([out["node_energy"][:7].sum(), out["node_energy"][7:].sum()])
    assert rel_err(out["energy"], short + out["long_range_energy"]) < 1e-13


def test_les_neutrality_and_total_charge(modules, les):
    rng = np.random.default_rng(4)
    structures = [random_molecule(rng, 5, SYMBOLS), random_crystal(rng, 4, SYMBOLS),
                  random_molecule(rng, 6, SYMBOLS), random_crystal(rng, 3, SYMBOLS)]
    structures[2].info["charge"] = -1.0
    structures[3].info["charge"] = 2.0
    sizes = [len(a) for a in structures]
    which = np.repeat(np.arange(4), sizes)

    def sums(model):
        out = run(model, structures)
        return np.bincount(which, weights=out["charges"]), out

    total, out = sums(les)
    np.testing.assert_allclose(total, [0.0, 0.0, -1.0, 2.0], atol=1e-13)
    half = les_model(modules, total_charge=0.5)
    np.testing.assert_allclose(sums(half)[0], [0.5, 0.5, -1.0, 2.0], atol=1e-13)
    total, free = sums(les_model(modules, total_charge=None))  # same weights, unconstrained
    assert abs(total[0]) > 1e-3 and abs(total[1]) > 1e-3
    np.testing.assert_allclose(total[2:], [-1.0, 2.0], atol=1e-13)  # atoms.info["charge"] still applies
    # the constraint is the per-structure uniform shift of the raw charges
    shift = np.where(which < 2, (total / sizes)[which], 0.0)
    np.testing.assert_allclose(out["charges"], free["charges"] - shift, atol=1e-13)


def test_les_non_neutral_periodic_has_background(les):
    rng = np.random.default_rng(5)
    cry = random_crystal(rng, 4, SYMBOLS)
    cry.info["charge"] = 1.0
    out = run(les, cry)
    q = out["charges"]
    assert abs(q.sum() - 1.0) < 1e-13
    volume = cry.get_volume()
    ref = float(el.les_energy_periodic(t(q), t(cry.positions), t(cry.cell.array), 1.0, math.pi))
    alpha = 1.0 / math.sqrt(2.0)  # the documented background -K_E pi Q^2 / (2 V alpha^2)
    ref -= K_E * math.pi * 1.0 / (2.0 * volume * alpha**2)
    assert rel_err(out["long_range_energy"], [ref]) < 1e-12


def test_les_energy_converges_in_k_cut(modules):
    model = les_model(modules)
    rng = np.random.default_rng(6)
    cry = random_crystal(rng, 4, SYMBOLS)
    energies = {}
    for k_cut in (math.pi, 5.0, 7.0, 9.0):
        model.les_k_cut = k_cut
        energies[k_cut] = run(model, cry)["long_range_energy"][0]
    scale = abs(energies[9.0])
    assert abs(energies[5.0] - energies[9.0]) < 1e-3 * scale
    assert abs(energies[7.0] - energies[9.0]) < 1e-9 * scale
    assert abs(energies[math.pi] - energies[9.0]) > 1e-5 * scale  # the default truncation is part of the model


# ----------------------------------------------------------------------------- Ewald against references


def test_ewald_madelung_nacl(ewald_tight):
    atoms, n_fu, zz, r0 = el.madelung_structure("NaCl")
    out = run(ewald_tight, atoms)
    madelung = -out["long_range_energy"][0] / n_fu * r0 / (K_E * zz)
    assert abs(madelung - el.MADELUNG_REFERENCE["NaCl"]) < 1e-8
    assert np.allclose(out["charges"], atoms.get_initial_charges())


def test_ewald_matches_reference_and_coulomb(ewald_tight):
    """Random neutral and non-neutral charges in triclinic cells of different sizes, in one batch
    with a molecule: each == electrostatics.ewald_energy (background for the charged one); the
    molecule == the bare Coulomb sum."""
    rng = np.random.default_rng(7)
    neutral = with_charges(random_crystal(rng, 6, IONS), rng)
    small = with_charges(random_crystal(rng, 2, IONS), rng)
    charged = with_charges(random_crystal(rng, 3, IONS), rng, neutral=False)
    mol = with_charges(random_molecule(rng, 6, IONS), rng, neutral=False)
    ion = Atoms("Na", positions=[[0.3, 0.2, 0.1]], cell=random_cell(rng), pbc=True, charges=[1.0])  # self-images only
    structures = [neutral, mol, small, charged, ion]
    out = run(ewald_tight, structures)
    refs = []
    for atoms in structures:
        q, pos = atoms.get_initial_charges(), atoms.positions
        if atoms.pbc.all():
            refs.append(float(el.ewald_energy(t(q), t(pos), t(atoms.cell.array), accuracy=1e-13,
                                              neutralising_background=True)))
        else:
            refs.append(coulomb(q, pos))
    for b in range(len(structures)):
        assert rel_err(out["long_range_energy"][b], refs[b]) < 1e-9, b


def test_ewald_independent_of_accuracy_once_converged(modules, ewald_tight):
    rng = np.random.default_rng(8)
    cry = with_charges(random_crystal(rng, 5, IONS), rng)
    tight = run(ewald_tight, cry)
    # accuracy is a target for estimated energy errors (relative to K_E sum q^2 / a), not a bound
    for accuracy, tol in ((1e-6, 1e-4), (1e-10, 1e-8)):
        model = make_model(modules["ewald"], elements=IONS, seed=0, ewald_accuracy=accuracy)
        out = run(model, cry)
        for key, factor in (("energy", 1), ("long_range_energy", 1), ("forces", 10), ("stress", 10)):
            assert rel_err(out[key], tight[key]) < factor * tol, (accuracy, key)
    assert rel_err(out["energy"], tight["energy"]) > 0.0


def test_ewald_total_charge_must_match_given_charges(ewald):
    atoms = with_charges(random_molecule(np.random.default_rng(9), 4, IONS), np.random.default_rng(9))
    atoms.info["charge"] = 1.0
    with pytest.raises(ValueError, match="structure 0.*info\\['charge'\\] = 1.0"):
        run(ewald, atoms)


# ----------------------------------------------------------------------------- symmetry


def _check_symmetry(model, atoms, rng, proper, tol=1e-11):
    q = haar_orthogonal(rng, proper)
    shift = rng.normal(scale=3.0, size=3)
    perm = rng.permutation(len(atoms))
    finite = not atoms.pbc.any()
    ref = run(model, atoms, compute_born_charges=True)
    assume(np.abs(ref["forces"]).max() > 1e-3 and abs(ref["long_range_energy"][0]) > 1e-4)
    new = run(model, transformed(atoms, q, shift, perm), compute_born_charges=True)
    assert rel_err(new["energy"], ref["energy"]) < tol
    assert rel_err(new["long_range_energy"], ref["long_range_energy"]) < tol
    assert rel_err(new["charges"], ref["charges"][perm]) < tol
    assert rel_err(new["forces"], (ref["forces"] @ q.T)[perm]) < tol
    # finite and periodic (the phase form): Z* rotates as Q Z* Q^T with the atoms and the cell
    assert rel_err(new["born_charges"], np.einsum("ab,nbc,dc->nad", q, ref["born_charges"], q)[perm]) < tol
    if finite:
        assert rel_err(new["dipole"][0], q @ ref["dipole"][0]) < tol  # a polar vector: no det(Q)
        assert np.isnan(ref["stress"]).all()
    else:
        assert rel_err(new["stress"][0], q @ ref["stress"][0] @ q.T) < tol
        assert np.isnan(new["dipole"]).all()


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "crystal"])
@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, proper=st.booleans())
def test_les_invariance_and_equivariance(les, periodic, seed, proper):
    rng = np.random.default_rng(seed)
    atoms = random_crystal(rng, symbols=SYMBOLS) if periodic else random_molecule(rng, symbols=SYMBOLS)
    _check_symmetry(les, atoms, rng, proper)


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "crystal"])
@settings(max_examples=10, deadline=None)
@given(seed=SEEDS, proper=st.booleans())
def test_ewald_invariance_and_equivariance(ewald, periodic, seed, proper):
    rng = np.random.default_rng(seed)
    atoms = random_crystal(rng, symbols=IONS) if periodic else random_molecule(rng, symbols=IONS)
    _check_symmetry(ewald, with_charges(atoms, rng), rng, proper)


def test_symmetry_check_can_fail(les):
    """A non-rigid change is detected by the same comparisons."""
    rng = np.random.default_rng(10)
    atoms = random_molecule(rng, 6, SYMBOLS)
    ref = run(les, atoms, compute_born_charges=True)
    moved = atoms.copy()
    moved.positions[0] += 0.05
    new = run(les, moved, compute_born_charges=True)
    for key in ("long_range_energy", "charges", "dipole", "born_charges"):
        assert rel_err(new[key], ref[key]) > 1e-6, key


@pytest.mark.parametrize("mode", ["les", "ewald"])
def test_lattice_translation_and_supercell(les, ewald_tight, mode):
    """Moving an atom by a lattice vector changes nothing; a 2x2x2 supercell has 8x the energy
    (short-range and long-range parts) and the same charges."""
    rng = np.random.default_rng(11)
    if mode == "les":
        model, atoms = les, random_crystal(rng, 3, SYMBOLS)
    else:
        model, atoms = ewald_tight, with_charges(random_crystal(rng, 3, IONS), rng)
    ref = run(model, atoms)
    moved = atoms.copy()
    moved.positions[1] += atoms.cell[0] - 2 * atoms.cell[2]
    out = run(model, moved)
    for key in ("energy", "long_range_energy", "charges", "forces", "stress"):
        assert rel_err(out[key], ref[key]) < 1e-9, key
    big = run(model, atoms.repeat((2, 2, 2)))
    assert abs(ref["long_range_energy"][0]) > 1e-3
    assert rel_err(big["long_range_energy"], 8 * ref["long_range_energy"]) < 1e-9
    assert rel_err(big["energy"], 8 * ref["energy"]) < 1e-9
    assert rel_err(big["charges"], np.tile(ref["charges"], 8)) < 1e-9
    assert rel_err(big["stress"], ref["stress"]) < 1e-9


# ----------------------------------------------------------------------------- derivatives


def _energy(model, atoms) -> float:
    batch = batch_atoms(atoms, model.elements, model.r_cut, dtype=model.dtype)
    return float(model(batch, compute_forces=False, compute_stress=False)["energy"][0].detach())


def _numeric_forces(model, atoms, h=1e-5):
    return numeric_forces(lambda a: _energy(model, a), atoms, h)


def _numeric_stress(model, atoms, h=1e-5):
    numeric = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            e = np.zeros((3, 3))
            e[i, j] += 0.5
            e[j, i] += 0.5
            values = []
            for sign in (1, -1):
                strained = atoms.copy()
                deform = np.eye(3) + sign * h * e
                strained.set_cell(atoms.cell.array @ deform, scale_atoms=False)
                strained.positions = atoms.positions @ deform
                values.append(_energy(model, strained))
            numeric[i, j] = numeric[j, i] = (values[0] - values[1]) / (2 * h * atoms.get_volume())
    return numeric


@pytest.mark.parametrize("mode,periodic", [("les", False), ("les", True), ("ewald", False), ("ewald", True)])
def test_forces_and_stress_match_finite_differences(les, ewald_tight, mode, periodic):
    rng = np.random.default_rng(12 + periodic)
    symbols = SYMBOLS if mode == "les" else IONS
    atoms = random_crystal(rng, 3, symbols) if periodic else random_molecule(rng, 5, symbols)
    model = les
    if mode == "ewald":
        model = ewald_tight
        with_charges(atoms, rng)
    out = run(model, atoms)
    assert abs(out["long_range_energy"][0]) > 1e-3
    assert rel_err(out["forces"], _numeric_forces(model, atoms)) < 1e-7
    if periodic:
        assert rel_err(out["stress"][0], _numeric_stress(model, atoms)) < 1e-7


def test_born_charges_match_finite_differences_of_the_dipole(les):
    rng = np.random.default_rng(14)
    atoms = random_molecule(rng, 5, SYMBOLS)
    out = run(les, atoms, compute_born_charges=True)
    born = out["born_charges"]
    h = 1e-5
    numeric = np.zeros_like(born)
    for i in range(len(atoms)):
        for b in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, b] += h
            minus.positions[i, b] -= h
            numeric[i, :, b] = (run(les, plus, compute_forces=False, compute_stress=False)["dipole"][0]
                                - run(les, minus, compute_forces=False, compute_stress=False)["dipole"][0]) / (2 * h)
    assert rel_err(born, numeric) < 1e-7
    # through q(r): not the fixed-charge answer q_i I; the acoustic sum rule sum_i Z_i = 0 holds
    fixed = np.einsum("n,ab->nab", out["charges"], np.eye(3))
    assert rel_err(born, fixed) > 1e-3
    assert np.abs(born.sum(axis=0)).max() < 1e-12 * np.abs(born).max()
    # only-Born call (no forces) gives the same; in a batch with a periodic structure each keeps its own
    alone = run(les, atoms, compute_forces=False, compute_stress=False, compute_born_charges=True)
    assert rel_err(alone["born_charges"], born) < 1e-14 and "forces" not in alone
    crystal = random_crystal(rng, 3, SYMBOLS)
    mixed = run(les, [atoms, crystal], compute_born_charges=True)["born_charges"]
    assert rel_err(mixed[:len(atoms)], born) < 1e-13
    assert rel_err(mixed[len(atoms):], run(les, crystal, compute_born_charges=True)["born_charges"]) < 1e-13
    # a charged molecule: the dipole about the centre (q - mean q) does not depend on the origin
    atoms.info["charge"] = 1.0
    charged = run(les, atoms)
    assert abs(charged["charges"].sum() - 1.0) < 1e-13
    centred = charged["charges"] - charged["charges"].mean()
    assert rel_err(charged["dipole"][0], centred @ atoms.positions) < 1e-13
    assert rel_err(run(les, transformed(atoms, shift=np.array([4.0, -7.0, 2.0])))["dipole"], charged["dipole"]) < 1e-12


def test_float32_les_matches_float64(modules, les):
    model32 = les_model(modules, dtype=torch.float32)
    model32.load_state_dict(les.state_dict())
    rng = np.random.default_rng(15)
    structures = [random_molecule(rng, 6, SYMBOLS), random_crystal(rng, 4, SYMBOLS)]
    ref, out = run(les, structures), run(model32, structures)
    assert rel_err(out["long_range_energy"], ref["long_range_energy"]) < 1e-4
    assert rel_err(out["charges"], ref["charges"]) < 1e-4
    assert rel_err(out["forces"], ref["forces"]) < 1e-4


# ----------------------------------------------------------------------------- ASE calculator


def test_calculator_with_long_range(les):
    rng = np.random.default_rng(16)
    atoms = random_molecule(rng, 5, SYMBOLS)
    out = run(les, atoms)
    atoms.calc = Calculator(les)
    assert atoms.get_potential_energy() == pytest.approx(out["energy"][0], rel=1e-13)
    np.testing.assert_allclose(atoms.get_charges(), out["charges"], rtol=1e-13)
    np.testing.assert_allclose(atoms.get_dipole_moment(), out["dipole"][0], rtol=1e-13)
    with pytest.raises(PropertyNotImplementedError, match="long-range"):
        atoms.get_potential_energies()
    crystal = random_crystal(rng, 3, SYMBOLS)
    crystal.calc = Calculator(les)
    # stress values against strain finite differences of the model energy (independent of
    # the strain-derivative code); the long-range part is a visible share of the energy
    stress = crystal.get_stress(voigt=False)
    assert abs(run(les, crystal)["long_range_energy"][0]) > 1e-3
    assert np.abs(stress).max() > 1e-3  # not vacuous
    assert rel_err(stress, _numeric_stress(les, crystal)) < 1e-7
    with pytest.raises(PropertyNotImplementedError, match="finite"):
        crystal.get_dipole_moment()
