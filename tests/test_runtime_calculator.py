"""The ASE Calculator end to end, with the reference PairModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.verlet import VelocityVerlet
from hypothesis import given, settings
from hypothesis import strategies as st

from tacegen.runtime.calculator import Calculator
from tacegen.runtime.data import batch_atoms
from test_runtime_support import PairModel, random_structure


class CountingModel(PairModel):
    """PairModel that counts forward calls and can hide node energies."""

    def __init__(self, node_energy: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0
        self.node_energy_output = node_energy

    def forward(self, batch, compute_forces: bool = True, compute_stress: bool = True):
        self.calls += 1
        out = super().forward(batch, compute_forces, compute_stress)
        if not self.node_energy_output:
            del out["node_energy"]
        return out


def attach(atoms, **kwargs):
    atoms.calc = Calculator(PairModel().eval(), **kwargs)
    return atoms


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_matches_model_and_ase_numerical_forces_and_stress(seed):
    atoms = attach(random_structure(np.random.default_rng(seed), n_atoms=3))
    model = atoms.calc.model
    out = model(batch_atoms(atoms, model.elements, model.r_cut))
    assert atoms.get_potential_energy() == pytest.approx(out["energy"].item(), abs=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_forces(), out["forces"].numpy(), atol=1e-12)
    s = out["stress"][0].numpy()
    voigt = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
    np.testing.assert_allclose(atoms.get_stress(), voigt, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), s, atol=1e-12)
    np.testing.assert_allclose(calculate_numerical_forces(atoms, eps=1e-5), atoms.get_forces(), atol=1e-7)
    np.testing.assert_allclose(calculate_numerical_stress(atoms, eps=1e-6), atoms.get_stress(), atol=1e-7)


def test_per_atom_energies_sum_to_the_energy():
    atoms = attach(molecule("CH3CH2OH"))
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)


def test_energies_unavailable_without_node_energy():
    atoms = molecule("H2O")
    atoms.calc = Calculator(CountingModel(node_energy=False).eval())
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError, match="does not return 'node_energy'"):
        atoms.get_potential_energies()


@pytest.mark.parametrize("pbc", [(False, False, False), (True, True, False)])
def test_stress_is_refused_unless_fully_periodic(pbc):
    atoms = attach(random_structure(np.random.default_rng(1), pbc=pbc))
    assert np.isfinite(atoms.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError, match=r"fully periodic.*pbc=\[" + str(pbc[0])):
        atoms.get_stress()


def test_results_are_cached_and_stress_comes_with_the_first_call():
    model = CountingModel().eval()
    atoms = bulk("C", "diamond", a=3.6, cubic=True)
    atoms.calc = Calculator(model)
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    assert model.calls == 1
    atoms.positions[0] += 0.05
    atoms.get_forces()
    assert model.calls == 2


def test_float32_model():
    """Reference: the same PairModel in float64. A rattled cell, so no force is zero by
    symmetry; tolerances are a few hundred float32 roundings of each quantity's scale."""
    atoms = bulk("C", "diamond", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    reference = attach(atoms.copy())
    e64, f64, s64 = reference.get_potential_energy(), reference.get_forces(), reference.get_stress()
    assert np.abs(f64).max() > 0.05 and np.abs(s64).max() > 0.05  # not vacuous
    atoms.calc = Calculator(PairModel(dtype=torch.float32).eval())
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    assert forces.dtype == np.float64 and stress.dtype == np.float64
    eps = float(np.finfo(np.float32).eps)
    energy_scale = np.abs(reference.get_potential_energies()).sum()  # round-off is per term
    assert abs(energy - e64) < 100 * eps * energy_scale
    assert np.abs(forces - f64).max() < 1e-4 * np.abs(f64).max()
    assert np.abs(stress - s64).max() < 1e-4 * np.abs(s64).max()


def test_short_nve_run_conserves_energy():
    """Velocity Verlet from rest on a rattled cell: potential energy turns into kinetic
    energy (guard: zero forces would leave it at 0) and the total is conserved far below
    that exchange (measured drift 7e-8 eV for 2.7e-3 eV exchanged; forces scaled by 0.99
    drift 3e-5 eV, by 0.5 drift 7e-4 eV: both fail)."""
    atoms = attach(bulk("C", "diamond", a=3.6, cubic=True))
    atoms.rattle(0.05, seed=0)

    def total():
        return atoms.get_potential_energy() + atoms.get_kinetic_energy()

    start = total()
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(20)
    kinetic = atoms.get_kinetic_energy()
    assert kinetic > 5e-4
    assert abs(total() - start) < 1e-3 * kinetic


def test_numba_backend_hook():
    class WithNumba(PairModel):
        def numba_backend(self):
            def evaluate(batch, compute_forces=True, compute_stress=True):
                out = self.forward(batch, compute_forces, compute_stress)
                out["energy"] = out["energy"] + 1.0  # mark the path taken
                return out

            return evaluate

    atoms = molecule("H2O")
    torch_energy = attach(atoms.copy()).get_potential_energy()
    atoms.calc = Calculator(WithNumba().eval(), backend="numba")
    assert atoms.get_potential_energy() == pytest.approx(torch_energy + 1.0)


def test_bad_backend_device_and_model_are_named():
    with pytest.raises(NotImplementedError, match=r"'numba' is not available .*\['torch'\]"):
        Calculator(PairModel(), backend="numba")
    with pytest.raises(ValueError, match=r"one of \['torch', 'numba'\], got 'jax'"):
        Calculator(PairModel(), backend="jax")
    with pytest.raises(ValueError, match=r"device 'gpu0' is not a valid torch device"):
        Calculator(PairModel(), device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"'cuda' requested but CUDA is not available"):
            Calculator(PairModel(), device="cuda")
    mixed = PairModel(dtype=torch.float64)
    mixed.depth.data = mixed.depth.data.float()
    with pytest.raises(TypeError, match=r"mixed dtypes \('depth' is torch.float32, 'e0' is torch.float64\)"):
        Calculator(mixed)
    model = PairModel()
    del model.r_cut
    with pytest.raises(TypeError, match=r"lacks attribute 'r_cut'"):
        Calculator(model)
    with pytest.raises(TypeError, match=r"float32 or torch.float64, got torch.float16"):
        Calculator(PairModel().half())
    with pytest.raises(TypeError, match=r"torch.nn.Module, got str"):
        Calculator("model.pt")


def test_unknown_element_error_reaches_the_user():
    atoms = attach(Atoms("NH3", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match=r"atom 0 is 'N'.*\['H', 'C', 'O'\]"):
        atoms.get_potential_energy()


class BatchSpy(PairModel):
    """PairModel that records the dtype and device of the batches it is given."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def forward(self, batch, compute_forces: bool = True, compute_stress: bool = True):
        self.seen.append((batch["positions"].dtype, batch["positions"].device))
        return super().forward(batch, compute_forces, compute_stress)


def test_follows_the_model_dtype_after_float_and_double():
    model = BatchSpy(dtype=torch.float64).eval()
    atoms = bulk("C", "diamond", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = Calculator(model)
    e64 = atoms.get_potential_energy()
    model.float()  # the stale attribute model.dtype still says float64
    assert model.dtype == torch.float64 and atoms.calc.dtype == torch.float32
    atoms.calc.reset()
    e32 = atoms.get_potential_energy()
    model.double()
    atoms.calc.reset()
    e64_again = atoms.get_potential_energy()
    assert [dtype for dtype, _ in model.seen] == [torch.float64, torch.float32, torch.float64]
    assert e32 != e64 and e32 == pytest.approx(e64, rel=1e-5)  # float32 rounding, same model
    assert e64_again == pytest.approx(e64, rel=1e-6)  # the weights went through float32 once


def test_keeps_the_model_on_its_device_by_default(monkeypatch):
    model = PairModel().to("meta")  # a device that is not the CPU (copying out of it fails)
    calc = Calculator(model)
    assert calc.device == torch.device("meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    # an explicit device moves the model (in place), and the calculator follows it
    cpu_model = PairModel()
    moved = []
    original = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or original(self, *a, **k))
    Calculator(cpu_model)
    assert moved == []  # device=None: no move at all
    calc = Calculator(cpu_model, device="cpu")
    assert moved == [(torch.device("cpu"),)] and calc.device == torch.device("cpu")


def test_model_on_several_devices_is_refused():
    model = PairModel()
    model.e0 = torch.nn.Parameter(model.e0.detach().to("meta"))
    with pytest.raises(ValueError, match=r"several devices \('depth' on cpu, 'e0' on meta\)"):
        Calculator(model)


def test_bound_backend_dtype_is_used():
    class BoundFloat64(PairModel):
        def numba_backend(self):
            def evaluate(batch, compute_forces=True, compute_stress=True):
                evaluate.seen = batch["positions"].dtype
                return PairModel(dtype=torch.float64)(batch, compute_forces, compute_stress)

            evaluate.torch_dtype = torch.float64  # bound to float64 weights
            return evaluate

    model = BoundFloat64(dtype=torch.float32)
    atoms = molecule("H2O")
    atoms.calc = Calculator(model, backend="numba")
    assert atoms.calc.dtype == torch.float64
    atoms.get_potential_energy()
    assert atoms.calc._evaluate.seen == torch.float64
