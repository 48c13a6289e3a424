"""Axes of a study and their expansion into variants.

An axis is a training option (a key of :class:`tacegen.train.config.TrainConfig`, flag
names with ``_`` or ``-``) and a list of values: ``--lmax 1,2`` and ``--nu 1,2`` are
axes, and so is every ``--grid KEY=V1,V2``. The variants are the Cartesian product of
the axes (in the order given: lmax, nu, then the grids) times ``repeats`` seeds
(``seed, seed + 1, ...``). List-valued options (``radial_hidden``) write their items
separated by ``/`` inside one grid value, e.g. ``--grid radial_hidden=32/32,64/64``.

Every value is checked before anything runs, with a one-line :class:`AxisError` naming
the axis and the value: unknown key, option that cannot vary (data files, run folder),
empty list, repeated value, a value of the wrong type or out of its range (the ranges of
``tacegen train`` and of the model spec).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Sequence, Tuple

from tacegen.train.config import TrainConfig

#: Options a study sets itself or that must be the same for every variant.
FIXED_KEYS = frozenset({"out", "resume", "force", "quiet", "seed", "train", "valid", "test", "model",
                        "device", "data_cache", "elements"})
#: Ranges of the model spec (tacegen.spec.LMAX_RANGE / NU_RANGE); checked here so a bad
#: axis fails before any run, without importing the compiler.
SPEC_RANGES = {"lmax": (0, 6), "nu": (1, 4), "hidden_lmax": (0, 6)}


class AxisError(ValueError):
    """A bad axis: the message is one line naming the axis and the value."""


@dataclass(frozen=True)
class Variant:
    """One training run of a study: the axis values and the seed."""

    params: Tuple[Tuple[str, Any], ...]
    seed: int

    @property
    def point(self) -> Dict[str, Any]:
        return dict(self.params)

    @property
    def key(self) -> str:
        """Identity in the manifest: canonical JSON of the parameters and the seed."""
        return json.dumps({"params": self.point, "seed": self.seed}, sort_keys=True)

    @property
    def name(self) -> str:
        """Folder name, e.g. ``lmax1_nu2_channels8_s0``."""
        parts = [f"{k}{_text(v)}" for k, v in self.params]
        name = "_".join(parts + [f"s{self.seed}"])
        return re.sub(r"[^A-Za-z0-9_.+-]", "-", name)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_text(v) for v in value)
    return str(value)


def _field_types() -> Dict[str, Any]:
    defaults = TrainConfig(train="-")
    return {f.name: getattr(defaults, f.name) for f in fields(TrainConfig)}


def _convert(key: str, text: str, default: Any) -> Any:
    text = text.strip()
    try:
        if key == "radial_hidden":
            return [int(v) for v in text.split("/")]
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int) or key in ("valid_batch_size", "max_atoms_per_batch", "patience"):
            return int(text)
        if isinstance(default, float) or key in ("clip_grad", "stage_two_start", "max_time"):
            return float(text)
    except ValueError:
        kind = "integer" if isinstance(default, int) else "number"
        raise AxisError(f"axis {key}: value {text!r} is not a{'n' if kind[0] == 'i' else ''} {kind}") from None
    return text


def normalise_key(key: str) -> str:
    """``KEY`` as a TrainConfig field name; AxisError for unknown or fixed options."""
    name = key.strip().lstrip("-").replace("-", "_")
    types = _field_types()
    if name not in types:
        raise AxisError(f"axis {key!r}: unknown training option; allowed: "
                        f"{', '.join(sorted(k for k in types if k not in FIXED_KEYS))}")
    if name in FIXED_KEYS:
        reason = "use --repeats for seeds" if name == "seed" else "it is the same for every variant of a study"
        raise AxisError(f"axis {key!r} cannot vary in a study ({reason})")
    return name


def parse_values(key: str, text: str) -> List[Any]:
    """The values of ``--KEY V1,V2`` / ``--grid KEY=V1,V2``, converted and range-checked."""
    name = normalise_key(key)
    items = [v for v in str(text).split(",")]
    if not text or not str(text).strip() or any(not v.strip() for v in items):
        raise AxisError(f"axis {name}: empty value in {text!r} (give a comma-separated list, e.g. {name}=1,2)")
    default = _field_types()[name]
    values = [_convert(name, v, default) for v in items]
    for value in values:
        check_value(name, value)
    seen = set()
    for value in values:
        marker = json.dumps(value)
        if marker in seen:
            raise AxisError(f"axis {name}: value {value!r} is repeated")
        seen.add(marker)
    return values


def parse_grid(item: str) -> Tuple[str, List[Any]]:
    """``KEY=V1,V2`` -> (key, values)."""
    if "=" not in item:
        raise AxisError(f"--grid {item!r}: expected KEY=V1,V2,...")
    key, text = item.split("=", 1)
    return normalise_key(key), parse_values(key, text)


def check_value(name: str, value: Any) -> None:
    """AxisError if ``tacegen train`` (or the model spec) would reject ``name=value``."""
    if name in SPEC_RANGES:
        lo, hi = SPEC_RANGES[name]
        if not lo <= value <= hi:
            raise AxisError(f"axis {name}: value {value!r} is outside the allowed range {lo}..{hi}")
    config = TrainConfig(train="-", **{name: value})
    try:
        config.validate()
    except ValueError as error:
        raise AxisError(f"axis {name}: value {value!r} rejected: {error}") from None


def axes_from_table(table: Dict[str, Any], source: str = "axes") -> List[Tuple[str, List[Any]]]:
    """Axes of a TOML ``[axes]`` table (``lmax = [1, 2]``, ``channels = [16, 32]``), checked
    like the flags; a scalar is an axis of one value."""
    axes: List[Tuple[str, List[Any]]] = []
    for key, values in table.items():
        values = values if isinstance(values, list) else [values]
        text = ",".join("/".join(str(x) for x in v) if isinstance(v, list) else str(v) for v in values)
        try:
            axes.append((normalise_key(key), parse_values(key, text)))
        except AxisError as error:
            raise AxisError(f"{source}: {error}") from None
    return axes


@dataclass
class Axes:
    """Named value lists; :meth:`variants` expands them."""

    axes: List[Tuple[str, List[Any]]] = field(default_factory=list)
    repeats: int = 1
    seed: int = 0

    @classmethod
    def from_options(cls, lmax: str | None, nu: str | None, grid: Sequence[str] = (), repeats: int = 1,
                     seed: int = 0, base: Sequence[Tuple[str, List[Any]]] = ()) -> "Axes":
        """Axes of the flags; ``base`` (e.g. from a TOML file) is kept where no flag names the same key."""
        axes: List[Tuple[str, List[Any]]] = []
        if lmax is not None:
            axes.append(("lmax", parse_values("lmax", lmax)))
        if nu is not None:
            axes.append(("nu", parse_values("nu", nu)))
        for item in grid:
            key, values = parse_grid(item)
            if key in dict(axes):
                raise AxisError(f"axis {key} is given twice")
            axes.append((key, values))
        given = {k for k, _ in axes}
        axes = [(k, v) for k, v in base if k not in given] + axes
        axes.sort(key=lambda a: {"lmax": 0, "nu": 1}.get(a[0], 2))
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise AxisError(f"--repeats must be an integer >= 1, got {repeats!r}")
        if not axes:
            raise AxisError("a study needs at least one axis (--lmax, --nu or --grid KEY=V1,V2)")
        return cls(axes, repeats, seed)

    def variants(self) -> List[Variant]:
        names = [k for k, _ in self.axes]
        out = []
        for combo in itertools.product(*(values for _, values in self.axes)):
            params = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in zip(names, combo))
            for r in range(self.repeats):
                out.append(Variant(params, self.seed + r))
        return out
