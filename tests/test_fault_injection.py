"""Fault injection: each deliberate fault of tests/mutations.py must make a test fail.

For every mutation the check copies the repository's ``tacegen`` package, templates,
tests and pyproject.toml to a temporary folder, applies the mutation (a runtime file edit
there, or ``TACEGEN_TEST_MUTATION`` for generated code, see tests/mutations.py), and runs
the mutation's few focused tests in a fresh ``python -m pytest`` inside that folder (so
the copy, not the working tree, is imported). Outcomes:

* killed: pytest exits 1 (a test failed) -- what we want;
* survived: pytest exits 0 -- the suite cannot see this fault; the test fails and names it;
* anything else (collection error, mutation target not found, generated edit never
  applied): an error naming the mutation, never counted as killed.

An unmutated run of the union of the focused tests (``test_focused_tests_pass_unmutated``)
shows the copies work, so a kill means the mutation, not the copy, broke a test.
Runtime: about a minute per mutation on a busy 2-core machine (small models, PyTorch).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mutations import ENV_LOG, ENV_NAME, MUTATIONS, Mutation

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("tacegen", "templates", "tests", "pyproject.toml")

pytestmark = pytest.mark.fault_injection


def _copy_repository(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache", "*.pyc")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def _run_pytest(folder: Path, tests, extra_env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in (ENV_NAME, ENV_LOG, "PYTHONPATH") and not k.startswith("PYTEST_")}  # not an xdist worker
    env.update(extra_env)
    env["PYTHONPATH"] = str(folder)  # the copy first, before any installed tacegen
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
               "-o", "addopts=-rf", *tests]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def _tail(result: subprocess.CompletedProcess, lines: int = 30) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


def test_focused_tests_pass_unmutated(tmp_path):
    """The copy of the repository passes every focused test when nothing is mutated."""
    folder = _copy_repository(tmp_path / "repo")
    tests = sorted({t for m in MUTATIONS for t in m.tests})
    result = _run_pytest(folder, tests, {})
    assert result.returncode == 0, f"unmutated focused tests fail in the copy:\n{_tail(result)}"


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutation_is_caught(tmp_path, mutation: Mutation):
    folder = _copy_repository(tmp_path / "repo")
    env = {}
    log = tmp_path / "applied.log"
    if mutation.kind == "runtime":
        path = folder / mutation.target
        path.write_text(mutation.edit(path.read_text()))  # raises MutationNotApplied
    else:
        env = {ENV_NAME: mutation.name, ENV_LOG: str(log)}
    result = _run_pytest(folder, mutation.tests, env)
    if mutation.kind == "generated":
        assert log.exists() and log.read_text().strip(), (
            f"mutation {mutation.name!r} was never applied to a generated model.py "
            f"(no build of {mutation.tests} contains its target):\n{_tail(result)}")
    assert result.returncode != 0, (
        f"mutation {mutation.name!r} SURVIVED ({mutation.description}): "
        f"{' '.join(mutation.tests)} passed against it")
    killed_by = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    print(f"{mutation.name}: killed by {killed_by}")
    assert result.returncode == 1 and killed_by, (
        f"mutation {mutation.name!r}: pytest exited {result.returncode} (an error, not a failing "
        f"test):\n{_tail(result)}")
