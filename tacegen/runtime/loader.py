"""Import a generated tacegen model package from its folder.

A build folder holds ``__init__.py``, ``model.py`` and ``spec.json`` (whose key
``"hash"`` is the build's content hash). :func:`load` imports it without the
folder being on ``sys.path``, under the module name

    _tacegen_build_<spec hash, 16 chars>_<hash of the resolved folder path, 8 chars>

so several builds (or the same build in two folders) can live in one process, and
relative imports inside the package (``from .model import ...``) work. If
spec.json has no usable ``"hash"``, the hash of the resolved folder path is used
instead.

Loading the same folder again returns the same module object, as long as its
spec hash is unchanged; a folder rebuilt in place with a new hash is imported
afresh under its new name (the old module stays valid for objects already made
from it).

Modules of a build are always compiled from source, never from ``__pycache__``:
Python validates .pyc files by whole-second mtime and size, which a rebuild in
place can fool. Generated sources are small, so this costs little.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import re
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Dict, Tuple, Union

REQUIRED_FILES = ("__init__.py", "spec.json")

_cache: Dict[Tuple[str, str], ModuleType] = {}
_lock = threading.Lock()


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """A source loader that neither reads nor writes bytecode caches."""

    def get_code(self, fullname):
        return self.source_to_code(self.get_data(self.path), self.path)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _spec_hash(folder: Path) -> str:
    spec_path = folder / "spec.json"
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{spec_path} is not valid JSON ({error})") from None
    value = spec.get("hash") if isinstance(spec, dict) else None
    cleaned = re.sub(r"[^0-9A-Za-z]", "", value) if isinstance(value, str) else ""
    return cleaned[:16] if cleaned else _digest(str(folder))[:16]


def module_name(path: Union[str, Path]) -> str:
    """The unique module name :func:`load` gives the build at ``path``."""
    folder = _check_folder(path)
    return f"_tacegen_build_{_spec_hash(folder)}_{_digest(str(folder))[:8]}"


def _check_folder(path: Union[str, Path]) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"no tacegen build at {str(path)!r}: the folder does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file; expected a tacegen build folder")
    folder = folder.resolve()
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{str(folder)!r} is not a tacegen build: missing {missing} "
            f"(a build folder holds __init__.py, model.py and spec.json)"
        )
    return folder


def load(path: Union[str, Path]) -> ModuleType:
    """Import the generated model package in folder ``path`` and return the module.

    Raises FileNotFoundError / NotADirectoryError if ``path`` is not a folder,
    ValueError if it is not a tacegen build (no spec.json or __init__.py, or
    invalid JSON), and ImportError (chained to the original error) if the
    package fails to import; a failed import leaves nothing in ``sys.modules``.
    """
    folder = _check_folder(path)
    name = module_name(folder)
    key = (str(folder), name)
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        # Submodules (``from .model import ...``) are found through the package's
        # __path__, whose finder is looked up in sys.path_importer_cache.
        sys.path_importer_cache[str(folder)] = importlib.machinery.FileFinder(
            str(folder), (_SourceOnlyLoader, importlib.machinery.SOURCE_SUFFIXES)
        )
        init = str(folder / "__init__.py")
        spec = importlib.util.spec_from_file_location(
            name, init, loader=_SourceOnlyLoader(name, init),
            submodule_search_locations=[str(folder)],
        )
        if spec is None or spec.loader is None:  # pragma: no cover - defensive
            raise ImportError(f"cannot create an import spec for {folder}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as error:
            for stale in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[stale]
            if isinstance(error, Exception):
                raise ImportError(
                    f"importing the tacegen build at {str(folder)!r} failed: {error!r}"
                ) from error
            raise
        _cache[key] = module
        return module
