"""Figures of a study (matplotlib, Agg): ``pareto.png`` and ``learning_curves.png``.

``pareto.png``: force MAE (test if measured, else last validation; meV/Å) against the
torch E+F time per atom (µs), log-log, one point per point of the study with error bars
of the std over its repeats, labelled with its lmax/nu (and other axes); the Pareto front
(points no other point beats in both error and time) is joined and ringed.
``learning_curves.png``: validation force MAE per epoch (log scale), one line per run.
Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from tacegen.study.manifest import Manifest
from tacegen.study.table import force_column, metrics_rows, points


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("study plots need matplotlib: pip install 'tacegen[plots]'") from None
    return plt


def _save(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def label(params: Dict[str, Any]) -> str:
    parts = []
    if "lmax" in params:
        parts.append(f"l{params['lmax']}")
    if "nu" in params:
        parts.append(f"ν{params['nu']}")
    parts += [f"{k}={v}" for k, v in params.items() if k not in ("lmax", "nu")]
    return " ".join(parts)


def pareto_front(xy: List[tuple]) -> List[int]:
    """Indices of the points (x, y) not dominated by another (lower or equal in both, lower in one)."""
    front = []
    for i, (x, y) in enumerate(xy):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(xy) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: xy[i][0])


def pareto_plot(manifest: Manifest, path: Path) -> bool:
    """Write ``pareto.png``; False (nothing written) if no point has both a time and an error."""
    chosen = [p for p in points(manifest) if p["torch_us_per_atom"][0] and p[force_column(p)][0]]
    if not chosen:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xy = [(p["torch_us_per_atom"][0], p[force_column(p)][0]) for p in chosen]
    for p, (x, y) in zip(chosen, xy):
        xerr, yerr = p["torch_us_per_atom"][1], p[force_column(p)][1]
        ax.errorbar([x], [y], xerr=None if xerr is None else [xerr], yerr=None if yerr is None else [yerr],
                    fmt="o", color="tab:blue", capsize=3, ms=5)
        ax.annotate(label(p["point"]), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front(xy)
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "-", color="tab:red", lw=1,
            label="Pareto front")
    ax.scatter([xy[i][0] for i in front], [xy[i][1] for i in front], s=120, facecolors="none",
               edgecolors="tab:red")
    ax.set_xscale("log")
    ax.set_yscale("log")
    kind = "test" if force_column(chosen[0]) == "test_forces_mae" else "validation"
    ax.set_xlabel("E+F time per atom, PyTorch (µs)")
    ax.set_ylabel(f"{kind} force MAE (meV/Å)")
    ax.set_title("accuracy against cost")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def learning_curves(manifest: Manifest, path: Path) -> bool:
    """Write ``learning_curves.png``; False if no run has a validation force MAE yet."""
    curves = []
    for entry in manifest.runs:
        rows = metrics_rows(manifest.run_dir(entry))
        pairs = [(int(r["epoch"]), float(r["valid_forces_mae"])) for r in rows if r.get("valid_forces_mae")]
        if pairs:
            curves.append((entry, pairs))
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for entry, pairs in curves:
        ax.plot([e for e, _ in pairs], [v for _, v in pairs], marker=".",
                label=f"{label(entry['params'])} s{entry['seed']}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation force MAE (meV/Å)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True
