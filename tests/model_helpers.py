"""Helpers for the tests of generated models: small builds, random structures, rotations.

Used by test_model_physics.py, test_model_build.py and test_ir.py. Every model here is
SMALL (a few channels, r_cut ~3.5 Å, one hidden radial layer) so the suite stays fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from tacegen.build import write_build
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.loader import load
from tacegen.spec import ModelSpec

R_CUT = 3.5
SMALL = dict(channels=6, r_cut=R_CUT, num_radial=5, radial_hidden=(8,), readout_hidden=8)


@contextmanager
def torch_threads(n: int = 1):
    """Run with ``n`` torch threads, restoring the previous setting.

    These tiny models are latency bound; two intra-op threads on a busy 2-core
    machine make them ~20x slower (spin-waiting), so the model tests use one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_module(spec: ModelSpec, folder: Path, optimised: bool = True):
    """Build ``spec`` into ``folder`` and import it (the generated package module)."""
    return load(write_build(spec, folder, optimised=optimised))


def make_model(module, elements=("Cu",), seed: int = 0, dtype=torch.float64, **overrides):
    """A small TACE with reproducible random weights (eval mode).

    Reference energies default to zero, so the energy is the learned part only and
    relative tolerances are meaningful; ``scale`` is raised so it is well above round-off.
    """
    kwargs = dict(SMALL)
    kwargs.update(scale=3.0)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = module.TACE(list(elements), dtype=dtype, **kwargs)
    return model.eval()


def numeric_forces(energy, atoms, h: float = 1e-5) -> np.ndarray:
    """Central finite differences -dE/dr_ik of ``energy(atoms) -> float`` (step ``h`` Å),
    the independent reference of every force test."""
    numeric = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            numeric[i, k] = -(energy(plus) - energy(minus)) / (2 * h)
    return numeric


def evaluate(model, structures, dtype=None, r_cut=None):
    """model(batch) for one Atoms or a list, outputs detached to float64 numpy."""
    dtype = dtype or model.dtype
    batch = batch_atoms(structures, model.elements, r_cut or model.r_cut, dtype=dtype)
    out = model(batch)
    return {k: v.detach().to(torch.float64).numpy() for k, v in out.items()}


# ----------------------------------------------------------------------------- structures

def _place(rng, n, box, min_dist, existing=None, cell=None, pbc=False, tries=10_000):
    """Random points in a box (or cell, fractional) with all (image) distances > min_dist."""
    points = [] if existing is None else list(existing)
    for _ in range(tries):
        if len(points) == n:
            break
        if cell is None:
            p = rng.uniform(0.0, box, size=3)
        else:
            p = rng.uniform(0.0, 1.0, size=3) @ cell
        ok = True
        for q in points:
            d = p - q
            if cell is not None and pbc:
                # minimum image over the 27 neighbouring cells (cells here are not too skewed)
                frac = np.linalg.solve(cell.T, d)
                frac -= np.round(frac)
                shifts = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
                dist = np.linalg.norm((frac + shifts) @ cell, axis=1).min()
            else:
                dist = np.linalg.norm(d)
            if dist < min_dist:
                ok = False
                break
        if ok:
            points.append(p)
    if len(points) != n:
        raise RuntimeError("could not place the atoms; loosen the constraints")
    return np.array(points)


def random_molecule(rng: np.random.Generator, n: int | None = None, symbols=("Cu",),
                    min_dist: float = 1.0) -> Atoms:
    """4-10 atoms in a compact box (so most pairs are within r_cut), all distances > min_dist."""
    n = n if n is not None else int(rng.integers(4, 11))
    box = 1.2 * n ** (1 / 3) + 1.0
    pos = _place(rng, n, box, min_dist)
    species = [symbols[int(k)] for k in rng.integers(0, len(symbols), size=n)]
    return Atoms(species, positions=pos)


def random_cell(rng: np.random.Generator, length=(3.0, 4.5), skew: float = 0.35) -> np.ndarray:
    """A random triclinic cell (rows = lattice vectors), well conditioned."""
    while True:
        cell = np.diag(rng.uniform(*length, size=3)) + skew * rng.uniform(-1.0, 1.0, size=(3, 3)) * length[0]
        vol = abs(np.linalg.det(cell))
        lengths = np.linalg.norm(cell, axis=1)
        if vol > 0.5 * np.prod(lengths):  # not too skewed
            return cell


def random_crystal(rng: np.random.Generator, n: int | None = None, symbols=("Cu",),
                   min_dist: float = 1.6) -> Atoms:
    """2-6 atoms in a random triclinic periodic cell (a cell smaller than 2 r_cut: many images)."""
    n = n if n is not None else int(rng.integers(2, 7))
    for _ in range(100):
        cell = random_cell(rng)
        try:
            pos = _place(rng, n, None, min_dist, cell=cell, pbc=True, tries=2000)
        except RuntimeError:
            continue
        species = [symbols[int(k)] for k in rng.integers(0, len(symbols), size=n)]
        return Atoms(species, positions=pos, cell=cell, pbc=True)
    raise RuntimeError("could not build a crystal")


def transformed(atoms: Atoms, q: np.ndarray | None = None, t: np.ndarray | None = None,
                perm: np.ndarray | None = None) -> Atoms:
    """Atoms with positions Q r + t (rows: r Q^T + t), cell rows rotated too, atoms permuted."""
    out = atoms.copy()
    pos = out.positions.copy()
    cell = np.asarray(out.cell[:]).copy()
    if q is not None:
        pos = pos @ q.T
        cell = cell @ q.T
    if t is not None:
        pos = pos + t
    numbers = out.numbers.copy()
    if perm is not None:
        pos, numbers = pos[perm], numbers[perm]
    return Atoms(numbers=numbers, positions=pos, cell=cell, pbc=out.pbc)


def rel_err(a, b) -> float:
    """max |a - b| relative to max(|a|, |b|); ``b`` is the reference.

    Raises ``ValueError`` when the reference is all zero (or empty): agreement with zero
    says nothing (a broken code returning zeros would pass), so such a comparison must
    be rewritten with a reference that is not zero, or with an absolute bound.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not np.any(b != 0):
        raise ValueError(f"rel_err: the reference (shape {b.shape}) is all zero; the comparison "
                         "would be vacuous")
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return float(np.abs(a - b).max(initial=0.0) / scale)
