"""``tacegen export`` of long-range (LES, Ewald) checkpoints: the metatomic model equals
``tacegen.Calculator.from_checkpoint`` on molecules, periodic cells and a batch, and refuses
what cannot be right (a selection of atoms, i.e. a split system; per-atom energies)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("metatomic.torch", reason="metatomic-torch is not installed (pip install 'tacegen[metatomic]')")
pytest.importorskip("metatomic_ase", reason="metatomic-ase is not installed (pip install 'tacegen[metatomic]')")

from train_helpers import TINY, emt_cells, write  # noqa: E402

import tacegen  # noqa: E402
from tacegen.runtime.data import batch_atoms  # noqa: E402
from tacegen.train.config import TrainConfig  # noqa: E402
from tacegen.train.loop import train  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

MODES = ("les", "ewald")
CHARGES = [0.6, -0.4, 0.3, -0.5]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{mode: (checkpoint, exported file)} of 1-epoch runs on Cu/O cells with initial charges."""
    folder = tmp_path_factory.mktemp("export_long_range")
    cells = emt_cells(6, seed=31, symbols=("Cu", "O"))
    for atoms in cells:
        atoms.set_initial_charges([0.5, -0.5, 0.5, -0.5])
    data = write(folder / "train.xyz", cells)
    out = {}
    for mode in MODES:
        run = train(TrainConfig.from_sources(**dict(TINY, train=data, out=str(folder / mode), epochs=1,
                                                    long_range=mode)))
        result = subprocess.run([sys.executable, "-m", "tacegen", "export", str(run / "best.pt"), "--out",
                                 str(folder / f"{mode}.pt")], capture_output=True, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert result.returncode == 0, result.stderr
        out[mode] = (run / "best.pt", folder / f"{mode}.pt")
    return out


def structures():
    """Two periodic triclinic (strained) cells and a molecule, with charges (Ewald reads them)."""
    from ase import Atoms

    cells = emt_cells(2, seed=32, symbols=("Cu", "O"))
    molecule = Atoms("CuOCuO", positions=[[0, 0, 0], [2.4, 0.1, 0], [0.2, 2.5, 0.1], [1.2, 1.1, 2.2]])
    for atoms in cells + [molecule]:
        atoms.set_initial_charges(CHARGES)
    return cells + [molecule]


def reference(calc, atoms):
    """(energy, forces, stress or None, long-range energy) of tacegen's calculator ``calc``."""
    model = calc.model
    long_range = model(batch_atoms(atoms, model.elements, model.r_cut, dtype=model.dtype))["long_range_energy"]
    atoms = atoms.copy()
    atoms.calc = calc
    stress = atoms.get_stress() if atoms.pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress, long_range.detach().numpy()


def assert_equal(calc, ours, atoms):
    energy, forces, stress, long_range = reference(ours, atoms)
    assert abs(float(np.ravel(long_range)[0])) > 1e-6 and np.abs(forces).max() > 1e-3  # not vacuous
    atoms = atoms.copy()
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=1e-10, atol=1e-10)
    if stress is not None:
        np.testing.assert_allclose(atoms.get_stress(), stress, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_exported_long_range_model_equals_the_checkpoint_calculator(exported, mode):
    from metatomic_ase import MetatomicCalculator

    ckpt, model = exported[mode]
    ours, theirs = tacegen.Calculator.from_checkpoint(ckpt), MetatomicCalculator(str(model))
    for atoms in structures():
        assert_equal(theirs, ours, atoms)


def test_les_with_large_latent_charges_and_a_charged_molecule(exported, tmp_path):
    """The LES block with O(0.1-1) e latent charges (readout scaled up), neutral and charged
    (atoms.info['charge'] = 1: the total charge the latent charges are constrained to)."""
    from metatomic.torch import load_atomistic_model
    from metatomic_ase import MetatomicCalculator

    from tacegen.export.metatomic import atomistic_model

    ckpt, _ = exported["les"]
    model = tacegen.load_checkpoint(ckpt)
    with torch.no_grad():
        model.charge_readout.weight.mul_(300.0)
    atomistic_model(model).save(str(tmp_path / "scaled.pt"))
    theirs = MetatomicCalculator(load_atomistic_model(str(tmp_path / "scaled.pt")))
    ours = tacegen.Calculator(model)
    cases = structures()
    charged = cases[-1].copy()
    charged.info["charge"] = 1.0
    for atoms in cases + [charged]:
        assert abs(reference(ours, atoms)[3][0]) > 1e-2
        assert_equal(theirs, ours, atoms)
    assert reference(ours, charged)[0] != pytest.approx(reference(ours, cases[-1])[0], abs=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_a_batch(exported, mode):
    """Several systems in one call of the model (with the inputs it requests)."""
    from metatomic.torch import ModelOutput
    from metatomic_ase import MetatomicCalculator

    ckpt, model = exported[mode]
    cases = structures()
    results = MetatomicCalculator(str(model)).run_model(cases, {"energy": ModelOutput(unit="eV", sample_kind="system")})
    energies = results["energy"].block().values.detach().numpy().ravel()
    # the same batch through tacegen (an Ewald split is chosen per batch: the batch, not each
    # structure alone, is the reference at 1e-10; alone they differ by ~ewald_accuracy)
    model_ = tacegen.load_checkpoint(ckpt)
    same = model_(batch_atoms(cases, model_.elements, model_.r_cut, dtype=model_.dtype))["energy"]
    np.testing.assert_allclose(energies, same.detach().numpy(), rtol=1e-10, atol=1e-10)
    ours = tacegen.Calculator.from_checkpoint(ckpt)
    if mode == "les":  # compute_energy (metatomic-ase 0.1.4) passes no inputs: the default total charge
        batch = MetatomicCalculator(str(model)).compute_energy(cases, compute_forces_and_stresses=True)
        for k, atoms in enumerate(cases):
            energy, forces, _, _ = reference(ours, atoms)
            assert batch["energy"][k] == pytest.approx(energy, rel=1e-10, abs=1e-10)
            np.testing.assert_allclose(batch["forces"][k], forces, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_split_systems_and_per_atom_energies_are_refused(exported, mode):
    from metatensor.torch import Labels
    from metatomic.torch import ModelOutput, load_atomistic_model
    from metatomic_ase import MetatomicCalculator

    ckpt, model = exported[mode]
    atoms = structures()[0]
    calc = MetatomicCalculator(str(model))
    capabilities = load_atomistic_model(str(model)).capabilities()
    assert math.isinf(capabilities.interaction_range)
    assert capabilities.outputs["energy"].sample_kind == "system"
    system = ModelOutput(unit="eV", sample_kind="system")
    # every atom once: allowed, the full energy
    every = Labels(["system", "atom"], torch.tensor([[0, a] for a in range(len(atoms))], dtype=torch.int32))
    full = calc.run_model(atoms, {"energy": system}, every)
    assert float(full["energy"].block().values[0, 0]) == pytest.approx(reference(
        tacegen.Calculator.from_checkpoint(ckpt), atoms)[0], rel=1e-10, abs=1e-10)
    # a part of the system (domain decomposition): refused, not a wrong energy
    part = Labels(["system", "atom"], torch.tensor([[0, 0], [0, 2]], dtype=torch.int32))
    with pytest.raises(Exception, match="whole system"):
        calc.run_model(atoms, {"energy": system}, part)
    with pytest.raises(Exception, match="(?i)sample.kind|per.atom"):
        calc.run_model(atoms, {"energy": ModelOutput(unit="eV", sample_kind="atom")})


def test_the_mesh_path_is_exported(exported, tmp_path):
    """A model whose periodic structures go to the mesh (mesh_min_atoms lowered) exports that
    path: the metatomic model equals tacegen's calculator with the same model (1e-10) and
    differs from the direct sum only by the mesh error."""
    from metatomic_ase import MetatomicCalculator

    from tacegen.export.metatomic import atomistic_model

    ckpt, _ = exported["les"]
    model = tacegen.load_checkpoint(ckpt)
    with torch.no_grad():
        model.charge_readout.weight.mul_(300.0)
    atoms = structures()[0].repeat((2, 2, 1))
    direct = reference(tacegen.Calculator(model), atoms)
    model.mesh_min_atoms = 8
    atomistic_model(model).save(str(tmp_path / "mesh.pt"))
    ours = tacegen.Calculator(model)
    on_mesh = reference(ours, atoms)
    assert on_mesh[0] != direct[0] and on_mesh[0] == pytest.approx(direct[0], rel=1e-6)
    assert_equal(MetatomicCalculator(str(tmp_path / "mesh.pt")), ours, atoms)


def test_ipi_runs_an_exported_long_range_model(exported, tmp_path):
    """i-PI (in process, its metatomic PES, no sockets) runs NVE with an LES export of a
    periodic cell; its first energy is ours."""
    pytest.importorskip("ipi", reason="i-PI is not installed (pip install ipi)")
    from test_export_metatomic import run_ipi

    ckpt, model = exported["les"]
    table, clean = run_ipi(structures()[0], model, tmp_path)
    clean.calc = tacegen.Calculator.from_checkpoint(ckpt)
    assert table.shape == (6, 3)
    assert table[0, 2] == pytest.approx(clean.get_potential_energy(), rel=1e-8, abs=1e-8)  # printed to 9 digits
    assert np.ptp(table[:, 2]) > 1e-5  # the atoms moved


def test_ewald_export_on_the_mesh_reads_the_engines_neighbour_list(exported, tmp_path):
    """Ewald structures on the mesh (mesh_min_atoms lowered) take their real-space pairs from
    the engine's second neighbour list (8 Å): the metatomic model equals tacegen's calculator
    (vesin pairs) with the same model to 1e-10, molecule and cells."""
    from metatomic.torch import load_atomistic_model
    from metatomic_ase import MetatomicCalculator

    from tacegen.export.metatomic import atomistic_model

    ckpt, _ = exported["ewald"]
    model = tacegen.load_checkpoint(ckpt)
    model.mesh_min_atoms = 8
    atomistic_model(model).save(str(tmp_path / "ewald_mesh.pt"))
    cutoffs = [o.cutoff for o in load_atomistic_model(str(tmp_path / "ewald_mesh.pt")).requested_neighbor_lists()]
    assert sorted(cutoffs) == [model.r_cut, 8.0]
    ours = tacegen.Calculator(model)
    calc = MetatomicCalculator(str(tmp_path / "ewald_mesh.pt"))
    for atoms in [structures()[0].repeat((2, 2, 2)), structures()[1], structures()[2]]:
        assert_equal(calc, ours, atoms)
