"""``python -m tacegen`` and the single version source.

The version lives in ``tacegen/__init__.py`` only: pyproject reads it (dynamic version),
the CLI prints it, and specs (hence generated code and spec hashes) record it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tacegen

REPO = Path(__file__).resolve().parent.parent


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "tacegen", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)


def test_python_m_tacegen_version():
    result = run_module("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tacegen, version {tacegen.__version__}"


def test_python_m_tacegen_errors_are_one_line():
    result = run_module("paths", "--lmax", "99")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--lmax=99" in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_python_m_tacegen_help_lists_commands():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    for command in ("build", "paths"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.M), result.stdout


def test_one_version_source():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"], "the version must not be repeated in pyproject.toml"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tacegen.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", tacegen.__version__)
    # specs, and through them the generated code and its spec hash, carry the same version
    from tacegen.spec import ModelSpec

    assert ModelSpec(lmax=1, nu=1, hidden_lmax=0).version == tacegen.__version__
    cff = (REPO / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(rf"^version: {re.escape(tacegen.__version__)}$", cff, re.M), "CITATION.cff version drifts"


def test_packaging_files_exist():
    assert (REPO / "tacegen" / "py.typed").is_file()
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "tacegen developers" in licence
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
