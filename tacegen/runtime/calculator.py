"""ASE calculator for tacegen models (and anything following the same contract).

Model contract
--------------
A ``torch.nn.Module`` (plain or TorchScript) with

- ``elements: list[str]`` chemical symbols; ``batch["species"]`` indexes into it;
- ``r_cut: float`` neighbour-list cutoff in Å;
- floating parameters and buffers of one dtype, float32 or float64, on one device: the
  calculator reads both from the tensors themselves, so a model converted with
  ``.float()``, ``.double()`` or ``.to(device)`` is evaluated as it now is (a ``dtype``
  attribute, if the model has one, is not trusted: ``nn.Module.to`` does not update it);
- ``forward(batch: dict[str, Tensor], compute_forces: bool = True,
  compute_stress: bool = True) -> dict[str, Tensor]`` where ``batch`` is the
  output of :func:`tacegen.runtime.data.batch_atoms`, returning

  =====================  ==========  ==================================================
  ``energy``             (B,)        total energy per structure, eV
  ``forces``             (N, 3)      -dE/dpositions, eV/Å (if compute_forces)
  ``stress``             (B, 3, 3)   (1/V) dE/dstrain, eV/Å^3 (if compute_stress;
                                     NaN or anything for non-periodic structures)
  ``node_energy``        (N,)        optional per-atom energies, eV, summing to energy
                                     (unless ``long_range_energy`` is returned)
  ``long_range_energy``  (B,)        optional long-range part of energy, eV, not split
                                     per atom (models with a long-range block)
  ``charges``            (N,)        optional atomic charges, e
  ``dipole``             (B, 3)      optional dipole, e Å (NaN rows for periodic cells)
  =====================  ==========  ==================================================

:func:`tacegen.runtime.autograd.energy_forces_stress` produces exactly these keys.

Backends
--------
``backend="torch"`` calls ``model(batch, ...)``. ``backend="numba"`` requires the
model to provide ``numba_backend()``, returning a callable with the same signature
and outputs as ``forward``; otherwise a NotImplementedError is raised. If that callable
has a ``torch_dtype`` attribute (the dtype it was bound to), batches are built in it.

Stress is returned to ASE in Voigt order (xx, yy, zz, yz, xz, xy), eV/Å^3, and
only for fully periodic cells; asking for it otherwise (molecule, slab, wire)
raises ``PropertyNotImplementedError``. For periodic cells stress is computed
together with energy and forces (it costs almost nothing extra), so ASE does not
re-run the model when it is asked for later.
"""

from __future__ import annotations

from typing import Callable, Dict, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import PropertyNotImplementedError, all_changes

from tacegen.runtime.data import batch_atoms
from tacegen.runtime.inputs import input_specs_of, output_specs_of

BACKENDS = ("torch", "numba")


# TorchScript keeps a torch.dtype attribute as its c10::ScalarType number
_SCRIPTED_DTYPES = {6: torch.float32, 7: torch.float64}


def model_dtype(model) -> torch.dtype:
    """``model.dtype`` as a torch.dtype (a scripted model reports it as an int)."""
    dtype = model.dtype
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        return _SCRIPTED_DTYPES.get(dtype, dtype)
    return dtype


def _check_model(model) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name in ("elements", "r_cut"):
        if not hasattr(model, name):
            raise TypeError(
                f"model {type(model).__name__} lacks attribute {name!r}; the model contract "
                "requires elements (list[str]) and r_cut (float, Å)"
            )
    elements = model.elements
    if isinstance(elements, str) or not all(isinstance(s, str) for s in elements) or not elements:
        raise TypeError(f"model.elements must be a non-empty list of symbols, got {elements!r}")
    if not (float(model.r_cut) > 0.0):
        raise ValueError(f"model.r_cut must be > 0 Å, got {model.r_cut}")


def model_tensors_dtype_device(model) -> tuple[torch.dtype, torch.device]:
    """The dtype of ``model``'s floating parameters and buffers and the device of all its
    tensors, read from the tensors (not from a ``dtype`` attribute, which ``.float()``
    leaves stale). A model without floating tensors falls back to its ``dtype`` attribute
    and the CPU. Raises TypeError for mixed or unsupported dtypes, ValueError for tensors
    on several devices, naming a tensor of each."""
    dtypes: Dict[torch.dtype, str] = {}
    devices: Dict[torch.device, str] = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        devices.setdefault(tensor.device, name)
        if tensor.is_floating_point():
            dtypes.setdefault(tensor.dtype, name)
    if len(devices) > 1:
        where = ", ".join(f"{name!r} on {device}" for device, name in devices.items())
        raise ValueError(f"model tensors are on several devices ({where}); move the model with model.to(device)")
    device = next(iter(devices), torch.device("cpu"))
    if len(dtypes) > 1:
        which = ", ".join(f"{name!r} is {dtype}" for dtype, name in dtypes.items())
        raise TypeError(f"model floating tensors have mixed dtypes ({which}); convert the model with "
                        "model.float() or model.double()")
    if dtypes:
        dtype = next(iter(dtypes))
    elif hasattr(model, "dtype"):
        dtype = model_dtype(model)
    else:
        raise TypeError(f"model {type(model).__name__} has no floating tensors and no dtype attribute; "
                        "cannot tell float32 from float64")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"model tensors must be torch.float32 or torch.float64, got {dtype}; convert the model "
                        "with model.float() or model.double()")
    return dtype, device


def _parse_device(device: Union[str, torch.device]) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a valid torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use 'cpu'")
    return device


class Calculator(_AseCalculator):
    """ASE calculator wrapping a model that follows the module's model contract.

    Parameters
    ----------
    model : torch.nn.Module following the contract. Its mode (train/eval) is left alone.
    backend : "torch" or "numba".
    device : None (default) to keep the model where it is and build batches on its
        device; or a torch device ("cpu", "cuda:0"), to which the model is moved
        (``nn.Module.to`` works in place, so the caller's model moves too).

    The calculator evaluates the model in the dtype and on the device of its tensors at
    each call: after ``model.float()`` batches are built in float32 (call ``reset()`` to
    drop results computed before the conversion).

    Properties: ``energy`` and ``free_energy`` (eV, equal), ``forces`` (eV/Å),
    ``stress`` (Voigt, eV/Å^3, fully periodic cells only), ``energies`` (per atom, eV;
    only if the model returns ``node_energy`` and no ``long_range_energy``: a long-range
    energy is not a sum of atomic terms, so for such models per-atom energies raise
    PropertyNotImplementedError rather than disagree with the total), and ``charges``
    (e) and ``dipole`` (e Å, finite structures only) if the model returns them.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies", "charges", "dipole"]

    def __init__(self, model, backend: str = "torch", device: Union[str, torch.device, None] = None, **kwargs):
        super().__init__(**kwargs)
        _check_model(model)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if device is not None:
            model.to(_parse_device(device))  # in place, as nn.Module.to always is
        model_tensors_dtype_device(model)  # refuse mixed dtypes or devices now, not at the first call
        self.backend = backend
        self.model = model
        # declared tensor outputs (tacegen.io_spec) are properties under their names
        self.outputs = {o["name"]: o["per"] for o in output_specs_of(model)}
        self.implemented_properties = list(type(self).implemented_properties) + list(self.outputs)
        self._evaluate: Callable[..., Dict[str, torch.Tensor]]
        if backend == "numba":
            hook = getattr(model, "numba_backend", None)
            if hook is None:
                raise NotImplementedError(
                    f"backend 'numba' is not available for model {type(model).__name__} (it has no "
                    f"numba_backend() method); allowed backends for it: ['torch']"
                )
            self._evaluate = hook()
        else:
            self._evaluate = model

    @property
    def dtype(self) -> torch.dtype:
        """The dtype batches are built in: the model's (or the bound back end's) current one."""
        bound = getattr(self._evaluate, "torch_dtype", None)
        return bound if bound is not None else model_tensors_dtype_device(self.model)[0]

    @property
    def device(self) -> torch.device:
        """The device of the model's tensors, where batches are built."""
        return model_tensors_dtype_device(self.model)[1]

    def check_state(self, atoms, tol=1e-15):
        """ASE's changes, plus ``atoms.info["charge"]`` (the total charge a long-range model reads),
        which ASE does not compare: a changed total charge must not return cached results."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and atoms.info.get("charge") != self.atoms.info.get("charge"):
            changes = list(changes) + ["info_charge"]
        if self.atoms is not None:  # the model's external inputs (atoms.info / atoms.arrays), unseen by ASE
            for spec in input_specs_of(self.model):
                where = "info" if spec["per"] == "structure" else "arrays"
                new, old = getattr(atoms, where).get(spec["name"]), getattr(self.atoms, where).get(spec["name"])
                if (new is None) != (old is None) or (new is not None and not np.array_equal(new, old)):
                    changes = list(changes) + [f"input_{spec['name']}"]
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress is only defined for fully periodic cells; this structure has "
                f"pbc={atoms.pbc.tolist()}"
            )
        batch = batch_atoms(
            atoms, list(self.model.elements), float(self.model.r_cut),
            dtype=self.dtype, device=self.device, inputs=input_specs_of(self.model),
        )
        out = self._evaluate(batch, compute_forces=True, compute_stress=periodic)

        n = len(atoms)
        energy = out["energy"].detach()
        forces = out["forces"].detach()
        if energy.shape != (1,) or forces.shape != (n, 3):
            raise ValueError(
                f"model returned energy of shape {tuple(energy.shape)} and forces of shape "
                f"{tuple(forces.shape)}; expected (1,) and ({n}, 3)"
            )
        self.results = {
            "energy": float(energy[0]),
            "free_energy": float(energy[0]),
            "forces": forces.cpu().to(torch.float64).numpy(),
        }
        if periodic:
            s = out["stress"].detach().cpu().to(torch.float64).numpy()[0]
            self.results["stress"] = np.array(
                [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
            )
        long_range = "long_range_energy" in out
        if "node_energy" in out and not long_range:
            self.results["energies"] = out["node_energy"].detach().cpu().to(torch.float64).numpy()
        elif "energies" in properties:
            why = ("its energy has a long-range part (long_range_energy) that is not a sum of atomic "
                   "energies" if long_range else "it does not return 'node_energy'")
            raise PropertyNotImplementedError(
                f"per-atom energies are not available for model {type(self.model).__name__}: {why}")
        if "charges" in out:
            self.results["charges"] = out["charges"].detach().cpu().to(torch.float64).numpy()
        elif "charges" in properties:
            raise PropertyNotImplementedError(
                f"charges are not available: model {type(self.model).__name__} does not return 'charges'")
        for name, per in self.outputs.items():  # per structure: the (3, ...) tensor; per atom: (N, 3, ...)
            value = out[name].detach().cpu().to(torch.float64).numpy()
            self.results[name] = value if per == "atom" else value[0]
        if "dipole" in out and "dipole" not in self.outputs and not periodic and not np.any(atoms.pbc):
            self.results["dipole"] = out["dipole"].detach().cpu().to(torch.float64).numpy()[0]
        elif "dipole" in properties:
            raise PropertyNotImplementedError(
                f"the dipole is only available for finite structures (pbc=False) from a model that returns "
                f"'dipole'; this structure has pbc={atoms.pbc.tolist()}")
