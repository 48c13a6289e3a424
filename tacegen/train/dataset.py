"""Preprocessed data sets: neighbour lists computed once, stored memory-mapped.

A data file is turned into a folder of ``.npy`` arrays (structures concatenated)
plus ``meta.json``, under ``$TACEGEN_CACHE_DIR/data/<key>`` where the key hashes the
file's content, the cut-off, the label keys and this module's format version. The
arrays are opened with ``numpy.load(mmap_mode="r")``, so a data set larger than RAM
trains with memory bounded by the batch. A cache folder appears atomically (written
under a temporary name, then renamed). With the cache off (``TACEGEN_CACHE_DIR=off`` or
``data_cache=False``) the same arrays are built in memory.

Arrays (S structures, N atoms, E edges in total):

==============  =========  ===================================================
numbers         (N,)       atomic numbers
positions       (N, 3)     Å
charges         (N,)       initial charges, e
atom_ptr        (S+1,)     atoms of structure s are atom_ptr[s]:atom_ptr[s+1]
cell, pbc       (S,3,3)    lattice vectors as rows (zeros for molecules); (S, 3)
edges           (E, 2)     (sender j, receiver i), local to the structure
shifts          (E, 3)     integer lattice shifts (float64)
edge_ptr        (S+1,)     edges of structure s
energy          (S,)       eV; NaN where not labelled
forces          (N, 3)     eV/Å; NaN where not labelled
stress          (S, 3, 3)  eV/Å^3; NaN where not labelled
weight          (S,)       per-structure weight
total_charge    (S,)       atoms.info["charge"], NaN where not given
input_<name>    (S, ...)   external inputs of a model (per structure, or (N, ...) per
                           atom); target_<name>: labels of a tensor output, NaN where
                           absent (:mod:`tacegen.train.targets`); a Hessian label
                           is flat, (9 n^2,) per structure
==============  =========  ===================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from tacegen.cache import default_directory
from tacegen.runtime.data import batch_atoms
from tacegen.train.labels import DataError, LabelKeys, labels_of, read_structures
from tacegen.train.targets import Extras, collate_extras, hessian_ptr

FORMAT_VERSION = 1
_ARRAYS = ("numbers", "positions", "charges", "atom_ptr", "cell", "pbc", "edges", "shifts", "edge_ptr",
           "energy", "forces", "stress", "weight", "total_charge")


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_root() -> Optional[Path]:
    """``<cache>/data`` (see :func:`tacegen.cache.default_directory`); None with the cache off."""
    cache = default_directory()
    return cache / "data" if cache is not None else None


def preprocess(path: str, r_cut: float, keys: LabelKeys, extras: Extras = Extras()) -> Dict[str, np.ndarray]:
    """Read ``path``, check its labels and compute neighbour lists (vesin, via batch_atoms)."""
    structures = read_structures(path)
    records = labels_of(structures, path, keys)
    columns: Dict[str, list] = {name: [] for name in _ARRAYS if not name.endswith("_ptr")}
    columns.update({name: [] for name in extras.per()})
    atom_ptr, edge_ptr = [0], [0]
    config_types = []
    for k, rec in enumerate(records):
        atoms = rec.atoms
        symbols = sorted(set(atoms.get_chemical_symbols()))
        try:
            b = batch_atoms(atoms, symbols, r_cut)
        except (ValueError, TypeError) as error:
            raise DataError(f"{path}: structure {k}: {error}") from None
        n = len(atoms)
        columns["numbers"].append(np.asarray(atoms.numbers, dtype=np.int64))
        columns["positions"].append(b["positions"].numpy())
        columns["charges"].append(b["charges"].numpy())
        columns["cell"].append(b["cell"].numpy())
        columns["pbc"].append(b["pbc"].numpy())
        columns["edges"].append(b["edge_index"].numpy().T.copy())
        columns["shifts"].append(b["edge_shift"].numpy())
        columns["energy"].append(np.array([np.nan if rec.energy is None else rec.energy]))
        columns["forces"].append(np.full((n, 3), np.nan) if rec.forces is None else rec.forces)
        columns["stress"].append(np.full((1, 3, 3), np.nan) if rec.stress is None else rec.stress[None])
        columns["weight"].append(np.array([rec.weight]))
        columns["total_charge"].append(b["total_charge"].numpy())
        for name, value in extras.arrays_of(atoms, path, k).items():
            columns[name].append(value)
        atom_ptr.append(atom_ptr[-1] + n)
        edge_ptr.append(edge_ptr[-1] + b["edge_index"].shape[1])
        config_types.append(rec.config_type)
    arrays = {name: np.concatenate(values) for name, values in columns.items()}
    arrays["edges"] = arrays["edges"].reshape(-1, 2).astype(np.int64)
    arrays["shifts"] = arrays["shifts"].reshape(-1, 3)
    arrays["atom_ptr"] = np.asarray(atom_ptr, dtype=np.int64)
    arrays["edge_ptr"] = np.asarray(edge_ptr, dtype=np.int64)
    arrays["config_types"] = config_types
    return arrays


class AtomsDataset:
    """A preprocessed data file: structures, labels and neighbour lists (see module doc)."""

    def __init__(self, arrays: Dict[str, np.ndarray], path: str, r_cut: float, extras: Extras = Extras()):
        self.arrays = arrays
        self.extras = extras
        self.path = path
        self.r_cut = float(r_cut)
        self.config_types: List[str] = list(arrays["config_types"])
        ptr = np.asarray(arrays["atom_ptr"])
        self.num_atoms = (ptr[1:] - ptr[:-1]).astype(np.int64)
        self.indices = np.arange(len(self.num_atoms))  # a view's structures in the file
        if "hessian" in extras.per().values():
            arrays["hessian_ptr"] = hessian_ptr(arrays)  # where each structure's flat Hessian label starts

    # -------------------------------------------------------------- construction
    @classmethod
    def from_file(cls, path: str, r_cut: float, keys: LabelKeys = LabelKeys(), cache: bool = True,
                  extras: Extras = Extras()) -> "AtomsDataset":
        root = _cache_root() if cache else None
        if root is None:
            return cls(preprocess(path, r_cut, keys, extras), path, r_cut, extras)
        names = _ARRAYS + tuple(extras.per())
        if not os.path.exists(path):
            raise DataError(f"data file {path} does not exist")
        record = {"file": _file_digest(path), "r_cut": float(r_cut), "keys": keys.as_dict(), "format": FORMAT_VERSION}
        if extras:
            record["extras"] = extras.as_dict()
        key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]
        folder = root / key
        if not (folder / "meta.json").is_file():
            arrays = preprocess(path, r_cut, keys, extras)
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
            try:
                for name in names:
                    np.save(staging / f"{name}.npy", arrays[name])
                (staging / "meta.json").write_text(json.dumps(
                    {"source": os.path.abspath(path), "r_cut": float(r_cut), "keys": keys.as_dict(),
                     "format": FORMAT_VERSION, "config_types": arrays["config_types"]}))
                try:
                    os.replace(staging, folder)
                except OSError:  # another process landed the same cache first
                    shutil.rmtree(staging, ignore_errors=True)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in names}
        arrays["config_types"] = meta["config_types"]
        return cls(arrays, path, r_cut, extras)

    def subset(self, indices: Sequence[int]) -> "AtomsDataset":
        view = AtomsDataset.__new__(AtomsDataset)
        view.__dict__.update(self.__dict__)
        view._has = {}
        view.indices = np.asarray(self.indices)[np.asarray(indices, dtype=np.int64)]
        return view

    # -------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.indices)

    def sizes(self) -> np.ndarray:
        """Atoms per structure of this view."""
        return self.num_atoms[self.indices]

    def numbers(self) -> np.ndarray:
        """Atomic numbers present in this view (sorted)."""
        ptr = self.arrays["atom_ptr"]
        return np.unique(np.concatenate([np.asarray(self.arrays["numbers"][ptr[s]:ptr[s + 1]]) for s in self.indices]))

    def has(self, label: str) -> bool:
        """Whether the view holds any ``energy``, ``forces`` or ``stress`` label (computed once)."""
        cache = self.__dict__.setdefault("_has", {})
        if label not in cache:
            per = self.extras.per().get(f"target_{label}")
            if per is not None:  # a tensor target: labelled where not NaN
                values = np.asarray(self.arrays[f"target_{label}"])
                if per == "hessian":  # the first entry of each structure's flat Hessian
                    values = values[np.asarray(self.arrays["hessian_ptr"])[self.indices]]
                elif per == "atom":
                    values = values[np.asarray(self.arrays["atom_ptr"])[self.indices]]
                else:
                    values = values[self.indices]
                cache[label] = bool(np.any(~np.isnan(values.reshape(len(values), -1)).any(axis=1)))
            elif label == "forces":
                first = np.asarray(self.arrays["atom_ptr"])[self.indices]
                cache[label] = bool(len(first)) and not np.isnan(np.asarray(self.arrays["forces"])[first, 0]).all()
            else:
                values = np.asarray(self.arrays[label])[self.indices].reshape(len(self.indices), -1)
                cache[label] = bool(np.any(~np.isnan(values).any(axis=1)))
        return cache[label]

    # -------------------------------------------------------------- batches
    def collate(self, positions_in_view: Sequence[int], species_of: np.ndarray, dtype: torch.dtype,
                device: torch.device = torch.device("cpu"), hessian_rows=None) -> Dict[str, Tensor]:
        """The batch dict of :func:`tacegen.runtime.data.batch_atoms` plus labels (``hessian_rows(s, n)``:
        the Hessian rows of structure s of n atoms to label, default all; :mod:`tacegen.train.targets`).

        ``species_of[Z]`` maps an atomic number to the model's element index (-1: not an
        element of the model). Labels: ``energy`` (B,), ``forces`` (N, 3), ``stress``
        (B, 3, 3) with NaN where absent, and ``weight`` (B,).
        """
        a = self.arrays
        parts: Dict[str, list] = {k: [] for k in ("positions", "species", "charges", "edges", "shifts", "forces")}
        batch_index, num_atoms = [], []
        offset = 0
        files = [int(self.indices[p]) for p in positions_in_view]
        for b, s in enumerate(files):
            a0, a1 = int(a["atom_ptr"][s]), int(a["atom_ptr"][s + 1])
            e0, e1 = int(a["edge_ptr"][s]), int(a["edge_ptr"][s + 1])
            numbers = np.asarray(a["numbers"][a0:a1])
            species = species_of[numbers]
            if (species < 0).any():
                atom = int(np.argmax(species < 0))
                from ase.data import chemical_symbols

                raise DataError(f"{self.path}: structure {s} atom {atom} is {chemical_symbols[numbers[atom]]!r}, "
                                f"which is not one of the model's elements")
            parts["positions"].append(np.asarray(a["positions"][a0:a1]))
            parts["species"].append(species)
            parts["charges"].append(np.asarray(a["charges"][a0:a1]))
            parts["forces"].append(np.asarray(a["forces"][a0:a1]))
            parts["edges"].append(np.asarray(a["edges"][e0:e1]) + offset)
            parts["shifts"].append(np.asarray(a["shifts"][e0:e1]))
            batch_index.append(np.full(a1 - a0, b, dtype=np.int64))
            num_atoms.append(a1 - a0)
            offset += a1 - a0
        sel = np.asarray(files, dtype=np.int64)

        def f(x):
            return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)

        def i(x):
            return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.int64, device=device)

        edges = np.concatenate(parts["edges"]) if parts["edges"] else np.zeros((0, 2), np.int64)
        batch = {
            "positions": f(np.concatenate(parts["positions"])),
            "species": i(np.concatenate(parts["species"])),
            "batch": i(np.concatenate(batch_index)),
            "num_atoms": i(np.asarray(num_atoms)),
            "cell": f(np.asarray(a["cell"])[sel]),
            "pbc": torch.as_tensor(np.asarray(a["pbc"])[sel], dtype=torch.bool, device=device),
            "edge_index": i(edges.T),
            "edge_shift": f(np.concatenate(parts["shifts"])),
            "charges": f(np.concatenate(parts["charges"])),
            "total_charge": f(np.asarray(a["total_charge"])[sel]),
            "energy": f(np.asarray(a["energy"])[sel]),
            "forces": f(np.concatenate(parts["forces"])),
            "stress": f(np.asarray(a["stress"])[sel]),
            "weight": f(np.asarray(a["weight"])[sel]),
        }
        if self.extras:
            batch.update(collate_extras(a, self.extras, files, dtype, device, hessian_rows))
        return batch


#: The keys of a collated batch that a model takes (the rest are labels).
INPUT_KEYS = ("positions", "species", "batch", "num_atoms", "cell", "pbc", "edge_index", "edge_shift",
              "charges", "total_charge")


def model_inputs(batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The model's inputs of a batch from :meth:`AtomsDataset.collate` (labels left out)."""
    return {k: v for k, v in batch.items() if k in INPUT_KEYS or k.startswith("input_")}


def species_map(elements: Sequence[str]) -> np.ndarray:
    """``map[Z]`` = index of element Z in ``elements``, -1 for other elements."""
    from ase.data import atomic_numbers

    table = np.full(119, -1, dtype=np.int64)
    for k, symbol in enumerate(elements):
        table[atomic_numbers[symbol]] = k
    return table


def batches(order: Sequence[int], sizes: np.ndarray, batch_size: int,
            max_atoms: Optional[int] = None) -> List[List[int]]:
    """Split ``order`` (positions in a view) into consecutive batches of at most
    ``batch_size`` structures and, if given, at most ``max_atoms`` atoms (a structure
    larger than ``max_atoms`` gets a batch of its own)."""
    out: List[List[int]] = []
    current: List[int] = []
    atoms = 0
    for p in order:
        n = int(sizes[p])
        if current and (len(current) == batch_size or (max_atoms is not None and atoms + n > max_atoms)):
            out.append(current)
            current, atoms = [], 0
        current.append(int(p))
        atoms += n
    if current:
        out.append(current)
    return out


def shard(batch: List[int], rank: int, world: int) -> List[int]:
    """The part of a global batch that rank ``rank`` of ``world`` evaluates (contiguous blocks)."""
    bounds = np.linspace(0, len(batch), world + 1).round().astype(int)
    return batch[bounds[rank]:bounds[rank + 1]]


def iterate(dataset: AtomsDataset, batch_lists: Sequence[List[int]], species_of: np.ndarray,
            dtype: torch.dtype, device: torch.device) -> Iterator[Dict[str, Tensor]]:
    for positions in batch_lists:
        yield dataset.collate(positions, species_of, dtype, device)
