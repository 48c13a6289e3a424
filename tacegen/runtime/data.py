"""Batches of atomic structures as dicts of torch tensors.

Units: positions and cells in Å. Index conventions of a batch of B structures
with N atoms in total and E edges (directed pairs):

=============  ============  ====================================================
key            shape/dtype   meaning
=============  ============  ====================================================
positions      (N, 3) f      Cartesian positions, structures concatenated in order
species        (N,) int64    index of each atom's symbol in ``elements``
batch          (N,) int64    index of the structure each atom belongs to
num_atoms      (B,) int64    atoms per structure
cell           (B, 3, 3) f   ROWS are lattice vectors (zeros for a molecule)
pbc            (B, 3) bool   periodic flag per lattice vector
edge_index     (2, E) int64  row 0 = sender j (the neighbour), row 1 = receiver i
                             (the centre atom); global atom indices; full list
                             (both directions); sorted by receiver
edge_shift     (E, 3) f      integer lattice shifts S stored as floats
charges        (N,) f        the atoms' given charges, e (``atoms.get_initial_charges()``;
                             zeros unless set). Used by ``long_range="ewald"`` models
total_charge   (B,) f        ``atoms.info["charge"]`` (e) where the structure sets it,
                             NaN ("not given") otherwise. A LES model constrains its
                             latent charges to it, falling back to its constructor's
                             ``total_charge``; an Ewald model checks it against the
                             sum of ``charges``
=============  ============  ====================================================

``f`` is the requested float dtype. The edge vector from centre i to neighbour j is

    r_ij = positions[j] - positions[i] + S @ cell[batch[i]]        (see edge_vectors)

and every edge satisfies 0 < |r_ij| < r_cut when computed in float64 (in float32 a
distance may round to just above ``r_cut``; models multiply by a cutoff envelope
that is zero there).
"""

from __future__ import annotations

from typing import Dict, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from tacegen.runtime.neighbours import check_cell, neighbour_pairs, plane_spacings

#: Atoms closer than this (Å) are rejected as unphysical input.
MIN_DISTANCE = 0.1

_FLOAT_DTYPES = (torch.float32, torch.float64)


def edge_vectors(
    positions: Tensor, cell: Tensor, batch: Tensor, edge_index: Tensor, edge_shift: Tensor
) -> Tensor:
    """Edge vectors r_ij = positions[j] - positions[i] + S @ cell[batch[i]], shape (E, 3).

    ``edge_index[0]`` is the sender j, ``edge_index[1]`` the receiver i. Differentiable
    with respect to ``positions`` and ``cell``; TorchScript compatible.
    """
    sender = edge_index[0]
    receiver = edge_index[1]
    edge_cell = cell.index_select(0, batch.index_select(0, receiver))  # (E, 3, 3)
    shift = torch.bmm(edge_shift.unsqueeze(1), edge_cell).squeeze(1)  # (E, 3)
    return positions.index_select(0, sender) - positions.index_select(0, receiver) + shift


def _as_structure_list(structures) -> list:
    import ase

    if isinstance(structures, ase.Atoms):
        return [structures]
    if isinstance(structures, (str, bytes)) or not isinstance(structures, Sequence):
        raise TypeError(
            "structures must be an ase.Atoms or a sequence of ase.Atoms, "
            f"got {type(structures).__name__}"
        )
    structures = list(structures)
    if not structures:
        raise ValueError("structures is an empty sequence; give at least one ase.Atoms")
    for k, atoms in enumerate(structures):
        if not isinstance(atoms, ase.Atoms):
            raise TypeError(f"structures[{k}] must be an ase.Atoms, got {type(atoms).__name__}")
    return structures


def _check_elements(elements) -> Dict[str, int]:
    if isinstance(elements, str) or not isinstance(elements, Sequence) or not elements:
        raise TypeError(f"elements must be a non-empty list of chemical symbols, got {elements!r}")
    index: Dict[str, int] = {}
    for k, symbol in enumerate(elements):
        if not isinstance(symbol, str):
            raise TypeError(f"elements[{k}] must be a str, got {symbol!r}")
        if symbol in index:
            raise ValueError(f"elements lists {symbol!r} twice (positions {index[symbol]} and {k})")
        index[symbol] = k
    return index


def batch_atoms(
    structures,
    elements: Sequence[str],
    r_cut: float,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device] = "cpu",
    inputs: Sequence = (),
) -> Dict[str, Tensor]:
    """Turn one ``ase.Atoms`` or a list of them into a batch dict (see module docstring).

    Neighbour lists are computed per structure in float64 (by vesin) and then
    concatenated with global atom indices, so edges are sorted by receiver.

    The external inputs named in ``inputs`` (``model.input_specs``: dicts or the spec's
    InputSpec objects) are added as ``input_<name>`` from ``atoms.info[name]`` or
    ``atoms.arrays[name]`` by :func:`tacegen.runtime.inputs.read_inputs` (ValueError naming
    the structure and key for a missing or wrongly shaped value).

    Raises
    ------
    TypeError  structures not Atoms; dtype not float32/float64; bad elements list.
    ValueError unknown element (names symbol, atom and the allowed list); empty
               structure; degenerate periodic cell; two atoms, or an atom and a
               periodic image, closer than MIN_DISTANCE = 0.1 Å (names the pair,
               shift and distance; read off the neighbour list, so only pairs
               within r_cut are checked); r_cut not a finite number > 0.

    Structures with no periodic direction get an all-zero ``cell`` row; for mixed
    periodicity the cell is kept as given (its non-periodic rows are unused).

    ``charges`` and ``total_charge`` are read from ``atoms.get_initial_charges()`` and
    ``atoms.info.get("charge")`` (ValueError if the latter is not a finite number).
    """
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    try:
        r_cut = float(r_cut)
    except (TypeError, ValueError):
        raise TypeError(f"r_cut must be a number (Å), got {r_cut!r}") from None
    if not (np.isfinite(r_cut) and r_cut > 0.0):
        raise ValueError(f"r_cut must be a finite number > 0 Å, got {r_cut}")
    device = torch.device(device)
    species_index = _check_elements(elements)
    structures = _as_structure_list(structures)

    positions, species, cells, pbcs, num_atoms, charges, totals = [], [], [], [], [], [], []
    senders, receivers, shifts = [], [], []
    offset = 0
    for b, atoms in enumerate(structures):
        where = f"structure {b}: " if len(structures) > 1 else ""
        n = len(atoms)
        if n == 0:
            raise ValueError(f"{where}structure has no atoms")
        symbols = atoms.get_chemical_symbols()
        codes = np.empty(n, dtype=np.int64)
        for a, symbol in enumerate(symbols):
            code = species_index.get(symbol)
            if code is None:
                raise ValueError(
                    f"{where}atom {a} is {symbol!r}, which is not one of the model's "
                    f"elements {list(elements)}"
                )
            codes[a] = code
        pos = np.asarray(atoms.positions, dtype=np.float64)
        cell = np.asarray(atoms.cell[:], dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        check_cell(cell, pbc, where)

        pairs = None
        if pbc.any() and plane_spacings(cell, pbc).min() < MIN_DISTANCE < r_cut:
            # A sliver-thin cell may have a huge number of images within r_cut;
            # find overlapping images with a tiny cutoff before building the full list.
            pairs = neighbour_pairs(pos, cell, pbc, MIN_DISTANCE)
        if pairs is None or pairs.distance.size == 0:
            pairs = neighbour_pairs(pos, cell, pbc, r_cut)
        if pairs.distance.size and pairs.distance.min() < MIN_DISTANCE:
            k = int(np.argmin(pairs.distance))
            raise ValueError(
                f"{where}atoms {pairs.i[k]} and {pairs.j[k]} (lattice shift "
                f"{pairs.shift[k].tolist()}) are {pairs.distance[k]:.4g} Å apart, closer "
                f"than the minimum {MIN_DISTANCE} Å"
            )

        total = np.nan  # not given
        if atoms.info.get("charge") is not None:
            given = atoms.info["charge"]
            try:
                total = float(given)
            except (TypeError, ValueError):
                total = np.inf
            if isinstance(given, bool) or not np.isfinite(total):
                raise ValueError(f"{where}atoms.info['charge'] must be a finite number (the total charge "
                                 f"in e), got {given!r}")

        positions.append(pos)
        species.append(codes)
        charges.append(np.asarray(atoms.get_initial_charges(), dtype=np.float64).reshape(n))
        totals.append(total)
        cells.append(cell if pbc.any() else np.zeros((3, 3)))
        pbcs.append(pbc)
        num_atoms.append(n)
        senders.append(pairs.j + offset)
        receivers.append(pairs.i + offset)
        shifts.append(pairs.shift)
        offset += n

    def floats(x):
        return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)

    def ints(x):
        return torch.as_tensor(np.asarray(x), dtype=torch.int64, device=device)

    counts = np.asarray(num_atoms, dtype=np.int64)
    batch = {
        "positions": floats(np.concatenate(positions)),
        "species": ints(np.concatenate(species)),
        "batch": ints(np.repeat(np.arange(len(structures)), counts)),
        "num_atoms": ints(counts),
        "cell": floats(np.stack(cells)),
        "pbc": torch.as_tensor(np.stack(pbcs), dtype=torch.bool, device=device),
        "edge_index": ints(np.stack([np.concatenate(senders), np.concatenate(receivers)])),
        "edge_shift": floats(np.concatenate(shifts).reshape(-1, 3)),
        "charges": floats(np.concatenate(charges)),
        "total_charge": floats(np.asarray(totals, dtype=np.float64)),
    }
    if inputs:
        from tacegen.runtime.inputs import read_inputs

        batch.update(read_inputs(structures, inputs, dtype, device))
    return batch
