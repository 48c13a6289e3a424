"""Training and evaluating on tensor targets (``--target dipole=REF_dipole``) of a model built
with inputs and outputs (issue 14)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tacegen.build import write_build
from tacegen.spec import ModelSpec
from tacegen.train.config import TrainConfig
from tacegen.train.labels import DataError
from tacegen.train.loop import train
from train_helpers import TINY, write

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CHARGES = {"O": -0.8, "H": 0.4}


def water_like(count: int, seed: int):
    """Rattled H2O-like molecules: EMT energy and forces, dipole sum_i q_i r_i of fixed charges."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        atoms.rattle(0.12, seed=int(rng.integers(1 << 30)))
        atoms.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center="COP")
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        q = np.array([CHARGES[s] for s in atoms.get_chemical_symbols()])
        atoms.info.update(REF_energy=energy, REF_dipole=q @ atoms.positions, total_charge=0.0)
        atoms.arrays["REF_forces"] = forces
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("targets")
    build = write_build(ModelSpec(lmax=1, nu=2, hidden_lmax=1, backends="torch", inputs=("total_charge",),
                                  outputs=("dipole",)), folder / "build")
    return str(build), write(folder / "train.xyz", water_like(24, 1)), write(folder / "test.xyz", water_like(6, 2))


def config(setup, out, **changes):
    build, train_file, _ = setup
    values = dict(TINY, hidden_lmax=1, layers=2, model=build, train=train_file, out=str(out), epochs=15,
                  targets=["dipole=REF_dipole:100"], forces_weight=1.0, elements=["H", "O"])
    values.update(changes)
    return TrainConfig.from_sources(**values)


def test_training_on_a_dipole_target_lowers_its_error_and_eval_reports_it(setup, tmp_path):
    out = train(config(setup, tmp_path / "run", test=[setup[2]]))
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    dipole = [float(r.split(",")[header.index("valid_dipole_mae")]) for r in rows[1:]]
    assert dipole[-1] < 0.8 * dipole[0], dipole
    report = json.loads((out / "test.json").read_text())["files"][setup[2]]
    assert report["dipole_mae"] > 0 and report["dipole_rmse"] >= report["dipole_mae"]
    from tacegen.cli import cli

    result = CliRunner().invoke(cli, ["eval", str(out / "best.pt"), setup[2], "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)["files"][setup[2]]
    assert again["dipole_mae"] == pytest.approx(report["dipole_mae"], rel=1e-9)


def test_a_target_that_is_not_an_output_is_refused(setup, tmp_path):
    with pytest.raises(ValueError, match=r"target 'polarizability' is not an output of the model; its outputs: \['dipole'\]"):
        train(config(setup, tmp_path / "run", targets=["polarizability=REF_alpha"]))
    with pytest.raises(ValueError, match="must read NAME=KEY"):
        config(setup, tmp_path / "run", targets=["dipole"])


def test_missing_input_values_name_file_structure_and_key(setup, tmp_path):
    structures = water_like(3, 5)
    del structures[1].info["total_charge"]
    bad = write(tmp_path / "bad.xyz", structures)
    with pytest.raises(DataError, match=r"bad.xyz: structure 1: atoms.info\['total_charge'\] is missing"):
        train(config(setup, tmp_path / "run", train=bad))
