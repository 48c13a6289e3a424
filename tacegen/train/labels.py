"""Reading structures and their reference labels from any file ASE reads.

Label conventions (mace-torch's): energies in ``atoms.info[energy_key]`` (eV), forces in
``atoms.arrays[forces_key]`` (eV/Å, shape (n, 3)), stress in ``atoms.info[stress_key]``
(eV/Å^3, ASE sign: Voigt xx yy zz yz xz xy, or 3x3, or 9 values) or virials in
``atoms.info[virials_key]`` (eV, 3x3 or 9 values; stress = -virial / volume),
per-structure weight ``atoms.info[weight_key]`` (default 1) and config type
``atoms.info[config_type_key]`` (default "Default").

For the default keys (REF_energy, REF_forces, REF_stress) a structure without the key
falls back to the energy, forces or stress of its attached calculator (how ASE reads
the plain ``energy``/``forces``/``stress`` fields of an extxyz file). A key given
explicitly never falls back. Within one file a label is either given for every
structure or for none (a partly labelled file is an error naming the structure).
Stress labels on a structure that is not periodic in all three directions are dropped
with a warning.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

class DataError(ValueError):
    """Bad training or evaluation data (the message names file, structure and key)."""


@dataclass(frozen=True)
class LabelKeys:
    energy: str = "REF_energy"
    forces: str = "REF_forces"
    stress: str = "REF_stress"
    virials: str = "REF_virials"
    weight: str = "config_weight"
    config_type: str = "config_type"

    def as_dict(self) -> Dict[str, str]:
        return dict(energy=self.energy, forces=self.forces, stress=self.stress, virials=self.virials,
                    weight=self.weight, config_type=self.config_type)


#: The keys that fall back to the attached calculator's results when a structure lacks them.
DEFAULT_KEYS = {name: getattr(LabelKeys, name) for name in ("energy", "forces", "stress")}


@dataclass
class Labelled:
    """One structure with its labels; absent labels are None."""

    atoms: object
    energy: Optional[float]
    forces: Optional[np.ndarray]  # (n, 3)
    stress: Optional[np.ndarray]  # (3, 3)
    weight: float
    config_type: str


def read_structures(path: str):
    """All structures of ``path`` as a list of ``ase.Atoms`` (any format ASE reads)."""
    import ase.io

    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    try:
        structures = ase.io.read(path, index=":")
    except Exception as error:  # ASE raises many kinds for unreadable files
        raise DataError(f"cannot read {path} with ASE: {type(error).__name__}: {error}") from None
    if not isinstance(structures, list):
        structures = [structures]
    if not structures:
        raise DataError(f"data file {path} holds no structures")
    return structures


def _calc_value(atoms, name: str):
    calc = atoms.calc
    if calc is None:
        return None
    results = getattr(calc, "results", {}) or {}
    return results.get(name)


def _finite(value, path: str, index: int, key: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: structure {index}: label {key!r} is not numeric: {value!r}") from None
    if not np.all(np.isfinite(array)):
        raise DataError(f"{path}: structure {index}: label {key!r} holds NaN or infinite values")
    return array


def _stress_matrix(value: np.ndarray, path: str, index: int, key: str) -> np.ndarray:
    if value.shape == (6,):
        xx, yy, zz, yz, xz, xy = value
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if value.shape in ((9,), (3, 3)):
        return value.reshape(3, 3)
    raise DataError(f"{path}: structure {index}: label {key!r} has shape {value.shape}; expected 6 (Voigt), "
                    f"9 or 3x3 values")


def labels_of(structures, path: str, keys: LabelKeys, require_energy: bool = True) -> List[Labelled]:
    """Extract and check labels; raises DataError naming file, structure index and key."""
    found: Dict[str, List[bool]] = {"energy": [], "forces": [], "stress": []}
    records: List[Labelled] = []
    dropped_stress = 0
    for k, atoms in enumerate(structures):
        n = len(atoms)
        if n == 0:
            raise DataError(f"{path}: structure {k} has no atoms")
        # energy
        energy = atoms.info.get(keys.energy)
        if energy is None and keys.energy == DEFAULT_KEYS["energy"]:
            energy = _calc_value(atoms, "energy")
        if energy is not None:
            energy_array = _finite(energy, path, k, keys.energy)
            if energy_array.size != 1:
                raise DataError(f"{path}: structure {k}: label {keys.energy!r} has shape {energy_array.shape}; "
                                f"expected one number (eV)")
            energy = float(energy_array.reshape(()))
        # forces
        forces = atoms.arrays.get(keys.forces)
        if forces is None and keys.forces == DEFAULT_KEYS["forces"]:
            forces = _calc_value(atoms, "forces")
        if forces is not None:
            forces = _finite(forces, path, k, keys.forces)
            if forces.shape != (n, 3):
                raise DataError(f"{path}: structure {k}: label {keys.forces!r} has shape {forces.shape}; "
                                f"expected ({n}, 3)")
        # stress, or virials
        stress = atoms.info.get(keys.stress)
        if stress is None and keys.stress == DEFAULT_KEYS["stress"]:
            stress = _calc_value(atoms, "stress")
        if stress is None and atoms.info.get(keys.virials) is not None:
            virial = _stress_matrix(_finite(atoms.info[keys.virials], path, k, keys.virials), path, k, keys.virials)
            if atoms.pbc.all():
                volume = abs(float(np.linalg.det(np.asarray(atoms.cell[:]))))
                stress = -virial / volume
            else:
                stress = virial  # dropped below
        elif stress is not None:
            stress = _stress_matrix(_finite(stress, path, k, keys.stress), path, k, keys.stress)
        if stress is not None and not atoms.pbc.all():
            dropped_stress += 1
            stress = None
            found["stress"].append(None)  # neither given nor missing
        else:
            found["stress"].append(stress is not None)
        found["energy"].append(energy is not None)
        found["forces"].append(forces is not None)
        # weight and config type
        weight = atoms.info.get(keys.weight, 1.0)
        weight_array = _finite(weight, path, k, keys.weight)
        if weight_array.size != 1 or float(weight_array.reshape(())) < 0:
            raise DataError(f"{path}: structure {k}: weight {keys.weight!r} must be one number >= 0, got {weight!r}")
        config_type = atoms.info.get(keys.config_type, "Default")
        records.append(Labelled(atoms, energy, forces, stress, float(weight_array.reshape(())), str(config_type)))
    if dropped_stress:
        warnings.warn(f"{path}: stress labels of {dropped_stress} structure(s) that are not periodic in all "
                      f"three directions are ignored (stress is undefined there)", stacklevel=2)
    names = {"energy": keys.energy, "forces": keys.forces, "stress": f"{keys.stress}/{keys.virials}"}
    for label, flags in found.items():
        given = [f for f in flags if f is not None]
        if any(given) and not all(given):
            k = next(i for i, f in enumerate(flags) if f is False)
            raise DataError(f"{path}: structure {k} lacks label {names[label]!r}, which other structures in "
                            f"the file have; label all structures or none")
    if require_energy and not any(found["energy"]):
        raise DataError(f"{path}: no structure has an energy label {keys.energy!r}"
                        + (" (nor a calculator energy)" if keys.energy == DEFAULT_KEYS["energy"] else "")
                        + "; pass --energy-key with the info key that holds the energies")
    return records
