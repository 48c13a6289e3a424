"""Particle-mesh evaluation of the reciprocal-space sums of LES and classic Ewald (smooth PME).

The long-range blocks of generated models (:mod:`tacegen.runtime.long_range`, printed
kernels of ``templates/long_range_torch.py.j2``) compute, per periodic structure, ::

    E_k = (2 pi K_E / V) sum_{k != 0, |k| <= k_cut} exp(-gamma k^2) / k^2 |S(k)|^2
          - self_coefficient K_E sum_i q_i^2          [- 2 pi K_E gamma Q^2 / V]

with S(k) = sum_i q_i exp(i k . r_i) (LES: gamma = sigma^2 / 2, sharp cut-off k_cut part of
the model; Ewald: gamma = 1 / (4 alpha^2)). The direct sum costs O(N x N_k), i.e. O(N^2)
at fixed density and k_cut. Here S(k) comes from smooth particle-mesh Ewald (Essmann et al.,
J. Chem. Phys. 103, 8577 (1995)): the charges are spread on a regular grid of the cell with
cardinal B-splines of order p, the grid is Fourier transformed (``torch.fft.rfftn``), and
``|S(k)|^2 ~ |b(k)|^2 |FFT(Q)(k)|^2`` with the B-spline moduli ``b``; the *same* sharp sphere
``|k| <= k_cut (1 + 1e-12)`` and weights are applied, so the mesh evaluates the same
truncated sum (LES's Gaussian width and k cut-off, or the Ewald reciprocal sum), up to the
interpolation error. Cost O(N p^3 + G log G) with G grid points ~ V k_cut^3: O(N log N).

Accuracy: the grid has ``K_c >= oversampling (2 n_c + 1)`` points along lattice vector
a_c, with ``n_c = floor(k_cut |a_c| / (2 pi))`` the largest integer of the k-sphere, so
every k of the sphere is on the grid once; the interpolation error of a mode at the
sphere's edge is about ``2 (1 / (2 oversampling - 1))^p`` relative.
:func:`mesh_settings` turns a requested relative accuracy into (order, oversampling);
measured errors against the direct sum are far below that edge estimate (the weights are
smallest at the edge); see tests/test_mesh.py.

Forces and stress: by autograd through the positions and the cell (the spline weights,
k-vectors and volume are differentiable; grid indices and the k-set are chosen without
gradient). Conventions as in :mod:`tacegen.runtime.electrostatics`: eV, Å, e, rows of
``cell`` are lattice vectors. TorchScript compatible.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor

from .electrostatics import ewald_alpha_for_real_cutoff, ewald_cutoff

__all__ = ["K_E", "MESH_MIN_ATOMS", "MESH_REAL_CUTOFF", "mesh_settings", "mesh_grid", "bspline_weights",
           "mesh_reciprocal_energy", "mesh_energies", "mesh_structures", "ewald_mesh_split"]

#: Coulomb constant 1 / (4 pi eps0) in eV Å / e^2 (as tacegen.runtime.electrostatics).
K_E = 14.3996454784

#: Periodic structures with at least this many atoms use the mesh in generated models
#: (constructor argument ``mesh_min_atoms``); smaller ones the direct sum.
MESH_MIN_ATOMS = 2000

#: Real-space cutoff (Å) of a classic Ewald sum evaluated with the mesh: alpha follows
#: from it and the accuracy, k_cut from alpha (:func:`ewald_mesh_split`).
MESH_REAL_CUTOFF = 8.0


def mesh_settings(accuracy: float) -> Tuple[int, float]:
    """(B-spline order p, oversampling) for a relative accuracy of the reciprocal sum:
    order 8 and the oversampling s whose edge estimate ``2 (1 / (2 s - 1))^8`` equals
    ``accuracy`` (at least 1.5)."""
    if not (0.0 < accuracy < 1.0):
        raise ValueError(f"mesh accuracy must be in (0, 1), got {accuracy}")
    order = 8
    ratio = (accuracy / 2.0) ** (1.0 / order)
    return order, max(1.5, 0.5 * (1.0 / ratio + 1.0))


def _fast_size(n: int) -> int:
    """The smallest m >= n with only factors 2, 3 and 5 (fast FFT sizes)."""
    m = max(1, n)
    found = False
    while not found:
        r = m
        for f in (2, 3, 5):
            while r % f == 0:
                r = r // f
        if r == 1:
            found = True
        else:
            m += 1
    return m


def mesh_grid(cell: Tensor, k_cut: float, oversampling: float, order: int) -> List[int]:
    """Grid points along each lattice vector: a fast FFT size >= max(order, oversampling
    (2 n_c + 1)), n_c = floor(k_cut |a_c| / (2 pi) (1 + 1e-9))."""
    lengths: List[float] = torch.linalg.norm(cell.detach(), dim=1).tolist()
    sizes: List[int] = []
    for length in lengths:
        n = int(math.floor(k_cut * length / (2.0 * math.pi) * (1.0 + 1e-9)))
        sizes.append(_fast_size(max(order, int(math.ceil(oversampling * (2 * n + 1))))))
    return sizes


def bspline_weights(fraction: Tensor, order: int) -> Tensor:
    """Cardinal B-spline weights ``M_p(fraction + j)``, j = 0..p-1: (..., p) for ``fraction``
    (...) in [0, 1); differentiable. A point at grid coordinate u spreads onto the grid
    points floor(u) - j with these weights (they sum to 1)."""
    shape: List[int] = list(fraction.shape)
    values = torch.zeros(shape + [order], dtype=fraction.dtype, device=fraction.device)
    values[..., 0] = 1.0
    offsets = torch.arange(order, dtype=fraction.dtype, device=fraction.device)
    x = fraction.unsqueeze(-1) + offsets  # (..., p): the arguments w + j
    for n in range(2, order + 1):
        previous = torch.cat([torch.zeros_like(values[..., :1]), values[..., :-1]], dim=-1)  # M_{n-1}(x - 1)
        values = (x * values + (n - x) * previous) / (n - 1)
    return values


def _bspline_moduli(size: int, order: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """|b(m)|^2 = 1 / |sum_{j=0}^{p-2} M_p(j + 1) exp(2 pi i m j / K)|^2 for m = 0..K-1."""
    knots = bspline_weights(torch.zeros(1, dtype=dtype, device=device), order)[0]  # M_p(j), j = 0..p-1
    values = knots[1:]  # M_p(j + 1), j = 0..p-2
    m = torch.arange(size, dtype=dtype, device=device).unsqueeze(1)
    j = torch.arange(order - 1, dtype=dtype, device=device).unsqueeze(0)
    phase = 2.0 * math.pi * m * j / size
    re = (values * torch.cos(phase)).sum(dim=1)
    im = (values * torch.sin(phase)).sum(dim=1)
    return 1.0 / (re * re + im * im)


def mesh_reciprocal_energy(positions: Tensor, charges: Tensor, cell: Tensor, gamma: float, k_cut: float,
                           self_coefficient: float, background: bool, order: int, oversampling: float) -> Tensor:
    """E_k of one periodic structure (eV, scalar, float64) by smooth PME: positions (N, 3) Å,
    charges (N,) e, cell (3, 3) Å (rows = lattice vectors); terms and arguments as
    ``lr_reciprocal_energy`` of the generated models (module docstring); ``order`` (even,
    >= 4) and ``oversampling`` (>= 1) fix the grid (:func:`mesh_grid`)."""
    if order < 4 or order % 2 != 0:
        raise ValueError(f"the B-spline order must be even and >= 4, got {order}")
    pos = positions.double()
    c = cell.double()
    q = charges.double()
    sizes = mesh_grid(c, k_cut, oversampling, order)
    k1, k2, k3 = sizes[0], sizes[1], sizes[2]
    inverse = torch.linalg.inv(c)
    grid = torch.tensor(sizes, dtype=torch.float64, device=pos.device)
    u = (pos @ inverse) * grid  # grid coordinates (N, 3)
    base = torch.floor(u.detach())
    weights = bspline_weights(u - base, order)  # (N, 3, p)
    steps = torch.arange(order, dtype=torch.int64, device=pos.device)
    index = base.to(torch.int64).unsqueeze(-1) - steps  # (N, 3, p): floor(u) - j
    sizes_t = torch.tensor(sizes, dtype=torch.int64, device=pos.device).view(1, 3, 1)
    index = torch.remainder(index, sizes_t)
    flat = (index[:, 0, :, None, None] * k2 + index[:, 1, None, :, None]) * k3 + index[:, 2, None, None, :]
    value = (q.view(-1, 1, 1, 1) * weights[:, 0, :, None, None] * weights[:, 1, None, :, None]
             * weights[:, 2, None, None, :])
    mesh = torch.zeros(k1 * k2 * k3, dtype=torch.float64, device=pos.device)
    mesh = mesh.index_add(0, flat.reshape(-1), value.reshape(-1)).view(k1, k2, k3)
    transform = torch.fft.rfftn(mesh)
    # only the box |m_c| <= n_c can hold k-vectors of the sphere: gather it (m_3 >= 0 for rfft)
    recip = 2.0 * math.pi * inverse.transpose(0, 1)
    lengths: List[float] = torch.linalg.norm(c.detach(), dim=1).tolist()
    bounds: List[int] = []
    for length in lengths:
        bounds.append(int(math.floor(k_cut * length / (2.0 * math.pi) * (1.0 + 1e-9))))
    axes: List[Tensor] = []
    rows: List[Tensor] = []
    for a in range(3):
        n = bounds[a]
        if a < 2:
            m_a = torch.arange(-n, n + 1, dtype=torch.int64, device=pos.device)
        else:
            m_a = torch.arange(0, n + 1, dtype=torch.int64, device=pos.device)
        axes.append(m_a)
        rows.append(torch.remainder(m_a, sizes[a]))
    box = transform.index_select(0, rows[0]).index_select(1, rows[1]).index_select(2, rows[2])
    power = box.real ** 2 + box.imag ** 2
    grids = torch.meshgrid([axes[0], axes[1], axes[2]], indexing="ij")
    m = torch.stack([grids[0], grids[1], grids[2]], dim=-1).to(torch.float64)
    k2_detached = ((m @ recip.detach()) ** 2).sum(dim=-1)
    inside = (k2_detached <= (k_cut * k_cut) * (1.0 + 1e-12)) & (k2_detached > 0.0)
    # rfft keeps m3 >= 0: the other half (m3 < 0) is the mirror image, count it twice
    multiplicity = torch.where(grids[2] > 0, torch.full(grids[2].shape, 2.0, dtype=torch.float64, device=pos.device),
                               torch.ones(grids[2].shape, dtype=torch.float64, device=pos.device))
    selected = torch.nonzero(inside)
    i0, i1, i2 = selected[:, 0], selected[:, 1], selected[:, 2]
    ks = m[i0, i1, i2] @ recip
    ksq = (ks * ks).sum(dim=1)
    moduli = (_bspline_moduli(k1, order, torch.float64, pos.device).index_select(0, rows[0])[i0]
              * _bspline_moduli(k2, order, torch.float64, pos.device).index_select(0, rows[1])[i1]
              * _bspline_moduli(k3, order, torch.float64, pos.device).index_select(0, rows[2])[i2])
    terms = multiplicity[i0, i1, i2] * torch.exp(-gamma * ksq) / ksq * moduli * power[i0, i1, i2]
    volume = torch.abs(torch.linalg.det(c))
    k_e = 14.3996454784  # K_E (TorchScript does not read module-level floats)
    energy = (2.0 * math.pi * k_e) * terms.sum() / volume - self_coefficient * k_e * (q * q).sum()
    if background:
        energy = energy - (2.0 * math.pi * k_e * gamma) * q.sum() ** 2 / volume
    return energy


def mesh_structures(num_atoms: Tensor, periodic: Tensor, min_atoms: int) -> Tensor:
    """(B,) bool: the periodic structures with at least ``min_atoms`` atoms (min_atoms <= 0:
    never the mesh)."""
    if min_atoms <= 0:
        return torch.zeros_like(periodic)
    return periodic & (num_atoms >= min_atoms)


def mesh_energies(positions: Tensor, charges: Tensor, cell: Tensor, num_atoms: Tensor, use_mesh: Tensor,
                  gamma: float, k_cut: float, self_coefficient: float, background: bool,
                  accuracy: float) -> Tensor:
    """(B,) energies, float64: :func:`mesh_reciprocal_energy` of each structure with
    ``use_mesh`` (B,) set, 0 elsewhere; atoms of a structure contiguous, ``num_atoms`` (B,);
    order and oversampling from :func:`mesh_settings` of ``accuracy``."""
    order, oversampling = mesh_settings(accuracy)
    counts: List[int] = num_atoms.tolist()
    flags: List[bool] = use_mesh.tolist()
    energies: List[Tensor] = []
    offset = 0
    for b in range(len(counts)):
        n = counts[b]
        if flags[b]:
            energies.append(mesh_reciprocal_energy(positions[offset:offset + n], charges[offset:offset + n], cell[b],
                                                   gamma, k_cut, self_coefficient, background, order, oversampling))
        else:
            energies.append(torch.zeros((), dtype=torch.float64, device=positions.device))
        offset += n
    if len(energies) == 0:
        return torch.zeros(0, dtype=torch.float64, device=positions.device)
    return torch.stack(energies)


def ewald_mesh_split(num_atoms: Tensor, cell: Tensor, use_mesh: Tensor, accuracy: float,
                     r_cut: float = MESH_REAL_CUTOFF) -> Tuple[float, float, float]:
    """``(alpha, r_cut, k_cut)`` of the structures with ``use_mesh``: the real-space cutoff is
    fixed (``r_cut``, Å), alpha meets ``accuracy`` there (Kolafa-Perram estimate, most
    demanding structure) and k_cut meets it at that alpha (largest over the structures);
    ``(0, 0, 0)`` when no structure uses the mesh."""
    counts: List[int] = num_atoms.tolist()
    flags: List[bool] = use_mesh.tolist()
    volumes: List[float] = torch.linalg.det(cell.detach().double()).abs().tolist()
    alpha = 0.0
    for b in range(len(counts)):
        if flags[b]:
            alpha = max(alpha, ewald_alpha_for_real_cutoff(r_cut, counts[b], volumes[b], accuracy))
    if alpha == 0.0:
        return 0.0, 0.0, 0.0
    k_cut = 0.0
    for b in range(len(counts)):
        if flags[b]:
            k_cut = max(k_cut, ewald_cutoff(False, alpha, counts[b], volumes[b], accuracy))
    return alpha, r_cut, k_cut
