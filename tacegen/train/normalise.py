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
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from tacegen.train.labels import DataError


@dataclass
class Normalisation:
    atomic_energies: List[float]
    avg_num_neighbors: float
    scale: float
    shift: float

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
    residual = (energies[labelled] - counts[labelled] @ np.asarray(atomic)) / sizes[labelled]
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
                         scale=scale, shift=shift)
