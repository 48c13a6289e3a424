"""`tacegen build`: deterministic output, drift check, safe atomic writes, CLI errors, ModelSpec."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tacegen.build as build_module
from tacegen import __version__
from tacegen.build import BuildError, check_builds, command_line, write_build
from tacegen.cli import app, cli
from tacegen.runtime.loader import load
from tacegen.spec import ModelSpec, SpecError

SMALL = ModelSpec(lmax=2, nu=2, hidden_lmax=1)
OTHER = ModelSpec(lmax=1, nu=2, hidden_lmax=0)
FILES = {"__init__.py", "model.py", "numba_model.py", "spec.json", "REPORT.md"}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# ----------------------------------------------------------------------------- determinism

def test_two_builds_are_byte_identical(tmp_path):
    a = write_build(SMALL, tmp_path / "a")
    b = write_build(SMALL, tmp_path / "b")
    assert set(_files(a)) == FILES
    assert _files(a) == _files(b)
    naive = write_build(SMALL, tmp_path / "naive", optimised=False)
    assert _files(naive)["model.py"] != _files(a)["model.py"]
    assert json.loads(_files(naive)["spec.json"])["optimised"] is False


def test_builds_are_identical_across_processes_and_hash_seeds(tmp_path):
    """Fresh processes with different PYTHONHASHSEED and cold derivation caches write the same bytes."""
    ref = write_build(SMALL, tmp_path / "ref")
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, TACEGEN_CACHE_DIR=str(tmp_path / f"cache{seed}"))
        out = tmp_path / f"proc{seed}"
        subprocess.run([sys.executable, "-m", "tacegen.cli", "build", "--lmax", "2", "--nu", "2",
                        "--hidden-lmax", "1", "--out", str(out)], check=True, env=env, capture_output=True)
        assert _files(out) == _files(ref)


def test_committed_generated_folder_has_no_drift():
    assert check_builds() == []
    result = CliRunner().invoke(cli, ["build", "--check"])
    assert result.exit_code == 0, result.output
    assert "matches a fresh build" in result.output


def test_check_detects_edited_and_missing_files(tmp_path, monkeypatch):
    root = tmp_path / "generated"
    shutil.copytree(build_module.REPO_ROOT / "generated", root)
    assert check_builds(root=root) == []
    model = root / "tace_l3_nu3" / "model.py"
    model.write_text(model.read_text() + "# a hand edit\n")
    (root / "tace_l3_nu3" / "REPORT.md").unlink()
    diffs = check_builds(root=root)
    assert len(diffs) == 2
    assert any("model.py" in d and "differs" in d for d in diffs)
    assert any("REPORT.md" in d and "missing" in d for d in diffs)
    # the CLI flag fails on the same drift (pointed at the edited copy)
    fake_repo = tmp_path
    monkeypatch.setattr(build_module, "REPO_ROOT", fake_repo)
    result = CliRunner().invoke(cli, ["build", "--check"])
    assert result.exit_code != 0
    assert "model.py" in result.output and "2 generated file(s) drift" in result.output


# ----------------------------------------------------------------------------- safe writes

def test_refuses_to_overwrite_a_folder_that_is_not_a_build(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    with pytest.raises(BuildError, match=str(target)):
        write_build(SMALL, target)
    assert _files(target) == {"notes.txt": b"precious"}
    # an unreadable spec.json does not make it a build either
    (target / "spec.json").write_text("{not json")
    with pytest.raises(BuildError, match="not a tacegen build"):
        write_build(SMALL, target)
    # a file in the way
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BuildError, match=str(blocker)):
        write_build(SMALL, blocker)
    assert blocker.read_text() == "x"
    # force replaces it
    write_build(SMALL, target, force=True)
    assert set(_files(target)) == FILES
    assert _leftovers(tmp_path, "mine") == []


def test_empty_folder_is_built_into(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    write_build(SMALL, target)
    assert set(_files(target)) == FILES


def test_cli_refuses_non_build_folder(tmp_path, monkeypatch, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    code, out, err = _run_app(monkeypatch, capsys, ["build", "--lmax", "1", "--nu", "1", "--out", str(target)])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(target) in err and "--force" in err
    assert _files(target) == {"notes.txt": b"precious"}


def test_rebuild_replaces_a_previous_build(tmp_path):
    target = tmp_path / "model"
    write_build(SMALL, target)
    first = load(target)
    (target / "stale.txt").write_text("left over from an old version")
    write_build(OTHER, target)
    files = _files(target)
    assert set(files) == FILES  # a fresh folder, not a merge
    record = json.loads(files["spec.json"])
    assert record["hash"] == OTHER.hash
    assert _leftovers(tmp_path, "model") == []
    second = load(target)
    assert second is not first and second.SPEC == OTHER.to_dict()


@pytest.mark.parametrize("where", ["render", "write", "rename", "interrupt"])
def test_failed_build_leaves_previous_build_intact(tmp_path, monkeypatch, where):
    target = tmp_path / "model"
    write_build(SMALL, target)
    before = _files(target)

    class Boom(Exception):
        pass

    if where == "render":
        def render(*args, **kwargs):
            raise Boom("template failed")
        monkeypatch.setattr(build_module, "render_torch", render)
        error = Boom
    elif where in ("write", "interrupt"):
        original = Path.write_text
        calls = []
        exc = Boom("disk full") if where == "write" else KeyboardInterrupt()

        def write_text(self, *args, **kwargs):
            calls.append(self.name)
            if len(calls) == 2:  # after the first file of the new build is written
                raise exc
            return original(self, *args, **kwargs)
        monkeypatch.setattr(Path, "write_text", write_text)
        error = type(exc)
    else:  # the final rename of the staged folder onto the target fails
        original_replace = os.replace

        def replace(src, dst):
            if ".building-" in str(src):
                raise OSError("rename failed")
            return original_replace(src, dst)
        monkeypatch.setattr(build_module.os, "replace", replace)
        error = OSError

    with pytest.raises(error):
        write_build(OTHER, target)
    monkeypatch.undo()
    assert _files(target) == before
    assert _leftovers(tmp_path, "model") == []
    assert load(target).SPEC == SMALL.to_dict()


def test_failed_first_build_leaves_nothing(tmp_path, monkeypatch):
    def render(*args, **kwargs):
        raise RuntimeError("template failed")
    monkeypatch.setattr(build_module, "render_torch", render)
    with pytest.raises(RuntimeError):
        write_build(SMALL, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- CLI errors

def _run_app(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "argv", ["tacegen", *args])
    with pytest.raises(SystemExit) as info:
        app()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.mark.parametrize("args,needles", [
    (["--lmax", "7"], ["--lmax=7", "0..6"]),
    (["--lmax", "-1"], ["--lmax=-1", "0..6"]),
    (["--lmax", "x"], ["--lmax", "'x'"]),
    (["--nu", "0"], ["--nu=0", "1..4"]),
    (["--nu", "5"], ["--nu=5", "1..4"]),
    (["--lmax", "3", "--hidden-lmax", "4"], ["--hidden-lmax=4", "0..3"]),
    (["--lmax", "1", "--hidden-lmax", "2"], ["--hidden-lmax=2", "0..1"]),
    (["--backend", "foo"], ["'foo'", "torch"]),
    (["--backend", "torch,cuda"], ["'cuda'", "torch", "numba"]),
])
def test_cli_bad_input_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, args, needles):
    out_dir = tmp_path / "out"
    code, out, err = _run_app(monkeypatch, capsys, ["build", *args, "--out", str(out_dir)])
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("tacegen: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not out_dir.exists()
    assert [p for p in tmp_path.iterdir()] == []


def test_cli_bad_input_through_the_console_script(tmp_path):
    """The real entry point in a fresh process: one line on stderr, exit code 2."""
    proc = subprocess.run([sys.executable, "-c", "from tacegen.cli import app; app()", "build", "--lmax", "7"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "--lmax=7" in proc.stderr and "0..6" in proc.stderr


def test_cli_build_writes_the_requested_spec(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "cli"
    code, out, err = _run_app(monkeypatch, capsys, ["build", "--lmax", "2", "--nu", "2", "--hidden-lmax", "1",
                                                    "--out", str(out_dir)])
    assert code == 0 and err == ""
    assert str(out_dir) in out and SMALL.hash in out
    assert _files(out_dir) == _files(write_build(SMALL, tmp_path / "direct"))


# ----------------------------------------------------------------------------- ModelSpec

@pytest.mark.parametrize("kwargs,needles", [
    (dict(lmax=7), ["lmax=7", "0..6"]),
    (dict(lmax=-1), ["lmax=-1", "0..6"]),
    (dict(lmax=2.0), ["lmax", "integer", "2.0"]),
    (dict(lmax=True), ["lmax", "integer", "True"]),
    (dict(lmax="3"), ["lmax", "integer", "'3'"]),
    (dict(nu=0), ["nu=0", "1..4"]),
    (dict(nu=5), ["nu=5", "1..4"]),
    (dict(lmax=3, hidden_lmax=4), ["hidden_lmax=4", "0..3"]),
    (dict(lmax=1, hidden_lmax=-1), ["hidden_lmax=-1", "0..1"]),
    (dict(backends=("foo",)), ["'foo'", "torch", "numba"]),
    (dict(backends=()), ["backends", "empty"]),
    (dict(long_range="pme"), ["long_range", "'pme'", "none", "les", "ewald"]),
])
def test_spec_validation_names_field_and_range(kwargs, needles):
    with pytest.raises(SpecError) as info:
        ModelSpec(**kwargs)
    assert isinstance(info.value, ValueError)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_spec_from_dict_rejects_unknown_fields():
    data = ModelSpec().to_dict()
    data["channels"] = 64
    with pytest.raises(SpecError, match=r"channels"):
        ModelSpec.from_dict(data)


def test_canonical_json_and_hash_are_stable():
    spec = ModelSpec()
    assert spec.canonical_json() == (
        '{"backends":["torch","numba"],"hidden_lmax":1,"lmax":3,"long_range":"none","nu":3,"version":"%s"}'
        % __version__)
    assert spec.hash == hashlib.sha256(spec.canonical_json().encode()).hexdigest()[:16]
    assert ModelSpec.from_json(spec.canonical_json()) == spec
    # equal specs (however written) hash equal; any change of a code-changing field changes it
    assert ModelSpec(backends="numba,torch").hash == ModelSpec(backends=["torch", "numba", "torch"]).hash == spec.hash
    assert ModelSpec(backends="numba,torch").backends == ("torch", "numba")
    # the Numba model evaluates the PyTorch module's weights: asking for numba alone prints both
    assert ModelSpec(backends="numba") == spec
    assert ModelSpec(backends="torch").backends == ("torch",) and ModelSpec(backends="torch").hash != spec.hash
    hashes = {ModelSpec(lmax=l, nu=n, hidden_lmax=h).hash for l in range(4) for n in (1, 2, 3) for h in range(l + 1)}
    assert len(hashes) == sum(l + 1 for l in range(4)) * 3
    assert ModelSpec(version="0.0.0").hash != spec.hash


def test_hash_is_stable_across_processes(tmp_path):
    code = "from tacegen.spec import ModelSpec; s = ModelSpec(lmax=2, nu=3, hidden_lmax=2); print(s.hash, s.canonical_json())"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=dict(os.environ, PYTHONHASHSEED=seed)).stdout for seed in ("0", "123")}
    spec = ModelSpec(lmax=2, nu=3, hidden_lmax=2)
    assert outputs == {f"{spec.hash} {spec.canonical_json()}\n"}


@pytest.mark.parametrize("optimised", [True, False])
def test_spec_json_in_the_build_matches(tmp_path, optimised):
    folder = write_build(SMALL, tmp_path / "b", optimised=optimised)
    record = json.loads((folder / "spec.json").read_text())
    assert record["spec"] == SMALL.to_dict()
    assert record["hash"] == SMALL.hash
    assert record["tacegen"] == __version__
    assert record["optimised"] is optimised
    assert record["command"] == command_line(SMALL) == "tacegen build --lmax 2 --nu 2 --hidden-lmax 1"
    assert ModelSpec.from_dict(record["spec"]) == SMALL
    module = load(folder)
    assert module.SPEC == SMALL.to_dict()
    model_src = (folder / "model.py").read_text()
    assert SMALL.hash in model_src.splitlines()[0]
    assert SMALL.hash in (folder / "REPORT.md").read_text()


def test_committed_spec_json_matches_the_default_spec():
    record = json.loads((build_module.REPO_ROOT / "generated" / "tace_l3_nu3" / "spec.json").read_text())
    assert record["hash"] == ModelSpec().hash
    assert ModelSpec.from_dict(record["spec"]) == ModelSpec()


def test_generated_model_takes_e0s_as_a_mapping():
    import pytest

    import tacegen

    root = __import__("pathlib").Path(__file__).resolve().parent.parent / "generated" / "tace_l3_nu3"
    TACE = tacegen.load(root).TACE
    model = TACE(["H", "O"], channels=2, layers=1, atomic_energies={"O": -2.0, 1: -0.5})
    assert model.atomic_energies.tolist() == [-0.5, -2.0]
    with pytest.raises(ValueError, match="missing"):
        TACE(["H", "O"], channels=2, layers=1, atomic_energies={"O": -2.0})
