"""``tacegen study``: a tiny 2x2 study end to end, resume after a kill, the submitit path,
failing variants, bad axes, and the atomic manifest."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from train_helpers import TINY, emt_cells, write

from tacegen.study.axes import Axes, AxisError
from tacegen.study.manifest import Manifest
from tacegen.study.plots import pareto_front
from tacegen.study.runner import StudyOptions, run_study
from tacegen.study.table import TIMING_COLUMNS, mean_std

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHARED = {k: v for k, v in TINY.items() if k not in ("lmax", "nu", "quiet")}
SHARED.update(hidden_lmax=0, epochs=2)


def _flags(options):
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        out += [flag, ",".join(str(v) for v in value) if isinstance(value, list) else str(value)]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write(folder / "train.xyz", emt_cells(8, seed=21)), write(folder / "test.xyz", emt_cells(3, seed=22))


def study(data, out, axes, executor="local", workers=2, retry_failed=False, **shared):
    options = dict(SHARED, train=data[0], test=[data[1]])
    options.update(shared)
    return run_study(axes, options, StudyOptions(out=str(out), workers=workers, executor=executor, quiet=True,
                                                 retry_failed=retry_failed, timing_structures=3))


def csv_rows(path):
    with open(path, newline="") as fh:
        return {row["name"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("studies") / "reference"
    study(data, out, Axes.from_options("1,2", "1,2"))
    return out


def test_tiny_study_trains_measures_and_reports(reference):
    manifest = Manifest.load(reference)
    assert [e["status"] for e in manifest.runs] == ["done"] * 4
    assert [e["name"] for e in manifest.runs] == ["lmax1_nu1_s0", "lmax1_nu2_s0", "lmax2_nu1_s0", "lmax2_nu2_s0"]
    rows = csv_rows(reference / "results.csv")
    for name, row in rows.items():
        assert row["epochs"] == "2"
        assert float(row["test_forces_mae"]) > 0 and float(row["valid_forces_mae"]) > 0
        assert float(row["torch_us_per_atom"]) > 0 and float(row["mflop_per_atom"]) > 0
        assert (reference / "runs" / name / "best.pt").is_file()
    # more rank / correlation order: more independent paths, parameters and FLOPs
    assert int(rows["lmax1_nu2_s0"]["paths"]) > int(rows["lmax1_nu1_s0"]["paths"])
    assert int(rows["lmax2_nu1_s0"]["paths"]) > int(rows["lmax1_nu1_s0"]["paths"])
    assert int(rows["lmax2_nu2_s0"]["params"]) > int(rows["lmax1_nu1_s0"]["params"])
    assert float(rows["lmax2_nu1_s0"]["mflop_per_atom"]) > float(rows["lmax1_nu1_s0"]["mflop_per_atom"])
    table = (reference / "results.md").read_text()
    assert table.count("\n| ") == 5 and "4 done" in table
    for png in ("pareto.png", "learning_curves.png"):
        assert (reference / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_regenerates_the_outputs(reference):
    from tacegen.cli import cli

    before = (reference / "results.csv").read_text()
    (reference / "results.csv").unlink()
    (reference / "pareto.png").unlink()
    result = CliRunner().invoke(cli, ["study", "report", str(reference)])
    assert result.exit_code == 0, result.output
    assert (reference / "results.csv").read_text() == before and (reference / "pareto.png").is_file()


def _numbers(path):
    rows = csv_rows(path)
    return {name: {k: v for k, v in row.items() if k not in TIMING_COLUMNS} for name, row in rows.items()}


def test_killed_study_resumes_to_the_same_results(data, reference, tmp_path):
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "tacegen", "study", "run", "--lmax", "1,2", "--nu", "1,2", "--workers", "2",
            "--quiet", "--timing-structures", "3", "--train", data[0], "--test", data[1], "--out", str(out),
            *_flags(SHARED)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and process.poll() is None:
            try:
                runs = json.loads((out / "manifest.json").read_text())["runs"]
            except (OSError, ValueError):
                runs = []
            if any(r["status"] == "done" for r in runs) and any(r["status"] != "done" for r in runs):
                break
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    statuses = [r["status"] for r in json.loads((out / "manifest.json").read_text())["runs"]]
    assert "done" in statuses and set(statuses) != {"done"}
    assert not (out / "results.csv").exists()
    study(data, out, Axes.from_options("1,2", "1,2"))
    assert [e["status"] for e in Manifest.load(out).runs] == ["done"] * 4
    assert _numbers(out / "results.csv") == _numbers(reference / "results.csv")


def test_submitit_local_executor_gives_the_same_run(data, reference, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "submitit"
    study(data, out, Axes.from_options("1", "1"), executor="submitit-local")
    assert Manifest.load(out).runs[0]["status"] == "done"
    assert (out / "submitit").is_dir()  # the job folders of submitit
    ours = _numbers(out / "results.csv")["lmax1_nu1_s0"]
    theirs = _numbers(reference / "results.csv")["lmax1_nu1_s0"]
    assert ours["params"] == theirs["params"] and ours["paths"] == theirs["paths"]
    for key in ("valid_forces_mae", "test_forces_mae"):  # thread counts may differ: last bits only
        assert float(ours[key]) == pytest.approx(float(theirs[key]), rel=1e-9), key


def test_failed_variant_is_recorded_and_others_finish_then_axes_grow(data, tmp_path):
    out = tmp_path / "failing"
    axes = Axes.from_options("1", "1", ["hidden_lmax=0,2"])  # hidden_lmax 2 > lmax 1: the spec rejects it
    manifest = study(data, out, axes, epochs=1)
    assert "hidden_lmax" not in manifest.options  # an axis, not a shared option
    runs = {e["name"]: e for e in manifest.runs}
    assert runs["lmax1_nu1_hidden_lmax0_s0"]["status"] == "done"
    failed = runs["lmax1_nu1_hidden_lmax2_s0"]
    assert failed["status"] == "failed" and "hidden_lmax" in failed["error"] and "\n" not in failed["error"]
    assert "hidden_lmax2" in (out / "results.md").read_text().split("## Failed runs")[1]
    done_pt = out / "runs" / "lmax1_nu1_hidden_lmax0_s0" / "last.pt"
    stamp = done_pt.stat().st_mtime_ns
    # same axes again: nothing reruns, the failure stays listed
    manifest = study(data, out, axes, epochs=1)
    assert done_pt.stat().st_mtime_ns == stamp
    assert Manifest.load(out).entry("lmax1_nu1_hidden_lmax2_s0")["status"] == "failed"
    # more axes values: the new point runs, the old ones are kept; --retry-failed tries the failure again
    manifest = study(data, out, Axes.from_options("1", "1,2", ["hidden_lmax=0,2"]), retry_failed=True, epochs=1)
    status = {e["name"]: e["status"] for e in manifest.runs}
    assert status == {"lmax1_nu1_hidden_lmax0_s0": "done", "lmax1_nu1_hidden_lmax2_s0": "failed",
                      "lmax1_nu2_hidden_lmax0_s0": "done", "lmax1_nu2_hidden_lmax2_s0": "failed"}
    assert done_pt.stat().st_mtime_ns == stamp
    assert len(csv_rows(out / "results.csv")) == 4


@pytest.mark.parametrize("args, message", [
    (["--lmax", "1,2", "--grid", "colours=1,2"], "unknown training option"),
    (["--lmax", "1,", "--nu", "1"], "empty value"),
    (["--nu", "1,9"], "outside the allowed range 1..4"),
    (["--lmax", "1", "--grid", "lr=0.01,-1"], "lr"),
    (["--lmax", "1", "--grid", "channels=8,8"], "repeated"),
    (["--lmax", "1", "--grid", "seed=1,2"], "--repeats"),
    (["--lmax", "1", "--grid", "channels"], "KEY=V1,V2"),
])
def test_bad_axes_fail_in_one_line_before_anything_runs(data, tmp_path, args, message):
    out = tmp_path / "bad"
    result = subprocess.run([sys.executable, "-m", "tacegen", "study", "run", *args, "--train", data[0],
                             "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("tacegen: error:"), result.stderr
    assert not out.exists()


def test_axes_expand_to_named_variants():
    axes = Axes.from_options("1,2", "2", ["channels=8,16", "radial_hidden=8/8,16"], repeats=2, seed=5)
    variants = axes.variants()
    assert len(variants) == 2 * 1 * 2 * 2 * 2
    assert variants[0].name == "lmax1_nu2_channels8_radial_hidden8x8_s5" and variants[1].seed == 6
    assert len({v.key for v in variants}) == len(variants)
    with pytest.raises(AxisError, match="given twice"):
        Axes.from_options("1", None, ["lmax=2"])


def test_manifest_is_written_atomically(tmp_path, monkeypatch):
    manifest = Manifest(tmp_path, {"epochs": 1})
    manifest.add(Axes.from_options("1,2", "1").variants())
    manifest.save()
    before = (tmp_path / "manifest.json").read_text()

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        manifest.set("lmax1_nu1_s0", status="done")
    assert (tmp_path / "manifest.json").read_text() == before
    assert Manifest.load(tmp_path).entry("lmax1_nu1_s0")["status"] == "pending"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_pareto_front_and_mean_std():
    assert pareto_front([(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0)]) == [0, 1, 3]
    mean, std = mean_std([1.0, 3.0, None])
    assert mean == 2.0 and std == pytest.approx(2 ** 0.5)
    assert mean_std([None]) == (None, None)


def test_study_imports_no_compiler_until_it_measures_paths():
    code = ("import sys, tacegen.study, tacegen.study.measure, tacegen.cli_study; "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['tacegen', 'build'], ['tacegen', 'ir'], ['tacegen', 'paths'], ['tacegen', 'algebra'], "
            "['tacegen', 'backends'])))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_report_groups_repeats_into_mean_and_std(tmp_path):
    from tacegen.study.report import write_report

    manifest = Manifest(tmp_path, {"epochs": 2})
    manifest.add(Axes.from_options("1,2", "1", repeats=2).variants())
    for k, entry in enumerate(manifest.runs):
        lmax = entry["params"]["lmax"]
        entry.update(status="done", measured={"test_forces_mae": 10.0 / lmax + entry["seed"],
                                              "torch_us_per_atom": 5.0 * lmax + entry["seed"], "params": 100 * lmax})
        run = manifest.run_dir(entry)
        run.mkdir(parents=True)
        (run / "metrics.csv").write_text("epoch,valid_forces_mae\n1,30.0\n2,20.0\n")
    manifest.runs[-1]["status"] = "failed"
    manifest.runs[-1]["error"] = "tacegen: error: boom"
    manifest.save()
    written = {p.name for p in write_report(tmp_path)}
    assert written == {"results.csv", "results.md", "pareto.png", "learning_curves.png"}
    table = (tmp_path / "results.md").read_text()
    # lmax 1: seeds 0 and 1 give 10 and 11 -> 10.5 ± 0.71; lmax 2 has one done run (5, no std)
    assert "| 2 | 1 | 1 | 5 |" in table and "| 1 | 1 | 2 | 10.5 ± 0.71 |" in table
    assert table.index("| 2 | 1 | 1 |") < table.index("| 1 | 1 | 2 |")  # sorted by force MAE
    assert "`lmax2_nu1_s1`: tacegen: error: boom" in table


def test_study_toml_gives_axes_and_shared_options(tmp_path):
    from tacegen.study.config import read_study_toml

    path = tmp_path / "study.toml"
    path.write_text('epochs = 3\n[axes]\nlmax = [1, 2]\nnu = 1\nradial_hidden = [[8, 8], [16]]\n'
                    '[model]\nchannels = 8\n')
    file_axes, shared = read_study_toml(str(path))
    assert shared == {"epochs": 3, "channels": 8}
    axes = Axes.from_options(None, "2,3", [], base=file_axes)  # a flag replaces the file's axis
    assert axes.axes == [("lmax", [1, 2]), ("nu", [2, 3]), ("radial_hidden", [[8, 8], [16]])]
    assert len(axes.variants()) == 8
    path.write_text("[axes]\nnu = [1, 7]\n")
    with pytest.raises(AxisError, match=r"study.toml \[axes\]: axis nu: value 7 is outside the allowed range 1..4"):
        read_study_toml(str(path))
    path.write_text("[axes]\nlmax = [1]\n[data]\ncolour = 1\n")
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        read_study_toml(str(path))
