"""``tacegen export``: a thin click front end of :mod:`tacegen.export`."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True,
              help="The metatomic model file to write (e.g. model.pt), for LAMMPS, i-PI and ASE.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default=None,
              help="Floating-point type of the export (default: the checkpoint's).")
@click.option("--raw", is_flag=True, help="Export the raw weights instead of the EMA weights.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def export_command(checkpoint, out, dtype, raw, force):
    """Export a `tacegen train` CHECKPOINT as a metatomic AtomisticModel (needs tacegen[metatomic])."""
    from pathlib import Path

    from .export.metatomic import export_checkpoint

    if Path(out).exists() and not force:
        raise click.UsageError(f"{out} exists; pass --force to replace it")
    written = export_checkpoint(checkpoint, out, dtype=dtype, use_ema=not raw)
    click.echo(f"wrote {written} (metatomic AtomisticModel: load with metatomic.torch.load_atomistic_model, "
               f"or metatomic_ase.MetatomicCalculator)")
