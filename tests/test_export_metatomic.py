"""``tacegen export``: a metatomic AtomisticModel equal to ``tacegen.Calculator.from_checkpoint``."""

from __future__ import annotations

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
from tacegen.train.config import TrainConfig  # noqa: E402
from tacegen.train.loop import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    data = write(folder / "train.xyz", emt_cells(6, seed=31))
    config = dict(TINY, train=data, out=str(folder / "run"), epochs=1)
    out = train(TrainConfig.from_sources(**config))
    result = subprocess.run([sys.executable, "-m", "tacegen", "export", str(out / "best.pt"), "--out",
                             str(folder / "model.pt")], capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    return out / "best.pt", folder / "model.pt"


def structures():
    from ase import Atoms

    cells = emt_cells(2, seed=32)
    molecule = Atoms("Cu4", positions=[[0, 0, 0], [2.4, 0.1, 0], [0.2, 2.5, 0.1], [1.2, 1.1, 2.2]])
    return cells, molecule


def test_exported_model_equals_the_checkpoint_calculator(exported):
    from metatomic_ase import MetatomicCalculator

    ckpt, model = exported
    ours = tacegen.Calculator.from_checkpoint(ckpt)
    theirs = MetatomicCalculator(str(model))
    cells, molecule = structures()
    for atoms in cells + [molecule]:
        atoms.calc = ours
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        s = atoms.get_stress() if atoms.pbc.all() else None
        atoms.calc = theirs
        assert np.abs(f).max() > 1e-3
        assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-10)
        if s is not None:
            np.testing.assert_allclose(atoms.get_stress(), s, atol=1e-10)


def test_a_batch_and_per_atom_energies(exported):
    from metatomic_ase import MetatomicCalculator

    ckpt, model = exported
    cells, _ = structures()
    results = MetatomicCalculator(str(model)).compute_energy(cells, compute_forces_and_stresses=True, per_atom=True)
    ours = tacegen.Calculator.from_checkpoint(ckpt)
    for k, atoms in enumerate(cells):
        atoms.calc = ours
        assert results["energy"][k] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(results["forces"][k], atoms.get_forces(), atol=1e-10)
        np.testing.assert_allclose(np.asarray(results["energies"][k]).ravel(), atoms.get_potential_energies(),
                                   atol=1e-10)


def test_selected_atoms_count_each_atom_once(exported):
    from metatensor.torch import Labels
    from metatomic.torch import ModelOutput
    from metatomic_ase import MetatomicCalculator

    ckpt, model = exported
    atoms = structures()[0][0]
    calc = MetatomicCalculator(str(model))
    atoms.calc = tacegen.Calculator.from_checkpoint(ckpt)
    per_atom = atoms.get_potential_energies()
    picked = [0, 2, 3]
    selected = Labels(["system", "atom"], torch.tensor([[0, a] for a in picked], dtype=torch.int32))
    total = calc.run_model(atoms, {"energy": ModelOutput(unit="eV", sample_kind="system")}, selected)
    assert float(total["energy"].block().values[0, 0]) == pytest.approx(per_atom[picked].sum(), abs=1e-10)
    assert abs(per_atom[1]) > 1e-6  # the left-out atom would have changed the sum


def test_a_wrong_spec_and_existing_files_are_refused(exported, tmp_path):
    from tacegen.export.metatomic import atomistic_model

    ckpt, model = exported
    with pytest.raises(ValueError, match="long_range='les'.*'none'"):
        atomistic_model(tacegen.load_checkpoint(ckpt), {"long_range": "les"})
    again = subprocess.run([sys.executable, "-m", "tacegen", "export", str(ckpt), "--out", str(model)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


IPI_INPUT = """<simulation verbosity='low'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [ step, conserved{electronvolt}, potential{electronvolt} ] </properties>
  </output>
  <total_steps>5</total_steps>
  <prng><seed>12345</seed></prng>
  <ffdirect name='tace'>
    <pes>metatomic</pes>
    <parameters>{template:init.xyz,model:model.pt}</parameters>
  </ffdirect>
  <system>
    <initialize nbeads='1'>
      <file mode='ase'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='tace'/></forces>
    <motion mode='dynamics'>
      <dynamics mode='nve'><timestep units='femtosecond'> 1.0 </timestep></dynamics>
    </motion>
    <ensemble><temperature units='kelvin'> 300 </temperature></ensemble>
  </system>
</simulation>
"""


def run_ipi(atoms, model, folder):
    """Five NVE steps of ``atoms`` under i-PI (in process, its metatomic PES, no sockets)
    with the exported ``model`` in ``folder``. Returns i-PI's table (step, conserved and
    potential energy, eV) and the structure i-PI started from (no labels, no calculator)."""
    import shutil

    import ase.io

    clean = atoms.copy()
    clean.info, clean.calc = {}, None
    for key in [k for k in clean.arrays if k not in ("numbers", "positions")]:
        del clean.arrays[key]
    ase.io.write(folder / "init.xyz", clean)
    shutil.copy(model, folder / "model.pt")
    (folder / "input.xml").write_text(IPI_INPUT)
    ipi = os.path.join(os.path.dirname(sys.executable), "i-pi")
    run = subprocess.run([ipi, "input.xml"], cwd=folder, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return np.loadtxt(folder / "sim.out"), clean


def test_ipi_runs_the_exported_model(exported, tmp_path):
    """i-PI (in process, its metatomic PES, no sockets) runs NVE with the export; its energies are ours."""
    pytest.importorskip("ipi", reason="i-PI is not installed (pip install ipi)")
    ckpt, model = exported
    table, clean = run_ipi(structures()[0][0], model, tmp_path)
    clean.calc = tacegen.Calculator.from_checkpoint(ckpt)
    assert table.shape == (6, 3)
    assert table[0, 2] == pytest.approx(clean.get_potential_energy(), rel=1e-8, abs=1e-8)  # printed to 9 digits
    assert np.ptp(table[:, 2]) > 1e-5  # the atoms moved
    assert np.ptp(table[:, 1]) < 1e-3 * np.ptp(table[:, 2]) + 1e-7  # energy conserved by the NVE run
