"""The training loss: a registry of named targets, each a weighted mean of errors.

A target compares one model output with one label of the batch and returns the sum
of its weighted errors and the count it is averaged over; the loss is

    L = sum_t  w_t * (sum of errors_t) / (count_t)

with counts taken over the whole global batch (in data-parallel runs each rank holds
a part; :class:`Loss` is given the global counts), so 2 processes give the gradient of
1. Errors: ``mse`` squares the residual, ``huber`` applies torch's Huber function
(0.5 x^2 inside ``delta``) per component. Per-structure weights multiply every term.

Built-in targets (units of the residual):
- ``energy``  per-atom energy (E_pred - E_ref) / N, eV/atom; averaged over structures
- ``forces``  force components, eV/Å; mean over atoms of the mean over 3 components
- ``stress``  stress components, eV/Å^3; mean over structures of the mean over 9

New outputs (dipoles, charges, polarisabilities) register a :class:`Target` with
:func:`register` and get a weight in the loss without changes to the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class Target:
    """A named target: ``errors(out, batch) -> (per-item residuals, per-item weights)``.

    Residuals have shape (items, components); items whose label is absent (NaN) are
    dropped by the loss. ``count`` of a target is the number of labelled items.
    """

    name: str
    residuals: Callable[[Dict[str, Tensor], Dict[str, Tensor]], Tuple[Tensor, Tensor]]
    needs_forces: bool = False
    needs_stress: bool = False


TARGETS: Dict[str, Target] = {}


def register(target: Target) -> Target:
    if target.name in TARGETS:
        raise ValueError(f"a target named {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target


def _energy(out, batch):
    n = batch["num_atoms"].to(out["energy"].dtype)
    return ((out["energy"] - batch["energy"]) / n).unsqueeze(-1), batch["weight"]


def _forces(out, batch):
    return out["forces"] - batch["forces"], batch["weight"].index_select(0, batch["batch"])


def _stress(out, batch):
    return (out["stress"] - batch["stress"]).reshape(-1, 9), batch["weight"]


register(Target("energy", _energy))
register(Target("forces", _forces, needs_forces=True))
register(Target("stress", _stress, needs_stress=True))


def _label_mask(target: str, batch: Dict[str, Tensor]) -> Tensor:
    label = batch[target]
    return ~torch.isnan(label.reshape(label.shape[0], -1)).any(dim=1)


def counts(batch: Dict[str, Tensor], weights: Dict[str, float]) -> Dict[str, Tensor]:
    """Labelled items per target in this (part of a) batch, as float64 scalars."""
    return {name: _label_mask(name, batch).sum().to(torch.float64) for name, w in weights.items() if w > 0}


class Loss:
    """Weighted sum of target errors (``kind`` ``mse`` or ``huber``)."""

    def __init__(self, weights: Dict[str, float], kind: str = "mse", huber_delta: float = 0.01):
        unknown = [name for name in weights if name not in TARGETS]
        if unknown:
            raise ValueError(f"unknown loss target(s) {unknown}; registered: {sorted(TARGETS)}")
        self.weights = {name: float(w) for name, w in weights.items()}
        self.kind = kind
        self.huber_delta = huber_delta

    @property
    def needs_forces(self) -> bool:
        return any(TARGETS[n].needs_forces for n, w in self.weights.items() if w > 0)

    @property
    def needs_stress(self) -> bool:
        return any(TARGETS[n].needs_stress for n, w in self.weights.items() if w > 0)

    def _error(self, residual: Tensor) -> Tensor:
        if self.kind == "huber":
            zero = torch.zeros_like(residual)
            return torch.nn.functional.huber_loss(residual, zero, reduction="none", delta=self.huber_delta)
        return residual * residual

    def terms(self, out: Dict[str, Tensor], batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Sum of weighted errors per target (each averaged over its components)."""
        sums: Dict[str, Tensor] = {}
        for name, w in self.weights.items():
            if w <= 0:
                continue
            mask = _label_mask(name, batch)
            residual, item_weight = TARGETS[name].residuals(out, batch)
            residual, item_weight = residual[mask], item_weight[mask]
            sums[name] = (self._error(residual).mean(dim=1) * item_weight).sum()
        return sums

    def __call__(self, out, batch, global_counts: Dict[str, Tensor]) -> Tensor:
        total = None
        for name, value in self.terms(out, batch).items():
            n = global_counts[name]
            term = self.weights[name] * value / n.clamp(min=1).to(value.dtype)
            total = term if total is None else total + term
        if total is None:
            raise ValueError("the loss has no term: every target weight is 0 or the data have no such labels")
        return total
