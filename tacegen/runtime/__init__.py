"""Hand-written runtime that generated tacegen models import.

Units everywhere: energy eV, length Å, forces eV/Å, stress eV/Å^3.

Submodules (imported lazily, so ``from tacegen.runtime.radial import BesselBasis``
does not pull in ASE or vesin):

- :mod:`~tacegen.runtime.neighbours`  neighbour lists of one structure (vesin)
- :mod:`~tacegen.runtime.data`        ``batch_atoms`` (ase.Atoms -> batch dict), ``edge_vectors``
- :mod:`~tacegen.runtime.autograd`    forces, virial and stress by the strain method
- :mod:`~tacegen.runtime.radial`      ``BesselBasis``, ``PolynomialCutoff``, ``RadialMLP``
- :mod:`~tacegen.runtime.calculator`  ASE ``Calculator`` and the model contract
- :mod:`~tacegen.runtime.loader`      ``load`` a generated model package from its folder

The runtime never imports the compiler (algebra, paths, ir, backends).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "neighbour_pairs": "neighbours",
    "batch_atoms": "data",
    "edge_vectors": "data",
    "energy_forces_stress": "autograd",
    "apply_strain": "autograd",
    "derivatives": "autograd",
    "BesselBasis": "radial",
    "PolynomialCutoff": "radial",
    "RadialMLP": "radial",
    "Calculator": "calculator",
    "load": "loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tacegen.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tacegen.runtime.{module}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
