"""Every kind of generated PyTorch build under TorchScript and torch.compile.

Build kinds: short range ("none"), LES and classic Ewald long range (and, at the end of the
file, builds with inputs and tensor outputs, also with LES, and the moment basis), each evaluated on a
batch of a molecule (finite) and a random triclinic crystal (periodic), float64. The
scripted module (and a saved and reloaded copy) and the torch.compile'd module must give
the eager module's energies, forces, virial and stress to 1e-12 relative.

torch.compile: dynamo traces the whole model with an affordable back end ("aot_eager" for
the short-range build: AOTAutograd traces forward and backward graphs, no inductor C++
compile; "eager" for the long-range builds). The model is not one graph: data-dependent
shapes (neighbour lists, k-vector sets, .tolist() of counts) and ``torch.autograd.grad``
for forces break it (torch 2.13: short range 6 graphs / 5 breaks, LES 23 / 22, Ewald 40 /
39; ``benchmarks/bench_compile.py`` prints the counts and the inductor compile time).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from model_helpers import build_module, make_model, random_crystal, random_molecule
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.inputs import input_specs_of
from tacegen.spec import ModelSpec

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")]

KINDS = {"none": ("Cu", "O"), "les": ("Cu", "O"), "ewald": ("Na", "Cl")}
KEYS = ("energy", "forces", "virial", "stress")


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile_builds")
    return {kind: build_module(ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch", long_range=kind), root / kind)
            for kind in KINDS}


def model_and_batch(modules, kind, seed=0):
    elements = KINDS[kind]
    model = make_model(modules[kind], elements=elements, seed=seed)
    if kind == "les":
        with torch.no_grad():
            model.charge_readout.weight.mul_(60.0)  # latent charges O(0.1-1) e
    rng = np.random.default_rng(seed + 11)
    structures = [random_molecule(rng, 6, elements), random_crystal(rng, 5, elements)]
    if kind == "ewald":
        for atoms in structures:
            q = rng.normal(size=len(atoms))
            atoms.set_initial_charges(q - q.mean())
    return model, batch_atoms(structures, model.elements, model.r_cut)


def assert_same(out, ref, kind):
    keys = KEYS + (("long_range_energy", "charges") if kind != "none" else ())
    for key in keys:
        assert float(ref[key].detach().nan_to_num().abs().max()) > 1e-3, key  # not a vacuous comparison
        torch.testing.assert_close(out[key].detach(), ref[key].detach(), rtol=1e-12, atol=1e-12, equal_nan=True)
    if kind != "none":
        assert float(ref["long_range_energy"].abs().min()) > 1e-2  # both structures carry a long-range term


def _save_and_load(scripted):
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("kind", list(KINDS))
def test_torchscript_equals_eager(modules, kind):
    model, batch = model_and_batch(modules, kind)
    ref = model(batch)
    scripted = torch.jit.script(model)
    for candidate in (scripted, _save_and_load(scripted)):
        assert_same(candidate(batch), ref, kind)


@pytest.mark.parametrize("kind", ["les", "ewald"])
def test_torchscript_long_range_refuses_what_eager_refuses(modules, kind):
    model, _ = model_and_batch(modules, kind)
    scripted = torch.jit.script(model)
    rng = np.random.default_rng(5)
    slab = random_crystal(rng, 3, KINDS[kind])
    slab.pbc = [True, True, False]
    batch = batch_atoms([random_molecule(rng, 4, KINDS[kind]), slab], model.elements, model.r_cut)
    with pytest.raises((ValueError, torch.jit.Error), match=r"structure 1 .*pbc=\[True, True, False\]"):
        scripted(batch)


@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_compile_equals_eager(modules, kind):
    model, batch = model_and_batch(modules, kind, seed=2)
    ref = model(batch)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager" if kind == "none" else "eager")
    try:
        assert_same(compiled(batch), ref, kind)
        assert_same(compiled(batch), ref, kind)  # the cached graphs again
    finally:
        torch._dynamo.reset()


# Builds with external inputs and tensor outputs, and the moment basis (TMP): the same two
# checks, with the declared outputs compared too.
IO_SPECS = {
    "io": ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", inputs=("total_charge", "electric_field"),
                    outputs=("dipole", "polarizability")),
    "moment": ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch", basis="moment"),
    # long range with inputs and outputs: the declared total charge constrains the latent charges
    "les_io": ModelSpec(lmax=2, nu=2, hidden_lmax=2, backends="torch", long_range="les",
                        inputs=("total_charge", "electric_field"), outputs=("atomic_dipole", "polarizability")),
}


@pytest.fixture(scope="module")
def io_modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile_io_builds")
    return {kind: build_module(spec, root / kind) for kind, spec in IO_SPECS.items()}


def io_model_and_batch(io_modules, kind):
    elements = ("Cu", "O")
    model = make_model(io_modules[kind], elements=elements, seed=3)
    rng = np.random.default_rng(17)
    structures = [random_molecule(rng, 6, elements), random_crystal(rng, 5, elements)]
    for k, atoms in enumerate(structures):
        atoms.info["total_charge"] = float(k) - 0.5
        atoms.info["electric_field"] = rng.normal(size=3)
    return model, batch_atoms(structures, model.elements, model.r_cut, inputs=input_specs_of(model))


@pytest.mark.parametrize("kind", list(IO_SPECS))
@pytest.mark.parametrize("how", ["script", "compile"])
def test_io_and_moment_builds_script_and_compile(io_modules, kind, how):
    model, batch = io_model_and_batch(io_modules, kind)
    ref = model(batch)
    keys = KEYS + tuple(spec.name for spec in IO_SPECS[kind].outputs)
    if IO_SPECS[kind].long_range != "none":
        keys += ("long_range_energy", "charges")
    if how == "script":
        candidate = torch.jit.script(model)
    else:
        torch._dynamo.reset()
        candidate = torch.compile(model, backend="eager")
    try:
        out = candidate(batch)
    finally:
        torch._dynamo.reset()
    for key in keys:
        assert float(ref[key].detach().nan_to_num().abs().max()) > 1e-3, key
        torch.testing.assert_close(out[key].detach(), ref[key].detach(), rtol=1e-12, atol=1e-12, equal_nan=True)
