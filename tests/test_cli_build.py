"""The ``tacegen build`` command line: output folders, --check, --report / --time-compile, help.

Builds here are small (lmax 1, nu 1) and never compile Numba kernels: the first-call timer
is replaced by a stub where its wiring is tested.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import tacegen.backends.numba_model as numba_model
from tacegen.cli import cli

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--lmax", "1", "--nu", "1", "--hidden-lmax", "0"]


def invoke(args, cwd: Path, monkeypatch, **env):
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(cli, ["build", *args], env={"COLUMNS": "120", **env})
    return result


def test_default_folder_is_under_the_current_directory(tmp_path, monkeypatch):
    before = sorted(p.name for p in (REPO / "generated").iterdir())
    result = invoke(SMALL + ["--backend", "torch"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "generated" / "tace_l1_nu1"
    assert (folder / "spec.json").is_file() and (folder / "model.py").is_file()
    assert str(folder) in result.output
    assert sorted(p.name for p in (REPO / "generated").iterdir()) == before  # the repository is untouched


def test_unoptimised_build_has_its_own_folder(tmp_path, monkeypatch):
    for extra in ([], ["--unoptimised"]):
        result = invoke(SMALL + ["--backend", "torch", *extra], tmp_path, monkeypatch)
        assert result.exit_code == 0, result.output
    optimised = tmp_path / "generated" / "tace_l1_nu1"
    naive = tmp_path / "generated" / "tace_l1_nu1_unoptimised"
    assert json.loads((optimised / "spec.json").read_text())["optimised"] is True
    assert json.loads((naive / "spec.json").read_text())["optimised"] is False
    assert (optimised / "model.py").read_text() != (naive / "model.py").read_text()
    # --out wins over the default name
    result = invoke(SMALL + ["--backend", "torch", "--unoptimised", "--out", str(tmp_path / "mine")], tmp_path,
                    monkeypatch)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "mine" / "spec.json").read_text())["optimised"] is False


@pytest.mark.parametrize("extra,named", [
    (["--lmax", "2"], ["--lmax"]),
    (["--out", "x", "--report"], ["--out", "--report"]),
    (["--unoptimised"], ["--unoptimised"]),
    (["--backend", "torch,numba"], ["--backend"]),  # even the default value, when given, is refused
])
def test_check_refuses_other_options(tmp_path, monkeypatch, extra, named):
    result = invoke(["--check", *extra], tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert "--check takes no other options" in result.output
    for flag in named:
        assert flag in result.output.split("got", 1)[1], result.output
    assert list(tmp_path.iterdir()) == []


def test_report_does_not_compile_numba(tmp_path, monkeypatch):
    def refuse(folder):
        raise AssertionError("--report must not run the Numba model")

    monkeypatch.setattr(numba_model, "first_call_seconds", refuse)
    result = invoke(SMALL + ["--report"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "FLOP" in result.output and "Numba first call" not in result.output


def test_time_compile_times_the_first_call(tmp_path, monkeypatch):
    calls = []

    def stub(folder):
        calls.append(Path(folder))
        return {"bind": 0.5, "first": 12.25, "second": 0.004, "cached": False}

    monkeypatch.setattr(numba_model, "first_call_seconds", stub)
    result = invoke(SMALL + ["--time-compile"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert calls == [tmp_path / "generated" / "tace_l1_nu1"]
    assert "first call 12.25 s (kernels compiled)" in result.output and "FLOP" not in result.output


def test_time_compile_needs_numba(tmp_path, monkeypatch):
    result = invoke(SMALL + ["--backend", "torch", "--time-compile"], tmp_path, monkeypatch)
    assert result.exit_code == 2 and "--time-compile needs the numba back end" in result.output
    assert list(tmp_path.iterdir()) == []


def test_help_shows_ranges_choices_environment_and_mace_names(tmp_path, monkeypatch):
    result = invoke(["--help"], tmp_path, monkeypatch)
    assert result.exit_code == 0
    text = result.output
    for needle in ("--lmax INTEGER RANGE 0..6", "--nu INTEGER RANGE 1..4", "--hidden-lmax INTEGER RANGE 0..6",
                   "[torch|numba|torch,numba]", "[none|les|ewald]", "max_ell", "correlation", "max_L",
                   "./generated/<name>", "--time-compile"):
        assert needle in text, needle
    # every environment variable the package reads is listed
    names = set()
    for path in (REPO / "tacegen").rglob("*.py"):
        names |= set(re.findall(r"\b(TACEGEN_[A-Z_]+|XDG_CACHE_HOME)\b", path.read_text(encoding="utf-8")))
    assert {"TACEGEN_CACHE_DIR", "TACEGEN_DEBUG"} <= names
    epilog = text.split("Environment variables:", 1)[1]
    assert all(name in epilog for name in names), sorted(n for n in names if n not in epilog)


def test_bad_backend_names_the_item_and_the_choices(tmp_path, monkeypatch):
    result = invoke(SMALL + ["--backend", "torch,cuda"], tmp_path, monkeypatch)
    assert result.exit_code == 2
    assert "'cuda'" in result.output and "torch, numba" in result.output
    assert list(tmp_path.iterdir()) == []
