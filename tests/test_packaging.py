"""The package as a user installs it: the wheel holds the templates and the runtime, and an
installed (not editable) tacegen builds a model from outside the source tree and evaluates
it with both back ends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = sorted(p.name for p in (REPO / "tacegen" / "templates").glob("*.j2"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the project files (setuptools writes build/ next to
    the sources), without build isolation (setuptools from this environment: offline)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "tacegen", source / "tacegen", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(out)], check=True, capture_output=True, text=True, cwd=out)
    (found,) = out.glob("tacegen-*.whl")
    return found


def test_wheel_holds_the_templates_and_the_runtime(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert len(TEMPLATES) >= 6
    missing = [t for t in TEMPLATES if f"tacegen/templates/{t}" not in names]
    assert not missing, f"{wheel.name} lacks templates {missing}"
    for module in ("runtime/numba_driver.py", "runtime/chain.py", "runtime/csr.py", "runtime/numba_weights.py",
                   "backends/templates.py", "build.py", "cli.py"):
        assert f"tacegen/{module}" in names, module


def test_installed_wheel_builds_and_evaluates_outside_the_source_tree(wheel, tmp_path):
    """pip install of the wheel (no deps, no index) into a fresh virtual environment that sees
    this environment's packages (torch, numba, ...) but not its tacegen; then ``tacegen build
    --out DIR`` and a float64 evaluation by both back ends, from a folder outside the source
    tree. Numba agrees with PyTorch to 1e-10."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # this environment's site-packages as a plain path entry: its .pth files (the editable
    # tacegen of the source tree) are not processed, so tacegen comes from the wheel only
    (Path(site) / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TACEGEN_CACHE_DIR"] = str(tmp_path / "cache")
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True, cwd=work, env=env)
    build = work / "model"
    result = subprocess.run([str(env_dir / "bin" / "tacegen"), "build", "--lmax", "1", "--nu", "1", "--hidden-lmax",
                             "0", "--out", str(build)], capture_output=True, text=True, cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"model.py", "numba_model.py", "spec.json"} <= {p.name for p in build.iterdir()}
    # without --out: ./generated/<name> of the working folder (not inside site-packages)
    result = subprocess.run([str(env_dir / "bin" / "tacegen"), "build", "--lmax", "1", "--nu", "1", "--hidden-lmax",
                             "0", "--backend", "torch"], capture_output=True, text=True, cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (work / "generated").iterdir()] == ["tace_l1_nu1"]
    assert (work / "generated" / "tace_l1_nu1" / "model.py").is_file()
    code = textwrap.dedent(f"""
        import numpy as np
        import torch
        import tacegen
        from ase.build import bulk
        from tacegen.runtime.data import batch_atoms
        from tacegen.runtime.loader import load

        assert tacegen.__file__.startswith({str(env_dir)!r}), tacegen.__file__
        torch.manual_seed(0)
        model = load({str(build)!r}).TACE(elements=["Cu"], channels=4, r_cut=3.0, layers=2, radial_hidden=(8,))
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.05, seed=1)
        batch = batch_atoms(atoms, ["Cu"], 3.0)
        ref, fast = model(batch), model.numba_backend()(batch)
        for key in ("energy", "forces", "stress"):
            a, b = ref[key].detach().numpy(), fast[key].numpy()
            assert np.abs(a).max() > 1e-8, key
            assert np.abs(a - b).max() <= 1e-10 * max(1.0, np.abs(a).max()), (key, np.abs(a - b).max())
        print("ok", float(ref["energy"][0]))
    """)
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=work, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok ")
