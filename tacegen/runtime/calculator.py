"""ASE calculator for tacegen models (and anything following the same contract).

Model contract
--------------
A ``torch.nn.Module`` (plain or TorchScript) with

- ``elements: list[str]`` chemical symbols; ``batch["species"]`` indexes into it;
- ``r_cut: float`` neighbour-list cutoff in Å;
- ``dtype: torch.dtype`` the dtype of its floating parameters (float32/float64);
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
and outputs as ``forward``; otherwise a NotImplementedError is raised.

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
    for name in ("elements", "r_cut", "dtype"):
        if not hasattr(model, name):
            raise TypeError(
                f"model {type(model).__name__} lacks attribute {name!r}; the model contract "
                "requires elements (list[str]), r_cut (float, Å) and dtype (torch dtype)"
            )
    elements = model.elements
    if isinstance(elements, str) or not all(isinstance(s, str) for s in elements) or not elements:
        raise TypeError(f"model.elements must be a non-empty list of symbols, got {elements!r}")
    if not (float(model.r_cut) > 0.0):
        raise ValueError(f"model.r_cut must be > 0 Å, got {model.r_cut}")
    if model_dtype(model) not in (torch.float32, torch.float64):
        raise TypeError(f"model.dtype must be torch.float32 or torch.float64, got {model.dtype}")


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
    model : torch.nn.Module following the contract. It is moved to ``device``
        (``nn.Module.to`` works in place); its mode (train/eval) is left alone.
    backend : "torch" or "numba".
    device : torch device string, e.g. "cpu" or "cuda:0".

    Properties: ``energy`` and ``free_energy`` (eV, equal), ``forces`` (eV/Å),
    ``stress`` (Voigt, eV/Å^3, fully periodic cells only), ``energies`` (per atom, eV;
    only if the model returns ``node_energy`` and no ``long_range_energy``: a long-range
    energy is not a sum of atomic terms, so for such models per-atom energies raise
    PropertyNotImplementedError rather than disagree with the total), and ``charges``
    (e) and ``dipole`` (e Å, finite structures only) if the model returns them.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies", "charges", "dipole"]

    def __init__(self, model, backend: str = "torch", device: Union[str, torch.device] = "cpu", **kwargs):
        super().__init__(**kwargs)
        _check_model(model)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        self.device = _parse_device(device)
        self.backend = backend
        self.model = model.to(self.device)
        self.dtype = model_dtype(model)
        for name, param in list(model.named_parameters()) + list(model.named_buffers()):
            if param.is_floating_point() and param.dtype != self.dtype:
                raise TypeError(
                    f"model.dtype is {self.dtype} but its tensor {name!r} has dtype {param.dtype}; "
                    f"convert the model with model.to({self.dtype})"
                )
            if param.device.type != self.device.type or (
                self.device.index is not None and param.device.index != self.device.index
            ):
                raise ValueError(f"model tensor {name!r} is on {param.device}, expected {self.device}")
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
            dtype=self.dtype, device=self.device,
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
        if "dipole" in out and not periodic and not np.any(atoms.pbc):
            self.results["dipole"] = out["dipole"].detach().cpu().to(torch.float64).numpy()[0]
        elif "dipole" in properties:
            raise PropertyNotImplementedError(
                f"the dipole is only available for finite structures (pbc=False) from a model that returns "
                f"'dipole'; this structure has pbc={atoms.pbc.tolist()}")
