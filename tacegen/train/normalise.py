"""Normalisation of a model from its training set (mace-torch's habits).

- E0s (eV per element): ``least-squares`` solves  counts @ E0 ~= energies  over the
  training structures (counts[s, z] = atoms of element z in structure s);
  ``average`` gives every element the mean energy per atom; a JSON file gives them
  explicitly (``{"Cu": -3.5}``; keys are symbols or atomic numbers).
- average number of neighbours: edges / atoms over the training set.
- shift: mean per-atom residual energy (E - sum E0) / N.
- scale: RMS of the force components (eV/Å); if the set has no forces, the standard
  deviation of the per-atom residual energies; 1 if that is zero.

The model then predicts node energy = E0[z] + scale * (sum of layer readouts) + shift.

Per-fidelity E0s: for a model with category inputs (``--input fidelity``) whose training set
holds several categories, ``least-squares`` also fits each category's reference energies:
the residuals E - counts @ E0 are fitted, jointly over the category inputs, by per-category,
per-element offsets (minimum-norm least squares over the (input, category, element) columns
that occur), which go into the model's ``inputs.energy_tables`` (:func:`set_category_energies`);
with one category input that is the least-squares E0s of each category minus the global E0s.
The shift and scale are then taken from the residuals after these offsets.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from tacegen.train.labels import DataError


@dataclass
class Normalisation:
    atomic_energies: List[float]
    avg_num_neighbors: float
    scale: float
    shift: float
    #: category input -> {category: per-element offsets (eV) on top of atomic_energies}; not a
    #: constructor argument (set on the model by :func:`set_category_energies`)
    category_energies: Dict[str, Dict[int, List[float]]] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, object]:
        return {"atomic_energies": list(self.atomic_energies), "avg_num_neighbors": self.avg_num_neighbors,
                "scale": self.scale, "shift": self.shift}


def _counts(dataset, elements: Sequence[str]):
    from ase.data import atomic_numbers

    column = {atomic_numbers[s]: k for k, s in enumerate(elements)}
    a = dataset.arrays
    ptr = a["atom_ptr"]
    counts = np.zeros((len(dataset), len(elements)))
    for row, s in enumerate(dataset.indices):
        for z in np.asarray(a["numbers"][ptr[s]:ptr[s + 1]]):
            counts[row, column[int(z)]] += 1
    return counts


def read_e0s_file(path: str, elements: Sequence[str]) -> List[float]:
    from ase.data import atomic_numbers, chemical_symbols

    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DataError(f"E0s file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise DataError(f"E0s file {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"E0s file {path} must hold an object mapping elements to energies (eV)")
    by_symbol = {}
    for key, value in data.items():
        symbol = chemical_symbols[int(key)] if str(key).isdigit() else str(key)
        if symbol not in atomic_numbers:
            raise DataError(f"E0s file {path}: unknown element {key!r}")
        by_symbol[symbol] = float(value)
    missing = [s for s in elements if s not in by_symbol]
    if missing:
        raise DataError(f"E0s file {path} has no energy for element(s) {missing}")
    return [by_symbol[s] for s in elements]


def compute(dataset, elements: Sequence[str], e0s: str = "least-squares") -> Normalisation:
    a = dataset.arrays
    energies = np.asarray(a["energy"])[dataset.indices]
    labelled = ~np.isnan(energies)
    if not labelled.any():
        raise DataError(f"{dataset.path}: the training set has no energy labels")
    counts = _counts(dataset, elements)
    sizes = counts.sum(axis=1)
    if e0s == "least-squares":
        present = counts[labelled].sum(axis=0) > 0
        solution = np.zeros(len(elements))
        solution[present] = np.linalg.lstsq(counts[labelled][:, present], energies[labelled], rcond=None)[0]
        for k in np.flatnonzero(~present):
            warnings.warn(f"element {elements[k]} does not occur in the training set; its E0 is 0 eV", stacklevel=2)
        atomic = solution.tolist()
    elif e0s == "average":
        atomic = [float(np.mean(energies[labelled] / sizes[labelled]))] * len(elements)
    else:
        atomic = read_e0s_file(e0s, elements)
    offsets, per_atom = {}, np.zeros(len(energies))
    if e0s == "least-squares":
        offsets, per_atom = _category_offsets(dataset, counts, energies, labelled, np.asarray(atomic))
    residual = (energies[labelled] - counts[labelled] @ np.asarray(atomic) - per_atom[labelled]) / sizes[labelled]
    shift = float(np.mean(residual))
    ptr = a["atom_ptr"]
    force_sq, force_n, edges, atoms = 0.0, 0, 0, 0
    for s in dataset.indices:
        f = np.asarray(a["forces"][ptr[s]:ptr[s + 1]])
        if not np.isnan(f).any():
            force_sq += float((f * f).sum())
            force_n += f.size
        edges += int(a["edge_ptr"][s + 1] - a["edge_ptr"][s])
        atoms += int(ptr[s + 1] - ptr[s])
    if force_n:
        scale = float(np.sqrt(force_sq / force_n))
    else:
        scale = float(np.std(residual))
    if not scale > 1e-12:
        scale = 1.0
    return Normalisation(atomic_energies=[float(e) for e in atomic], avg_num_neighbors=max(edges / atoms, 1e-6),
                         scale=scale, shift=shift, category_energies=offsets)


def _categories(dataset) -> Dict[str, np.ndarray]:
    """Category input name -> the category of each structure of the view (int64)."""
    out = {}
    extras = getattr(dataset, "extras", None)
    for spec in extras.inputs if extras else ():
        if spec.get("kind") == "category" and spec.get("per") == "structure":
            out[spec["name"]] = np.asarray(dataset.arrays[f"input_{spec['name']}"])[dataset.indices].astype(np.int64)
    return out


def _category_offsets(dataset, counts, energies, labelled, atomic):
    """({input: {category: offsets per element}}, per-structure sum of the offsets) fitted to the
    residuals of the global E0s (see module doc); empty when no category input has several categories
    in the labelled structures."""
    categories = {name: values for name, values in _categories(dataset).items()
                  if len(np.unique(values[labelled])) > 1}
    if not categories:
        return {}, np.zeros(len(energies))
    columns, keys = [], []
    for name, values in categories.items():
        for k in np.unique(values[labelled]):
            for z in range(counts.shape[1]):
                column = np.where(values == k, counts[:, z], 0.0)
                if column[labelled].any():
                    columns.append(column)
                    keys.append((name, int(k), z))
    design = np.stack(columns, axis=1)
    residual = energies - counts @ atomic
    solution = np.linalg.lstsq(design[labelled], residual[labelled], rcond=None)[0]
    out: Dict[str, Dict[int, List[float]]] = {}
    for (name, k, z), value in zip(keys, solution):
        out.setdefault(name, {}).setdefault(k, [0.0] * counts.shape[1])[z] = float(value)
    return out, design @ solution


def set_category_energies(model, table: Dict[str, Dict[int, List[float]]], path: str = "the training set") -> None:
    """Write per-category E0 offsets (:attr:`Normalisation.category_energies`) into the model's
    ``inputs.energy_tables``; DataError for a category the model has no row for."""
    if not table:
        return
    import torch

    inputs = model.inputs
    for name, rows in table.items():
        c = inputs.category_names.index(name)
        energies = inputs.energy_tables[c]
        for k, values in rows.items():
            if k >= energies.shape[0]:
                raise DataError(f"{path}: input {name!r} takes category {k}, but the model has "
                                f"{energies.shape[0]} categories (0..{energies.shape[0] - 1})")
            with torch.no_grad():
                energies[k] = torch.tensor(values, dtype=energies.dtype, device=energies.device)
