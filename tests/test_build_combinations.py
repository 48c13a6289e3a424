"""Build options that landed separately, used together: the moment basis (TMP) with
external inputs and tensor outputs. The properties are the ones each option proves alone:
the energy is invariant and forces, dipole and polarizability rotate as a (pseudo-)vector
and a rank-2 tensor under proper and improper rotations of the geometry and the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from conftest import haar_orthogonal
from model_helpers import build_module, make_model
from tacegen.runtime.data import batch_atoms
from tacegen.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ELEMENTS = ["H", "C", "O"]
SPEC = ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", basis="moment",
                 inputs=("electric_field",), outputs=("dipole", "polarizability"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    module = build_module(SPEC, tmp_path_factory.mktemp("combos") / SPEC.name)
    return make_model(module, elements=ELEMENTS)


def evaluate(model, atoms):
    return model(batch_atoms([atoms], ELEMENTS, model.r_cut, inputs=model.input_specs))


@pytest.mark.parametrize("proper", [True, False])
def test_moment_basis_with_field_input_and_tensor_outputs_is_equivariant(model, proper):
    rng = np.random.default_rng(7)
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=2)
    atoms.info["electric_field"] = rng.normal(size=3)
    q = haar_orthogonal(rng, proper)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ q.T
    rotated.info["electric_field"] = q @ atoms.info["electric_field"]  # a polar vector
    out, out_rot = evaluate(model, atoms), evaluate(model, rotated)
    Q = torch.from_numpy(q)
    assert abs(float(out["energy"][0])) > 1e-3  # not a vacuous comparison
    assert torch.allclose(out_rot["energy"], out["energy"], rtol=1e-12, atol=1e-13)
    assert torch.allclose(out_rot["forces"], out["forces"] @ Q.T, atol=1e-12)
    assert out["dipole"].abs().max() > 1e-3 and out["polarizability"].abs().max() > 1e-3
    assert torch.allclose(out_rot["dipole"][0], Q @ out["dipole"][0], atol=1e-12)
    assert torch.allclose(out_rot["polarizability"][0], Q @ out["polarizability"][0] @ Q.T, atol=1e-12)


def test_the_field_changes_the_moment_model(model):
    atoms = molecule("CH3OH")
    atoms.info["electric_field"] = np.zeros(3)
    field_free = evaluate(model, atoms)
    atoms.info["electric_field"] = np.array([0.0, 0.0, 0.5])
    in_field = evaluate(model, atoms)
    assert abs(float(in_field["energy"][0] - field_free["energy"][0])) > 1e-6
