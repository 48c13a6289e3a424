"""Error metrics: MAE and RMSE of energy, forces and stress, in total and per config type.

Units of the reports: energy meV/atom (error of E/N), forces meV/Å (per Cartesian
component), stress meV/Å^3 (per component of the 3x3 tensor). A quantity without labels
reports ``None``. Sums are kept as float64 tensors so data-parallel ranks can add them
(:meth:`Metrics.vector` / :meth:`Metrics.from_vector`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

QUANTITIES = ("energy", "forces", "stress")
_MILLI = 1000.0


class Errors:
    """Running sums of |error|, error^2 and counts of one quantity."""

    __slots__ = ("abs", "sq", "n")

    def __init__(self):
        self.abs, self.sq, self.n = 0.0, 0.0, 0

    def add(self, residual: np.ndarray) -> None:
        r = np.asarray(residual, dtype=np.float64).ravel()
        self.abs += float(np.abs(r).sum())
        self.sq += float((r * r).sum())
        self.n += r.size

    def mae(self) -> Optional[float]:
        return _MILLI * self.abs / self.n if self.n else None

    def rmse(self) -> Optional[float]:
        return _MILLI * math.sqrt(self.sq / self.n) if self.n else None


class Metrics:
    """Accumulates errors of model outputs against the labels of batches."""

    def __init__(self, keep_values: bool = False):
        self.groups: Dict[str, Dict[str, Errors]] = {}
        self.keep_values = keep_values
        self.values: Dict[str, List[np.ndarray]] = {f"{q}_{w}": [] for q in QUANTITIES for w in ("ref", "pred")}
        self.structures = 0

    def _group(self, name: str) -> Dict[str, Errors]:
        return self.groups.setdefault(name, {q: Errors() for q in QUANTITIES})

    def add(self, out: Dict[str, Tensor], batch: Dict[str, Tensor], config_types: Optional[List[str]] = None) -> None:
        n = batch["num_atoms"].detach().cpu().numpy()
        self.structures += len(n)
        types = config_types or ["Default"] * len(n)
        atom_batch = batch["batch"].detach().cpu().numpy()
        per = {
            "energy": ((out["energy"].detach().cpu().double().numpy() - batch["energy"].cpu().double().numpy()) / n,
                       batch["energy"].cpu().double().numpy(), out["energy"].detach().cpu().double().numpy() / n,
                       batch["energy"].cpu().double().numpy() / n),
        }
        for b in range(len(n)):
            for group in ("all", types[b]) if config_types else ("all",):
                errors = self._group(group)
                e = per["energy"]
                if not np.isnan(e[1][b]):
                    errors["energy"].add(e[0][b:b + 1])
                if "forces" in out:
                    ref = batch["forces"][torch.as_tensor(atom_batch == b)].cpu().double().numpy()
                    if ref.size and not np.isnan(ref).any():
                        pred = out["forces"].detach()[torch.as_tensor(atom_batch == b)].cpu().double().numpy()
                        errors["forces"].add(pred - ref)
                if "stress" in out:
                    ref = batch["stress"][b].cpu().double().numpy()
                    if not np.isnan(ref).any():
                        errors["stress"].add(out["stress"].detach()[b].cpu().double().numpy() - ref)
        if self.keep_values:
            mask = ~np.isnan(per["energy"][1])
            self.values["energy_ref"].append(per["energy"][3][mask])
            self.values["energy_pred"].append(per["energy"][2][mask])
            if "forces" in out:
                ref = batch["forces"].cpu().double().numpy()
                keep = ~np.isnan(ref).any(axis=1)
                self.values["forces_ref"].append(ref[keep].ravel())
                self.values["forces_pred"].append(out["forces"].detach().cpu().double().numpy()[keep].ravel())
            if "stress" in out:
                ref = batch["stress"].cpu().double().numpy().reshape(-1, 9)
                keep = ~np.isnan(ref).any(axis=1)
                self.values["stress_ref"].append(ref[keep].ravel())
                self.values["stress_pred"].append(out["stress"].detach().cpu().double().numpy().reshape(-1, 9)[keep].ravel())

    # ---------------------------------------------------------------- reports
    @staticmethod
    def _summary(errors: Dict[str, Errors]) -> Dict[str, Optional[float]]:
        out: Dict[str, Optional[float]] = {}
        for q in QUANTITIES:
            out[f"{q}_mae"] = errors[q].mae()
            out[f"{q}_rmse"] = errors[q].rmse()
        return out

    def summary(self) -> Dict[str, Optional[float]]:
        return self._summary(self._group("all"))

    def by_config_type(self) -> Dict[str, Dict[str, Optional[float]]]:
        return {name: self._summary(e) for name, e in sorted(self.groups.items()) if name != "all"}

    # ---------------------------------------------------------------- distributed sums
    def vector(self) -> Tensor:
        """Totals of the ``all`` group as a float64 vector (for all_reduce)."""
        e = self._group("all")
        return torch.tensor([v for q in QUANTITIES for v in (e[q].abs, e[q].sq, float(e[q].n))], dtype=torch.float64)

    def load_vector(self, vector: Tensor) -> None:
        e = self._group("all")
        values = vector.tolist()
        for k, q in enumerate(QUANTITIES):
            e[q].abs, e[q].sq, e[q].n = values[3 * k], values[3 * k + 1], int(round(values[3 * k + 2]))
