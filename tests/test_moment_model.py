"""A TMP (``basis="moment"``) model end to end: spec, build folder, PyTorch physics
(equivariance under proper and improper rotations, translations, permutations; finite-
difference forces) with hypothesis, and the Numba back end against PyTorch (1e-10, float64).

One small build (lmax 2, nu 2, hidden ranks 0..1, two layers) serves the whole module, so
Numba compiles its kernels once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import SEEDS, haar_orthogonal
from model_helpers import (build_module, evaluate, make_model, numeric_forces, random_crystal, random_molecule,
                           rel_err, transformed)
from tacegen.build import compile_spec
from tacegen.ir.cost import program_cost
from tacegen.ir.nodes import Couple
from tacegen.runtime.data import batch_atoms
from tacegen.spec import ModelSpec, SpecError

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")]

SPEC = ModelSpec(lmax=2, nu=2, hidden_lmax=1, basis="moment")
SYMBOLS = ("Cu", "O")


# ----------------------------------------------------------------------------- spec


def test_spec_records_the_basis_and_keeps_tace_hashes():
    tace = ModelSpec(lmax=2, nu=2, hidden_lmax=1)
    assert "basis" not in tace.to_dict() and SPEC.to_dict()["basis"] == "moment"
    assert SPEC.name == "tmp_l2_nu2" and tace.name == "tace_l2_nu2"
    assert SPEC.hash != tace.hash
    assert ModelSpec.from_json(SPEC.canonical_json()) == SPEC
    assert ModelSpec.from_dict({**tace.to_dict(), "basis": "ict"}).hash == tace.hash


def test_bad_basis_is_a_clear_error():
    with pytest.raises(SpecError, match=r"basis='spherical' is not available; allowed: ict, moment"):
        ModelSpec(basis="spherical")
    with pytest.raises(SpecError, match="basis='moment' with nu=1 has no rank-2 features"):
        ModelSpec(lmax=2, nu=1, hidden_lmax=2, basis="moment")


def test_programs_use_moment_tables_and_symmetric_storage():
    compiled = compile_spec(SPEC)
    edge = compiled.optimised.edge_basis
    assert [v.storage for v in edge.outputs] == ["reduced", "reduced", "symmetric"]
    tables = [op.coupling for p in compiled.programs() for op in p.ops if isinstance(op, Couple)]
    assert tables and all(type(t).__name__ == "MomentTable" for t in tables)
    prod = compiled.optimised.products[-1]
    assert all(v.storage == "reduced" for v in prod.outputs)
    assert program_cost(prod).flops > 0


# ----------------------------------------------------------------------------- PyTorch physics


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    return build_module(SPEC, tmp_path_factory.mktemp("tmp_model") / "build")


@pytest.fixture(scope="module")
def model(module):
    return make_model(module, elements=SYMBOLS, seed=4, layers=2)


def test_build_folder_spec(module):
    from pathlib import Path

    folder = Path(module.__file__).parent
    assert json.loads((folder / "spec.json").read_text())["spec"]["basis"] == "moment"
    assert "--basis moment" in (folder / "model.py").read_text()


def _structure(rng, periodic):
    return random_crystal(rng, symbols=SYMBOLS) if periodic else random_molecule(rng, symbols=SYMBOLS)


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "crystal"])
@settings(max_examples=8, deadline=None)
@given(seed=SEEDS, proper=st.booleans())
def test_invariance_and_equivariance(model, periodic, seed, proper):
    rng = np.random.default_rng(seed)
    atoms = _structure(rng, periodic)
    q = haar_orthogonal(rng, proper)
    t = rng.normal(scale=3.0, size=3)
    perm = rng.permutation(len(atoms))
    ref = evaluate(model, atoms)
    assume(np.abs(ref["forces"]).max() > 1e-3 and np.abs(ref["node_energy"]).max() > 1e-4)
    new = evaluate(model, transformed(atoms, q, t, perm))
    scale = max(abs(ref["energy"][0]), np.abs(ref["node_energy"]).sum())
    assert abs(new["energy"][0] - ref["energy"][0]) < 1e-12 * scale
    assert rel_err(new["node_energy"], ref["node_energy"][perm]) < 1e-12
    assert rel_err(new["forces"], (ref["forces"] @ q.T)[perm]) < 1e-12
    if periodic:
        assert rel_err(new["stress"][0], q @ ref["stress"][0] @ q.T) < 1e-12


def test_a_rotation_does_change_non_invariant_outputs(model):
    """Guard: forces do rotate (the check above is not comparing constants)."""
    rng = np.random.default_rng(3)
    atoms = random_molecule(rng, symbols=SYMBOLS)
    q = haar_orthogonal(rng, True)
    ref = evaluate(model, atoms)
    new = evaluate(model, transformed(atoms, q))
    assert rel_err(new["forces"], ref["forces"]) > 1e-3


def _energy(model, atoms) -> float:
    return float(evaluate(model, atoms)["energy"][0])


@settings(max_examples=3, deadline=None)
@given(seed=SEEDS)
def test_forces_match_finite_differences(model, seed):
    atoms = random_crystal(np.random.default_rng(seed), 3, symbols=SYMBOLS)
    forces = evaluate(model, atoms)["forces"]
    assume(np.abs(forces).max() > 1e-2)
    numeric = numeric_forces(lambda a: _energy(model, a), atoms)
    assert rel_err(forces, numeric) < 1e-7


# ----------------------------------------------------------------------------- Numba


@pytest.fixture(scope="module")
def fast(model):
    return model.numba_backend()


def _numba(fast, model, atoms):
    out = fast(batch_atoms(atoms, model.elements, model.r_cut, dtype=model.dtype))
    return {k: v.detach().to(torch.float64).numpy() for k, v in out.items()}


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "crystal"])
@settings(max_examples=4, deadline=None)
@given(seed=SEEDS)
def test_numba_matches_pytorch_float64(model, fast, periodic, seed):
    atoms = _structure(np.random.default_rng(seed), periodic)
    ref = evaluate(model, atoms)
    out = _numba(fast, model, atoms)
    assert np.abs(ref["forces"]).max() > 1e-6
    for key in ("energy", "node_energy", "forces"):
        assert rel_err(out[key], ref[key]) < 1e-10, key
    if periodic:
        assert rel_err(out["stress"], ref["stress"]) < 1e-10


def test_numba_comparison_can_fail(model, module):
    other = make_model(module, elements=SYMBOLS, seed=5, layers=2)
    atoms = random_crystal(np.random.default_rng(2), symbols=SYMBOLS)
    assert rel_err(evaluate(other, atoms)["energy"], evaluate(model, atoms)["energy"]) > 1e-3


# ----------------------------------------------------------------------------- study axis


def test_basis_is_a_study_axis():
    from tacegen.study.axes import AxisError, parse_grid
    from tacegen.train.config import TrainConfig

    assert parse_grid("basis=ict,moment") == ("basis", ["ict", "moment"])
    with pytest.raises(AxisError, match="axis basis: value 'spherical' rejected: basis must be one of"):
        parse_grid("basis=ict,spherical")
    assert TrainConfig(train="-").basis == "ict"


def test_rank_two_hidden_features_and_long_range(tmp_path):
    """hidden_lmax 2 (ICT hidden features contracted with moment tensors in the inner layer
    kind, three layers) with an LES block: still equivariant, forces rotate."""
    spec = ModelSpec(lmax=2, nu=3, hidden_lmax=2, basis="moment", long_range="les", backends=("torch",))
    package = build_module(spec, tmp_path / spec.name)
    model = make_model(package, elements=SYMBOLS, seed=1, layers=3)
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        atoms = random_crystal(rng, symbols=SYMBOLS)
        q, t, perm = haar_orthogonal(rng, False), rng.normal(size=3), rng.permutation(len(atoms))
        ref = evaluate(model, atoms)
        new = evaluate(model, transformed(atoms, q, t, perm))
        assert np.abs(ref["long_range_energy"]).max() > 0
        assert abs(new["energy"][0] - ref["energy"][0]) < 1e-12 * max(1.0, abs(ref["energy"][0]))
        assert rel_err(new["forces"], (ref["forces"] @ q.T)[perm]) < 1e-12
        assert rel_err(new["stress"][0], q @ ref["stress"][0] @ q.T) < 1e-12


def test_cli_build_basis_moment(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tacegen.cli import cli

    monkeypatch.chdir(tmp_path)
    env = {"TACEGEN_CACHE_DIR": str(tmp_path / "cache")}
    res = CliRunner().invoke(cli, ["build", "--lmax", "1", "--nu", "2", "--basis", "moment", "--backend", "torch",
                                   "--report"], env=env)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "generated" / "tmp_l1_nu2" / "model.py").is_file()
    assert "Basis: moment (TMP)" in res.output and "symmetric storage" in res.output
    res = CliRunner().invoke(cli, ["build", "--basis", "spherical"], env=env)
    assert res.exit_code == 2 and "'spherical' is not one of 'ict', 'moment'" in res.output
