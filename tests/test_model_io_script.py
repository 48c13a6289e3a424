"""Generated models with external inputs and tensor outputs under TorchScript (issues 14 and 15).

One small build (lmax 2, nu 2, hidden_lmax 2) with every input kind (total charge, fields,
a fidelity category, per-atom charges and moments) and every readout kind (natural parts,
the pseudo 1e part of a general rank-2 tensor, time-odd outputs). The scripted module and a
saved and reloaded copy must give the eager module's energy, forces, virial, stress and
every declared output to 1e-12 in float64, follow the inputs as eager does, and refuse
what eager refuses with the same message."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch

from model_helpers import build_module, make_model, random_crystal, torch_threads
from test_model_io import INPUTS, OUTPUTS, structure
from tacegen.runtime.data import batch_atoms
from tacegen.spec import ModelSpec

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")

ODD_OUTPUTS = ("magnetization:structure:1:general:e:odd", "spin_density:atom:1:general:e:odd")
NAMES = ("dipole", "polarizability", "born_charges", "magnetization", "spin_density")
KEYS = ("energy", "node_energy", "forces", "virial") + NAMES


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec = ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", inputs=INPUTS, outputs=OUTPUTS + ODD_OUTPUTS)
    module = build_module(spec, tmp_path_factory.mktemp("io_script") / "build")
    with torch_threads(1):
        yield make_model(module, elements=("H", "C", "O"), input_categories={"fidelity": 3})


def crystal(seed=3):
    """A periodic cell carrying every input (so the stress is defined and compared)."""
    rng = np.random.default_rng(seed)
    atoms = random_crystal(rng, 4, ("H", "C", "O"))
    atoms.info.update(total_charge=-1.0, electric_field=rng.normal(size=3), magnetic_field=rng.normal(size=3),
                      fidelity=2)
    atoms.arrays["initial_charges"] = rng.normal(size=len(atoms))
    atoms.arrays["magmom"] = rng.normal(size=len(atoms))
    atoms.arrays["magmom_vector"] = rng.normal(size=(len(atoms), 3))
    return atoms


def _save_and_load(scripted):
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def assert_same(out, ref):
    for key in KEYS:
        assert float(ref[key].detach().abs().max()) > 1e-4, key  # not a vacuous comparison
        torch.testing.assert_close(out[key].detach(), ref[key].detach(), rtol=1e-12, atol=1e-12, msg=key)
    periodic = ref["stress"][1].detach()
    assert bool(torch.isfinite(periodic).all()) and float(periodic.abs().max()) > 1e-4
    torch.testing.assert_close(out["stress"].detach(), ref["stress"].detach(), rtol=1e-12, atol=1e-12,
                               equal_nan=True)


def test_scripted_io_model_equals_eager(model):
    batch = batch_atoms([structure(0), crystal()], model.elements, model.r_cut, inputs=model.input_specs)
    ref = model(batch)
    assert set(NAMES) <= set(ref)
    scripted = torch.jit.script(model)
    for candidate in (scripted, _save_and_load(scripted)):
        out = candidate(batch)
        assert set(out) == set(ref)
        assert_same(out, ref)


def test_scripted_io_model_follows_its_inputs(model):
    scripted = torch.jit.script(model)
    energies = []
    for charge, fidelity in ((0.0, 0), (1.0, 0), (1.0, 2)):
        atoms = structure(1)
        atoms.info.update(total_charge=charge, fidelity=fidelity)
        batch = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
        out, ref = scripted(batch), model(batch)
        torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["dipole"], ref["dipole"], rtol=1e-12, atol=1e-12)
        energies.append(float(out["energy"][0]))
    scale = max(abs(e) for e in energies)
    assert scale > 1e-3
    assert abs(energies[0] - energies[1]) > 1e-8 * scale  # total charge matters
    assert abs(energies[1] - energies[2]) > 1e-8 * scale  # fidelity matters


def test_scripted_io_model_refuses_what_eager_refuses(model):
    scripted = torch.jit.script(model)
    atoms = structure(0)
    atoms.info["fidelity"] = 3
    batch = batch_atoms(atoms, model.elements, model.r_cut, inputs=model.input_specs)
    message = r"structure 0: input 'fidelity' = 3 is outside 0..2"
    with pytest.raises(ValueError, match=message):
        model(batch)
    with pytest.raises(torch.jit.Error, match=message):
        scripted(batch)
    batch = batch_atoms(structure(0), model.elements, model.r_cut, inputs=model.input_specs)
    del batch["input_electric_field"]
    message = r"the batch lacks 'input_electric_field' \(input 'electric_field'\)"
    with pytest.raises(KeyError, match=message):
        model(batch)
    with pytest.raises(torch.jit.Error, match=message):
        scripted(batch)


def test_state_dict_of_the_first_io_release_loads(model):
    """Checkpoints written before the readout became TorchScript compatible name their tensors
    ``outputs.params.w_<output>_<part>``, ``inputs.node_table<k>``, ...; they still load."""
    state = model.state_dict()
    old = dict(state)
    renamed = 0
    for prefix, module in (("inputs.", model.inputs), ("outputs.", model.outputs)):
        (hook,) = module._load_state_dict_pre_hooks.values()
        renames = getattr(hook, "hook", hook).renames
        for before, after in renames.items():
            old[prefix + before] = old.pop(prefix + after)
            renamed += 1
    assert renamed > 10 and "outputs.params.w_born_charges_1" in old and "outputs.params.u_born_charges_1" in old
    assert "inputs.node_table3" in old and "outputs.odd_magnetization_0_1" in old
    fresh = make_model(sys.modules[type(model).__module__], elements=("H", "C", "O"), seed=7,
                       input_categories={"fidelity": 3})
    batch = batch_atoms(structure(2), model.elements, model.r_cut, inputs=model.input_specs)
    assert float((fresh(batch)["dipole"] - model(batch)["dipole"]).abs().max()) > 1e-6  # other weights
    fresh.load_state_dict(old)
    for key, value in model(batch).items():
        torch.testing.assert_close(fresh(batch)[key], value, rtol=0, atol=0, equal_nan=True, msg=key)


def test_calculator_runs_a_scripted_io_model_with_its_inputs_and_outputs(model):
    """A TorchScript module keeps no Python lists of dicts: the calculator finds the inputs it
    reads and the outputs it returns through the JSON copies the scripted module keeps."""
    from tacegen.runtime.calculator import Calculator

    scripted = _save_and_load(torch.jit.script(model))
    reference = crystal()
    reference.calc = Calculator(model)
    reference.get_potential_energy()
    ref = dict(reference.calc.results)
    atoms = crystal()
    atoms.calc = Calculator(scripted)
    assert set(NAMES) <= set(atoms.calc.implemented_properties)
    atoms.get_potential_energy()
    for key in ("energy", "forces") + NAMES:
        assert np.abs(ref[key]).max() > 1e-4, key
        np.testing.assert_allclose(atoms.calc.results[key], ref[key], rtol=1e-12, atol=1e-12, err_msg=key)
    atoms.info["total_charge"] = 2.0  # an input change is seen (not a cached result)
    assert abs(atoms.get_potential_energy() - ref["energy"]) > 1e-8 * abs(ref["energy"])
