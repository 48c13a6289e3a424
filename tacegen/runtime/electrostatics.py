"""Exact electrostatics references: latent Ewald summation (LES) and classic Ewald.

This module is the float64, autograd-differentiable *reference* that compiler-generated
long-range kernels are tested against. It favours transparency over speed: structure
factors are summed directly (O(N x N_k)), real-space pairs come from an explicit
neighbour list. The mesh (smooth PME) evaluation of the same reciprocal sums, which
generated models use for large periodic structures, is :mod:`tacegen.runtime.mesh`.

Conventions (see docs/math.md, section 5)
-----------------------------------------
* Units: energies in eV, lengths in Å, charges in e; ``K_E = 14.3996454784 eV Å / e^2``.
* ``positions``: (N, 3) Cartesian coordinates; they need not be wrapped into the cell.
* ``cell``: (3, 3), *rows* are the lattice vectors a_1, a_2, a_3. ``V = |det cell|``,
  so left-handed cells (det < 0) are handled like their mirror images.
* Reciprocal vectors ``k = n @ (2 pi inv(cell)^T)`` with integer n; ``k . a_i = 2 pi n_i``.
* ``q``: (N,) charges.
* Only fully periodic (``pbc=True``) or fully finite systems are supported; mixed
  boundary conditions (slabs, wires) raise ``ValueError`` rather than silently
  treating the system as 3-D periodic.
* Every function is written in plain torch operations, so energies can be
  differentiated (to any order) with respect to ``q``, ``positions`` and ``cell``;
  forces are ``-dE/dr`` and the stress is ``(1/V) dE/d(strain)``
  (see :func:`energy_forces_stress`). Integer sets (k-vectors inside the sphere,
  neighbour pairs inside ``r_cut``) are chosen at the current geometry without
  gradient; the vectors themselves are rebuilt from ``positions`` and ``cell`` with
  gradient. Large sums are evaluated in chunks with activation checkpointing so that
  memory stays bounded when gradients are needed.

LES (latent Ewald summation, Cheng et al.)
------------------------------------------
Periodic::

    E = (2 pi K_E / V) sum_{k != 0, |k| <= k_c} exp(-sigma^2 k^2 / 2) / k^2 |S(k)|^2
        - K_E sum_i q_i^2 / (sigma sqrt(2 pi)),           S(k) = sum_i q_i exp(i k . r_i)

The sharp sphere ``|k| <= k_c`` is part of the model (default ``k_c = pi`` Å^-1, i.e.
``dl = 2`` Å). ``k = 0`` is dropped (implicit neutralising background; no background
energy term is added, even for non-neutral latent charges). The k <-> -k symmetry
halves the sum. This equals the Ewald reciprocal + self energy for
``alpha = 1 / (sqrt(2) sigma)`` truncated at ``k_c``.

Finite::

    E = (1/2) sum_{i != j} K_E q_i q_j erf(r_ij / (sqrt(2) sigma)) / r_ij     (no cutoff)

Classic Ewald
-------------
::

    E = E_real + E_recip + E_self (+ E_background)
    E_real  = (K_E / 2) sum_{i, j, n}' q_i q_j erfc(alpha |r_j - r_i + n|) / |r_j - r_i + n|
    E_recip = (2 pi K_E / V) sum_{0 < |k| <= k_cut} exp(-k^2 / (4 alpha^2)) / k^2 |S(k)|^2
    E_self  = -K_E (alpha / sqrt(pi)) sum_i q_i^2
    E_background = -K_E pi Q^2 / (2 V alpha^2),  Q = sum_i q_i   (only if requested)

"tin-foil" (conducting) boundary conditions at infinity, i.e. no surface-dipole term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "K_E",
    "EwaldParameters",
    "les_energy_periodic",
    "les_energy_finite",
    "ewald_energy",
    "ewald_parameters",
    "ewald_error_estimates",
    "kvectors_in_sphere",
    "madelung_constant",
    "madelung_structure",
    "energy_forces_stress",
    "MADELUNG_REFERENCE",
]

#: Coulomb constant 1 / (4 pi eps0) in eV Å / e^2.
K_E = 14.3996454784

#: Relative tolerance for including k-vectors that lie on the sphere |k| = k_c
#: (so that e.g. k = pi in a 2 Å cubic cell is deterministically included).
SPHERE_RTOL = 1e-12

#: Number of (row x column) elements per chunk of a structure-factor or pair sum.
CHUNK_ELEMENTS = 1 << 22

#: Sums with more elements than this (k-vectors x atoms, or pairs x 4) are
#: checkpointed chunk by chunk when a graph is built (recomputed in backward: about
#: 1.3x the time, memory O(chunk) instead of O(total)); smaller sums keep their graph.
CHECKPOINT_MIN_ELEMENTS = 1 << 24

#: Default real/reciprocal cost ratio used to balance the Ewald split: the cost of one
#: real-space pair (vesin list, gather, erfc, backward scatter: ~240 ns) relative to
#: one (k-vector, atom) structure-factor term (~40 ns), energy + forces, torch 2.13
#: CPU. The optimum is flat (2..16 within noise at N = 2048, 8192).
DEFAULT_COST_RATIO = 6.0


# --------------------------------------------------------------------------- checks


def _check_pbc(pbc, what: str) -> bool:
    """Return True for fully periodic, False for fully finite; refuse mixed pbc."""
    if isinstance(pbc, (bool, np.bool_)):
        return bool(pbc)
    flags = [bool(p) for p in (pbc.tolist() if hasattr(pbc, "tolist") else pbc)]
    if len(flags) != 3:
        raise ValueError(f"{what}: pbc must be a bool or 3 bools, got {pbc!r}")
    if all(flags):
        return True
    if not any(flags):
        return False
    raise ValueError(
        f"{what}: mixed periodic boundary conditions pbc={flags} are not supported. "
        "Treating a slab or wire as fully periodic (what the reference LES code does) "
        "is wrong, and no slab correction is implemented. Use a fully periodic cell "
        "(pbc=True) or the finite form (les_energy_finite)."
    )


def _check_charges_positions(q, positions, what: str):
    if not isinstance(q, torch.Tensor) or not isinstance(positions, torch.Tensor):
        raise TypeError(
            f"{what}: q and positions must be torch tensors, got "
            f"{type(q).__name__} and {type(positions).__name__}"
        )
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{what}: positions must have shape (N, 3), got {tuple(positions.shape)}")
    if q.ndim != 1 or q.shape[0] != positions.shape[0]:
        raise ValueError(
            f"{what}: q must have shape (N,) = ({positions.shape[0]},) matching positions, "
            f"got {tuple(q.shape)}"
        )
    if not positions.is_floating_point() or not q.is_floating_point():
        raise TypeError(f"{what}: q and positions must be floating point (float64 recommended)")
    if q.dtype != positions.dtype:
        raise TypeError(f"{what}: q has dtype {q.dtype} but positions has {positions.dtype}")
    if not bool(torch.isfinite(positions.detach()).all()):
        raise ValueError(f"{what}: positions contain non-finite values")
    if not bool(torch.isfinite(q.detach()).all()):
        raise ValueError(f"{what}: q contains non-finite values")


def _check_cell(cell, positions, what: str) -> float:
    """Validate the cell; return |det cell| as a python float."""
    if not isinstance(cell, torch.Tensor):
        raise TypeError(f"{what}: cell must be a torch tensor, got {type(cell).__name__}")
    if cell.shape != (3, 3):
        raise ValueError(f"{what}: cell must have shape (3, 3) (rows = lattice vectors), got {tuple(cell.shape)}")
    if cell.dtype != positions.dtype:
        raise TypeError(f"{what}: cell has dtype {cell.dtype} but positions has {positions.dtype}")
    c = cell.detach()
    if not bool(torch.isfinite(c).all()):
        raise ValueError(f"{what}: cell contains non-finite values")
    det = float(torch.linalg.det(c))
    scale = float(torch.linalg.norm(c, dim=1).prod())
    if scale == 0.0 or abs(det) <= 1e-10 * scale:
        raise ValueError(
            f"{what}: cell is singular or degenerate (det = {det:.6g}, product of lattice "
            f"vector lengths = {scale:.6g}); a periodic cell needs three independent lattice vectors"
        )
    return abs(det)


def _check_positive(value, name: str, what: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{what}: {name} must be a positive finite number, got {value!r}")
    return v


# ------------------------------------------------------------------ chunked helpers


def _maybe_checkpoint(fn, *args, total: int = CHECKPOINT_MIN_ELEMENTS + 1):
    """Call fn(*args); checkpoint it (recompute in backward) when a graph is built
    and the whole sum (``total`` elements) is large."""
    if (
        total > CHECKPOINT_MIN_ELEMENTS
        and torch.is_grad_enabled()
        and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    ):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def kvectors_in_sphere(cell: torch.Tensor, k_cut: float, half: bool = True):
    """Integer vectors n != 0 with |n @ (2 pi inv(cell)^T)| <= k_cut.

    Robust for any triclinic (or left-handed) cell: since ``n_i = k . a_i / (2 pi)``,
    every k in the sphere has ``|n_i| <= k_cut |a_i| / (2 pi)`` with a_i the i-th row
    (lattice vector) of ``cell``; the box of those bounds is enumerated and filtered.
    With ``half=True`` only one of each pair (n, -n) is kept (the first non-zero
    component of n is positive). Vectors with |k| <= k_cut (1 + SPHERE_RTOL) count as
    inside.

    Returns ``(n, k)``: n as an int64 tensor (M, 3) (no gradient) and
    ``k = n @ (2 pi inv(cell)^T)`` of shape (M, 3), differentiable w.r.t. ``cell``.
    """
    k_cut = _check_positive(k_cut, "k_cut", "kvectors_in_sphere")
    c = cell.detach()
    lengths = torch.linalg.norm(c, dim=1)
    nmax = torch.floor(k_cut * lengths / (2.0 * math.pi) * (1.0 + 1e-9)).to(torch.int64).tolist()
    ranges = [torch.arange(-m, m + 1, dtype=torch.int64, device=cell.device) for m in nmax]
    n = torch.cartesian_prod(*ranges).reshape(-1, 3)
    if half:
        keep = (n[:, 0] > 0) | ((n[:, 0] == 0) & (n[:, 1] > 0)) | ((n[:, 0] == 0) & (n[:, 1] == 0) & (n[:, 2] > 0))
    else:
        keep = (n != 0).any(dim=1)
    n = n[keep]
    recip = 2.0 * math.pi * torch.linalg.inv(c).T
    k2 = ((n.to(c.dtype) @ recip) ** 2).sum(dim=1)
    n = n[k2 <= (k_cut * k_cut) * (1.0 + SPHERE_RTOL)]
    k = n.to(cell.dtype) @ (2.0 * math.pi * torch.linalg.inv(cell).T)
    return n, k


def _gaussian_kspace_sum(q, positions, k, gamma):
    """sum_k exp(-gamma k^2) / k^2 |S(k)|^2 over the given k (chunked, differentiable)."""

    def chunk(qq, pos, kk):
        k2 = (kk * kk).sum(dim=1)
        w = torch.exp(-gamma * k2) / k2
        phase = kk @ pos.T  # (K, N)
        c = torch.cos(phase) @ qq
        s = torch.sin(phase) @ qq
        return (w * (c * c + s * s)).sum()

    n_atoms = max(1, positions.shape[0])
    step = max(1, CHUNK_ELEMENTS // n_atoms)
    total = positions.new_zeros(())
    for start in range(0, k.shape[0], step):
        total = total + _maybe_checkpoint(
            chunk, q, positions, k[start : start + step], total=k.shape[0] * n_atoms
        )
    return total


def _pair_sum(kernel, q, positions, cell, i, j, shifts):
    """sum over listed pairs of q_i q_j kernel(|r_j - r_i + shifts @ cell|) (chunked)."""

    def chunk(qq, pos, cc, ii, jj, ss):
        d = pos[jj] - pos[ii]
        if cc is not None:
            d = d + ss @ cc
        r = torch.linalg.vector_norm(d, dim=1)
        return (qq[ii] * qq[jj] * kernel(r)).sum()

    total = positions.new_zeros(())
    step = CHUNK_ELEMENTS // 4
    for start in range(0, i.shape[0], step):
        sl = slice(start, start + step)
        total = total + _maybe_checkpoint(
            chunk, q, positions, cell, i[sl], j[sl], None if shifts is None else shifts[sl],
            total=4 * i.shape[0],
        )
    return total


# ---------------------------------------------------------------------------- LES


def les_energy_periodic(
    q: torch.Tensor,
    positions: torch.Tensor,
    cell: torch.Tensor,
    sigma: float = 1.0,
    k_cut: float = math.pi,
    *,
    pbc=True,
) -> torch.Tensor:
    """LES reciprocal-space energy of a periodic cell (eV); see the module docstring.

    ``E = (4 pi K_E / V) sum_{half sphere} exp(-sigma^2 k^2 / 2) / k^2 |S(k)|^2
    - K_E sum_i q_i^2 / (sigma sqrt(2 pi))`` with the half sphere
    ``0 < |k| <= k_cut`` modulo k <-> -k. Direct structure factors, O(N x N_k).

    Args:
        q: (N,) latent charges (need not be neutral: k = 0 is simply dropped).
        positions: (N, 3) Cartesian positions, Å.
        cell: (3, 3), rows are lattice vectors, Å. Any handedness.
        sigma: Gaussian width, Å (reference default 1).
        k_cut: sharp k-space cutoff, Å^-1 (reference default pi = 2 pi / dl, dl = 2 Å).
        pbc: must be fully periodic (True); mixed pbc raises ValueError, and
            pbc=False raises too (use :func:`les_energy_finite`).
    """
    what = "les_energy_periodic"
    periodic = _check_pbc(pbc, what)
    if not periodic:
        raise ValueError(f"{what}: pbc=False (non-periodic); use les_energy_finite for finite systems")
    _check_charges_positions(q, positions, what)
    _check_cell(cell, positions, what)
    sigma = _check_positive(sigma, "sigma", what)
    k_cut = _check_positive(k_cut, "k_cut", what)
    vol = torch.abs(torch.linalg.det(cell))
    _, k = kvectors_in_sphere(cell, k_cut, half=True)
    recip = (4.0 * math.pi * K_E) * _gaussian_kspace_sum(q, positions, k, 0.5 * sigma * sigma) / vol
    self_energy = K_E * (q * q).sum() / (sigma * math.sqrt(2.0 * math.pi))
    return recip - self_energy


def les_energy_finite(q: torch.Tensor, positions: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """LES energy of a finite (non-periodic) system, eV.

    ``E = sum_{i<j} K_E q_i q_j erf(r_ij / (sqrt(2) sigma)) / r_ij``, all pairs, no
    cutoff. Coincident atoms (r_ij = 0) contribute their finite limit
    ``K_E q_i q_j sqrt(2 / pi) / sigma``.
    """
    what = "les_energy_finite"
    _check_charges_positions(q, positions, what)
    sigma = _check_positive(sigma, "sigma", what)
    n = positions.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=positions.device)
    inv = 1.0 / (math.sqrt(2.0) * sigma)
    limit = 2.0 * inv / math.sqrt(math.pi)

    def kernel(r):
        tiny = r < 1e-12
        r_safe = torch.where(tiny, torch.ones_like(r), r)
        return torch.where(tiny, torch.full_like(r, limit), torch.erf(r_safe * inv) / r_safe)

    def kernel_pairs(qq, pos, ii, jj):
        d = pos[jj] - pos[ii]
        tiny = (d.detach() == 0).all(dim=1, keepdim=True)
        d = torch.where(tiny, torch.ones_like(d), d)  # safe gradient at coincident atoms
        r = torch.linalg.vector_norm(d, dim=1)
        r = torch.where(tiny[:, 0], torch.zeros_like(r), r)
        return (qq[ii] * qq[jj] * kernel(r)).sum()

    total = positions.new_zeros(())
    step = CHUNK_ELEMENTS // 4
    for start in range(0, i.shape[0], step):
        total = total + _maybe_checkpoint(
            kernel_pairs, q, positions, i[start : start + step], j[start : start + step], total=4 * i.shape[0]
        )
    return K_E * total


# ---------------------------------------------------------------------- classic Ewald


@dataclass(frozen=True)
class EwaldParameters:
    """Ewald split parameter and cutoffs, with the Kolafa-Perram error estimates.

    ``alpha`` in Å^-1 (real space erfc(alpha r) / r; equivalently torch-pme/LES smearing
    ``sigma = 1 / (sqrt(2) alpha)``), ``r_cut`` in Å, ``k_cut`` in Å^-1.
    ``err_real`` and ``err_recip`` are RMS energy-error estimates in units of
    ``K_E sum_i q_i^2 / a`` with ``a = (V / N)^(1/3)``.
    """

    alpha: float
    r_cut: float
    k_cut: float
    err_real: float
    err_recip: float


def ewald_error_estimates(alpha: float, r_cut: float, k_cut: float, n_atoms: int, volume: float):
    """Energy-error estimates of a truncated Ewald sum, relative to ``K_E Q / a``.

    With ``Q = sum q_i^2``, ``a = (V / N)^(1/3)``, ``L = V^(1/3)``, ``K = k_cut L / (2 pi)``:

    * real space, Kolafa-Perram (Mol. Simul. 9, 351 (1992)) RMS estimate::

        dE_real ~ K_E Q sqrt(r_cut / (2 V)) exp(-alpha^2 r_cut^2) / (alpha r_cut)^2

      (the mean of the neglected pair terms cancels against the neglected self-images
      for a neutral, disordered system).
    * reciprocal space: the Kolafa-Perram RMS estimate
      ``K_E Q (alpha / pi^2) K^(-3/2) exp(-k_cut^2 / (4 alpha^2))`` *plus* the
      systematic part: the neglected k-vectors carry on average ``<|S(k)|^2> = Q``
      (the diagonal i = j terms, which the self term subtracts for *all* k), so the
      truncated sum is low by about
      ``(2 pi K_E Q / V) sum_{|k| > k_cut} w(k) ~ K_E Q (alpha / sqrt(pi)) erfc(k_cut / (2 alpha))``.
      This systematic term dominates; Kolafa-Perram alone underestimates the
      reciprocal error by ~10x for random charges and for crystals.

    Returns ``(err_real, err_recip)`` divided by the energy scale ``K_E Q / a``,
    i.e. relative to the typical magnitude of the total electrostatic energy.
    These are estimates, not bounds (crystals can exceed them by a small factor).
    """
    return ewald_real_error(alpha, r_cut, n_atoms, volume), ewald_recip_error(alpha, k_cut, n_atoms, volume)


def ewald_real_error(alpha: float, r_cut: float, n_atoms: int, volume: float) -> float:
    """The real-space estimate of :func:`ewald_error_estimates` (TorchScript compatible)."""
    a = (volume / n_atoms) ** (1.0 / 3.0)
    return a * math.sqrt(r_cut / (2.0 * volume)) * math.exp(-((alpha * r_cut) ** 2)) / (alpha * r_cut) ** 2


def ewald_recip_error(alpha: float, k_cut: float, n_atoms: int, volume: float) -> float:
    """The reciprocal-space estimate of :func:`ewald_error_estimates` (TorchScript compatible)."""
    a = (volume / n_atoms) ** (1.0 / 3.0)
    big_l = volume ** (1.0 / 3.0)
    big_k = k_cut * big_l / (2.0 * math.pi)
    x = k_cut / (2.0 * alpha)
    return a * alpha * (math.erfc(x) / math.sqrt(math.pi) + big_k**-1.5 * math.exp(-x * x) / math.pi**2)


def ewald_balanced_alpha(n_atoms: int, volume: float, cost_ratio: float = DEFAULT_COST_RATIO) -> float:
    """alpha = sqrt(pi) (cost_ratio N / V^2)^(1/6), Å^-1: the cost optimum of
    :func:`ewald_parameters` (TorchScript compatible)."""
    return math.sqrt(math.pi) * (cost_ratio * n_atoms / volume**2) ** (1.0 / 6.0)


def _log_excess(cut: float, real: bool, alpha: float, n_atoms: int, volume: float, target: float) -> float:
    err = ewald_real_error(alpha, cut, n_atoms, volume) if real else ewald_recip_error(alpha, cut, n_atoms, volume)
    return math.log(err + 1e-300) - target


def ewald_alpha_for_real_cutoff(r_cut: float, n_atoms: int, volume: float, accuracy: float) -> float:
    """The alpha (Å^-1) whose real-space estimate (:func:`ewald_real_error`) at ``r_cut``
    equals ``accuracy``: bisection in log space over [1e-6, 1e6] (as :func:`ewald_parameters`
    with only r_cut given; TorchScript compatible)."""
    target = math.log(accuracy)
    lo = 1e-6
    hi = 1e6
    flo = math.log(ewald_real_error(lo, r_cut, n_atoms, volume) + 1e-300) - target
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        fm = math.log(ewald_real_error(mid, r_cut, n_atoms, volume) + 1e-300) - target
        if (fm > 0) == (flo > 0):
            lo, flo = mid, fm
        else:
            hi = mid
        if hi / lo < 1 + 1e-13:
            break
    return hi


def ewald_cutoff(real: bool, alpha: float, n_atoms: int, volume: float, accuracy: float) -> float:
    """The real-space cutoff (``real=True``, Å) or reciprocal cutoff (Å^-1) whose estimate
    (:func:`ewald_real_error`, :func:`ewald_recip_error`) equals ``accuracy`` at ``alpha``:
    bisection in log space (TorchScript compatible; :func:`ewald_parameters` uses it)."""
    target = math.log(accuracy)
    lo = 1e-6 / alpha if real else 1e-6 * alpha
    hi = 1e6 / alpha if real else 1e6 * alpha
    flo = _log_excess(lo, real, alpha, n_atoms, volume, target)
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        fm = _log_excess(mid, real, alpha, n_atoms, volume, target)
        if (fm > 0) == (flo > 0):
            lo, flo = mid, fm
        else:
            hi = mid
        if hi / lo < 1 + 1e-13:
            break
    return hi


def _bisect_log(f, lo, hi, iters=200):
    """Root of a monotone f on [lo, hi] (positive numbers), bisection in log space."""
    flo = f(lo)
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        fm = f(mid)
        if (fm > 0) == (flo > 0):
            lo, flo = mid, fm
        else:
            hi = mid
        if hi / lo < 1 + 1e-13:
            break
    return hi


def ewald_parameters(
    n_atoms: int,
    volume: float,
    accuracy: float = 1e-10,
    alpha: float | None = None,
    r_cut: float | None = None,
    k_cut: float | None = None,
    cost_ratio: float = DEFAULT_COST_RATIO,
) -> EwaldParameters:
    """Choose alpha, r_cut, k_cut for a requested relative accuracy.

    Missing parameters are filled so that each Kolafa-Perram estimate
    (:func:`ewald_error_estimates`) equals ``accuracy``:

    * alpha, r_cut, k_cut all None: ``alpha = sqrt(pi) (cost_ratio N / V^2)^(1/6)``,
      the optimum of ``cost = t_real N^2 (2 pi / 3) r_cut^3 / V + t_recip N V k_cut^3 /
      (12 pi^2)`` with ``alpha r_cut = k_cut / (2 alpha) = const``
      (cost_ratio = t_real / t_recip); real-space pairs and k-vectors then both grow
      as N^(1/2) per atom, total O(N^1.5) at fixed density.
    * only r_cut (or only k_cut) given: alpha from that cutoff's error estimate.
    * r_cut and k_cut given, alpha None: alpha equalising the two estimates.
    """
    what = "ewald_parameters"
    if n_atoms < 1:
        raise ValueError(f"{what}: need at least one atom, got n_atoms={n_atoms}")
    volume = _check_positive(volume, "volume", what)
    accuracy = _check_positive(accuracy, "accuracy", what)
    if accuracy >= 1.0:
        raise ValueError(f"{what}: accuracy must be < 1 (relative error), got {accuracy!r}")
    for name, v in (("alpha", alpha), ("r_cut", r_cut), ("k_cut", k_cut)):
        if v is not None:
            _check_positive(v, name, what)

    def err_r(al, rc):
        return ewald_error_estimates(al, rc, 1.0, n_atoms, volume)[0]

    def err_k(al, kc):
        return ewald_error_estimates(al, 1.0, kc, n_atoms, volume)[1]

    big = 1e6
    if alpha is None:
        if r_cut is not None and k_cut is not None:
            alpha = _bisect_log(lambda al: math.log(err_r(al, r_cut) + 1e-300) - math.log(err_k(al, k_cut) + 1e-300), 1e-6, big)
        elif r_cut is not None:
            alpha = _bisect_log(lambda al: math.log(err_r(al, r_cut) + 1e-300) - math.log(accuracy), 1e-6, big)
        elif k_cut is not None:
            alpha = _bisect_log(lambda al: math.log(err_k(al, k_cut) + 1e-300) - math.log(accuracy), 1e-6, big)
        else:
            alpha = ewald_balanced_alpha(n_atoms, volume, cost_ratio)
    if r_cut is None:
        r_cut = ewald_cutoff(True, alpha, n_atoms, volume, accuracy)
    if k_cut is None:
        k_cut = ewald_cutoff(False, alpha, n_atoms, volume, accuracy)
    e_r, e_k = ewald_error_estimates(alpha, r_cut, k_cut, n_atoms, volume)
    return EwaldParameters(float(alpha), float(r_cut), float(k_cut), e_r, e_k)


def _neighbour_pairs(positions: torch.Tensor, cell: torch.Tensor, r_cut: float):
    """Half neighbour list (each unordered pair/image once) within r_cut via vesin."""
    from vesin import NeighborList

    pos = positions.detach().cpu().numpy().astype(np.float64)
    box = cell.detach().cpu().numpy().astype(np.float64)
    nl = NeighborList(cutoff=float(r_cut), full_list=False)
    i, j, s = nl.compute(pos, box, True, "ijS")
    dev = positions.device
    i = torch.from_numpy(i.astype(np.int64)).to(dev)
    j = torch.from_numpy(j.astype(np.int64)).to(dev)
    s = torch.from_numpy(s.astype(np.float64)).to(device=dev, dtype=positions.dtype)
    return i, j, s


def ewald_energy(
    q: torch.Tensor,
    positions: torch.Tensor,
    cell: torch.Tensor,
    accuracy: float = 1e-10,
    alpha: float | None = None,
    r_cut: float | None = None,
    k_cut: float | None = None,
    *,
    neutralising_background: bool = False,
    pbc=True,
    cost_ratio: float = DEFAULT_COST_RATIO,
    return_terms: bool = False,
):
    """Classic Ewald energy (eV) of point charges in a fully periodic cell.

    ``E = E_real + E_recip + E_self (+ E_background)`` (module docstring). The real
    space sum includes every image pair within ``r_cut`` (vesin half neighbour list,
    any r_cut relative to the cell), the reciprocal sum every k with
    ``0 < |k| <= k_cut``. Parameters not given are chosen by :func:`ewald_parameters`
    from ``accuracy`` (Kolafa-Perram estimates relative to ``K_E sum q^2 / a``),
    balancing real and reciprocal work for O(N^1.5).

    Non-neutral cells raise ``ValueError`` unless ``neutralising_background=True``,
    which adds the energy of a uniform compensating background,
    ``-K_E pi Q^2 / (2 V alpha^2)`` with ``Q = sum q`` (this makes the total
    independent of alpha).

    ``accuracy`` is a target for *estimated* errors (:func:`ewald_error_estimates`),
    relative to ``K_E sum q^2 / a``, not a bound: measured errors of random neutral
    systems stay below it, ordered crystals can exceed it (NaCl primitive cell at
    accuracy 1e-8: Madelung constant off by 1.2e-7 relative, at 1e-10: 5e-10).
    Use 1e-12 or tighter when the result is itself a reference value.

    With ``return_terms=True`` returns ``(E, terms)`` where terms is a dict with keys
    ``real, recip, self, background`` (tensors) and ``params`` (:class:`EwaldParameters`).
    """
    what = "ewald_energy"
    periodic = _check_pbc(pbc, what)
    if not periodic:
        raise ValueError(f"{what}: pbc=False; classic Ewald needs a fully periodic cell (use a Coulomb pair sum)")
    _check_charges_positions(q, positions, what)
    volume = _check_cell(cell, positions, what)
    n_atoms = positions.shape[0]
    if n_atoms == 0:
        raise ValueError(f"{what}: no atoms")
    q_tot = float(q.detach().sum())
    q_abs = float(q.detach().abs().sum())
    if abs(q_tot) > 1e-10 * max(q_abs, 1e-300) and not neutralising_background:
        raise ValueError(
            f"{what}: the cell is not charge neutral (sum q = {q_tot:.6g}); pass "
            "neutralising_background=True to add a uniform compensating background "
            "(-K_E pi Q^2 / (2 V alpha^2))"
        )
    params = ewald_parameters(n_atoms, volume, accuracy, alpha, r_cut, k_cut, cost_ratio)
    al = params.alpha
    vol = torch.abs(torch.linalg.det(cell))

    i, j, s = _neighbour_pairs(positions, cell, params.r_cut)
    e_real = K_E * _pair_sum(lambda r: torch.erfc(al * r) / r, q, positions, cell, i, j, s)

    _, k = kvectors_in_sphere(cell, params.k_cut, half=True)
    e_recip = (4.0 * math.pi * K_E) * _gaussian_kspace_sum(q, positions, k, 1.0 / (4.0 * al * al)) / vol
    e_self = -K_E * al / math.sqrt(math.pi) * (q * q).sum()
    if neutralising_background:
        e_bg = -K_E * math.pi * q.sum() ** 2 / (2.0 * vol * al * al)
    else:
        e_bg = positions.new_zeros(())
    energy = e_real + e_recip + e_self + e_bg
    if return_terms:
        return energy, {"real": e_real, "recip": e_recip, "self": e_self, "background": e_bg, "params": params}
    return energy


# ------------------------------------------------------------------------ Madelung

#: Madelung constants per z+ |z-|, referred to the nearest cation-anion distance.
MADELUNG_REFERENCE = {
    "NaCl": 1.74756459,
    "CsCl": 1.76267477,
    "zincblende": 1.63805505,
    "fluorite": 2.51939244,
}


def madelung_structure(structure_name: str):
    """(ase.Atoms with initial charges, formula units, z+ |z-|, r0) for a test crystal.

    ``structure_name``: ``"NaCl"`` (rock salt), ``"CsCl"``, ``"zincblende"`` (ZnS) or
    ``"fluorite"`` (CaF2); primitive cells from ``ase.build.bulk``.
    """
    from ase.build import bulk

    if structure_name == "NaCl":
        atoms, charges, zz = bulk("NaCl", "rocksalt", a=5.64), {"Na": 1.0, "Cl": -1.0}, 1.0
    elif structure_name == "CsCl":
        atoms, charges, zz = bulk("CsCl", "cesiumchloride", a=4.12), {"Cs": 1.0, "Cl": -1.0}, 1.0
    elif structure_name == "zincblende":
        atoms, charges, zz = bulk("ZnS", "zincblende", a=5.41), {"Zn": 2.0, "S": -2.0}, 4.0
    elif structure_name == "fluorite":
        atoms, charges, zz = bulk("CaF2", "fluorite", a=5.46), {"Ca": 2.0, "F": -1.0}, 2.0
    else:
        raise ValueError(
            f"madelung_structure: unknown structure_name {structure_name!r}; "
            f"choose one of {sorted(MADELUNG_REFERENCE)}"
        )
    q = np.array([charges[s] for s in atoms.get_chemical_symbols()])
    atoms.set_initial_charges(q)
    n_cation = int((q > 0).sum())
    # nearest cation-anion distance over periodic images
    from vesin import NeighborList

    i, j, d = NeighborList(cutoff=0.8 * float(np.min(np.linalg.norm(atoms.cell, axis=1))) + 3.0, full_list=True).compute(
        atoms.positions, atoms.cell.array, True, "ijd"
    )
    opposite = q[i.astype(int)] * q[j.astype(int)] < 0
    r0 = float(d[opposite].min())
    return atoms, n_cation, zz, r0


def madelung_constant(structure_name: str, accuracy: float = 1e-12) -> float:
    """Madelung constant ``M = -E_fu r0 / (K_E z+ |z-|)`` from classic Ewald.

    E_fu is the converged Ewald energy per formula unit, r0 the nearest cation-anion
    distance. Structures: see :func:`madelung_structure`.
    """
    atoms, n_fu, zz, r0 = madelung_structure(structure_name)
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    e = ewald_energy(t(atoms.get_initial_charges()), t(atoms.positions), t(atoms.cell.array), accuracy=accuracy)
    return -float(e) / n_fu * r0 / (K_E * zz)


# ------------------------------------------------------------------------- helpers


def energy_forces_stress(
    energy_fn: Callable[..., torch.Tensor],
    q: torch.Tensor,
    positions: torch.Tensor,
    cell: torch.Tensor,
    create_graph: bool = False,
    **kwargs,
):
    """Energy, forces ``-dE/dr`` and stress ``(1/V) dE/d(strain)`` by autograd.

    ``energy_fn(q, positions, cell, **kwargs)``; the strain acts as
    ``r -> r (I + eps)``, ``cell -> cell (I + eps)`` (ASE convention: positive stress
    = the energy increases on expansion). Returns ``(E, F, stress)``.
    """
    pos = positions.detach().clone().requires_grad_(True) if not positions.requires_grad else positions
    eps = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
    deform = torch.eye(3, dtype=positions.dtype, device=positions.device) + eps
    energy = energy_fn(q, pos @ deform, cell @ deform, **kwargs)
    d_pos, d_eps = torch.autograd.grad(energy, (pos, eps), create_graph=create_graph)
    vol = torch.abs(torch.linalg.det(cell))
    return energy, -d_pos, d_eps / vol
