"""Run-time support of the long-range block of generated models (``ModelSpec.long_range``).

The energies themselves are printed into the generated model from tacegen's IR
(:mod:`tacegen.ir.long_range`, printer :mod:`tacegen.backends.long_range_printer`); this
module prepares what they read that depends on the geometry but not on the weights, in
plain Python (numpy, vesin), for every back end:

* :func:`long_range_graph`: the pair list of the long-range energy;
* :func:`ewald_batch_parameters`: the Ewald split and cutoffs of a batch;
* :func:`check_long_range_batch`: refuses what the long-range block cannot model;
* :func:`les_kernel_parameters`, :func:`ewald_kernel_parameters`: the run-time scalars of
  the printed long-range programs (``gamma``, ``self_coefficient``, ... of
  :mod:`tacegen.ir.long_range`) from the model's parameters.

Conventions are those of :mod:`tacegen.runtime.data` (batch dicts from
:func:`~tacegen.runtime.data.batch_atoms`): lengths Å, ``cell`` rows are lattice vectors
(all zero for a non-periodic structure), ``edge_index`` row 0 the sender j, row 1 the
receiver i, ``r_ij = positions[j] - positions[i] + S @ cell[batch[i]]``.

A structure is *periodic* when its pbc is (True, True, True) and *finite* when it is
(False, False, False); mixed boundary conditions (slabs, wires) are refused: no slab
correction is implemented, and treating a slab as fully periodic (what the reference LES
code does) is wrong.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .electrostatics import ewald_balanced_alpha, ewald_cutoff, ewald_parameters
from .neighbours import neighbour_pairs

__all__ = ["MODES", "check_long_range_batch", "long_range_graph", "long_range_pairs", "ewald_batch_parameters",
           "ewald_batch_split", "les_kernel_parameters", "ewald_kernel_parameters"]

#: Long-range modes (``ModelSpec.long_range`` other than "none").
MODES = ("les", "ewald")


def check_long_range_batch(batch: Dict[str, Tensor]) -> Tensor:
    """Raise ValueError for a structure with mixed periodic boundary conditions (naming the
    structure and its pbc); return the (B,) bool tensor "fully periodic"."""
    pbc = batch["pbc"]
    periodic = pbc.all(dim=1)
    mixed = pbc.any(dim=1) & ~periodic
    if bool(mixed.any()):
        b = int(torch.nonzero(mixed)[0, 0])
        flags: List[bool] = pbc[b].tolist()
        raise ValueError(
            f"structure {b} has mixed periodic boundary conditions pbc={flags}: the long-range "
            "block handles fully periodic (pbc=True) or finite (pbc=False) structures only; there is no "
            "slab correction, and treating a slab or wire as fully periodic would be wrong")
    return periodic


def long_range_graph(batch: Dict[str, Tensor], mode: str, r_cut: Optional[float] = None) -> Dict[str, Tensor]:
    """The pair list of the long-range energy of ``batch``.

    Args:
        batch: a dict from :func:`tacegen.runtime.data.batch_atoms` (reads ``positions``,
            ``cell``, ``pbc``, ``num_atoms``).
        mode: "les" or "ewald".
        r_cut: real-space cutoff in Å of the Ewald sum (``mode="ewald"`` with periodic
            structures; see :func:`ewald_batch_parameters`); ignored otherwise.

    Returns a dict of tensors on the batch's device:

    * ``edge_index`` (2, P) int64: row 0 sender j, row 1 receiver i (global atom indices),
      sorted by receiver (then sender, then shift);
    * ``edge_shift`` (P, 3), the dtype of ``positions``: integer lattice shifts S;
    * ``periodic`` (P,) bool: the edge belongs to a periodic structure.

    Finite structures (both modes): all ordered pairs i != j, zero shifts (no cutoff).
    Periodic structures: none for "les" (the reciprocal sum needs no pairs); for "ewald"
    the full vesin neighbour list with 0 < |r_ij| < r_cut, including an atom's own
    periodic images. Mixed pbc: ValueError (:func:`check_long_range_batch`).
    """
    if mode not in MODES:
        raise ValueError(f"long_range_graph: mode must be one of {MODES}, got {mode!r}")
    periodic = check_long_range_batch(batch).tolist()
    positions = batch["positions"].detach().cpu().to(torch.float64).numpy()
    cells = batch["cell"].detach().cpu().to(torch.float64).numpy()
    counts = batch["num_atoms"].detach().cpu().numpy().astype(np.int64)
    if mode == "ewald" and any(periodic):
        if r_cut is None or not (np.isfinite(float(r_cut)) and float(r_cut) > 0.0):
            raise ValueError(f"long_range_graph: mode 'ewald' with periodic structures needs a real-space "
                             f"cutoff r_cut > 0 Å (see ewald_batch_parameters), got {r_cut!r}")
    senders, receivers, shifts, flags = [], [], [], []
    offset = 0
    for b, n in enumerate(counts.tolist()):
        if not periodic[b]:
            i, j = np.divmod(np.arange(n * n, dtype=np.int64), n)  # receiver-major
            keep = i != j
            i, j = i[keep], j[keep]
            s = np.zeros((i.shape[0], 3))
        elif mode == "ewald":
            pairs = neighbour_pairs(positions[offset:offset + n], cells[b], np.ones(3, dtype=bool), float(r_cut))
            i, j, s = pairs.i, pairs.j, pairs.shift.astype(np.float64)
        else:
            i = j = np.zeros(0, dtype=np.int64)
            s = np.zeros((0, 3))
        receivers.append(i + offset)
        senders.append(j + offset)
        shifts.append(s)
        flags.append(np.full(i.shape[0], bool(periodic[b])))
        offset += n
    device = batch["positions"].device
    return {
        "edge_index": torch.as_tensor(np.stack([np.concatenate(senders), np.concatenate(receivers)]),
                                      dtype=torch.int64, device=device),
        "edge_shift": torch.as_tensor(np.concatenate(shifts).reshape(-1, 3), dtype=batch["positions"].dtype,
                                      device=device),
        "periodic": torch.as_tensor(np.concatenate(flags), dtype=torch.bool, device=device),
    }


def ewald_batch_parameters(batch: Dict[str, Tensor], accuracy: float) -> Tuple[float, float, float]:
    """``(alpha, r_cut, k_cut)`` (Å^-1, Å, Å^-1) of one classic Ewald sum over the periodic
    structures of ``batch``.

    alpha is :func:`tacegen.runtime.electrostatics.ewald_parameters` of the largest periodic
    structure (most atoms, then largest volume), which balances real and reciprocal work
    where it matters most; then each periodic structure gets the cutoffs whose
    Kolafa-Perram error estimates meet ``accuracy`` (relative to ``K_E sum q^2 / a``, see
    ``ewald_parameters``) at that alpha, and the batch takes the largest of each. The
    parameters are constants of differentiation (chosen at the current geometry), so forces
    and stress are those of the converged sum up to about ``accuracy``. Returns
    ``(0.0, 0.0, 0.0)`` when no structure is periodic. Mixed pbc: ValueError.
    """
    accuracy = float(accuracy)
    if not (0.0 < accuracy < 1.0):
        raise ValueError(f"ewald_batch_parameters: accuracy must be in (0, 1), got {accuracy!r}")
    periodic = check_long_range_batch(batch).tolist()
    counts = batch["num_atoms"].detach().cpu().tolist()
    cells = batch["cell"].detach().cpu().to(torch.float64).numpy()
    sizes = [(int(counts[b]), abs(float(np.linalg.det(cells[b])))) for b in range(len(counts)) if periodic[b]]
    if not sizes:
        return 0.0, 0.0, 0.0
    n, volume = max(sizes)
    alpha = ewald_parameters(n, volume, accuracy).alpha
    r_cut = k_cut = 0.0
    for n, volume in sizes:
        p = ewald_parameters(n, volume, accuracy, alpha=alpha)
        r_cut, k_cut = max(r_cut, p.r_cut), max(k_cut, p.k_cut)
    return float(alpha), float(r_cut), float(k_cut)


def ewald_batch_split(num_atoms: Tensor, cell: Tensor, periodic: Tensor, accuracy: float) -> Tuple[float, float, float]:
    """:func:`ewald_batch_parameters` from tensors, TorchScript compatible: ``num_atoms`` (B,),
    ``cell`` (B, 3, 3), ``periodic`` (B,) bool (from :func:`check_long_range_batch`).
    Volumes come from ``torch.linalg.det`` (numpy's in ewald_batch_parameters: the two may
    differ in the last bit)."""
    if not (0.0 < accuracy < 1.0):
        raise ValueError(f"ewald accuracy must be in (0, 1), got {accuracy}")
    counts: List[int] = num_atoms.tolist()
    flags: List[bool] = periodic.tolist()
    volumes: List[float] = torch.linalg.det(cell.detach().double()).abs().tolist()
    best_n = -1
    best_v = 0.0
    for b in range(len(counts)):
        if flags[b] and (counts[b] > best_n or (counts[b] == best_n and volumes[b] > best_v)):
            best_n, best_v = counts[b], volumes[b]
    if best_n < 0:
        return 0.0, 0.0, 0.0
    alpha = ewald_balanced_alpha(best_n, best_v, 6.0)
    r_cut = 0.0
    k_cut = 0.0
    for b in range(len(counts)):
        if flags[b]:
            r_cut = max(r_cut, ewald_cutoff(True, alpha, counts[b], volumes[b], accuracy))
            k_cut = max(k_cut, ewald_cutoff(False, alpha, counts[b], volumes[b], accuracy))
    return alpha, r_cut, k_cut


def _finite_pairs(n: int, offset: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """(receivers, senders) of all ordered pairs i != j of n atoms, receiver-major."""
    flat = torch.arange(n * n, dtype=torch.int64, device=device)
    i = torch.div(flat, n, rounding_mode="floor")
    j = flat - i * n
    keep = i != j
    return i[keep] + offset, j[keep] + offset


def _periodic_pairs(positions: Tensor, cell: Tensor, r_cut: float, offset: int,
                    chunk: int = 1 << 22) -> Tuple[Tensor, Tensor, Tensor]:
    """(receivers, senders, shifts) of all (i, j, S) with 0 < |r_j - r_i + S cell| < r_cut by
    brute force over atom pairs and lattice images (O(N^2 x images), chunked by receiver),
    sorted by receiver, then sender, then shift. Positions need not be wrapped."""
    pos = positions.detach().double()
    c = cell.detach().double()
    inv = torch.linalg.inv(c)
    frac = pos @ inv
    whole = torch.floor(frac)
    wrapped = frac - whole
    # |S + w_j - w_i|_c <= r_cut |b_c| with |w_j - w_i|_c < 1, b_c the columns of inv(cell)
    nmax: List[int] = (torch.floor(r_cut * torch.linalg.norm(inv, dim=0)) + 1).to(torch.int64).tolist()
    axes: List[Tensor] = []
    for m in nmax:
        axes.append(torch.arange(-m, m + 1, dtype=torch.int64, device=pos.device))
    grids = torch.meshgrid(axes, indexing="ij")
    images = torch.stack([grids[0].reshape(-1), grids[1].reshape(-1), grids[2].reshape(-1)], dim=1)
    n = pos.shape[0]
    per_receiver = max(1, chunk // max(1, n * images.shape[0]))
    receivers: List[Tensor] = []
    senders: List[Tensor] = []
    shifts: List[Tensor] = []
    for start in range(0, n, per_receiver):
        stop = min(n, start + per_receiver)
        d = (wrapped.unsqueeze(0) - wrapped[start:stop].unsqueeze(1)).unsqueeze(2) + images.to(pos.dtype)  # (i, j, S, 3)
        r2 = ((d @ c) ** 2).sum(dim=-1)
        inside = (r2 < r_cut * r_cut) & (r2 > 0.0)
        hit = torch.nonzero(inside)
        i = hit[:, 0] + start
        j = hit[:, 1]
        s = images.index_select(0, hit[:, 2])
        # r_j - r_i + S' cell = (w_j - w_i + S) cell with S' = S + whole_i - whole_j
        s = s + whole.index_select(0, i).to(torch.int64) - whole.index_select(0, j).to(torch.int64)
        receivers.append(i + offset)
        senders.append(j + offset)
        shifts.append(s)
    if len(receivers) == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=pos.device)
        return empty, empty, torch.zeros((0, 3), dtype=torch.int64, device=pos.device)
    return torch.cat(receivers), torch.cat(senders), torch.cat(shifts)


def long_range_pairs(batch: Dict[str, Tensor], ewald: bool, r_cut: float) -> Dict[str, Tensor]:
    """:func:`long_range_graph` in torch only, TorchScript compatible (``ewald``: mode
    "ewald", else "les"; ``r_cut`` as there, ignored for "les"). The same pairs, except that
    the periodic Ewald pairs come from a brute-force search over atom pairs and lattice
    images (O(N^2 x images) time, chunked memory) instead of vesin, in another order.

    A caller that has a full neighbour list of the periodic structures (an MD engine) may pass
    it as ``batch["long_range_edge_index"]`` (2, P) (row 0 sender j, row 1 receiver i, global
    indices), ``batch["long_range_edge_shift"]`` (P, 3) and ``batch["long_range_cutoff"]``
    (a 0-d tensor, Å): when ``r_cut`` is at most that cutoff, the periodic Ewald pairs are
    taken from it (pairs beyond r_cut are dropped by the pair energy) instead of searched."""
    periodic = check_long_range_batch(batch)
    given = False
    if ewald and "long_range_edge_index" in batch:
        given = r_cut <= float(batch["long_range_cutoff"])
    structure = torch.zeros(0, dtype=torch.int64, device=batch["batch"].device)
    if given:
        structure = batch["batch"].index_select(0, batch["long_range_edge_index"][1])
    flags: List[bool] = periodic.tolist()
    counts: List[int] = batch["num_atoms"].tolist()
    positions = batch["positions"]
    device = positions.device
    if ewald and any(flags) and not r_cut > 0.0:
        raise ValueError(f"long_range_pairs: mode 'ewald' with periodic structures needs a real-space cutoff "
                         f"r_cut > 0 Å, got {r_cut}")
    receivers: List[Tensor] = []
    senders: List[Tensor] = []
    shifts: List[Tensor] = []
    marks: List[Tensor] = []
    offset = 0
    for b in range(len(counts)):
        n = counts[b]
        if not flags[b]:
            i, j = _finite_pairs(n, offset, device)
            s = torch.zeros((i.shape[0], 3), dtype=torch.int64, device=device)
        elif given:
            mine = structure == b
            i = batch["long_range_edge_index"][1][mine]
            j = batch["long_range_edge_index"][0][mine]
            s = batch["long_range_edge_shift"][mine].to(torch.int64)
        elif ewald:
            i, j, s = _periodic_pairs(positions[offset:offset + n], batch["cell"][b], r_cut, offset)
        else:
            i = torch.zeros(0, dtype=torch.int64, device=device)
            j = i
            s = torch.zeros((0, 3), dtype=torch.int64, device=device)
        receivers.append(i)
        senders.append(j)
        shifts.append(s)
        marks.append(torch.full((i.shape[0],), flags[b], dtype=torch.bool, device=device))
        offset += n
    return {
        "edge_index": torch.stack([torch.cat(senders), torch.cat(receivers)]),
        "edge_shift": torch.cat(shifts).to(positions.dtype),
        "periodic": torch.cat(marks),
    }


def les_kernel_parameters(sigma: float, k_cut: float) -> Tuple[float, float, float, float]:
    """``(gamma, k_cut, self_coefficient, alpha)`` of the latent Ewald summation with
    Gaussian width ``sigma`` (Å) and reciprocal cutoff ``k_cut`` (Å^-1): gamma = sigma^2 / 2
    (Å^2), self_coefficient = 1 / (sigma sqrt(2 pi)) (Å^-1) and the finite-structure pair
    kernel erf(alpha r) / r with alpha = 1 / (sqrt(2) sigma) (Å^-1), the run-time scalars
    of the printed LES programs (Cheng et al.; math.md section 5)."""
    sigma = float(sigma)
    return (0.5 * sigma * sigma, float(k_cut), 1.0 / (sigma * math.sqrt(2.0 * math.pi)),
            1.0 / (math.sqrt(2.0) * sigma))


def ewald_kernel_parameters(alpha: float, k_cut: float) -> Tuple[float, float]:
    """``(gamma, self_coefficient)`` of the classic Ewald reciprocal sum with splitting
    parameter ``alpha`` (Å^-1): gamma = 1 / (4 alpha^2) (Å^2), self_coefficient =
    alpha / sqrt(pi) (Å^-1); ``k_cut`` is only validated (positive)."""
    alpha = float(alpha)
    if not (alpha > 0.0 and float(k_cut) > 0.0):
        raise ValueError(f"ewald_kernel_parameters: alpha and k_cut must be positive, got {alpha}, {k_cut}")
    return 1.0 / (4.0 * alpha * alpha), alpha / math.sqrt(math.pi)
