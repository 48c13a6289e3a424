"""``tacegen study report DIR``: the outputs of a study, regenerated from its manifest.

Writes ``results.csv`` and ``results.md`` (:mod:`tacegen.study.table`), ``pareto.png``
and ``learning_curves.png`` (:mod:`tacegen.study.plots`) into the study folder, without
training or measuring anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from tacegen.cache import atomic_write_text
from tacegen.study.manifest import Manifest
from tacegen.study.plots import learning_curves, pareto_plot
from tacegen.study.table import to_csv, to_markdown


def write_report(root: Path, plots: bool = True) -> List[Path]:
    """Write the study's tables (and figures); returns the files written."""
    root = Path(root)
    manifest = Manifest.load(root)
    written = []
    atomic_write_text(root / "results.csv", to_csv(manifest))
    atomic_write_text(root / "results.md", to_markdown(manifest, title=f"tacegen study {root.name}"))
    written += [root / "results.csv", root / "results.md"]
    if plots:
        if pareto_plot(manifest, root / "pareto.png"):
            written.append(root / "pareto.png")
        if learning_curves(manifest, root / "learning_curves.png"):
            written.append(root / "learning_curves.png")
    return written
