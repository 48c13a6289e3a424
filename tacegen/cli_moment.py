"""Printing for ``tacegen paths --basis moment`` (kept out of cli.py: the CLI stays thin)."""

from __future__ import annotations

import json
import time

import click


def print_moment_paths(lmax: int, nu: int, Ls, level, as_json: bool, cache) -> None:
    """Moment-tree counts next to the ICT counts, as a table or JSON rows."""
    from .moment_paths import comparison_rows

    start = time.perf_counter()
    rows = comparison_rows(lmax, nu, Ls, level, cache)
    total = time.perf_counter() - start
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    title = f"Product basis, lmax={lmax}: TMP moment contractions vs TACE ICT couplings, one channel"
    if level is not None:
        title += f", MTP level <= {level}"
    t = Table(title=title)
    for col in ("L", "parity", "nu", "ICT paths", "moment candidates", "moment independent", "character bound"):
        t.add_column(col, justify="right")
    for r in sorted(rows, key=lambda r: (r["L"], -r["parity"], r["nu"])):
        mark = "" if r["complete"] else " *"
        t.add_row(str(r["L"]), "+1 (e)" if r["parity"] == 1 else "-1 (o)", str(r["nu"]), str(r["ict_independent"]),
                  str(r["moment_candidates"]), f"{r['moment_independent']}{mark}", str(r["moment_bound"]))
    console = Console()
    console.print(t)
    console.print(f"total {total:.2f} s. Character bound: equivariant maps of that degree on the ICT parts of the "
                  "moments (A_l = V_l + V_l-2 + ...), i.e. the TACE count over those pieces; * = below it (order 1: "
                  "a lone moment is irreducible only for rank <= 1).")
