"""Tests of the electrostatics reference (tacegen.runtime.electrostatics).

Checks: Madelung constants, classic-Ewald invariances (split parameter, translations,
lattice shifts, supercells, rotations/reflections), autograd forces and stress against
finite differences, LES large-cell limit and k-cut convergence, and agreement with
torch-pme (skipped if torch-pme is not installed).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tacegen.runtime.electrostatics import (
    K_E,
    MADELUNG_REFERENCE,
    energy_forces_stress,
    ewald_energy,
    ewald_parameters,
    kvectors_in_sphere,
    les_energy_finite,
    les_energy_periodic,
    madelung_constant,
)

F64 = torch.float64


def random_system(seed: int, n: int = 12, length: float = 6.0, skew: float = 0.3, neutral: bool = True):
    """Random charges (neutral by default) in a random triclinic cell (rows = vectors)."""
    g = np.random.default_rng(seed)
    while True:
        cell = length * (np.eye(3) + skew * g.uniform(-1, 1, (3, 3)))
        if np.linalg.det(cell) > 0.5 * length**3:
            break
    frac = g.random((n, 3))
    pos = frac @ cell
    q = g.normal(size=n)
    if neutral:
        q -= q.mean()
    t = lambda a: torch.tensor(a, dtype=F64)  # noqa: E731
    return t(q), t(pos), t(cell)


def rel(a, b):
    a = torch.as_tensor(a).detach()
    b = torch.as_tensor(b).detach()
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------- Madelung


@pytest.mark.parametrize("name", sorted(MADELUNG_REFERENCE))
def test_madelung_constants(name):
    m = madelung_constant(name)
    assert abs(m - MADELUNG_REFERENCE[name]) < 1e-8, (name, m)


# --------------------------------------------------------------- Ewald invariances


def test_ewald_independent_of_alpha():
    q, pos, cell = random_system(0, n=16)
    energies = [float(ewald_energy(q, pos, cell, accuracy=1e-14, alpha=a)) for a in (0.35, 0.5, 0.7, 1.0)]
    auto = float(ewald_energy(q, pos, cell, accuracy=1e-14))
    for e in energies:
        assert abs(e - auto) < 1e-10 * abs(auto), (energies, auto)


def test_ewald_default_accuracy_close_to_tight():
    q, pos, cell = random_system(1, n=16)
    e_tight = float(ewald_energy(q, pos, cell, accuracy=1e-14))
    e_def = float(ewald_energy(q, pos, cell))  # accuracy 1e-10 relative to K_E sum q^2 / a
    scale = K_E * float((q * q).sum()) / (abs(float(torch.linalg.det(cell))) / len(q)) ** (1 / 3)
    assert abs(e_def - e_tight) < 1e-9 * scale


PARAMS = dict(alpha=0.7, r_cut=8.0, k_cut=7.5)  # fixed split: smooth for finite differences


def _fd_forces(fn, q, pos, cell, h=1e-5):
    f = torch.zeros_like(pos)
    for i in range(pos.shape[0]):
        for a in range(3):
            p1, p2 = pos.clone(), pos.clone()
            p1[i, a] += h
            p2[i, a] -= h
            f[i, a] = -(float(fn(q, p1, cell)) - float(fn(q, p2, cell))) / (2 * h)
    return f


def _fd_stress(fn, q, pos, cell, h=1e-5):
    vol = abs(float(torch.linalg.det(cell)))
    s = torch.zeros(3, 3, dtype=F64)
    for a in range(3):
        for b in range(3):
            e = torch.zeros(3, 3, dtype=F64)
            e[a, b] = h
            d1, d2 = torch.eye(3, dtype=F64) + e, torch.eye(3, dtype=F64) - e
            s[a, b] = (float(fn(q, pos @ d1, cell @ d1)) - float(fn(q, pos @ d2, cell @ d2))) / (2 * h * vol)
    return s


def _ewald_fixed(q, pos, cell):
    return ewald_energy(q, pos, cell, **PARAMS)


def _les_default(q, pos, cell):
    return les_energy_periodic(q, pos, cell)


@pytest.mark.parametrize("fn", [_ewald_fixed, _les_default], ids=["ewald", "les"])
def test_forces_and_stress_match_finite_differences(fn):
    q, pos, cell = random_system(2, n=6, length=5.0)
    e, f, s = energy_forces_stress(fn, q, pos, cell)
    assert rel(f, _fd_forces(fn, q, pos, cell)) < 1e-6
    s_fd = _fd_stress(fn, q, pos, cell)
    assert rel(s, s_fd) < 1e-6
    assert rel(s, s.T) < 1e-10  # rotational invariance => symmetric stress


def _ewald_fixed_charged(q, pos, cell):
    """_ewald_fixed for any total charge (the background term does not depend on the positions,
    so the forces are those of _ewald_fixed)."""
    return ewald_energy(q, pos, cell, neutralising_background=True, **PARAMS)


def test_forces_sum_to_zero_and_double_backward():
    """Double backward: d(sum F^2)/dq through create_graph=True, against central finite
    differences of sum F^2 in each charge (independent: first derivatives only)."""
    q, pos, cell = random_system(3, n=8)
    q = q.clone().requires_grad_(True)
    _, f, _ = energy_forces_stress(_ewald_fixed, q, pos, cell, create_graph=True)
    f0 = f.detach()
    assert float(f0.abs().max()) > 0.1  # not vacuous
    assert float(f0.sum(0).abs().max()) < 1e-10 * float(f0.abs().max())
    (gq,) = torch.autograd.grad((f * f).sum(), q)  # force-matching loss -> charges
    h = 1e-5
    numeric = torch.zeros_like(gq)
    for i in range(q.shape[0]):
        loss = []
        for sign in (1.0, -1.0):
            qq = q.detach().clone()
            qq[i] += sign * h
            _, fh, _ = energy_forces_stress(_ewald_fixed_charged, qq, pos, cell)
            loss.append(float((fh * fh).sum()))
        numeric[i] = (loss[0] - loss[1]) / (2 * h)
    assert float(numeric.abs().max()) > 1.0  # not vacuous
    assert rel(gq, numeric) < 1e-7


@pytest.mark.parametrize("fn", [_ewald_fixed, _les_default], ids=["ewald", "les"])
def test_translation_and_lattice_shift_invariance(fn):
    q, pos, cell = random_system(4, n=10)
    e0 = float(fn(q, pos, cell))
    e1 = float(fn(q, pos + torch.tensor([0.37, -1.2, 2.9], dtype=F64), cell))
    shifted = pos.clone()
    shifted[3] += 2 * cell[0] - cell[2]
    shifted[7] -= cell[1]
    e2 = float(fn(q, shifted, cell))
    assert abs(e1 - e0) < 1e-12 * abs(e0)
    assert abs(e2 - e0) < 1e-12 * abs(e0)


def _supercell(q, pos, cell, reps=(2, 2, 2)):
    shifts = torch.cartesian_prod(*[torch.arange(r, dtype=F64) for r in reps]) @ cell
    big_pos = (pos[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    big_q = q.repeat(shifts.shape[0])
    big_cell = torch.tensor(reps, dtype=F64)[:, None] * cell
    return big_q, big_pos, big_cell


@pytest.mark.parametrize("fn", [_ewald_fixed, _les_default], ids=["ewald", "les"])
def test_supercell_energy_is_eight_times(fn):
    q, pos, cell = random_system(5, n=5, length=4.5)
    e = float(fn(q, pos, cell))
    e8 = float(fn(*_supercell(q, pos, cell)))
    assert abs(e8 - 8 * e) < 1e-12 * abs(8 * e)


def test_supercell_with_automatic_parameters():
    q, pos, cell = random_system(6, n=5, length=4.5)
    e = float(ewald_energy(q, pos, cell, accuracy=1e-13))
    e8 = float(ewald_energy(*_supercell(q, pos, cell), accuracy=1e-13))
    assert abs(e8 - 8 * e) < 1e-10 * abs(8 * e)


def _random_orthogonal(seed: int, improper: bool):
    g = np.random.default_rng(seed)
    m, r = np.linalg.qr(g.normal(size=(3, 3)))
    m = m * np.sign(np.diag(r))
    if np.linalg.det(m) < 0:
        m[:, 0] *= -1
    if improper:
        m = -m
    return torch.tensor(m, dtype=F64)


@pytest.mark.parametrize("improper", [False, True], ids=["proper", "improper"])
@pytest.mark.parametrize("which", ["ewald", "les"])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_rotation_invariance_and_force_equivariance(seed, improper, which):
    """Reference: the unrotated system. Every (method x proper/improper) combination runs
    in every session (parametrized, not sampled)."""
    fn = {"ewald": _ewald_fixed, "les": _les_default}[which]
    q, pos, cell = random_system(seed % 1000, n=7, length=5.0)
    rot = _random_orthogonal(seed, improper)
    assert (float(torch.linalg.det(rot)) < 0) == improper
    e, f, s = energy_forces_stress(fn, q, pos, cell)
    assert float(f.abs().max()) > 1e-3 and float(s.abs().max()) > 1e-5  # not vacuous
    # column-vector rotation r -> R r  <=>  row-vector positions @ R^T; cell rows too
    e2, f2, s2 = energy_forces_stress(fn, q, pos @ rot.T, cell @ rot.T)
    if improper:
        assert float(torch.linalg.det(cell @ rot.T)) < 0  # left-handed cell exercised
    e, e2 = float(e.detach()), float(e2.detach())
    assert abs(e2 - e) < 1e-11 * abs(e)
    assert rel(f2, f @ rot.T) < 1e-10
    assert rel(s2, rot @ s @ rot.T) < 1e-9


def test_permutation_invariance():
    q, pos, cell = random_system(8, n=9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    assert abs(float(_ewald_fixed(q[perm], pos[perm], cell)) - float(_ewald_fixed(q, pos, cell))) < 1e-12 * abs(
        float(_ewald_fixed(q, pos, cell))
    )


# ------------------------------------------------------- errors and background term


def test_non_neutral_requires_background():
    q, pos, cell = random_system(9, n=6, neutral=False)
    with pytest.raises(ValueError, match="not charge neutral"):
        ewald_energy(q, pos, cell)
    # with the background the total is independent of alpha again
    e = [float(ewald_energy(q, pos, cell, accuracy=1e-14, alpha=a, neutralising_background=True)) for a in (0.4, 0.8)]
    assert abs(e[0] - e[1]) < 1e-10 * abs(e[0])


def test_background_term_value():
    q, pos, cell = random_system(10, n=6, neutral=False)
    _, t = ewald_energy(q, pos, cell, alpha=0.6, neutralising_background=True, return_terms=True)
    vol = abs(float(torch.linalg.det(cell)))
    expected = -K_E * math.pi * float(q.sum()) ** 2 / (2 * vol * 0.6**2)
    assert abs(float(t["background"]) - expected) < 1e-14 * abs(expected)


@pytest.mark.parametrize("fn", [ewald_energy, les_energy_periodic])
def test_refuses_mixed_pbc_and_bad_inputs(fn):
    q, pos, cell = random_system(11, n=4)
    with pytest.raises(ValueError, match="mixed periodic"):
        fn(q, pos, cell, pbc=[True, True, False])
    with pytest.raises(ValueError, match="singular"):
        fn(q, pos, torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        fn(q[:3], pos, cell)
    with pytest.raises(ValueError, match="positive"):
        if fn is ewald_energy:
            fn(q, pos, cell, accuracy=-1.0)
        else:
            fn(q, pos, cell, sigma=0.0)


def test_left_handed_cell_equals_mirror():
    q, pos, cell = random_system(12, n=8)
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64))
    lh_cell = cell[[1, 0, 2]]  # same lattice, det < 0
    assert float(torch.linalg.det(lh_cell)) < 0
    for fn in (_ewald_fixed, _les_default):
        e = float(fn(q, pos, cell))
        assert abs(float(fn(q, pos, lh_cell)) - e) < 1e-12 * abs(e)
        assert abs(float(fn(q, pos @ mirror, cell @ mirror)) - e) < 1e-12 * abs(e)


def test_parameter_choice_scales_as_n_to_the_1_5():
    # alpha ~ (N / V^2)^(1/6): at fixed density, pairs per atom and k-vectors ~ N^(1/2)
    costs = []
    for n in (1000, 8000):
        vol = n / 0.1
        p = ewald_parameters(n, vol, 1e-8)
        pairs = n * (2 * math.pi / 3) * p.r_cut**3 * n / vol
        kvec = n * vol * p.k_cut**3 / (12 * math.pi**2)
        costs.append(pairs + kvec)
    assert 1.4 < math.log(costs[1] / costs[0]) / math.log(8) < 1.6


def test_kvectors_sphere_triclinic():
    _, _, cell = random_system(13, skew=0.45)
    n_half, k_half = kvectors_in_sphere(cell, 2.5, half=True)
    n_full, k_full = kvectors_in_sphere(cell, 2.5, half=False)
    assert n_full.shape[0] == 2 * n_half.shape[0]
    # brute force over a generous box
    rng = torch.arange(-15, 16)
    n_all = torch.cartesian_prod(rng, rng, rng)
    k_all = n_all.to(F64) @ (2 * math.pi * torch.linalg.inv(cell).T)
    knorm = torch.linalg.norm(k_all, dim=1)
    assert int(((knorm <= 2.5) & (knorm > 0)).sum()) == n_full.shape[0]
    assert float(torch.linalg.norm(k_full, dim=1).max()) <= 2.5 * (1 + 1e-12)


# -------------------------------------------------------------------------- LES


def test_les_finite_matches_pair_sum_and_coincident_atoms():
    g = np.random.default_rng(14)
    pos = torch.tensor(g.normal(size=(6, 3)) * 2, dtype=F64)
    q = torch.tensor(g.normal(size=6), dtype=F64)
    e = 0.0
    for i in range(6):
        for j in range(i + 1, 6):
            r = float(torch.linalg.norm(pos[i] - pos[j]))
            e += K_E * float(q[i] * q[j]) * math.erf(r / (math.sqrt(2) * 1.3)) / r
    assert abs(float(les_energy_finite(q, pos, sigma=1.3)) - e) < 1e-13 * abs(e)
    # coincident atoms 0 and 1: the pair kernel erf(r/a)/r is even in r, so that pair adds
    # nothing to the gradient; the rest is the closed-form pair gradient (exact reference)
    pos2 = pos.clone()
    pos2[1] = pos2[0]
    p = pos2.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(les_energy_finite(q, p, sigma=1.3), p)
    a = math.sqrt(2) * 1.3
    expected = torch.zeros_like(pos2)
    for i in range(6):
        for j in range(6):
            if i == j or {i, j} == {0, 1}:
                continue
            d = pos2[i] - pos2[j]
            r = float(torch.linalg.norm(d))
            dphi = (2 / (a * math.sqrt(math.pi)) * math.exp(-(r / a) ** 2) * r - math.erf(r / a)) / r**2
            expected[i] += K_E * float(q[i] * q[j]) * dphi * d / r
    assert float(expected.abs().max()) > 0.1  # not vacuous
    assert rel(g2, expected) < 1e-12


def test_les_finite_forces_finite_differences():
    g = np.random.default_rng(15)
    pos = torch.tensor(g.normal(size=(5, 3)) * 1.5, dtype=F64)
    q = torch.tensor(g.normal(size=5), dtype=F64)
    p = pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(les_energy_finite(q, p), p)
    f_fd = _fd_forces(lambda qq, pp, cc: les_energy_finite(qq, pp), q, pos, None)
    assert rel(-grad, f_fd) < 1e-7


MOLECULE = torch.tensor([[0, 0, 0], [1.1, 0.2, 0.0], [-0.3, 1.0, 0.4], [0.5, -0.6, 1.2]], dtype=F64)


def test_les_large_cell_limit_neutral():
    """Neutral molecule in a cubic box L (tin-foil Ewald, k_cut -> large):

    E_per(L) - E_fin = -2 pi K_E |p|^2 / (3 L^3) + O(L^-5)

    (the dipole lattice sum vanishes for cubic symmetry; tin-foil boundary conditions
    remove the surface term 2 pi |p|^2 / (3V) that spherical summation in vacuum would
    keep; dipole-quadrupole terms vanish by inversion symmetry). The erfc images are
    negligible (alpha L >= 5.6). So the periodic and finite LES forms agree only up to
    the L^-3 dipole term, which we check, plus an L^-5 residual.
    """
    q = torch.tensor([0.5, -0.3, -0.4, 0.2], dtype=F64)
    e_fin = float(les_energy_finite(q, MOLECULE))
    p2 = float(((q[:, None] * MOLECULE).sum(0) ** 2).sum())
    resid = {}
    for length in (8.0, 16.0, 32.0):
        cell = torch.eye(3, dtype=F64) * length
        e_per = float(les_energy_periodic(q, MOLECULE + length / 2, cell, k_cut=7.5))
        dip = -2 * math.pi * K_E * p2 / (3 * length**3)
        assert abs((e_per - e_fin) / dip - 1) < 0.01  # leading term right
        resid[length] = abs(e_per - e_fin - dip)
    # residual decays like L^-5 (2^5 = 32 per doubling; allow 20)
    assert resid[8.0] / resid[16.0] > 20 and resid[16.0] / resid[32.0] > 20


def test_les_large_cell_limit_charged_converges_only_as_one_over_l():
    """A charged molecule: E_per - E_fin -> -xi K_E Q^2 / (2 L), xi = 2.837297 (the
    Wigner/Madelung self-image energy of a simple-cubic lattice of point charges in
    a neutralising background): the periodic form does *not* approach the finite one
    faster than 1/L."""
    q = torch.tensor([0.6, -0.2, -0.3, 0.3], dtype=F64)
    big_q = float(q.sum())
    e_fin = float(les_energy_finite(q, MOLECULE))
    length = 32.0
    e_per = float(les_energy_periodic(q, MOLECULE + length / 2, torch.eye(3, dtype=F64) * length, k_cut=7.5))
    expected = -2.837297479 * K_E * big_q**2 / (2 * length)
    assert abs((e_per - e_fin) / expected - 1) < 2e-3


def test_les_converges_in_k_cut_to_ewald_reciprocal_plus_self():
    q, pos, cell = random_system(16, n=10, length=5.0)
    sigma = 0.8
    alpha = 1 / (math.sqrt(2) * sigma)
    _, t = ewald_energy(q, pos, cell, accuracy=1e-15, alpha=alpha, return_terms=True)
    target = float(t["recip"] + t["self"])
    diffs = [abs(float(les_energy_periodic(q, pos, cell, sigma=sigma, k_cut=kc)) - target) for kc in (2, 4, 6, 8, 10)]
    assert all(a > b for a, b in zip(diffs, diffs[1:])), diffs  # monotone (terms are >= 0)
    assert diffs[-1] < 1e-11 * abs(target), diffs
    # the truncation error is about (K_E Q alpha / sqrt(pi)) erfc(k_c / (2 alpha)) (mean |S|^2 = Q)
    est = K_E * float((q * q).sum()) * alpha / math.sqrt(math.pi) * math.erfc(4 / (2 * alpha))
    assert 0.2 < diffs[1] / est < 5


def test_les_non_neutral_drops_k0_only():
    q, pos, cell = random_system(17, n=6, neutral=False)
    sigma = 1.0
    alpha = 1 / (math.sqrt(2) * sigma)
    _, t = ewald_energy(q, pos, cell, accuracy=1e-15, alpha=alpha, neutralising_background=True, return_terms=True)
    e_les = float(les_energy_periodic(q, pos, cell, sigma=sigma, k_cut=9.0))
    assert abs(e_les - float(t["recip"] + t["self"])) < 1e-10 * abs(e_les)


# ----------------------------------------------------------------------- torch-pme


def _torchpme_energy(q, pos, cell, alpha, r_cut, k_cut=None, kvectors=None):
    """torch-pme Ewald energy E = sum_i q_i phi_i, distances rebuilt with gradient."""
    torchpme = pytest.importorskip("torchpme")
    from vesin import NeighborList

    smearing = 1.0 / (math.sqrt(2.0) * alpha)
    # torch-pme keeps a box of k-vectors with |n_i| <~ |a_i| / (2 lr_wavelength),
    # i.e. an effective cutoff of ~ pi / lr_wavelength: 0.8 pi / k_cut covers |k| <= k_cut.
    lr_wavelength = 0.8 * math.pi / k_cut if k_cut is not None else 1.0
    calc = torchpme.EwaldCalculator(
        torchpme.CoulombPotential(smearing=smearing, prefactor=K_E), lr_wavelength=lr_wavelength
    ).to(F64)
    i, j, s = NeighborList(cutoff=r_cut, full_list=False).compute(
        pos.detach().numpy(), cell.detach().numpy(), True, "ijS"
    )
    i = torch.from_numpy(i.astype(np.int64))
    j = torch.from_numpy(j.astype(np.int64))
    s = torch.from_numpy(s.astype(np.float64))
    dist = torch.linalg.norm(pos[j] - pos[i] + s @ cell, dim=1)
    phi = calc(q[:, None], cell, pos, torch.stack([i, j], dim=1), dist, kvectors=kvectors)
    return (q[:, None] * phi).sum()


@pytest.mark.parametrize("seed", [20, 21, 22])
def test_ewald_matches_torchpme(seed):
    pytest.importorskip("torchpme")
    q, pos, cell = random_system(seed, n=20, length=7.0, skew=0.35)
    p = ewald_parameters(len(q), abs(float(torch.linalg.det(cell))), 1e-13)
    kw = dict(alpha=p.alpha, r_cut=p.r_cut, k_cut=p.k_cut)
    e, f, s = energy_forces_stress(lambda a, b, c: ewald_energy(a, b, c, **kw), q, pos, cell)
    e2, f2, s2 = energy_forces_stress(lambda a, b, c: _torchpme_energy(a, b, c, **kw), q, pos, cell)
    assert rel(e2, e) < 1e-8
    assert rel(f2, f) < 1e-8
    assert rel(s2, s) < 1e-8


def test_les_matches_torchpme_kspace_with_same_sphere():
    """torch-pme's Ewald k-space with our (full) k-sphere and a vanishing real-space
    part is exactly the LES sharp-sphere energy (same smearing convention)."""
    pytest.importorskip("torchpme")
    q, pos, cell = random_system(23, n=15, length=6.0, skew=0.35)
    sigma, k_cut = 1.0, math.pi

    def les_pme(a, b, c):
        _, k = kvectors_in_sphere(c, k_cut, half=False)
        # r_cut tiny => no real-space pairs; kvectors passed explicitly
        return _torchpme_energy(a, b, c, alpha=1 / (math.sqrt(2) * sigma), r_cut=1e-3, kvectors=k)

    e, f, s = energy_forces_stress(_les_default, q, pos, cell)
    e2, f2, s2 = energy_forces_stress(les_pme, q, pos, cell)
    assert rel(e2, e) < 1e-12
    assert rel(f2, f) < 1e-12
    assert rel(s2, s) < 1e-12


def test_chunked_checkpointed_path_matches(monkeypatch):
    """Large sums are chunked and checkpointed; same values and (double) gradients."""
    import tacegen.runtime.electrostatics as es

    q, pos, cell = random_system(24, n=10, length=5.0)
    q = q.clone().requires_grad_(True)

    def run():
        out = []
        for fn in (_ewald_fixed, _les_default, lambda a, b, c: les_energy_finite(a, b)):
            e, f, s = energy_forces_stress(fn, q, pos, cell, create_graph=True)
            (gq,) = torch.autograd.grad((f * f).sum() + s.sum(), q)
            out.append([e.detach(), f.detach(), s.detach(), gq])
        return out

    plain = run()
    monkeypatch.setattr(es, "CHUNK_ELEMENTS", 512)
    monkeypatch.setattr(es, "CHECKPOINT_MIN_ELEMENTS", 0)
    chunked = run()
    for a, b in zip(plain, chunked):
        for x, y in zip(a, b):
            assert rel(y, x) < 1e-12
