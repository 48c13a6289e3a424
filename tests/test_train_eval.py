"""``tacegen eval``, ``tacegen.load_checkpoint`` and ``tacegen.Calculator.from_checkpoint``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from train_helpers import TINY, emt_cells, write

import tacegen
from tacegen.train.config import TrainConfig
from tacegen.train.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data = write(folder / "train.xyz", emt_cells(8, seed=21))
    test = emt_cells(4, seed=22)
    for k, atoms in enumerate(test):
        atoms.info["config_type"] = "a" if k < 3 else "b"
    test_path = write(folder / "test.xyz", test)
    out = train(TrainConfig.from_sources(**dict(TINY, train=data, out=str(folder / "run"), epochs=2)))
    return out, test_path


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tacegen", *args], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)


def test_eval_json_matches_an_independent_calculation(run, tmp_path):
    import ase.io

    out, test_path = run
    result = _cli("eval", str(out / "best.pt"), test_path, "--json", "--plots", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["files"][test_path]
    calc = tacegen.Calculator.from_checkpoint(out / "best.pt")
    structures = ase.io.read(test_path, ":")
    de, df, ds = [], [], []
    for atoms in structures:
        atoms.calc = calc
        de.append((atoms.get_potential_energy() - atoms.info["REF_energy"]) / len(atoms))
        df.append(atoms.get_forces() - atoms.arrays["REF_forces"])
        s = atoms.info["REF_stress"]
        ref = np.array([[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])
        v = atoms.get_stress()
        ds.append(np.array([[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]]) - ref)
    de, df, ds = np.array(de), np.concatenate(df).ravel(), np.concatenate(ds).ravel()
    assert np.abs(df).max() > 1e-3  # not a vacuous comparison
    assert report["n_structures"] == 4
    assert report["energy_mae"] == pytest.approx(1e3 * np.abs(de).mean(), rel=1e-9)
    assert report["energy_rmse"] == pytest.approx(1e3 * np.sqrt((de**2).mean()), rel=1e-9)
    assert report["forces_mae"] == pytest.approx(1e3 * np.abs(df).mean(), rel=1e-9)
    assert report["forces_rmse"] == pytest.approx(1e3 * np.sqrt((df**2).mean()), rel=1e-9)
    assert report["stress_mae"] == pytest.approx(1e3 * np.abs(ds).mean(), rel=1e-9)
    assert report["by_config_type"]["b"]["energy_mae"] == pytest.approx(1e3 * abs(de[3]), rel=1e-9)
    assert sorted(report["by_config_type"]) == ["a", "b"]
    assert list((tmp_path / "plots").glob("*.png"))


def test_eval_reports_null_for_missing_labels_and_bad_checkpoints_in_one_line(run, tmp_path):
    out, _ = run
    cells = emt_cells(2, seed=23)
    for atoms in cells:
        del atoms.info["REF_stress"], atoms.arrays["REF_forces"]
    path = write(tmp_path / "energies.xyz", cells)
    report = json.loads(_cli("eval", str(out / "last.pt"), path, "--json").stdout)["files"][path]
    assert report["forces_mae"] is None and report["stress_rmse"] is None and report["energy_mae"] > 0
    (tmp_path / "broken.pt").write_bytes((out / "last.pt").read_bytes()[:1000])
    bad = _cli("eval", str(tmp_path / "broken.pt"), path)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "broken.pt is truncated or corrupt" in bad.stderr


def test_load_checkpoint_gives_the_ema_weights_and_the_raw_ones_on_request(run):
    out, _ = run
    payload = torch.load(out / "last.pt", weights_only=True)
    ema = tacegen.load_checkpoint(out / "last.pt")
    raw = tacegen.load_checkpoint(out / "last.pt", use_ema=False)
    assert not ema.training
    name = "embedding"
    assert torch.equal(ema.state_dict()[name], payload["ema"]["shadow"][name])
    assert torch.equal(raw.state_dict()[name], payload["model"][name])
    assert not torch.equal(payload["ema"]["shadow"][name], payload["model"][name])
    assert "load_checkpoint" in dir(tacegen) and "Calculator" in dir(tacegen)


def test_calculator_from_checkpoint_numba_equals_torch(run):
    out, test_path = run
    import ase.io

    atoms = ase.io.read(test_path, "0")
    results = {}
    for backend in ("torch", "numba"):
        atoms.calc = tacegen.Calculator.from_checkpoint(out / "best.pt", backend=backend)
        results[backend] = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
    assert np.abs(results["torch"][1]).max() > 1e-3
    assert results["numba"][0] == pytest.approx(results["torch"][0], abs=1e-10)
    np.testing.assert_allclose(results["numba"][1], results["torch"][1], atol=1e-10)
    np.testing.assert_allclose(results["numba"][2], results["torch"][2], atol=1e-10)
