"""``TrainConfig``: every option of ``tacegen train``, with TOML input and output.

Precedence: built-in defaults < ``--config run.toml`` < command-line flags. The
effective configuration is written to ``<out>/config.toml`` so a run folder records
exactly what produced it. Keys are the flag names with ``_`` for ``-``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from tacegen.train.labels import LabelKeys

#: Options that may differ between a run and its ``--resume`` (they do not change the
#: trajectory of the weights, or extend it).
RESUMABLE_CHANGES = frozenset({"epochs", "max_time", "patience", "quiet", "resume", "force", "device",
                               "test"})

LOSSES = ("mse", "huber")
SCHEDULERS = ("plateau", "cosine", "none")
DTYPES = ("float64", "float32")
LONG_RANGE = ("none", "les", "ewald")
BASES = ("ict", "moment")


@dataclass
class TrainConfig:
    """Options of a training run (see ``tacegen train --help`` for each)."""

    # model: a build folder, or a spec built on the fly through the cache
    model: Optional[str] = None
    lmax: int = 3
    nu: int = 3
    hidden_lmax: int = 1
    long_range: str = "none"
    basis: str = "ict"
    channels: int = 64
    layers: int = 2
    r_cut: float = 5.0
    num_radial: int = 8
    radial_hidden: List[int] = field(default_factory=lambda: [64, 64, 64])
    readout_hidden: int = 16
    cutoff_p: int = 6
    edge_chunk: int = 16384
    elements: Optional[List[str]] = None
    # data
    train: Optional[str] = None
    valid: Optional[str] = None
    valid_fraction: float = 0.1
    test: List[str] = field(default_factory=list)
    energy_key: str = LabelKeys.energy
    forces_key: str = LabelKeys.forces
    stress_key: str = LabelKeys.stress
    virials_key: str = LabelKeys.virials
    weight_key: str = LabelKeys.weight
    config_type_key: str = LabelKeys.config_type
    targets: List[str] = field(default_factory=list)  # NAME=KEY[:WEIGHT] tensor targets (tacegen.train.targets)
    hessian_rows: Optional[int] = None  # train on K random Hessian rows per structure and epoch (default all)
    batch_size: int = 4
    valid_batch_size: Optional[int] = None
    max_atoms_per_batch: Optional[int] = None
    data_cache: bool = True
    # normalisation
    e0s: str = "least-squares"
    # loss
    loss: str = "mse"
    huber_delta: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 1.0
    stage_two_start: Optional[float] = None
    stage_two_energy_weight: float = 1000.0
    stage_two_forces_weight: float = 100.0
    stage_two_stress_weight: float = 1.0
    stage_two_lr: float = 1e-3
    # optimisation
    lr: float = 0.01
    weight_decay: float = 5e-7
    scheduler: str = "plateau"
    lr_factor: float = 0.8
    scheduler_patience: int = 50
    clip_grad: Optional[float] = 10.0
    ema_decay: float = 0.99
    dtype: str = "float64"
    epochs: int = 100
    max_time: Optional[float] = None
    patience: Optional[int] = None
    seed: int = 0
    device: str = "cpu"
    # run folder
    out: str = "runs/run"
    resume: bool = False
    force: bool = False
    quiet: bool = False

    # ---------------------------------------------------------------- construction
    @classmethod
    def keys(cls) -> List[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(cls, toml_path: Optional[str] = None, **flags: Any) -> "TrainConfig":
        """Defaults, then the TOML file, then the flags that are not None."""
        values: Dict[str, Any] = {}
        if toml_path is not None:
            values.update(read_toml(toml_path, cls.keys()))
        for key, value in flags.items():
            if key not in cls.keys():
                raise ValueError(f"unknown training option {key!r}")
            if value is None or (isinstance(value, (tuple, list)) and len(value) == 0 and key == "test"):
                continue
            values[key] = value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Normalise types and reject impossible values with a one-line error."""
        def positive_int(name, low=1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

        def number(name, low=0.0, strict=False, optional=False):
            value = getattr(self, name)
            if value is None and optional:
                return
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, got {getattr(self, name)!r}") from None
            if not math.isfinite(value) or value < low or (strict and value == low):
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
            setattr(self, name, value)

        for name in ("lmax", "nu", "channels", "layers", "num_radial", "readout_hidden", "cutoff_p",
                     "edge_chunk", "batch_size", "epochs", "scheduler_patience"):
            positive_int(name)
        positive_int("hidden_lmax", 0)
        positive_int("seed", 0)
        for name in ("valid_batch_size", "max_atoms_per_batch", "patience", "hessian_rows"):
            if getattr(self, name) is not None:
                positive_int(name)
        number("r_cut", strict=True)
        number("lr", strict=True)
        number("stage_two_lr", strict=True)
        number("huber_delta", strict=True)
        for name in ("weight_decay", "energy_weight", "forces_weight", "stress_weight",
                     "stage_two_energy_weight", "stage_two_forces_weight", "stage_two_stress_weight"):
            number(name)
        number("clip_grad", strict=True, optional=True)
        number("lr_factor", strict=True)
        if not self.lr_factor < 1.0:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        number("ema_decay")
        if not self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 disables EMA), got {self.ema_decay}")
        number("valid_fraction")
        if not self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.stage_two_start is not None:
            number("stage_two_start")
            if not self.stage_two_start < 1.0:
                raise ValueError(f"stage_two_start must be a fraction of the epochs in [0, 1), got "
                                 f"{self.stage_two_start}")
        if isinstance(self.max_time, str):
            self.max_time = parse_duration(self.max_time)
        number("max_time", strict=True, optional=True)
        for name, allowed in (("loss", LOSSES), ("scheduler", SCHEDULERS), ("dtype", DTYPES),
                              ("long_range", LONG_RANGE), ("basis", BASES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.radial_hidden, str):
            self.radial_hidden = [int(v) for v in self.radial_hidden.split(",") if v.strip()]
        self.radial_hidden = [int(v) for v in self.radial_hidden]
        if not self.radial_hidden or min(self.radial_hidden) < 1:
            raise ValueError(f"radial_hidden must be a list of positive widths, got {self.radial_hidden!r}")
        if isinstance(self.elements, str):
            self.elements = [s.strip() for s in self.elements.split(",") if s.strip()]
        if isinstance(self.test, str):
            self.test = [self.test]
        self.test = [str(t) for t in self.test]
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        from tacegen.train.targets import parse_target

        self.targets = [str(t) for t in self.targets]
        for t in self.targets:
            parse_target(t)  # ValueError naming the bad target
        if self.train is None:
            raise ValueError("no training data: give --train FILE (any format ASE reads, e.g. extxyz)")
        if self.resume and self.force:
            raise ValueError("--resume and --force exclude each other: --resume continues the run in --out, "
                             "--force starts it afresh")

    # ---------------------------------------------------------------- output
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict(), header="Effective configuration of a `tacegen train` run; "
                                                "rerun with `tacegen train --config config.toml`.")

    @property
    def torch_dtype(self):
        import torch

        return torch.float64 if self.dtype == "float64" else torch.float32


def parse_duration(text: str) -> float:
    """Seconds from ``"3600"``, ``"90s"``, ``"45m"``, ``"2h"`` or ``"1d"``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(text))
    if not match:
        raise ValueError(f"max_time must be seconds or a duration such as 90s, 45m, 2h, got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def load_toml(path: str) -> Dict[str, Any]:
    """The tables of TOML file ``path``; ValueError naming the file if missing or invalid."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config file {path} is not valid TOML ({error})") from None


def options_from_toml(data: Dict[str, Any], path: str, allowed: List[str]) -> Dict[str, Any]:
    """Options of parsed TOML ``data``: sections ([model], [data], ...) are flattened, ``-`` in
    keys reads as ``_``; ValueError naming the file and the first key not in ``allowed``."""
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    for key in flat:
        if key.replace("-", "_") not in allowed:
            raise ValueError(f"config file {path}: unknown key {key!r}")
    return {key.replace("-", "_"): value for key, value in flat.items()}


def read_toml(path: str, allowed: List[str]) -> Dict[str, Any]:
    """Options of TOML file ``path`` (see :func:`options_from_toml`)."""
    return options_from_toml(load_toml(path), path, allowed)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def dump_toml(values: Dict[str, Any], header: str = "") -> str:
    """Flat TOML; ``None`` (unset) is written as a comment, TOML having no null."""
    lines = [f"# {header}"] if header else []
    for key, value in values.items():
        lines.append(f"# {key} = (unset)" if value is None else f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
