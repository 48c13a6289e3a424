"""The on-disk derivation cache (tacegen.cache) and its use by tacegen.paths.derive."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

import tacegen
import tacegen.cache as cache_mod
from tacegen.cache import DiskCache, atomic_write_text, content_hash
from tacegen.paths import derive, natural_pieces

REQUEST = (natural_pieces(2), 3, 1, -1)


def entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".json"))


def leftovers(folder: Path) -> list[Path]:
    """Anything that is not a finished entry (temp files of interrupted writes)."""
    return [p for p in folder.iterdir() if not p.name.endswith(".json") or p.name.startswith(".")]


def fresh_reference():
    return derive(*REQUEST, cache=DiskCache(enabled=False))


def assert_same_paths(a, b):
    assert a.candidates == b.candidates
    assert a.independent == b.independent
    assert (a.pieces, a.nu, a.L, a.parity) == (b.pieces, b.nu, b.L, b.parity)


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_session_cache_is_isolated():
    """conftest points the default cache away from ~/.cache for the whole session."""
    d = DiskCache().directory
    assert d is not None and str(d) == os.environ["TACEGEN_CACHE_DIR"]
    assert Path.home() / ".cache" not in d.parents


def test_second_derive_is_served_from_cache(tmp_path):
    cache = DiskCache(tmp_path)
    first = no_warnings(derive, *REQUEST, cache=cache)
    assert not first.cached
    assert len(entries(tmp_path)) == 1
    second = no_warnings(derive, *REQUEST, cache=cache)
    assert second.cached
    assert second == first  # every field but `cached`, including the recorded seconds
    assert_same_paths(second, fresh_reference())
    assert len(entries(tmp_path)) == 1
    assert not leftovers(tmp_path)


def test_entry_format_and_key(tmp_path):
    cache = DiskCache(tmp_path)
    ps = derive(*REQUEST, cache=cache)
    (path,) = entries(tmp_path)
    entry = json.loads(path.read_text())
    assert entry["payload"] == json.loads(json.dumps(ps.to_json()))
    assert entry["sha256"] == content_hash(entry["payload"])
    assert entry["key"]["tacegen"] == tacegen.__version__
    assert entry["key"]["request"]["nu"] == 3
    # a different request is a different entry
    derive(natural_pieces(2), 2, 1, -1, cache=cache)
    assert len(entries(tmp_path)) == 2


def _truncate(path: Path):
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _stale_checksum(path: Path):
    entry = json.loads(path.read_text())
    entry["payload"]["independent"] = entry["payload"]["independent"][:-1]  # sha256 left as it was
    path.write_text(json.dumps(entry))


def _garbage(path: Path):
    path.write_bytes(b"\xff\xfe\x00\x81 not json \x00\x9c" * 7)


def _empty(path: Path):
    path.write_bytes(b"")


def _wrong_key(path: Path):
    entry = json.loads(path.read_text())
    entry["key"]["request"]["nu"] = 2  # an entry for another request, under this name
    path.write_text(json.dumps(entry))


@pytest.mark.parametrize("corrupt", [_truncate, _stale_checksum, _garbage, _empty, _wrong_key])
def test_corrupt_entry_is_detected_ignored_and_rebuilt(tmp_path, corrupt):
    cache = DiskCache(tmp_path)
    original = derive(*REQUEST, cache=cache)
    (path,) = entries(tmp_path)
    good_bytes = path.read_bytes()
    corrupt(path)
    assert path.read_bytes() != good_bytes
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = derive(*REQUEST, cache=cache)
    assert not rebuilt.cached
    assert_same_paths(rebuilt, original)
    # rewritten correctly: it verifies and serves the next derive without a warning
    assert entries(tmp_path) == [path]
    entry = json.loads(path.read_text())
    assert entry["sha256"] == content_hash(entry["payload"])
    again = no_warnings(derive, *REQUEST, cache=cache)
    assert again.cached
    assert_same_paths(again, original)
    assert not leftovers(tmp_path)


def test_structurally_wrong_payload_with_valid_checksum_is_rebuilt(tmp_path):
    cache = DiskCache(tmp_path)
    original = derive(*REQUEST, cache=cache)
    (path,) = entries(tmp_path)
    entry = json.loads(path.read_text())
    entry["payload"] = {"nonsense": True}
    entry["sha256"] = content_hash(entry["payload"])
    path.write_text(json.dumps(entry))
    rebuilt = derive(*REQUEST, cache=cache)
    assert not rebuilt.cached
    assert_same_paths(rebuilt, original)
    assert no_warnings(derive, *REQUEST, cache=cache).cached


def test_writes_are_atomic(tmp_path, monkeypatch):
    cache = DiskCache(tmp_path)
    for nu in (1, 2, 3):
        derive(natural_pieces(2), nu, 0, 1, cache=cache)
    assert len(entries(tmp_path)) == 3
    assert not leftovers(tmp_path)

    # a write that fails at the last step leaves the old file intact and no temp file
    target = tmp_path / "entry.json"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(cache_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert not leftovers(tmp_path)

    # the cache turns a failed write into a warning; the derivation still succeeds
    with pytest.warns(UserWarning, match="cannot write"):
        ps = derive(natural_pieces(1), 2, 0, 1, cache=cache)
    assert len(ps.independent) == 2
    assert len(entries(tmp_path)) == 4  # three entries + entry.json, nothing new
    assert not leftovers(tmp_path)


def test_version_is_part_of_the_key(tmp_path, monkeypatch):
    cache = DiskCache(tmp_path)
    derive(*REQUEST, cache=cache)
    assert derive(*REQUEST, cache=cache).cached
    monkeypatch.setattr(cache_mod, "__version__", "999.0.0")
    other = derive(*REQUEST, cache=cache)
    assert not other.cached
    assert len(entries(tmp_path)) == 2
    assert derive(*REQUEST, cache=cache).cached
    monkeypatch.undo()
    assert derive(*REQUEST, cache=cache).cached  # the old entry is still valid for the old version


def test_disabled_cache_and_locations(tmp_path, monkeypatch):
    off = DiskCache(tmp_path, enabled=False)
    assert not derive(*REQUEST, cache=off).cached
    assert not derive(*REQUEST, cache=off).cached
    assert not list(tmp_path.iterdir())

    monkeypatch.setenv("TACEGEN_CACHE_DIR", "off")
    assert not DiskCache().enabled
    monkeypatch.setenv("TACEGEN_CACHE_DIR", str(tmp_path / "here"))
    assert DiskCache().directory == tmp_path / "here"
    monkeypatch.delenv("TACEGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert DiskCache().directory == tmp_path / "xdg" / "tacegen"


def test_unusable_cache_folder_does_not_break_derive(tmp_path):
    """A cache 'folder' that is a regular file: reads and writes fail, with warnings only."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.warns(UserWarning) as record:
        ps = derive(*REQUEST, cache=DiskCache(blocker))
    assert any("cannot write" in str(w.message) for w in record)
    assert not ps.cached
    assert_same_paths(ps, fresh_reference())
    assert blocker.read_text() == "x"
