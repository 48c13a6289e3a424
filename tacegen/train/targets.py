"""Tensor targets and external inputs in training data (issue 14).

A model built with inputs and outputs (:mod:`tacegen.io_spec`) needs, beyond energy,
forces and stress, the values of its inputs (``atoms.info[name]`` / ``atoms.arrays[name]``,
read by :func:`tacegen.runtime.inputs.read_inputs`) and, for each declared output trained
on, its reference: ``--target NAME=KEY[:WEIGHT]`` reads output NAME's labels from
``atoms.info[KEY]`` (per-structure outputs, shape (3,)*rank) or ``atoms.arrays[KEY]``
(per-atom outputs, (n,) + (3,)*rank); a structure without the key is unlabelled (NaN).

:class:`Extras` is what a data set stores for them (arrays ``input_<name>`` and
``target_<name>``), and part of the preprocessing cache key. Each target becomes a loss
target (:mod:`tacegen.train.loss`, mean squared component error, weighted) and gets its own
MAE/RMSE in the metrics, in milli-units of its labels (as energies are reported in meV).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from tacegen.train.labels import DataError


@dataclass(frozen=True)
class TensorTarget:
    """``--target NAME=KEY[:WEIGHT]``: output NAME trained on the labels under KEY."""

    name: str
    key: str
    weight: float = 1.0


def parse_target(text: str) -> TensorTarget:
    """``dipole=REF_dipole`` or ``dipole=REF_dipole:10`` (weight 10; default 1)."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"target {text!r} must read NAME=KEY or NAME=KEY:WEIGHT, e.g. dipole=REF_dipole")
    name, rest = text.split("=", 1)
    key, _, weight = rest.partition(":")
    if not name or not key:
        raise ValueError(f"target {text!r} must read NAME=KEY or NAME=KEY:WEIGHT, e.g. dipole=REF_dipole")
    try:
        value = float(weight) if weight else 1.0
    except ValueError:
        raise ValueError(f"target {text!r}: weight {weight!r} is not a number") from None
    if not value >= 0:
        raise ValueError(f"target {text!r}: weight must be >= 0, got {value}")
    return TensorTarget(name.strip(), key.strip(), value)


@dataclass(frozen=True)
class Extras:
    """Inputs (descriptor dicts) and targets ((name, key, per, rank, weight)) a data set carries."""

    inputs: Tuple[dict, ...] = ()
    targets: Tuple[tuple, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.inputs or self.targets)

    def as_dict(self) -> dict:
        return {"inputs": [dict(i) for i in self.inputs], "targets": [list(t[:4]) for t in self.targets]}

    def per(self) -> Dict[str, str]:
        """Array name -> "structure" or "atom"."""
        out = {f"input_{i['name']}": i["per"] for i in self.inputs}
        out.update({f"target_{t[0]}": t[2] for t in self.targets})
        return out

    def weights(self) -> Dict[str, float]:
        return {t[0]: float(t[4]) for t in self.targets}

    def arrays_of(self, atoms, path: str, index: int) -> Dict[str, np.ndarray]:
        """Arrays of one structure: per structure (1, ...), per atom (n, ...)."""
        from tacegen.runtime.inputs import read_inputs

        out: Dict[str, np.ndarray] = {}
        if self.inputs:
            try:
                values = read_inputs([atoms], self.inputs, torch.float64, "cpu")
            except ValueError as error:
                raise DataError(f"{path}: structure {index}: {str(error).replace('structure 0: ', '')}") from None
            for key, value in values.items():  # (1, ...) per structure, (n, ...) per atom
                out[key] = value.numpy()
        n = len(atoms)
        for name, key, per, rank, _ in self.targets:
            shape = (1,) + (3,) * rank if per == "structure" else (n,) + (3,) * rank
            source = atoms.info if per == "structure" else atoms.arrays
            where = "atoms.info" if per == "structure" else "atoms.arrays"
            if key not in source:
                out[f"target_{name}"] = np.full(shape, np.nan)
                continue
            try:
                array = np.asarray(source[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{path}: structure {index}: label {where}[{key!r}] is not numeric") from None
            if array.size != int(np.prod(shape)) or (per == "atom" and array.shape[0] != n):
                raise DataError(f"{path}: structure {index}: label {where}[{key!r}] has shape {array.shape}; target "
                                f"{name!r} needs {shape[1:] if per == 'structure' else shape}")
            if not np.all(np.isfinite(array)):
                raise DataError(f"{path}: structure {index}: label {where}[{key!r}] holds NaN or infinite values")
            out[f"target_{name}"] = array.reshape(shape)
        return out


def extras_for(spec: Optional[dict], targets: Sequence) -> Extras:
    """The extras of a model spec (its ``spec.json`` dict) and the requested targets (strings or
    :class:`TensorTarget`); ValueError for a target that is not an output of the model."""
    spec = spec or {}
    outputs = {o["name"]: o for o in spec.get("outputs", [])}
    rows = []
    for item in targets or ():
        target = item if isinstance(item, TensorTarget) else parse_target(item)
        if target.name not in outputs:
            raise ValueError(f"target {target.name!r} is not an output of the model; its outputs: "
                             f"{sorted(outputs) or 'none (build with --output NAME)'}")
        o = outputs[target.name]
        rows.append((target.name, target.key, o["per"], int(o["rank"]), target.weight))
    return Extras(tuple(dict(i) for i in spec.get("inputs", [])), tuple(rows))


def register_targets(extras: Extras) -> None:
    """Loss targets (:mod:`tacegen.train.loss`) for the extras' tensor targets (once per name)."""
    from tacegen.train.loss import TARGETS, Target, register

    for name, _, per, _, _ in extras.targets:
        if name in TARGETS:
            continue

        def residuals(out, batch, name=name, per=per):
            label = batch[name]
            r = (out[name] - label).reshape(label.shape[0], -1)
            w = batch["weight"] if per == "structure" else batch["weight"].index_select(0, batch["batch"])
            return r, w

        register(Target(name, residuals))


def collate_extras(arrays, extras: Extras, files: List[int], dtype, device) -> Dict[str, torch.Tensor]:
    """Batch entries of the extras for the structures ``files`` (positions in the data file):
    ``input_<name>`` and, under the output's own name, its labels."""
    out: Dict[str, torch.Tensor] = {}
    ptr = np.asarray(arrays["atom_ptr"])
    for key, per in extras.per().items():
        data = arrays[key]
        if per == "structure":
            value = np.asarray(data)[np.asarray(files, dtype=np.int64)]
        else:
            value = np.concatenate([np.asarray(data[ptr[s]:ptr[s + 1]]) for s in files])
        name = key[len("target_"):] if key.startswith("target_") else key
        kind = torch.int64 if value.dtype.kind in "iu" else dtype
        out[name] = torch.as_tensor(np.ascontiguousarray(value), dtype=kind, device=device)
    return out
