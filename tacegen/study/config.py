"""``tacegen study run --config study.toml``: axes and shared training options in one file.

The ``[axes]`` table holds the axes (``lmax = [1, 2, 3]``, ``nu = [1, 2]``,
``channels = [16, 32]``, ``radial_hidden = [[32, 32], [64, 64]]``); every other key (top
level or in any other table) is a ``tacegen train`` option shared by every run, as in
``tacegen train --config``. Flags win: an axis flag replaces the file's axis of the same
name, a training flag the file's value.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from tacegen.study.axes import axes_from_table
from tacegen.train.config import TrainConfig, load_toml, options_from_toml


def read_study_toml(path: str) -> Tuple[List[Tuple[str, List[Any]]], Dict[str, Any]]:
    """(axes, shared training options) of a study TOML file; ValueError naming file and key."""
    data = load_toml(path)
    table = data.pop("axes", {})
    if not isinstance(table, dict):
        raise ValueError(f"config file {path}: 'axes' must be a table ([axes])")
    axes = axes_from_table(table, source=f"config file {path} [axes]")
    shared = options_from_toml(data, path, TrainConfig.keys())
    return axes, shared
