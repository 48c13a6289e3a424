"""``tacegen study run`` and ``tacegen study report``: thin click front ends of :mod:`tacegen.study`.

``run`` takes the axes (``--lmax``, ``--nu``, ``--grid KEY=V1,V2``, ``--repeats``), the
executor options, and every ``tacegen train`` option, passed to each run unchanged.
"""

from __future__ import annotations

import sys

import click

from .cli_train import _TRAIN_OPTIONS

_AXES_FLAGS = ("--lmax", ("--nu", "--correlation"))


def _shared_train_options(function):
    """Every ``tacegen train`` option except --lmax/--nu (axes here)."""
    for flag, kind, text in reversed(_TRAIN_OPTIONS):
        if flag in _AXES_FLAGS:
            continue
        flags = flag if isinstance(flag, tuple) else (flag,)
        function = click.option(*flags, type=kind, default=None, help=text)(function)
    return function


@click.group("study")
def study_group():
    """Sweeps of training runs over lmax, nu and any option, with an accuracy-versus-cost report.

    \b
    tacegen study run --lmax 1,2 --nu 1,2 --train data.xyz --test test.xyz --epochs 50 --out studies/cu
    tacegen study report studies/cu
    """


@study_group.command("run")
@click.option("--lmax", "lmax_axis", default=None, help="Axis: edge ranks, comma separated (e.g. 1,2,3).")
@click.option("--nu", "nu_axis", default=None, help="Axis: correlation orders, comma separated (e.g. 1,2,3).")
@click.option("--grid", multiple=True, metavar="KEY=V1,V2",
              help="Axis over any training option (repeatable), e.g. channels=16,32; list values use /.")
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="Seeds per point (--seed, --seed+1, ...).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Runs at a time (local executor); each gets cores // workers threads.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads per training process (default cores // (workers * nproc)).")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Processes per run: torchrun --standalone --nproc-per-node N (data parallel).")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True)
@click.option("--partition", default=None, help="SLURM partition.")
@click.option("--time", "time_min", type=click.IntRange(1), default=60, show_default=True,
              help="SLURM time limit per run, minutes.")
@click.option("--cpus", type=click.IntRange(1), default=1, show_default=True, help="SLURM CPUs per run.")
@click.option("--gpus", type=click.IntRange(0), default=0, show_default=True, help="SLURM GPUs per run.")
@click.option("--array-size", type=click.IntRange(1), default=16, show_default=True,
              help="SLURM: most runs at a time (job-array parallelism).")
@click.option("--retry-failed", is_flag=True, help="Run the failed runs of the study again.")
@click.option("--no-measure", is_flag=True, help="Skip the cost measurements (build, paths, FLOPs, timing).")
@click.option("--timing-data", type=click.Path(dir_okay=False), default=None,
              help="Structures timed for the cost column (default: the first --test file, else --train).")
@click.option("--timing-structures", type=click.IntRange(1), default=8, show_default=True,
              help="How many structures of --timing-data form the timed batch.")
@click.option("--timing-threads", type=click.IntRange(1), default=1, show_default=True,
              help="Torch threads of the timing (the same for every run).")
@click.option("--numba-timing", is_flag=True,
              help="Also time the Numba back end (a cold Numba compile takes minutes per build).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file: an [axes] table (lmax = [1, 2], ...) and training options (flags win).")
@click.option("--test", multiple=True, type=click.Path(dir_okay=False), help="Test data file (repeatable).")
@click.option("--no-data-cache", is_flag=True, default=None, help="Do not cache neighbour lists.")
@click.option("--quiet", is_flag=True, help="No live table.")
@_shared_train_options
def study_run_command(lmax_axis, nu_axis, grid, repeats, workers, threads, nproc, executor, partition, time_min, cpus,
                      gpus, array_size, retry_failed, no_measure, timing_data, timing_structures, timing_threads,
                      numba_timing, config_file, test, no_data_cache, quiet, **flags):
    """Train every variant of the axes (resumable) and write results.csv/.md, pareto.png, learning_curves.png.

    Every other option is a `tacegen train` option given to every run alike (--lmax/--nu
    are axes here; a single value is an axis of one point). --out is the study folder.
    Rerunning the same command resumes the study.
    """
    from .study.axes import Axes
    from .study.runner import StudyOptions, run_study
    from .study.config import read_study_toml

    flags = {k.replace("-", "_"): v for k, v in flags.items()}
    out = flags.pop("out") or "studies/study"
    file_axes, shared = read_study_toml(config_file) if config_file else ([], {})
    shared.update({k: v for k, v in flags.items() if v is not None})
    if test:
        shared["test"] = list(test)
    if no_data_cache:
        shared["data_cache"] = False
    seed = int(shared.pop("seed", 0))
    axes = Axes.from_options(lmax_axis, nu_axis, grid, repeats, seed, base=file_axes)
    options = StudyOptions(out=out, workers=workers, threads=threads, nproc=nproc, executor=executor,
                           partition=partition, time_min=time_min, cpus=cpus, gpus=gpus, array_size=array_size,
                           retry_failed=retry_failed, quiet=quiet, measure=not no_measure, timing_data=timing_data,
                           timing_structures=timing_structures, timing_threads=timing_threads,
                           numba_timing=numba_timing)
    manifest = run_study(axes, shared, options)
    failed = manifest.by_status("failed")
    done = manifest.by_status("done")
    from pathlib import Path

    outputs = [name for name in ("results.md", "results.csv", "pareto.png", "learning_curves.png")
               if (Path(out) / name).is_file()]
    click.echo(f"study {out}: {len(done)} done, {len(failed)} failed of {len(manifest.runs)} runs; "
               f"{', '.join(outputs)}")
    for entry in failed:
        click.echo(f"  failed {entry['name']}: {entry.get('error')}", err=True)
    if failed:
        click.echo("tacegen: some runs failed; fix the cause and rerun with --retry-failed", err=True)
        sys.exit(1)


@study_group.command("report")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--no-plots", is_flag=True, help="Only results.csv and results.md.")
def study_report_command(folder, no_plots):
    """Regenerate results.csv, results.md, pareto.png and learning_curves.png of a study FOLDER."""
    from .study.report import write_report

    written = write_report(folder, plots=not no_plots)
    click.echo("written: " + ", ".join(str(p) for p in written))
