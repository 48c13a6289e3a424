"""Exponential moving average (EMA) of a model's floating-point parameters.

After update n the shadow weights are  s <- d_n s + (1 - d_n) p  with the warm-up
d_n = min(decay, (1 + n) / (10 + n))  (as torch_ema, used by mace-torch). Validation and
``best.pt`` use the shadow weights (:meth:`EMA.applied`).
"""

from __future__ import annotations

import contextlib
from typing import Dict, List

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.names: List[str] = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow: Dict[str, torch.Tensor] = {n: params[n].detach().clone() for n in self.names}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        params = dict(model.named_parameters())
        for n in self.names:
            self.shadow[n].mul_(d).add_(params[n].detach(), alpha=1.0 - d)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """Temporarily load the shadow weights into ``model``."""
        params = dict(model.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.names}
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(self.shadow[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(backup[n])

    def state_dict(self) -> Dict[str, object]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        shadow = state["shadow"]
        missing = [n for n in self.names if n not in shadow]
        if missing:
            raise ValueError(f"EMA state lacks weights {missing[:3]}...")
        for n in self.names:
            self.shadow[n].copy_(shadow[n])
