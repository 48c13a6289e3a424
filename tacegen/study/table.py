"""Tables of a study: ``results.csv`` (one row per run) and ``results.md`` (one row per point).

Columns of ``results.csv``: ``name, status, seed``, the axes, ``epochs`` and
``valid_forces_mae`` (last row of the run's ``metrics.csv``), the measurements of
:mod:`tacegen.study.measure`, and ``error``. ``results.md`` groups the runs of one point
(same axes, different seeds) and gives mean ± std (sample std, over the done repeats),
sorted by force MAE (test if measured, else validation); failed runs are listed under it.
:data:`TIMING_COLUMNS` vary from one measurement to the next; every other number of a
run is reproducible.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

from tacegen.study.manifest import Manifest

MEASURED = ("test_energy_mae", "test_energy_rmse", "test_forces_mae", "test_forces_rmse", "test_stress_mae",
            "test_stress_rmse", "params", "paths", "mflop_per_atom", "build_s", "torch_us_per_atom",
            "numba_us_per_atom")
TIMING_COLUMNS = ("build_s", "torch_us_per_atom", "numba_us_per_atom")
SUMMARY = ("test_forces_mae", "test_energy_mae", "valid_forces_mae", "params", "paths", "mflop_per_atom",
           "torch_us_per_atom", "numba_us_per_atom", "build_s")


def metrics_rows(run_dir: Path) -> List[Dict[str, str]]:
    """Rows of a run's ``metrics.csv`` (empty list if it has none yet)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def axes_of(manifest: Manifest) -> List[str]:
    names: List[str] = []
    for entry in manifest.runs:
        names += [k for k in entry["params"] if k not in names]
    return names


def run_rows(manifest: Manifest) -> List[Dict[str, Any]]:
    """One dict per run of the manifest (see module docstring for the columns)."""
    rows = []
    for entry in manifest.runs:
        row: Dict[str, Any] = {"name": entry["name"], "status": entry["status"], "seed": entry["seed"]}
        row.update({k: _cell(v) for k, v in entry["params"].items()})
        history = metrics_rows(manifest.run_dir(entry))
        row["epochs"] = len(history)
        row["valid_forces_mae"] = _number(history[-1].get("valid_forces_mae")) if history else None
        row.update({k: (entry.get("measured") or {}).get(k) for k in MEASURED})
        row["error"] = entry.get("error")
        rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    return "/".join(str(v) for v in value) if isinstance(value, list) else value


def _number(text: Any):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def columns(manifest: Manifest) -> List[str]:
    return ["name", "status", "seed", *axes_of(manifest), "epochs", "valid_forces_mae", *MEASURED, "error"]


def to_csv(manifest: Manifest) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(manifest), lineterminator="\n")
    writer.writeheader()
    for row in run_rows(manifest):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns(manifest)})
    return buffer.getvalue()


def mean_std(values: Sequence[float]):
    """(mean, sample std or None for one value) of the values that are not None; (None, None) if none."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def points(manifest: Manifest) -> List[Dict[str, Any]]:
    """Done runs grouped by point: ``{"point": {axis: value}, "runs": n, column: (mean, std), ...}``."""
    groups: Dict[str, Dict[str, Any]] = {}
    axes = axes_of(manifest)
    for row in run_rows(manifest):
        if row["status"] != "done":
            continue
        key = repr([row.get(a) for a in axes])
        groups.setdefault(key, {"point": {a: row.get(a) for a in axes}, "rows": []})["rows"].append(row)
    out = []
    for group in groups.values():
        point = {"point": group["point"], "runs": len(group["rows"])}
        for column in SUMMARY:
            point[column] = mean_std([r.get(column) for r in group["rows"]])
        out.append(point)
    out.sort(key=lambda p: (sort_value(p) is None, sort_value(p) or 0.0))
    return out


def force_column(point: Dict[str, Any]) -> str:
    return "test_forces_mae" if point["test_forces_mae"][0] is not None else "valid_forces_mae"


def sort_value(point: Dict[str, Any]):
    return point[force_column(point)][0]


def _format(pair, digits: int = 3) -> str:
    mean, std = pair
    if mean is None:
        return "–"
    text = f"{mean:.0f}" if abs(mean) >= 10 ** digits else f"{mean:.{digits}g}"
    return text if std is None else f"{text} ± {std:.2g}"


def to_markdown(manifest: Manifest, title: str = "") -> str:
    axes = axes_of(manifest)
    shown = [c for c in SUMMARY if any(p[c][0] is not None for p in points(manifest))]
    units = {"test_forces_mae": "test F MAE meV/Å", "test_energy_mae": "test E MAE meV/atom",
             "valid_forces_mae": "valid F MAE meV/Å", "params": "parameters", "paths": "paths",
             "mflop_per_atom": "MFLOP/atom", "torch_us_per_atom": "torch µs/atom (E+F)",
             "numba_us_per_atom": "numba µs/atom (E+F)", "build_s": "build s"}
    lines = [f"# {title or 'tacegen study'}", "",
             "Mean ± std over the repeats (seeds) of each point, sorted by force MAE.", "",
             "| " + " | ".join([*axes, "runs", *(units[c] for c in shown)]) + " |",
             "|" + "---|" * (len(axes) + 1 + len(shown))]
    for point in points(manifest):
        digits = {"params": 6, "paths": 6}
        cells = [str(point["point"][a]) for a in axes] + [str(point["runs"])]
        cells += [_format(point[c], digits.get(c, 3)) for c in shown]
        lines.append("| " + " | ".join(cells) + " |")
    counts = {s: len(manifest.by_status(s)) for s in ("done", "failed", "pending", "running")}
    lines += ["", "Runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + "."]
    failed = manifest.by_status("failed")
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{e['name']}`: {e.get('error') or 'no message'}" for e in failed]
    return "\n".join(lines) + "\n"
