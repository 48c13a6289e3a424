"""Response targets (Hessian, -dE/dField, -d2E/dField2) and per-fidelity heads and E0s in
training (issue 14). One tiny build with an electric-field and a fidelity input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from model_helpers import make_model
from tacegen.build import write_build
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.inputs import field_response
from tacegen.runtime.loader import load
from tacegen.runtime.responses import hessian
from tacegen.spec import ModelSpec
from tacegen.train.config import TrainConfig
from tacegen.train.dataset import AtomsDataset, species_map
from tacegen.train.labels import DataError, LabelKeys
from tacegen.train.loop import train
from tacegen.train.responses import hessian_rows, responses
from tacegen.train.targets import extras_for
from test_train_loop import assert_same_weights
from train_helpers import TINY, write

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CHARGES = {"O": -0.8, "H": 0.4}
TARGETS = ["hessian=REF_hessian", "response:electric_field=REF_dipole", "response2:electric_field=REF_alpha",
           "born:electric_field=REF_born"]


def emt_hessian(atoms, h: float = 1e-4) -> np.ndarray:
    """Symmetrised central-difference Hessian of ASE's EMT, (3N, 3N) eV/Å^2."""
    from ase.calculators.emt import EMT

    work = atoms.copy()
    work.calc = EMT()
    out = np.zeros((3 * len(atoms), 3 * len(atoms)))
    for i in range(len(atoms)):
        for a in range(3):
            plus, minus = work.positions.copy(), work.positions.copy()
            plus[i, a] += h
            minus[i, a] -= h
            work.positions = plus
            f_plus = work.get_forces().ravel()
            work.positions = minus
            f_minus = work.get_forces().ravel()
            out[:, 3 * i + a] = -(f_plus - f_minus) / (2 * h)
    return 0.5 * (out + out.T)


def molecules(count: int, seed: int, fidelity: int = 0):
    """Rattled H2O-like molecules: EMT energy, forces and Hessian, the dipole of fixed charges and a
    diagonal polarizability, under a small random electric field."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        q = np.array([CHARGES[s] for s in atoms.get_chemical_symbols()])
        atoms.info.update(REF_energy=energy, REF_hessian=emt_hessian(atoms), REF_dipole=q @ atoms.positions,
                          REF_alpha=np.diag([1.0, 1.2, 0.8]), electric_field=0.05 * rng.normal(size=3),
                          fidelity=fidelity)
        atoms.arrays["REF_forces"] = forces
        atoms.arrays["REF_born"] = np.repeat(q, 9).reshape(-1, 9) * np.eye(3).ravel()  # q_i 1 (N, 9)
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("responses")
    spec = ModelSpec(lmax=1, nu=2, hidden_lmax=1, backends="torch", inputs=("electric_field", "fidelity"))
    build = write_build(spec, folder / "build")
    return (str(build), write(folder / "train.xyz", molecules(10, 1)), write(folder / "test.xyz", molecules(3, 2)),
            spec.to_dict())


def config(setup, out, **changes):
    values = dict(TINY, hidden_lmax=1, layers=2, model=setup[0], train=setup[1], out=str(out), epochs=4,
                  targets=["hessian=REF_hessian:1"], forces_weight=1.0, elements=["H", "O"], valid=setup[2])
    values.update(changes)
    return TrainConfig.from_sources(**values)


def column(out, name):
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    return [float(r.split(",")[header.index(name)]) for r in rows[1:]]


def small_model(setup, seed=0):
    return make_model(load(setup[0]), elements=("H", "O"), seed=seed, channels=4, layers=2, num_radial=4,
                      radial_hidden=(8,), readout_hidden=4, r_cut=4.0)


def test_response_targets_equal_the_runtime_responses_and_reach_the_parameters(setup):
    model = small_model(setup)
    model.train()
    extras = extras_for(setup[3], TARGETS)
    data = AtomsDataset.from_file(setup[2], model.r_cut, LabelKeys(), cache=False, extras=extras)
    batch = data.collate([0, 2], species_map(model.elements), torch.float64)
    out = responses(model, batch, extras, create_graph=True)
    import ase.io

    structures = ase.io.read(setup[2], ":")
    for b, atoms in zip((0, 1), (structures[0], structures[2])):
        single = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
        full = hessian(model, single)
        items = batch["hessian_structure"] == b
        rows, cols = batch["hessian_row"][items] - 3 * 3 * b, batch["hessian_atom"][items] - 3 * b
        expect = full.reshape(9, 3, 3)[rows, cols]
        torch.testing.assert_close(out["hessian"][items].detach(), expect, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out["response:electric_field"][b].detach(),
                                   field_response(model, single, "electric_field")[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out["response2:electric_field"][b].detach(),
                                   field_response(model, single, "electric_field", order=2)[0], rtol=1e-10,
                                   atol=1e-12)
        assert float(full.abs().max()) > 1e-3
        born = np.zeros((3, 3, 3))  # Born charges d mu_a / d r_ib by central differences of -dE/dF
        for i in range(3):
            for c in range(3):
                for sign in (1, -1):
                    moved = atoms.copy()
                    moved.positions[i, c] += sign * 1e-5
                    one = batch_atoms(moved, model.elements, model.r_cut, inputs=model.input_specs)
                    born[i, :, c] += sign * field_response(model, one, "electric_field")[0].numpy() / 2e-5
        got = out["born:electric_field"][3 * b:3 * b + 3].detach().numpy()
        np.testing.assert_allclose(got, born, rtol=0, atol=1e-7 * np.abs(born).max())
        assert np.abs(born).max() > 1e-4
    loss = sum(((out[k] - batch[k]) ** 2).mean() for k in ("hessian", "response:electric_field",
                                                            "response2:electric_field", "born:electric_field"))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["embedding"] is not None and float(grads["embedding"].abs().max()) > 0
    assert sum(1 for g in grads.values() if g is not None and float(g.abs().max()) > 0) > 10
    # a subset of rows: the same values at the rows drawn
    chosen = {}
    sub = data.collate([0, 2], species_map(model.elements), torch.float64,
                       hessian_rows=lambda s, n: chosen.setdefault(s, hessian_rows(3, 1, s, n, 2)))
    part = responses(model, sub, extras, create_graph=False)["hessian"]
    assert part.shape == (2 * 2 * 3, 3) and int(sub["hessian_pass"].max()) == 1
    for b, s in enumerate((0, 2)):
        select = torch.isin(batch["hessian_row"], torch.as_tensor(chosen[s] + 9 * b)) & (
            batch["hessian_structure"] == b)
        torch.testing.assert_close(part[sub["hessian_structure"] == b], out["hessian"][select].detach())
        torch.testing.assert_close(sub["hessian"][sub["hessian_structure"] == b], batch["hessian"][select])


def test_hessian_rows_are_drawn_from_seed_epoch_and_structure():
    a = hessian_rows(0, 3, 5, 4, 3)
    assert np.array_equal(a, hessian_rows(0, 3, 5, 4, 3)) and len(set(a.tolist())) == 3 and a.max() < 12
    assert not all(np.array_equal(a, hessian_rows(0, e, 5, 4, 3)) for e in range(4, 10))
    assert np.array_equal(hessian_rows(0, 3, 5, 2, 6), np.arange(6))


def test_training_on_hessian_labels_lowers_the_hessian_error_and_eval_reports_it(setup, tmp_path):
    out = train(config(setup, tmp_path / "run", epochs=6, hessian_rows=4, test=[setup[2]],
                       targets=["hessian=REF_hessian:1", "response:electric_field=REF_dipole:10"]))
    errors = column(out, "valid_hessian_mae")
    assert errors[-1] < 0.8 * errors[0], errors
    assert column(out, "valid_response:electric_field_mae")[0] > 0
    report = json.loads((out / "test.json").read_text())["files"][setup[2]]
    assert report["hessian_mae"] > 0 and report["hessian_rmse"] >= report["hessian_mae"]
    from tacegen.cli import cli

    result = CliRunner().invoke(cli, ["eval", str(out / "best.pt"), setup[2], "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)["files"][setup[2]]
    assert again["hessian_mae"] == pytest.approx(report["hessian_mae"], rel=1e-9)
    assert again["response:electric_field_rmse"] == pytest.approx(report["response:electric_field_rmse"], rel=1e-9)


def test_resume_with_a_subsampled_hessian_target_equals_one_run(setup, tmp_path):
    train(config(setup, tmp_path / "once", epochs=2, hessian_rows=2, valid=None, valid_fraction=0.0))
    train(config(setup, tmp_path / "twice", epochs=1, hessian_rows=2, valid=None, valid_fraction=0.0))
    train(config(setup, tmp_path / "twice", epochs=2, hessian_rows=2, valid=None, valid_fraction=0.0, resume=True))
    assert_same_weights(tmp_path / "once" / "last.pt", tmp_path / "twice" / "last.pt")


def test_bad_response_labels_and_names_are_refused(setup, tmp_path):
    structures = molecules(3, 5)
    structures[1].info["REF_hessian"] = np.zeros((4, 4))
    bad = write(tmp_path / "bad.xyz", structures)
    with pytest.raises(DataError, match=r"bad.xyz: structure 1: label atoms.info\['REF_hessian'\] has shape \(4, 4\); "
                                        r"target 'hessian' of 3 atoms needs \(9, 9\) in atoms.info or \(3, 27\) in "
                                        r"atoms.arrays"):
        train(config(setup, tmp_path / "run", train=bad))
    with pytest.raises(ValueError, match=r"'response:spin': 'spin' is not an input of the model; its inputs: "
                                         r"\['electric_field', 'fidelity'\]"):
        train(config(setup, tmp_path / "run", targets=["response:spin=REF_x"]))
    with pytest.raises(ValueError, match="input 'fidelity' is a category"):
        train(config(setup, tmp_path / "run", targets=["response:fidelity=REF_x"]))
    structures = molecules(2, 5)
    structures[0].arrays["REF_born"] = np.zeros((3, 4))
    bad = write(tmp_path / "born.xyz", structures)
    with pytest.raises(DataError, match=r"born.xyz: structure 0: label atoms.arrays\['REF_born'\] has shape \(3, 4\); "
                                        r"target 'born:electric_field' needs \(3, 3, 3\)"):
        train(config(setup, tmp_path / "run", train=bad, targets=["born:electric_field=REF_born"]))


def test_hessian_labels_as_per_atom_row_blocks_are_read_alike(setup, tmp_path):
    structures = molecules(2, 6)
    for atoms in structures:
        atoms.arrays["REF_rows"] = atoms.info["REF_hessian"].reshape(3, 27)
    path = write(tmp_path / "rows.xyz", structures)
    a, b = (AtomsDataset.from_file(path, 4.0, LabelKeys(), cache=False, extras=extras_for(setup[3], [t]))
            for t in ("hessian=REF_hessian", "hessian=REF_rows"))
    # extxyz writes per-atom columns with 8 decimals, info arrays in full (JSON)
    np.testing.assert_allclose(a.arrays["target_hessian"], b.arrays["target_hessian"], rtol=0, atol=1e-7)
    assert a.has("hessian") and not np.isnan(a.arrays["target_hessian"]).any()


# ---------------------------------------------------------------- per-fidelity heads and E0s
def test_fidelity_head_is_zero_at_construction_and_checkpoints_round_trip_it(setup):
    model = small_model(setup)
    heads = model.inputs.head_tables
    assert len(heads) == 1 and tuple(heads[0].shape) == (8, 2, 4) and float(heads[0].detach().abs().max()) == 0.0
    atoms = molecules(1, 3)[0]
    batch = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
    before = float(model(batch)["energy"][0])
    with torch.no_grad():
        heads[0][0].normal_()
    moved = float(model(batch)["energy"][0])
    assert abs(moved - before) > 1e-6
    state = model.state_dict()
    assert "inputs.head_tables.0" in state
    other = small_model(setup, seed=1)
    other.load_state_dict(state)
    assert float(other(batch)["energy"][0]) == moved
    # a state dict saved before the heads existed loads with zero heads (and predicts what it did)
    old = {k: v for k, v in state.items() if not k.startswith("inputs.head_tables")}
    other.load_state_dict(old)
    assert float(other.inputs.head_tables[0].detach().abs().max()) == 0.0
    assert float(other(batch)["energy"][0]) == pytest.approx(before, rel=1e-12)
    with torch.no_grad():  # the head of another fidelity: no effect on this one
        heads[0][0].zero_()
        heads[0][1].normal_()
    assert float(model(batch)["energy"][0]) == pytest.approx(before, rel=1e-12)


def test_two_fidelities_of_one_geometry_learn_different_energies(setup, tmp_path):
    low, high = molecules(6, 7, fidelity=0), molecules(6, 7, fidelity=1)
    for atoms in high:  # another level of theory: a shifted, stretched energy surface
        atoms.info["REF_energy"] = 1.5 * atoms.info["REF_energy"] + 0.2
        atoms.arrays["REF_forces"] = 1.5 * atoms.arrays["REF_forces"]
    path = write(tmp_path / "two.xyz", low + high)
    out = train(config(setup, tmp_path / "run", train=path, valid=None, valid_fraction=0.0, targets=[],
                       forces_weight=10.0, epochs=3))
    from tacegen.train.checkpoint import load_checkpoint

    model = load_checkpoint(out / "last.pt", use_ema=False)
    assert float(model.inputs.head_tables[0][:2].detach().abs().max()) > 0  # trained
    assert float(model.inputs.head_tables[0][2:].detach().abs().max()) == 0.0  # no data
    atoms = low[0].copy()
    energies = []
    for fidelity in (0, 1):
        atoms.info["fidelity"] = fidelity
        batch = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
        energies.append(float(model(batch)["energy"][0]))
    assert abs(energies[1] - energies[0]) > 0.05, energies


def test_least_squares_e0s_are_fitted_per_fidelity(setup, tmp_path):
    from ase import Atoms
    from ase.calculators.emt import EMT

    from tacegen.train.normalise import compute

    rng = np.random.default_rng(4)
    structures = []
    for k in range(8):
        atoms = Atoms(["O"] * (1 + k % 2) + ["H"] * (2 + k % 3),
                      positions=rng.uniform(0, 3, size=(3 + k % 2 + k % 3, 3)))
        atoms.calc = EMT()
        energy = atoms.get_potential_energy()
        atoms.calc = None
        for fidelity, shift in ((0, (0.0, 0.0)), (2, (0.3, -0.7))):
            copy = atoms.copy()
            n_h, n_o = copy.get_chemical_symbols().count("H"), copy.get_chemical_symbols().count("O")
            copy.info.update(REF_energy=energy + shift[0] * n_h + shift[1] * n_o, fidelity=fidelity,
                             electric_field=np.zeros(3))
            structures.append(copy)
    path = write(tmp_path / "e0.xyz", structures)
    data = AtomsDataset.from_file(path, 4.0, LabelKeys(), cache=False, extras=extras_for(setup[3], []))
    norm = compute(data, ["H", "O"])
    table = norm.category_energies["fidelity"]
    assert sorted(table) == [0, 2]
    np.testing.assert_allclose(np.subtract(table[2], table[0]), [0.3, -0.7], atol=1e-10)
    single = compute(data.subset(range(0, 16, 2)), ["H", "O"])  # one fidelity: no offsets
    assert single.category_energies == {}


def test_metrics_csv_reports_rank_two_targets_per_irreducible_part(setup, tmp_path):
    spec = ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", outputs=("polarizability",))
    build = write_build(spec, tmp_path / "build")
    out = train(config(setup, tmp_path / "run", model=str(build), epochs=1, lmax=2, hidden_lmax=2,
                       targets=["polarizability=REF_alpha"]))
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    parts = [name for name in header if name.startswith("valid_polarizability_")]
    assert parts == ["valid_polarizability_mae", "valid_polarizability_rmse", "valid_polarizability_0e_mae",
                     "valid_polarizability_0e_rmse", "valid_polarizability_2e_mae", "valid_polarizability_2e_rmse"]
    assert all(value > 0 for name in parts for value in column(out, name))
