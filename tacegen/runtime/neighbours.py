"""Neighbour lists of one structure, computed by vesin.

Conventions (shared by the whole runtime)
-----------------------------------------
- Lengths in Å. ``cell`` is a (3, 3) array whose ROWS are the lattice vectors
  a, b, c; ``pbc`` is a (3,) bool array, one flag per lattice vector.
- A pair (i, j, S) is a centre atom ``i``, a neighbour ``j`` and an integer
  lattice shift ``S`` (3,), with edge vector

      r_ij = positions[j] - positions[i] + S @ cell,      |r_ij| < r_cut.

  The list is *full*: (j, i, -S) is present whenever (i, j, S) is. Self pairs
  (i, i, 0) are excluded; an atom's own periodic images (i, i, S != 0) are
  included when closer than ``r_cut``. ``S[k]`` is zero along non-periodic
  directions.
- Pairs are returned sorted by ``i``, then ``j``, then ``S`` (a deterministic
  order, so batches and model outputs are reproducible bit for bit).

Mixed periodicity
-----------------
vesin (>= 0.6) takes one periodic flag per lattice vector and ignores the cell
vectors of non-periodic directions (they may be zero or parallel to the
periodic ones); this was checked against a brute-force reference for slabs,
wires, molecules and small triclinic cells (``tests/test_runtime_neighbours.py``).
So every case is delegated to vesin directly; there is no second neighbour-list
implementation here. The only requirement is that the periodic lattice vectors
be linearly independent (checked by :func:`check_cell`).

Cells smaller than ``r_cut`` (several images of the same neighbour) and
unwrapped positions (atoms outside the cell) are handled by vesin.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import vesin

#: Smallest accepted measure (length, area or volume, in Å^k for k periodic
#: directions) of the cell spanned by the periodic lattice vectors.
MIN_PERIODIC_MEASURE = 1e-8


class Pairs(NamedTuple):
    """A full neighbour list of one structure (see the module docstring)."""

    i: np.ndarray  #: (P,) int64, centre atom (the receiver)
    j: np.ndarray  #: (P,) int64, neighbour atom (the sender)
    shift: np.ndarray  #: (P, 3) int64, lattice shift S
    distance: np.ndarray  #: (P,) float64, |r_ij| in Å


def periodic_measure(cell: np.ndarray, pbc: np.ndarray) -> float:
    """Length, area or volume (Å, Å^2, Å^3) spanned by the periodic cell vectors.

    It is sqrt(det(A A^T)) for the k x 3 matrix A of periodic rows, i.e. |det(cell)|
    when all three directions are periodic, and 1.0 (nothing to check) when
    none is.
    """
    rows = np.asarray(cell, dtype=np.float64)[np.asarray(pbc, dtype=bool)]
    if rows.shape[0] == 0:
        return 1.0
    gram = rows @ rows.T
    return float(np.sqrt(max(np.linalg.det(gram), 0.0)))


def plane_spacings(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Distances (Å) between adjacent lattice planes, one per periodic direction.

    For periodic direction k this is 1 / |b_k| with b_k the dual vector of a_k
    within the span of the periodic vectors (b_k . a_l = delta_kl). Every nonzero
    lattice vector S @ cell is at least min(plane_spacings) long. Assumes
    :func:`check_cell` passed; returns an empty array if nothing is periodic.
    """
    rows = np.asarray(cell, dtype=np.float64)[np.asarray(pbc, dtype=bool)]
    if rows.shape[0] == 0:
        return np.zeros(0)
    dual = np.linalg.pinv(rows)  # (3, k), columns are the dual vectors
    return 1.0 / np.linalg.norm(dual, axis=0)


def check_cell(cell: np.ndarray, pbc: np.ndarray, where: str = "") -> None:
    """Raise ValueError unless the periodic lattice vectors span a non-degenerate cell.

    ``where`` is prepended to the message (e.g. ``"structure 3: "``).
    """
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if cell.shape != (3, 3):
        raise ValueError(f"{where}cell must have shape (3, 3), got {cell.shape}")
    if pbc.shape != (3,):
        raise ValueError(f"{where}pbc must have shape (3,), got {pbc.shape}")
    if not np.all(np.isfinite(cell)):
        raise ValueError(f"{where}cell has non-finite entries: {cell.tolist()}")
    measure = periodic_measure(cell, pbc)
    if measure < MIN_PERIODIC_MEASURE:
        k = int(pbc.sum())
        what = {1: "length", 2: "area", 3: "volume"}[k]
        raise ValueError(
            f"{where}degenerate periodic cell: the {k} periodic lattice vector(s) "
            f"(pbc={pbc.tolist()}) span a {what} of {measure:.3g} Å^{k}, which must be "
            f">= {MIN_PERIODIC_MEASURE:g}; cell rows = {cell.tolist()}"
        )


def neighbour_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_cut: float
) -> Pairs:
    """All pairs (i, j, S) with 0 < |r_ij| < r_cut, as a sorted full list.

    Parameters
    ----------
    positions : (N, 3) float array, Å (wrapped or not).
    cell : (3, 3) float array, rows are lattice vectors, Å (ignored along
        non-periodic directions; may be all zeros for a molecule).
    pbc : (3,) bool array.
    r_cut : cutoff radius in Å, finite and > 0.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        bad = int(np.argwhere(~np.isfinite(positions))[0, 0])
        raise ValueError(f"position of atom {bad} is not finite: {positions[bad].tolist()}")
    r_cut = float(r_cut)
    if not (np.isfinite(r_cut) and r_cut > 0.0):
        raise ValueError(f"r_cut must be a finite number > 0 Å, got {r_cut}")
    check_cell(cell, pbc)

    if positions.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty, np.zeros((0, 3), dtype=np.int64), np.zeros(0))

    # vesin ignores the box along non-periodic directions; give it zeros for a
    # molecule so that it never sees garbage there.
    box = cell if pbc.any() else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=r_cut, full_list=True)
    i, j, shift, distance = nl.compute(
        points=positions, box=box, periodic=pbc, quantities="ijSd"
    )
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64).reshape(-1, 3)
    distance = np.asarray(distance, dtype=np.float64)

    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, i))
    return Pairs(i[order], j[order], shift[order], distance[order])
