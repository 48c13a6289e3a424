"""``manifest.json`` of a study folder: the common options and one entry per run.

Layout (JSON, written atomically: temporary file in the same folder, fsync, rename)::

    {"format": "tacegen-study", "version": 1,
     "options": {train options shared by every run},
     "runs": [{"name": "lmax1_nu2_s0", "params": {"lmax": 1, "nu": 2}, "seed": 0,
               "status": "pending" | "running" | "done" | "failed",
               "run": "runs/lmax1_nu2_s0", "error": null | "one line",
               "measured": null | {measurements}}, ...]}

``run`` is relative to the study folder. Entries are never dropped: changing the axes of
a study adds entries and keeps the old ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from tacegen.study.axes import Variant

FORMAT = "tacegen-study"
VERSION = 1
STATUSES = ("pending", "running", "done", "failed")
FILENAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest that cannot be used (message names the file and the reason)."""


class Manifest:
    """The manifest of the study folder ``root``."""

    def __init__(self, root: Path, options: Dict[str, Any], runs: Optional[List[Dict[str, Any]]] = None):
        self.root = Path(root)
        self.options = dict(options)
        self.runs: List[Dict[str, Any]] = list(runs or [])

    # ---------------------------------------------------------------- files
    @property
    def path(self) -> Path:
        return self.root / FILENAME

    @classmethod
    def load(cls, root: Path) -> "Manifest":
        path = Path(root) / FILENAME
        if not path.is_file():
            raise ManifestError(f"{path} does not exist (not a study folder)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ManifestError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError(f"{path} is not a tacegen study manifest (no format={FORMAT!r} entry)")
        if data.get("version") != VERSION:
            raise ManifestError(f"{path} has version {data.get('version')!r}; this tacegen reads {VERSION}")
        for k, entry in enumerate(data.get("runs", [])):
            if entry.get("status") not in STATUSES:
                raise ManifestError(f"{path}: run {k} has status {entry.get('status')!r}, not one of {STATUSES}")
        return cls(root, data.get("options", {}), data.get("runs", []))

    def save(self) -> None:
        from tacegen.cache import atomic_write_text

        data = {"format": FORMAT, "version": VERSION, "options": self.options, "runs": self.runs}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=False) + "\n")

    # ---------------------------------------------------------------- entries
    def entry(self, name: str) -> Dict[str, Any]:
        for entry in self.runs:
            if entry["name"] == name:
                return entry
        raise KeyError(name)

    def add(self, variants: List[Variant]) -> int:
        """Add entries for variants not yet in the manifest; returns how many were added."""
        known = {json.dumps({"params": e["params"], "seed": e["seed"]}, sort_keys=True) for e in self.runs}
        names = {e["name"] for e in self.runs}
        added = 0
        for variant in variants:
            if variant.key in known:
                continue
            name = variant.name
            if name in names:
                raise ManifestError(f"{self.path}: run name {name!r} already used by other parameters")
            self.runs.append({"name": name, "params": json.loads(json.dumps(variant.point)), "seed": variant.seed,
                              "status": "pending", "run": f"runs/{name}", "error": None, "measured": None})
            names.add(name)
            added += 1
        return added

    def set(self, name: str, **changes: Any) -> None:
        """Update one entry and save the manifest."""
        entry = self.entry(name)
        if "status" in changes and changes["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {changes['status']!r}")
        entry.update(changes)
        self.save()

    def run_dir(self, entry: Dict[str, Any]) -> Path:
        return self.root / entry["run"]

    def by_status(self, status: str) -> List[Dict[str, Any]]:
        return [e for e in self.runs if e["status"] == status]
