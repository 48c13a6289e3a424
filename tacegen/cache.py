"""On-disk memoisation of derivations, keyed by a content hash of the request and version.

Entries are JSON files written atomically (temp file in the same folder, then
``os.replace``). Each entry stores its key and a SHA-256 checksum of its payload; an
entry that fails to parse, has a different key or a wrong checksum is treated as
corrupt: it is reported once, ignored and rebuilt, never trusted.

Location: ``$TACEGEN_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/tacegen``, else
``~/.cache/tacegen``. Set ``TACEGEN_CACHE_DIR=off`` to disable the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any, Iterator

from . import __version__


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 safe."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def default_directory() -> Path | None:
    env = os.environ.get("TACEGEN_CACHE_DIR")
    if env:
        return None if env.lower() == "off" else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tacegen"


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file object whose content replaces ``path`` only once the block completes: it is
    written under a temporary name in the same folder, flushed to disk, then renamed, so
    readers (and a process killed while writing) see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    with atomic_file(path, "w") as fh:
        fh.write(text)


class DiskCache:
    """A folder of JSON entries, one per request."""

    def __init__(self, directory: Path | str | None = None, enabled: bool = True):
        self.directory = Path(directory) if directory is not None else default_directory()
        self.enabled = enabled and self.directory is not None

    def key(self, kind: str, request: Any) -> dict:
        return {"kind": kind, "request": request, "tacegen": __version__}

    def path_for(self, key: dict) -> Path:
        assert self.directory is not None
        return self.directory / f"{key['kind']}-{content_hash(key)[:32]}.json"

    def get(self, kind: str, request: Any) -> Any | None:
        if not self.enabled:
            return None
        key = self.key(kind, request)
        path = self.path_for(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            warnings.warn(f"tacegen cache: cannot read {path} ({exc}); rebuilding", stacklevel=2)
            return None
        try:
            entry = json.loads(data.decode("utf-8"))  # UnicodeDecodeError is a ValueError
            ok = (
                isinstance(entry, dict)
                and entry.get("key") == key
                and entry.get("sha256") == content_hash(entry.get("payload"))
            )
        except (ValueError, TypeError):
            ok = False
        if not ok:
            warnings.warn(f"tacegen cache: corrupt entry {path}; ignoring it and rebuilding", stacklevel=2)
            return None
        return entry["payload"]

    def put(self, kind: str, request: Any, payload: Any) -> None:
        if not self.enabled:
            return
        key = self.key(kind, request)
        entry = {"key": key, "payload": payload, "sha256": content_hash(payload)}
        try:
            atomic_write_text(self.path_for(key), canonical_json(entry))
        except OSError as exc:  # a read-only cache must not break a derivation
            warnings.warn(f"tacegen cache: cannot write to {self.directory} ({exc})", stacklevel=2)
