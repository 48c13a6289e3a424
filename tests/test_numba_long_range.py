"""The long-range pass on the Numba back end (LES and classic Ewald), against PyTorch.

Separate from test_numba_model.py so the two cold JIT compilations run on different
pytest-xdist workers.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings

from conftest import SEEDS
from model_helpers import build_module, make_model, numeric_forces, random_crystal, random_molecule, rel_err
from tacegen.runtime.data import batch_atoms
from tacegen.spec import ModelSpec
from test_numba_model import _energy, numba_eval

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")]


@pytest.fixture(scope="module")
def long_range_models(tmp_path_factory):
    """Small builds (lmax 1, nu 1, scalar hidden features: quick to compile) with each
    long-range mode, torch and numba; the equivariant core is tested in test_numba_model."""
    root = tmp_path_factory.mktemp("numba_long_range")
    out = {}
    for mode in ("les", "ewald"):
        module = build_module(ModelSpec(lmax=1, nu=1, hidden_lmax=0, long_range=mode), root / mode)
        model = make_model(module, elements=("Cu", "O"), seed=6, layers=2)
        if mode == "les":
            # latent charges O(0.01-1) e (random readouts give ~5e-3 e, a long-range share of
            # the forces of ~1e-5): see long_range_share
            with torch.no_grad():
                model.charge_readout.weight.mul_(LES_CHARGE_SCALE)
            silent = copy.deepcopy(model)
            with torch.no_grad():
                silent.charge_readout.weight.zero_()
            out["les_short_range_only"] = silent
        out[mode] = (model, model.numba_backend())
        out[f"{mode}_module"] = module
    return out


LES_CHARGE_SCALE = 60.0


def long_range_share(model, silent, structures) -> float:
    """max |F - F_short| / max |F| on the PyTorch model, F_short from the same model with the
    latent charges zeroed: how much of the forces the LES part carries."""
    batch = batch_atoms(structures, model.elements, model.r_cut)
    full = model(batch)["forces"].detach().numpy()
    short = silent(batch)["forces"].detach().numpy()
    return float(np.abs(full - short).max() / np.abs(full).max())


def _charged_structures(rng, given: bool):
    structures = [random_molecule(rng, symbols=("Cu", "O")), random_crystal(rng, symbols=("Cu", "O"))]
    for atoms in structures:
        if given:
            q = rng.normal(size=len(atoms))
            atoms.set_initial_charges(q - q.mean())
    return structures


@pytest.mark.parametrize("mode", ["les", "ewald"])
@settings(max_examples=4, deadline=None)
@given(seed=SEEDS)
def test_long_range_numba_matches_pytorch(long_range_models, mode, seed):
    """The long-range programs (latent charges, reciprocal and pair kernels, and their IR
    reverse passes) printed for Numba give the PyTorch model's numbers, molecule and
    crystal in one batch."""
    model, fast = long_range_models[mode]
    structures = _charged_structures(np.random.default_rng(seed), mode == "ewald")
    if mode == "les":  # the LES part carries a visible share of the forces of each structure
        for atoms in structures:
            assume(long_range_share(model, long_range_models["les_short_range_only"], atoms) > 0.1)
    batch = batch_atoms(structures, model.elements, model.r_cut)
    ref = {k: v.detach().numpy() for k, v in model(batch).items()}
    out = {k: v.numpy() for k, v in fast(batch).items()}
    assert np.abs(ref["long_range_energy"]).max() > 1e-6
    for key in ("energy", "forces", "long_range_energy"):
        assert rel_err(out[key], ref[key]) < 1e-10, key
    assert rel_err(out["stress"][1], ref["stress"][1]) < 1e-10
    assert np.abs(out["charges"] - ref["charges"]).max() < 1e-10 * max(1.0, np.abs(ref["charges"]).max())
    assert rel_err(out["dipole"][0], ref["dipole"][0]) < 1e-10 and np.isnan(out["dipole"][1]).all()


def test_long_range_numba_forces_match_finite_differences(long_range_models):
    """Reference: central differences of the Numba energy; the LES part carries a visible
    share of the forces (guard), so wrong long-range forces cannot hide under round-off."""
    model, fast = long_range_models["les"]
    atoms = random_crystal(np.random.default_rng(31), 3, symbols=("Cu", "O"))
    assert long_range_share(model, long_range_models["les_short_range_only"], atoms) > 0.1
    out = numba_eval(fast, model, atoms)
    numeric = numeric_forces(lambda a: _energy(fast, model, a), atoms)
    assert rel_err(out["forces"], numeric) < 1e-7


def test_numba_ewald_matches_torchpme(long_range_models):
    """The Ewald mode of the Numba model, short-range readouts zeroed, is the classic Ewald
    energy of the given charges: it agrees with torch-pme (an independent Ewald code) on a
    random neutral triclinic cell at the same splitting (energy, forces, stress)."""
    from tacegen.runtime.electrostatics import energy_forces_stress
    from tacegen.runtime.long_range import ewald_batch_parameters
    from test_electrostatics import _torchpme_energy

    pytest.importorskip("torchpme")
    model, _ = long_range_models["ewald"]
    silent = make_model(long_range_models["ewald_module"], elements=("Cu", "O"), seed=6, layers=2,
                        ewald_accuracy=1e-12)
    with torch.no_grad():
        for block in silent.blocks:
            for p in block.readout.parameters():
                p.zero_()
    fast = silent.numba_backend()
    rng = np.random.default_rng(40)
    atoms = random_crystal(rng, 6, symbols=("Cu", "O"))
    q = rng.normal(size=len(atoms))
    atoms.set_initial_charges(q - q.mean())
    batch = batch_atoms(atoms, silent.elements, silent.r_cut)
    out = {k: v.numpy() for k, v in fast(batch).items()}
    alpha, r_cut, k_cut = ewald_batch_parameters(batch, 1e-12)
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    e, f, s = energy_forces_stress(lambda a, b, c: _torchpme_energy(a, b, c, alpha=alpha, r_cut=r_cut, k_cut=k_cut),
                                   t(atoms.get_initial_charges()), t(atoms.positions), t(atoms.cell[:]))
    assert abs(out["energy"][0] - float(e)) < 1e-8 * abs(float(e))
    assert rel_err(out["forces"], f.numpy()) < 1e-8
    assert rel_err(out["stress"][0], s.numpy()) < 1e-8
