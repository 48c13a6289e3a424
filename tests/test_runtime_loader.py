"""Loading generated model packages from their folders."""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import sys

import pytest

from tacegen.runtime.loader import load, module_name


def write_build(folder, spec_hash="abc123", value=1, spec=None, init=None):
    """A tiny fake tacegen build: relative import of model.py, a spec.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(f"VALUE = {value}\n\nclass Model:\n    pass\n")
    (folder / "__init__.py").write_text(init or "from .model import VALUE, Model\n")
    if spec is None:
        spec = {"hash": spec_hash, "lmax": 2}
    (folder / "spec.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return folder


def test_load_imports_without_sys_path_and_caches(tmp_path):
    folder = write_build(tmp_path / "build_a", value=7)
    before = list(sys.path)
    module = load(folder)
    assert sys.path == before and str(folder) not in sys.path
    assert module.VALUE == 7 and module.Model.__module__ == module.__name__ + ".model"
    assert module.__name__.startswith("_tacegen_build_abc123_")
    assert sys.modules[module.__name__] is module
    assert load(folder) is module
    assert load(str(folder / ".." / "build_a")) is module  # same resolved folder


def test_two_builds_coexist(tmp_path):
    a = load(write_build(tmp_path / "a", spec_hash="1111", value=1))
    b = load(write_build(tmp_path / "b", spec_hash="2222", value=2))
    same_spec_elsewhere = load(write_build(tmp_path / "c", spec_hash="1111", value=3))
    assert (a.VALUE, b.VALUE, same_spec_elsewhere.VALUE) == (1, 2, 3)
    assert len({a.__name__, b.__name__, same_spec_elsewhere.__name__}) == 3
    assert a.Model is not b.Model


def test_rebuild_in_place_with_new_hash_loads_the_new_code(tmp_path):
    folder = write_build(tmp_path / "build", spec_hash="old", value=1)
    old = load(folder)
    write_build(folder, spec_hash="new", value=2)
    new = load(folder)
    assert (old.VALUE, new.VALUE) == (1, 2) and old is not new


def test_missing_hash_falls_back_to_the_path(tmp_path):
    folder = write_build(tmp_path / "nohash", spec={"lmax": 1})
    name = module_name(folder)
    assert name.startswith("_tacegen_build_") and load(folder).__name__ == name
    assert module_name(folder) == name  # stable


def test_unsafe_hash_characters_are_dropped(tmp_path):
    folder = write_build(tmp_path / "weird", spec_hash="sha256:ab/cd.ef")
    assert module_name(folder).startswith("_tacegen_build_sha256abcdef_")
    assert load(folder).VALUE == 1


def test_missing_folder_file_and_non_build_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tacegen build at .*nowhere.*does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file.txt' is a file"):
        load(tmp_path / "file.txt")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "__init__.py").write_text("")
    with pytest.raises(ValueError, match=r"plain' is not a tacegen build: missing \['spec.json'\]"):
        load(plain)
    broken = write_build(tmp_path / "broken", spec="{not json")
    with pytest.raises(ValueError, match=r"spec.json is not valid JSON"):
        load(broken)


def test_failed_import_leaves_nothing_behind(tmp_path):
    folder = write_build(tmp_path / "bad", init="from .model import VALUE\nraise RuntimeError('boom')\n")
    name = module_name(folder)
    with pytest.raises(ImportError, match=r"bad' failed: RuntimeError\('boom'\)"):
        load(folder)
    assert not [k for k in sys.modules if k == name or k.startswith(name + ".")]
    write_build(folder)  # fixed in place, same hash: a retry now succeeds
    assert load(folder).VALUE == 1


def test_stale_bytecode_is_never_used(tmp_path):
    # A .pyc whose recorded mtime and size match the rewritten source would fool
    # Python's own check; the loader must compile model.py from source.
    folder = write_build(tmp_path / "stale", spec_hash="h1", value=1)
    source = folder / "model.py"
    py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)))
    stat = source.stat()
    write_build(folder, spec_hash="h2", value=2)  # same size as before
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size
    assert load(folder).VALUE == 2
