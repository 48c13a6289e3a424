"""Per-element constants given as lists or as mappings by element.

:func:`atomic_energy_list` turns a model's ``atomic_energies`` argument (E0s, eV) into a
list aligned with its ``elements``: ``None`` (zeros), a sequence in the order of
``elements``, or a mapping keyed by chemical symbol or atomic number (mace-torch's E0s
habit, e.g. ``{"H": -13.6, 8: -2041.8}``); every element must be given exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import List, Optional, Sequence, Union

EnergySpec = Optional[Union[Sequence[float], Mapping]]


def atomic_energy_list(elements: Sequence[str], atomic_energies: EnergySpec) -> List[float]:
    """Reference energies (eV) in the order of ``elements`` (see the module docstring)."""
    from ase.data import atomic_numbers, chemical_symbols

    if atomic_energies is None:
        return [0.0] * len(elements)
    if isinstance(atomic_energies, Mapping):
        by_symbol = {}
        for key, value in atomic_energies.items():
            if isinstance(key, int) and not isinstance(key, bool) and 0 < key < len(chemical_symbols):
                symbol = chemical_symbols[key]
            elif isinstance(key, str) and key in atomic_numbers:
                symbol = key
            else:
                raise ValueError(f"atomic_energies has key {key!r}, which is neither a chemical symbol nor an "
                                 f"atomic number")
            if symbol in by_symbol:
                raise ValueError(f"atomic_energies gives element {symbol} twice")
            by_symbol[symbol] = float(value)
        missing = [s for s in elements if s not in by_symbol]
        extra = [s for s in by_symbol if s not in elements]
        if missing or extra:
            raise ValueError(f"atomic_energies must give exactly the model's elements {list(elements)}: "
                             f"missing {missing}, not elements of the model {extra}")
        return [by_symbol[s] for s in elements]
    if isinstance(atomic_energies, (str, bytes)) or len(atomic_energies) != len(elements):
        raise ValueError(f"atomic_energies has {len(atomic_energies)} values for {len(elements)} elements "
                         f"{list(elements)} (or give a mapping by element)")
    return [float(e) for e in atomic_energies]
