"""Radial bases, cutoff envelopes and the radial MLP used by generated models.

All modules act elementwise on distances ``r`` in Å of any shape (...,), usually
(E,) for E edges, and are TorchScript compatible (``torch.jit.script``).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, List, Sequence

import numpy as np
import torch
from torch import Tensor, nn


def _positive_float(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


class BesselBasis(nn.Module):
    """Spherical Bessel functions of order 0 (DimeNet / NequIP / MACE radial basis).

        B_n(r) = sqrt(2 / r_cut) * sin(w_n r) / r,      w_n = n pi / r_cut,  n = 1..num_basis

    ``forward(r)`` maps shape (...,) to (..., num_basis). Evaluated as
    ``sqrt(2/r_cut) * w_n * sinc(w_n r / pi)``, so r = 0 gives the finite limit
    sqrt(2/r_cut) w_n instead of NaN. The frequencies are stored as
    ``harmonics`` h_n (initially n = 1..num_basis, exact in any float dtype) with
    w_n = h_n pi / r_cut; with ``trainable=True`` ``harmonics`` is a parameter,
    otherwise a buffer.
    """

    def __init__(self, r_cut: float, num_basis: int = 8, trainable: bool = False):
        super().__init__()
        self.r_cut = _positive_float("r_cut", r_cut)
        self.num_basis = _positive_int("num_basis", num_basis)
        harmonics = torch.arange(1, self.num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.harmonics = nn.Parameter(harmonics)
        else:
            self.register_buffer("harmonics", harmonics)
        self.prefactor = math.sqrt(2.0 / self.r_cut)
        self.base_frequency = math.pi / self.r_cut

    def forward(self, r: Tensor) -> Tensor:
        # sinc(x) = sin(pi x) / (pi x), so w sinc(w r / pi) = sin(w r) / r
        x = (r / self.r_cut).unsqueeze(-1) * self.harmonics
        return (self.prefactor * self.base_frequency) * self.harmonics * torch.sinc(x)

    def extra_repr(self) -> str:
        return f"r_cut={self.r_cut}, num_basis={self.num_basis}"


class PolynomialCutoff(nn.Module):
    """Smooth polynomial envelope of NequIP / MACE (Klicpera et al., DimeNet).

    With x = r / r_cut:

        f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)   for x < 1
        f(x) = 0                                                          for x >= 1

    f(0) = 1; f(1) = f'(1) = f''(1) = 0, so f is C^2 across r_cut; and
    f'(x) = -p(p+1)(p+2)/2 x^(p-1) (1-x)^2 <= 0, so f decreases monotonically.
    ``p`` is an int >= 1 (default 6).
    """

    def __init__(self, r_cut: float, p: int = 6):
        super().__init__()
        self.r_cut = _positive_float("r_cut", r_cut)
        self.p = _positive_int("p", p)

    def forward(self, r: Tensor) -> Tensor:
        p = float(self.p)
        x = r / self.r_cut
        xp = torch.pow(x, self.p)
        f = (
            1.0
            - 0.5 * (p + 1.0) * (p + 2.0) * xp
            + p * (p + 2.0) * xp * x
            - 0.5 * p * (p + 1.0) * xp * x * x
        )
        return torch.where(x < 1.0, f, torch.zeros_like(f))

    def extra_repr(self) -> str:
        return f"r_cut={self.r_cut}, p={self.p}"


@functools.lru_cache(maxsize=None)
def _gauss_hermite(points: int):
    return np.polynomial.hermite_e.hermegauss(points)


def second_moment(activation: Callable[[Tensor], Tensor], points: int = 64) -> float:
    """E[activation(z)^2] for z ~ N(0, 1), by Gauss-Hermite quadrature."""
    nodes, weights = _gauss_hermite(points)
    z = torch.as_tensor(nodes, dtype=torch.float64)
    with torch.no_grad():
        values = activation(z).to(torch.float64).numpy()
    return float(np.sum(weights * values**2) / math.sqrt(2.0 * math.pi))


class NormalisedActivation(nn.Module):
    """``gain * act(x)`` with gain chosen so that E[out^2] = 1 for x ~ N(0, 1)."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act
        moment = second_moment(act)
        if not (moment > 0.0 and math.isfinite(moment)):
            raise ValueError(f"activation {act} has second moment {moment} under N(0,1); cannot normalise")
        self.gain = 1.0 / math.sqrt(moment)

    def forward(self, x: Tensor) -> Tensor:
        return self.gain * self.act(x)


class RadialMLP(nn.Module):
    """Multi-layer perceptron on radial features, with variance-preserving init.

    Layers: Linear(in, hidden[0]) -> act -> ... -> Linear(hidden[-1], out), no
    biases (so zero input gives zero output, as radial weights of an envelope-
    multiplied basis should). Weights are drawn from N(0, 1/fan_in) and every
    activation is rescaled to unit second moment (:class:`NormalisedActivation`),
    so inputs with unit second moment give outputs with second moment ~1 at
    initialisation. ``activation`` is a module class (or zero-argument factory),
    instantiated once per hidden layer. ``hidden=[]`` gives a single linear map.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: Callable[[], nn.Module] = nn.SiLU,
    ):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a list of ints, got {hidden!r}")
        widths: List[int] = [self.in_features]
        widths += [_positive_int(f"hidden[{k}]", h) for k, h in enumerate(hidden)]
        widths.append(self.out_features)
        layers: List[nn.Module] = []
        for k in range(len(widths) - 1):
            linear = nn.Linear(widths[k], widths[k + 1], bias=False)
            nn.init.normal_(linear.weight, mean=0.0, std=1.0 / math.sqrt(widths[k]))
            layers.append(linear)
            if k < len(widths) - 2:
                layers.append(NormalisedActivation(activation()))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
