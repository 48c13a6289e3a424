"""The device path of generated PyTorch models: every tensor they create follows the device
and dtype of the model and batch (issue: PyTorch speed, "a device path").

There is no GPU here nor in CI, so the property is proved on PyTorch's ``meta`` device: a
meta tensor has shape and dtype but no storage, and any op that mixes it with a tensor the
code created on the CPU (``torch.zeros(n)`` without ``device=``, a CPU buffer that
``.to()`` did not move, ...) raises "Expected all tensors to be on the same device". So a
forward pass with forces and stress that completes on ``meta`` shows the generated code
and the runtime keep to the input's device, as CUDA needs. The CUDA tests run the same
comparison on a GPU where one exists and are skipped with the reason otherwise.

Long-range models branch on the data (periodic or not, charges given or latent), which a
meta tensor cannot answer (``.item()``), so for every build kind a second check runs the
model on the CPU under a ``TorchFunctionMode`` that records each tensor factory
(``torch.zeros``, ``arange``, ``tensor``, ...) called without an explicit ``device``:
inside ``forward`` every created tensor must name the device of its inputs.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from ase.build import bulk, molecule
from torch.overrides import TorchFunctionMode

from model_helpers import build_module, make_model
from tacegen.runtime.data import batch_atoms
from tacegen.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ELEMENTS = ("Cu", "H", "C", "O")
SPECS = {
    "short_range": ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch"),
    "les": ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch", long_range="les"),
    "ewald": ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch", long_range="ewald"),
    "moment": ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch", basis="moment"),
}
FACTORIES = (torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace, torch.eye,
             torch.tensor, torch.as_tensor, torch.rand, torch.randn)


class DevicelessFactories(TorchFunctionMode):
    """Records every tensor factory called without an explicit ``device``, with its caller."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            caller = traceback.extract_stack(limit=2)[0]
            self.calls.append(f"torch.{func.__name__} at {caller.filename}:{caller.lineno}")
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("device_builds")
    return {kind: build_module(spec, root / kind) for kind, spec in SPECS.items()}


def structures():
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.rattle(0.05, seed=1)
    return [cell, molecule("CH3OH")]


def _moved(batch: dict, device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


def model_and_batch(modules, kind, dtype=torch.float64):
    """Model and batch of a build kind; "<kind>_mesh" forces the particle-mesh long range
    (by default used from ``mesh_min_atoms`` periodic atoms on) onto the small cell."""
    extra = {"mesh_min_atoms": 1} if kind.endswith("_mesh") else {}
    kind = kind.removesuffix("_mesh")
    model = make_model(modules[kind], elements=ELEMENTS, dtype=dtype, **extra)
    batch = batch_atoms(structures(), list(ELEMENTS), model.r_cut, dtype=dtype)
    if kind == "ewald":  # classic Ewald reads the charges from the batch
        batch["charges"] = 0.1 * torch.randn(batch["positions"].shape[0], generator=torch.Generator().manual_seed(0),
                                             dtype=dtype)
    return model, batch


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_tensor_follows_the_meta_device(modules, dtype):
    model, batch = model_and_batch(modules, "short_range", dtype)
    cpu = model(batch)
    out = model.to("meta")(_moved(batch, "meta"))
    assert set(out) == set(cpu)
    for key, value in out.items():
        assert value.device.type == "meta", key
        assert value.shape == cpu[key].shape, key
        assert value.dtype == cpu[key].dtype, key
    assert out["forces"].dtype == dtype


@pytest.mark.parametrize("kind", sorted(SPECS) + ["les_mesh", "ewald_mesh"])
def test_no_tensor_is_created_without_a_device(modules, kind):
    model, batch = model_and_batch(modules, kind)
    with DevicelessFactories() as mode:
        out = model(batch)
    assert torch.isfinite(out["forces"]).all()
    assert mode.calls == []


def test_the_factory_check_can_fail():
    with DevicelessFactories() as mode:
        torch.zeros(3)
        torch.zeros(3, device="cpu")
    assert len(mode.calls) == 1 and mode.calls[0].startswith("torch.zeros")


def test_a_cpu_tensor_inside_the_model_is_caught(modules):
    """The meta test can fail: a tensor left on the CPU (here the reference energies,
    kept out of ``.to()``) makes the meta forward raise."""
    model = make_model(modules["short_range"], elements=ELEMENTS).to("meta")
    model.atomic_energies = torch.zeros(len(ELEMENTS), dtype=torch.float64)  # a CPU tensor again
    batch = _moved(batch_atoms(structures(), list(ELEMENTS), model.r_cut), "meta")
    with pytest.raises((RuntimeError, ValueError)):
        model(batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (CI is CPU-only)")
@pytest.mark.parametrize("kind", sorted(SPECS) + ["les_mesh", "ewald_mesh"])
def test_cuda_equals_cpu(modules, kind):
    model, batch = model_and_batch(modules, kind)
    cpu = model(batch)
    gpu = model.to("cuda")(_moved(batch, "cuda"))
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(gpu[key].cpu(), cpu[key], rtol=1e-10, atol=1e-12, equal_nan=True), key
