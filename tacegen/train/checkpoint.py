"""Checkpoints of training runs, and loading a trained model from one.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads
with ``torch.load(path, weights_only=True)``:

=================  ==========================================================
format             :data:`FORMAT` ("tacegen-checkpoint") and ``version`` (int)
spec               the build spec (dict of spec.json's "spec")
source_hash        sha256 of the build's generated ``model.py``
build_dir          the build folder used in training (a hint; rebuilt if absent)
model_kwargs       constructor arguments of ``TACE`` (dtype as "float64"/"float32")
model              the model's state_dict (raw weights)
ema                EMA state (``shadow`` weights) or absent when EMA is off
optimizer          AdamW state_dict;  ``scheduler``: scheduler state_dict or {}
rng                torch CPU RNG state; ``sampler``: the batch sampler's RNG state
                   at the start of the epoch in progress
epoch, step        completed epochs; batches done in the epoch in progress
best, stale        best validation loss so far; epochs since it improved
elapsed, stage     training seconds so far; loss stage (1 or 2)
config             the run's effective configuration (dict)
=================  ==========================================================

Writes are atomic: the file is written under a temporary name in the same folder,
flushed to disk, then renamed over the previous checkpoint, so a process killed while
writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from tacegen.cache import atomic_file, default_directory

FORMAT = "tacegen-checkpoint"
VERSION = 1
DTYPES = {"float64": torch.float64, "float32": torch.float32}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (message names the file and the reason)."""


def source_hash(build_dir: Union[str, Path]) -> str:
    return hashlib.sha256((Path(build_dir) / "model.py").read_bytes()).hexdigest()


def save(path: Union[str, Path], payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_file(Path(path), "wb") as fh:
        torch.save(payload, fh)


def read(path: Union[str, Path]) -> Dict[str, Any]:
    """Load and check a checkpoint dict (``weights_only=True``); CheckpointError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tacegen training checkpoint (no format={FORMAT!r} entry)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')!r}; this tacegen "
                              f"reads version {VERSION}")
    return payload


def _builds_root() -> Path:
    """Builds made on the fly: ``<cache>/builds``, or a per-user temporary folder with the cache off."""
    cache = default_directory()
    return cache / "builds" if cache is not None else Path(tempfile.gettempdir()) / f"tacegen-builds-{os.getuid()}"


def build_for_spec(spec: Dict[str, Any]) -> Path:
    """The build folder of ``spec`` in the cache, compiled on first use."""
    from tacegen.build import write_build  # the compiler, only for builds made on the fly
    from tacegen.spec import ModelSpec

    model_spec = ModelSpec.from_dict(spec)
    folder = _builds_root() / model_spec.hash
    if not (folder / "model.py").is_file():
        write_build(model_spec, folder, force=True)
    return folder


def resolve_build(payload: Dict[str, Any], path: Union[str, Path], model_dir: Optional[Union[str, Path]] = None) -> Path:
    """The build folder whose generated source is the one the checkpoint was trained with.

    Tries ``model_dir``, the checkpoint's ``build_dir`` and the cache build of its spec
    (building it if needed); CheckpointError if none has the recorded source hash.
    """
    wanted = payload["source_hash"]
    candidates = [model_dir, payload.get("build_dir")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "model.py").is_file() and source_hash(candidate) == wanted:
            return Path(candidate)
    if model_dir is not None:
        raise CheckpointError(f"checkpoint {path} was trained with another build than {model_dir} (generated-source "
                              f"hash {wanted[:12]} != {source_hash(model_dir)[:12]})")
    folder = build_for_spec(payload["spec"])
    found = source_hash(folder)
    if found != wanted:
        raise CheckpointError(f"checkpoint {path} was trained with generated source {wanted[:12]} of spec "
                              f"{payload['spec']}, but this tacegen builds {found[:12]} for that spec; load it with "
                              f"the tacegen version that trained it, or pass the original build folder")
    return folder


def construct(build_dir: Union[str, Path], model_kwargs: Dict[str, Any]) -> torch.nn.Module:
    """``TACE(**model_kwargs)`` from the build in ``build_dir`` (dtype given as a string)."""
    from tacegen.runtime.loader import load

    kwargs = dict(model_kwargs)
    kwargs["dtype"] = DTYPES[kwargs["dtype"]]
    if "radial_hidden" in kwargs:
        kwargs["radial_hidden"] = tuple(kwargs["radial_hidden"])
    return load(build_dir).TACE(**kwargs)


def load_checkpoint(path: Union[str, Path], use_ema: bool = True, device: Union[str, torch.device] = "cpu",
                    model_dir: Optional[Union[str, Path]] = None) -> torch.nn.Module:
    """The trained ``TACE`` module of a ``tacegen train`` checkpoint, in eval mode.

    With ``use_ema`` (default) the EMA weights are loaded where the run kept them (the
    weights validation and ``best.pt`` were judged by); otherwise the raw weights. The
    build is found (``model_dir``, the recorded build folder, or rebuilt from the spec
    through the cache) and must have the generated-source hash recorded in the
    checkpoint, else CheckpointError.
    """
    return model_from_payload(read(path), path, use_ema, device, model_dir)


def model_from_payload(payload: Dict[str, Any], path: Union[str, Path], use_ema: bool = True,
                       device: Union[str, torch.device] = "cpu",
                       model_dir: Optional[Union[str, Path]] = None) -> torch.nn.Module:
    """:func:`load_checkpoint` for a checkpoint already :func:`read` from ``path``."""
    folder = resolve_build(payload, path, model_dir)
    model = construct(folder, payload["model_kwargs"])
    state = dict(payload["model"])
    if use_ema and payload.get("ema"):
        state.update(payload["ema"]["shadow"])
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not fit its build: {str(error).splitlines()[0]}") from None
    model.eval()
    return model.to(device)
