"""Metatomic export of builds with declared tensor outputs (issues 14 and 15).

An output-only build (dipole, polarizability, born_charges; lmax 2, nu 2, hidden_lmax 2)
exported as a metatomic AtomisticModel, saved and reloaded, run through the metatomic ASE
calculator: energy, forces, stress and every output (``tacegen::<name>``) equal
``tacegen.Calculator`` on the same module to 1e-10 (float64), on a molecule, a periodic
cell and a batch; ``selected_atoms`` is honoured by the outputs; builds with external
inputs are refused with a message naming them and saying which metatomic-ase feature is
missing (checked against the installed metatomic-ase)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("metatomic.torch", reason="metatomic-torch is not installed (pip install 'tacegen[metatomic]')")
pytest.importorskip("metatomic_ase", reason="metatomic-ase is not installed (pip install 'tacegen[metatomic]')")

from model_helpers import build_module, make_model, random_crystal, random_molecule  # noqa: E402
from tacegen.runtime.calculator import Calculator  # noqa: E402
from tacegen.spec import ModelSpec  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")]

ELEMENTS = ("H", "C", "O")
OUTPUTS = {"dipole": "system", "polarizability": "system", "born_charges": "atom"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from metatomic.torch import load_atomistic_model

    from tacegen.export.metatomic import atomistic_model

    folder = tmp_path_factory.mktemp("export_io")
    spec = ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", outputs=tuple(OUTPUTS))
    model = make_model(build_module(spec, folder / "build"), elements=ELEMENTS)
    atomistic_model(model).save(str(folder / "model.pt"))
    return model, load_atomistic_model(str(folder / "model.pt"))


def requests(names=tuple(OUTPUTS)):
    from metatomic.torch import ModelOutput

    return {f"tacegen::{name}": ModelOutput(sample_kind=OUTPUTS[name]) for name in names}


def structures():
    rng = np.random.default_rng(4)
    return [random_molecule(rng, 5, ELEMENTS), random_crystal(rng, 4, ELEMENTS)]


def values(tensor_map) -> np.ndarray:
    return tensor_map.block().values.detach().numpy()[..., 0]


def test_exported_outputs_equal_the_calculator(exported):
    from metatomic_ase import MetatomicCalculator

    model, loaded = exported
    assert set(loaded.capabilities().outputs) >= {"energy", *(f"tacegen::{n}" for n in OUTPUTS)}
    theirs = MetatomicCalculator(loaded, additional_outputs=requests())
    for atoms in structures():
        atoms.calc = Calculator(model)
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        s = atoms.get_stress() if atoms.pbc.all() else None
        ours = {name: np.asarray(atoms.calc.results[name]) for name in OUTPUTS}
        atoms.calc = theirs
        assert np.abs(f).max() > 1e-3
        assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-10)
        if s is not None:
            assert np.abs(s).max() > 1e-4
            np.testing.assert_allclose(atoms.get_stress(), s, atol=1e-10)
        for name, ref in ours.items():
            got = values(theirs.additional_outputs[f"tacegen::{name}"])
            assert np.abs(ref).max() > 1e-4, name  # not a vacuous comparison
            np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


def test_a_batch_and_selected_atoms(exported):
    from metatensor.torch import Labels
    from metatomic_ase import MetatomicCalculator

    model, loaded = exported
    cells = structures()
    calc = MetatomicCalculator(loaded)
    batch = calc.run_model(cells, requests())
    assert values(batch["tacegen::dipole"]).shape == (2, 3)
    assert values(batch["tacegen::born_charges"]).shape == (sum(len(a) for a in cells), 3, 3)
    offset = 0
    for k, atoms in enumerate(cells):
        atoms.calc = Calculator(model)
        atoms.get_potential_energy()
        for name in ("dipole", "polarizability"):
            np.testing.assert_allclose(values(batch[f"tacegen::{name}"])[k], atoms.calc.results[name], atol=1e-10)
        z = values(batch["tacegen::born_charges"])[offset:offset + len(atoms)]
        np.testing.assert_allclose(z, atoms.calc.results["born_charges"], atol=1e-10)
        offset += len(atoms)
    # selected atoms: per-atom outputs of those atoms, per-structure outputs summed over them
    atoms = cells[0]
    picked = [0, 2, 3]
    selected = Labels(["system", "atom"], torch.tensor([[0, a] for a in picked], dtype=torch.int32))
    out = calc.run_model(atoms, requests(), selected)
    z_all = values(calc.run_model(atoms, requests(("born_charges",)))["tacegen::born_charges"])
    np.testing.assert_allclose(values(out["tacegen::born_charges"]), z_all[picked], atol=1e-12)
    partial = values(out["tacegen::dipole"])[0]
    whole = values(batch["tacegen::dipole"])[0]
    assert np.abs(partial - whole).max() > 1e-6  # the left-out atoms contribute to the whole dipole
    single = [values(calc.run_model(atoms, requests(("dipole",)), Labels(["system", "atom"],
                                                                        torch.tensor([[0, a]], dtype=torch.int32)))
                     ["tacegen::dipole"])[0] for a in range(len(atoms))]
    np.testing.assert_allclose(np.sum(single, axis=0), whole, atol=1e-12)
    np.testing.assert_allclose(np.sum([single[a] for a in picked], axis=0), partial, atol=1e-12)


def test_builds_with_inputs_are_refused_clearly(tmp_path):
    from tacegen.export.metatomic import atomistic_model

    spec = ModelSpec(lmax=1, nu=1, hidden_lmax=1, backends="torch", inputs=("electric_field", "fidelity"),
                     outputs=("dipole",))
    model = make_model(build_module(spec, tmp_path / "build"), elements=ELEMENTS)
    with pytest.raises(NotImplementedError, match=r"external inputs \['electric_field', 'fidelity'\].*does not "
                                                   r"support.*'ase::info::<key>'"):
        atomistic_model(model)


def test_the_reason_of_the_refusal_holds_for_the_installed_metatomic_ase():
    """The refusal above says the metatomic ASE calculator cannot feed ``atoms.info[key]`` /
    ``atoms.arrays[key]`` to a model (``ase::info::<key>``, ``ase::arrays::<key>``). When a
    metatomic-ase release can, this fails: then export builds with inputs instead of refusing."""
    from ase import Atoms
    from metatomic.torch import ModelOutput
    from metatomic_ase import _calculator

    atoms = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]])
    atoms.info["total_charge"] = 1.0
    atoms.arrays["magmom"] = np.ones(2)
    for name, kind in (("ase::info::total_charge", "system"), ("ase::arrays::magmom", "atom")):
        with pytest.raises(ValueError, match="not available in `ase`"):
            _calculator._get_ase_input(atoms, name, ModelOutput(sample_kind=kind), torch.float64, torch.device("cpu"))


def test_tacegen_export_of_a_trained_checkpoint_with_a_dipole_output(tmp_path):
    import os
    import subprocess
    import sys

    from metatomic_ase import MetatomicCalculator
    from test_train_targets import water_like
    from train_helpers import TINY, write

    import tacegen
    from tacegen.build import write_build
    from tacegen.train.config import TrainConfig
    from tacegen.train.loop import train

    build = write_build(ModelSpec(lmax=1, nu=2, hidden_lmax=1, backends="torch", outputs=("dipole",)),
                        tmp_path / "build")
    data = write(tmp_path / "train.xyz", water_like(9, 3))
    config = dict(TINY, hidden_lmax=1, layers=2, model=str(build), train=data, out=str(tmp_path / "run"), epochs=1,
                  targets=["dipole=REF_dipole"], elements=["H", "O"])
    checkpoint = train(TrainConfig.from_sources(**config)) / "best.pt"
    result = subprocess.run([sys.executable, "-m", "tacegen", "export", str(checkpoint), "--out",
                             str(tmp_path / "model.pt")], capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    ours = tacegen.Calculator.from_checkpoint(checkpoint)
    theirs = MetatomicCalculator(str(tmp_path / "model.pt"), additional_outputs=requests(("dipole",)))
    for atoms in water_like(2, 4):
        atoms.calc = ours
        e, f, mu = atoms.get_potential_energy(), atoms.get_forces(), np.array(ours.results["dipole"])
        atoms.calc = theirs
        assert np.abs(f).max() > 1e-3 and np.abs(mu).max() > 1e-4
        assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-10)
        np.testing.assert_allclose(values(theirs.additional_outputs["tacegen::dipole"])[0], mu, atol=1e-10)
