"""The live table of a running study (rich): one row per run with its status, the epochs
done and the current validation force MAE, read from the run's ``metrics.csv``."""

from __future__ import annotations

from tacegen.study.manifest import Manifest
from tacegen.study.table import metrics_rows

_STYLE = {"pending": "dim", "running": "yellow", "done": "green", "failed": "red"}


def render(manifest: Manifest, epochs: int):
    from rich.table import Table

    table = Table(title=f"study {manifest.root}", title_justify="left")
    for column in ("run", "status", "epoch", "valid F MAE meV/Å", "note"):
        table.add_column(column, justify="right" if column in ("epoch", "valid F MAE meV/Å") else "left")
    for entry in manifest.runs:
        rows = metrics_rows(manifest.run_dir(entry))
        mae = rows[-1].get("valid_forces_mae") if rows else ""
        status = entry["status"]
        table.add_row(entry["name"], f"[{_STYLE[status]}]{status}[/]", f"{len(rows)}/{epochs}",
                      f"{float(mae):.2f}" if mae else "–", (entry.get("error") or "")[:60])
    return table


class LiveTable:
    """``start`` / ``update`` / ``stop``; does nothing when ``quiet``."""

    def __init__(self, manifest: Manifest, epochs: int, quiet: bool = False):
        self.manifest, self.epochs, self.quiet = manifest, epochs, quiet
        self.live = None

    def start(self) -> None:
        if self.quiet:
            return
        from rich.live import Live

        self.live = Live(render(self.manifest, self.epochs), refresh_per_second=2)
        self.live.start()

    def update(self) -> None:
        if self.live is not None:
            self.live.update(render(self.manifest, self.epochs))

    def stop(self) -> None:
        if self.live is not None:
            self.update()
            self.live.stop()
            self.live.console.line()
            self.live = None
