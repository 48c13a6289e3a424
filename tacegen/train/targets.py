"""Tensor targets and external inputs in training data (issue 14).

A model built with inputs and outputs (:mod:`tacegen.io_spec`) needs, beyond energy,
forces and stress, the values of its inputs (``atoms.info[name]`` / ``atoms.arrays[name]``,
read by :func:`tacegen.runtime.inputs.read_inputs`) and, for each declared output trained
on, its reference: ``--target NAME=KEY[:WEIGHT]`` reads output NAME's labels from
``atoms.info[KEY]`` (per-structure outputs, shape (3,)*rank) or ``atoms.arrays[KEY]``
(per-atom outputs, (n,) + (3,)*rank); a structure without the key is unlabelled (NaN).

Response targets (:mod:`tacegen.train.responses`), derivatives of the energy by autograd,
take reserved names instead of an output's:

* ``hessian=KEY``: d2E / dr_ia dr_jb (eV/Å^2), per structure in ``atoms.info[KEY]`` as a
  (3N, 3N) array (rows atom-major, x y z, as :func:`tacegen.runtime.responses.hessian`;
  9N^2 values in that order are accepted, which is how other writers flatten it) or in
  ``atoms.arrays[KEY]`` as (N, 9N), row block i = rows 3i..3i+2 (both round-trip through
  extxyz; info arrays in full precision, per-atom columns with 8 decimals). ``--hessian-rows K`` trains on K random rows per structure and step.
* ``response:INPUT=KEY``: -dE/dINPUT in the shape of the input (per structure in
  ``atoms.info``, per atom in ``atoms.arrays``): the dipole for ``response:electric_field``,
  -dE/dm_i for ``response:magmom_vector``, as :func:`tacegen.runtime.inputs.field_response`.
* ``response2:INPUT=KEY``: -d2E/dINPUT2 of a per-structure input, (3, 3) for a vector: the
  polarizability for ``response2:electric_field``.
* ``born:INPUT=KEY``: d(-dE/dINPUT_a)/dr_ib of a per-structure vector input, per atom (N, 3, 3)
  (or (N, 9)) in ``atoms.arrays``: the Born effective charges for ``born:electric_field``.

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
        """Array name -> "structure", "atom" or "hessian" (flat (9 n^2,) per structure)."""
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
            if per == "hessian":
                out[f"target_{name}"] = _hessian_label(atoms, key, name, path, index)
                continue
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


def _hessian_label(atoms, key: str, name: str, path: str, index: int) -> np.ndarray:
    """The flat (9 n^2,) Hessian label of one structure (NaN when absent); see the module doc."""
    n = len(atoms)
    need = f"({3 * n}, {3 * n}) in atoms.info or ({n}, {9 * n}) in atoms.arrays"
    if key in atoms.info:
        where, value = "atoms.info", atoms.info[key]
    elif key in atoms.arrays:
        where, value = "atoms.arrays", atoms.arrays[key]
    else:
        return np.full(9 * n * n, np.nan)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: structure {index}: label {where}[{key!r}] is not numeric") from None
    fits = array.shape in ((3 * n, 3 * n), (9 * n * n,)) if where == "atoms.info" else array.shape in (
        (n, 9 * n), (n, 3, 3 * n))
    if not fits:
        raise DataError(f"{path}: structure {index}: label {where}[{key!r}] has shape {array.shape}; target "
                        f"{name!r} of {n} atoms needs {need}")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{path}: structure {index}: label {where}[{key!r}] holds NaN or infinite values")
    return array.reshape(-1)


def _response_row(target: TensorTarget, inputs: Dict[str, dict]) -> tuple:
    """(name, key, per, rank, weight) of a response target (see the module doc)."""
    from tacegen.train.responses import parse_response

    kind, name = parse_response(target.name)
    if kind == "hessian":
        return (target.name, target.key, "hessian", 2, target.weight)
    if name not in inputs:
        raise ValueError(f"target {target.name!r}: {name!r} is not an input of the model; its inputs: "
                         f"{sorted(inputs) or 'none (build with --input NAME)'}")
    spec = inputs[name]
    if spec.get("kind", "float") != "float":
        raise ValueError(f"target {target.name!r}: input {name!r} is a category; responses need a float input")
    if kind in ("response2", "born") and spec["per"] != "structure":
        raise ValueError(f"target {target.name!r}: second-order responses are implemented for per-structure "
                         f"inputs; {name!r} is per atom")
    if kind == "born":
        if int(spec["rank"]) != 1:
            raise ValueError(f"target {target.name!r}: Born charges need a vector input; {name!r} has rank "
                             f"{spec['rank']}")
        return (target.name, target.key, "atom", 2, target.weight)
    rank = int(spec["rank"]) * (2 if kind == "response2" else 1)
    return (target.name, target.key, spec["per"], rank, target.weight)


def extras_for(spec: Optional[dict], targets: Sequence) -> Extras:
    """The extras of a model spec (its ``spec.json`` dict) and the requested targets (strings or
    :class:`TensorTarget`); ValueError for a target that is not an output of the model nor a
    response target of it."""
    from tacegen.train.responses import parse_response

    spec = spec or {}
    outputs = {o["name"]: o for o in spec.get("outputs", [])}
    inputs = {i["name"]: i for i in spec.get("inputs", [])}
    rows = []
    for item in targets or ():
        target = item if isinstance(item, TensorTarget) else parse_target(item)
        if parse_response(target.name) is not None:
            rows.append(_response_row(target, inputs))
            continue
        if target.name not in outputs:
            raise ValueError(f"target {target.name!r} is not an output of the model; its outputs: "
                             f"{sorted(outputs) or 'none (build with --output NAME)'}; response targets: "
                             f"hessian, response:INPUT, response2:INPUT, born:INPUT")
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
            if per == "hessian":  # items: (row, atom) blocks of 3 entries
                return r, batch["weight"].index_select(0, batch[f"{name}_structure"])
            w = batch["weight"] if per == "structure" else batch["weight"].index_select(0, batch["batch"])
            return r, w

        register(Target(name, residuals))


def hessian_ptr(arrays) -> np.ndarray:
    """(S + 1,) offsets of each structure's flat (9 n^2,) Hessian label in ``target_hessian``."""
    n = np.diff(np.asarray(arrays["atom_ptr"]))
    return np.concatenate([[0], np.cumsum(9 * n * n)]).astype(np.int64)


def _collate_hessian(arrays, key: str, name: str, files: List[int], rows, dtype, device) -> Dict[str, torch.Tensor]:
    """A Hessian label as items (row r, atom j) of 3 entries H[r, 3j:3j+3]: ``name`` (M, 3), and
    ``<name>_row`` (M,) the row as an index into the batch's flat positions (3 atom + x/y/z),
    ``<name>_atom`` (M,) the batch atom j, ``<name>_pass`` (M,) which backward pass gives the row
    (the k-th chosen row of each structure), ``<name>_structure`` (M,) its structure."""
    ptr = np.asarray(arrays["atom_ptr"])
    hptr = arrays.get("hessian_ptr")
    if hptr is None:
        hptr = hessian_ptr(arrays)
    data = arrays[key]
    labels, row, atom, passes, structure = [], [], [], [], []
    offset = 0
    for b, s in enumerate(files):
        n = int(ptr[s + 1] - ptr[s])
        h = np.asarray(data[hptr[s]:hptr[s + 1]]).reshape(3 * n, 3 * n)
        chosen = np.arange(3 * n) if rows is None else np.asarray(rows(s, n), dtype=np.int64)
        labels.append(h[chosen].reshape(-1, 3))
        row.append(np.repeat(3 * offset + chosen, n))
        atom.append(np.tile(offset + np.arange(n), len(chosen)))
        passes.append(np.repeat(np.arange(len(chosen)), n))
        structure.append(np.full(len(chosen) * n, b))
        offset += n

    def ints(parts):
        return torch.as_tensor(np.concatenate(parts).astype(np.int64), device=device)

    return {name: torch.as_tensor(np.concatenate(labels), dtype=dtype, device=device),
            f"{name}_row": ints(row), f"{name}_atom": ints(atom), f"{name}_pass": ints(passes),
            f"{name}_structure": ints(structure)}


def collate_extras(arrays, extras: Extras, files: List[int], dtype, device, rows=None) -> Dict[str, torch.Tensor]:
    """Batch entries of the extras for the structures ``files`` (positions in the data file):
    ``input_<name>`` and, under the output's own name, its labels. ``rows(s, n)``: the Hessian rows
    to train on for structure ``s`` of ``n`` atoms (default: all 3n)."""
    out: Dict[str, torch.Tensor] = {}
    ptr = np.asarray(arrays["atom_ptr"])
    for key, per in extras.per().items():
        if per == "hessian":
            out.update(_collate_hessian(arrays, key, key[len("target_"):], files, rows, dtype, device))
            continue
        data = arrays[key]
        if per == "structure":
            value = np.asarray(data)[np.asarray(files, dtype=np.int64)]
        else:
            value = np.concatenate([np.asarray(data[ptr[s]:ptr[s + 1]]) for s in files])
        name = key[len("target_"):] if key.startswith("target_") else key
        kind = torch.int64 if value.dtype.kind in "iu" else dtype
        out[name] = torch.as_tensor(np.ascontiguousarray(value), dtype=kind, device=device)
    return out
