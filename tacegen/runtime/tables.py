"""Coupling tables for generated modules: exact rationals in the source, floats at load time."""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence, Tuple

import torch


def coupling_table(shape: Tuple[int, int, int], entries: Sequence[tuple], dtype: torch.dtype) -> torch.Tensor:
    """Dense (d1, d2, d3) tensor from sparse ``(m1, m2, m3, "p/q")`` entries.

    Each coefficient is parsed as an exact Fraction and rounded once, to ``dtype``.
    """
    table = torch.zeros(shape, dtype=torch.float64)
    for m1, m2, m3, coefficient in entries:
        table[m1, m2, m3] = float(Fraction(coefficient))
    return table.to(dtype)
