"""Error metrics: MAE and RMSE of energy, forces and stress, in total and per config type.

Units of the reports: energy meV/atom (error of E/N), forces meV/Å (per Cartesian
component), stress meV/Å^3 (per component of the 3x3 tensor). A quantity without labels
reports ``None``. Tensor targets (:mod:`tacegen.train.targets`, ``extra``) report
``<name>_mae``/``<name>_rmse`` per component, in milli-units of their labels. Sums are kept as float64 tensors so data-parallel ranks can add them
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

    def __init__(self, keep_values: bool = False, extra: Dict[str, str] = None, parts: Dict[str, list] = None):
        self.groups: Dict[str, Dict[str, Errors]] = {}
        self.keep_values = keep_values
        self.extra = dict(extra or {})  # tensor target name -> "structure" or "atom"
        # tensor target name -> [(quantity name, projector (3^n, 3^n) onto one irreducible part)]
        self.parts = {name: list(p) for name, p in (parts or {}).items() if name in self.extra}
        self.quantities = QUANTITIES + tuple(self.extra) + tuple(q for p in self.parts.values() for q, _ in p)
        self.values: Dict[str, List[np.ndarray]] = {f"{q}_{w}": [] for q in self.quantities for w in ("ref", "pred")}
        self.structures = 0

    def _group(self, name: str) -> Dict[str, Errors]:
        return self.groups.setdefault(name, {q: Errors() for q in self.quantities})

    def add(self, out: Dict[str, Tensor], batch: Dict[str, Tensor], config_types: Optional[List[str]] = None) -> None:
        """Add the errors of one batch (labels NaN where absent are skipped)."""
        def array(t: Tensor) -> np.ndarray:
            return t.detach().cpu().double().numpy()

        n = batch["num_atoms"].detach().cpu().numpy()
        ptr = np.concatenate([[0], np.cumsum(n)])
        self.structures += len(n)
        groups = [("all",) + ((config_types[b],) if config_types else ()) for b in range(len(n))]
        ref_e, pred_e = array(batch["energy"]) / n, array(out["energy"]) / n
        forces = ("forces" in out) and (array(batch["forces"]), array(out["forces"]))
        stress = ("stress" in out) and (array(batch["stress"]).reshape(-1, 9), array(out["stress"]).reshape(-1, 9))
        for b in range(len(n)):
            pieces = {}
            if not np.isnan(ref_e[b]):
                pieces["energy"] = (ref_e[b:b + 1], pred_e[b:b + 1])
            if forces:
                ref = forces[0][ptr[b]:ptr[b + 1]]
                if ref.size and not np.isnan(ref).any():
                    pieces["forces"] = (ref.ravel(), forces[1][ptr[b]:ptr[b + 1]].ravel())
            if stress and not np.isnan(stress[0][b]).any():
                pieces["stress"] = (stress[0][b], stress[1][b])
            for name, per in self.extra.items():
                if name not in out or name not in batch:
                    continue
                if per == "hessian":  # items of the chosen Hessian rows, tagged with their structure
                    rows = torch.nonzero(batch[f"{name}_structure"] == b).flatten()
                else:
                    rows = slice(ptr[b], ptr[b + 1]) if per == "atom" else slice(b, b + 1)
                ref = array(batch[name][rows]).ravel()
                if ref.size and not np.isnan(ref).any():
                    pred = array(out[name][rows]).ravel()
                    pieces[name] = (ref, pred)
                    for quantity, projector in self.parts.get(name, ()):  # error of each irreducible part
                        width = projector.shape[0]
                        pieces[quantity] = ((ref.reshape(-1, width) @ projector.T).ravel(),
                                            (pred.reshape(-1, width) @ projector.T).ravel())
            for quantity, (ref, pred) in pieces.items():
                for group in groups[b]:
                    self._group(group)[quantity].add(pred - ref)
                if self.keep_values:
                    self.values[f"{quantity}_ref"].append(ref)
                    self.values[f"{quantity}_pred"].append(pred)

    # ---------------------------------------------------------------- reports
    def _summary(self, errors: Dict[str, Errors]) -> Dict[str, Optional[float]]:
        out: Dict[str, Optional[float]] = {}
        for q in self.quantities:
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
        return torch.tensor([v for q in self.quantities for v in (e[q].abs, e[q].sq, float(e[q].n))],
                            dtype=torch.float64)

    def load_vector(self, vector: Tensor) -> None:
        e = self._group("all")
        values = vector.tolist()
        for k, q in enumerate(self.quantities):
            e[q].abs, e[q].sq, e[q].n = values[3 * k], values[3 * k + 1], int(round(values[3 * k + 2]))
