"""Running a study: plan, (re)start the runs, measure them, write the report.

A study folder (``--out``) holds ``manifest.json``, ``runs/<name>/`` (ordinary
``tacegen train`` run folders), ``configs/<name>.toml`` (each run's options, passed to
``tacegen train --config``), ``logs/<name>.log`` (each run's output) and the report.
Each run is its own process (``python -m tacegen train``), so a crash stays in its run.

Rerunning a study: done runs are skipped; runs left ``running`` by a killed study resume
from their ``last.pt`` (``--resume``), or start afresh if they have none; failed runs are
listed and only retried with ``retry_failed``. New axes values add runs and keep the old
ones. The shared training options must not change (error naming the first that did).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from tacegen.study.axes import Axes
from tacegen.study.executors import LocalExecutor, SubmititExecutor, Task, cores
from tacegen.study.manifest import Manifest
from tacegen.study.progress import LiveTable
from tacegen.study.report import write_report
from tacegen.train.config import TrainConfig, dump_toml

#: Options of the study process itself, not of the runs.
RUN_CONTROL = ("out", "resume", "force", "quiet")


class StudyError(ValueError):
    """A study that cannot start (one line)."""


@dataclass
class StudyOptions:
    out: str
    workers: int = 1
    threads: Optional[int] = None
    nproc: int = 1                       # processes per run (torchrun, data parallel)
    executor: str = "local"              # local | slurm | submitit-local (tests)
    partition: Optional[str] = None
    time_min: int = 60
    cpus: int = 1
    gpus: int = 0
    array_size: int = 16
    retry_failed: bool = False
    quiet: bool = False
    measure: bool = True
    timing_data: Optional[str] = None    # default: the first test file, else the training file
    timing_structures: int = 8
    timing_threads: int = 1
    numba_timing: bool = False


def shared_options(train_options: Dict[str, Any], axes: Axes) -> Dict[str, Any]:
    """The training options common to every run (those not on an axis), validated, data
    paths made absolute."""
    on_axes = {name for name, _ in axes.axes}
    values = {k: v for k, v in train_options.items()
              if v is not None and k not in RUN_CONTROL and k not in on_axes}
    if values.get("test") in ((), []):
        values.pop("test")
    try:
        config = TrainConfig.from_sources(**values, out="-")
    except ValueError as error:
        raise StudyError(str(error)) from None
    values = {k: getattr(config, k) for k in values}  # normalised: "8,8" -> [8, 8], "2m" -> 120.0
    for key in ("train", "valid"):
        value = getattr(config, key)
        if value is not None:
            if not Path(value).is_file():
                raise StudyError(f"--{key} {value}: file does not exist")
            values[key] = str(Path(value).resolve())
    for path in config.test:
        if not Path(path).is_file():
            raise StudyError(f"--test {path}: file does not exist")
    if config.test:
        values["test"] = [str(Path(p).resolve()) for p in config.test]
    if values.get("model") is not None:
        raise StudyError("--model cannot be used in a study: each variant is built from its lmax/nu/... axes")
    values.pop("seed", None)  # seeds are the repeats
    return values


def _lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StudyError(f"study {root} is in use by another tacegen study process") from None
    return handle


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def open_manifest(root: Path, options: Dict[str, Any], axes: Axes) -> Manifest:
    """The study's manifest with the runs of ``axes`` added (created if new)."""
    if (root / "manifest.json").is_file():
        manifest = Manifest.load(root)
        stored = manifest.options
        for key in sorted(set(stored) | set(options)):
            if stored.get(key) != options.get(key):
                raise StudyError(f"study {root} was made with {key}={stored.get(key)!r}, not {options.get(key)!r}; "
                                 f"every run of a study shares its training options (use a new --out)")
    else:
        manifest = Manifest(root, options)
    manifest.add(axes.variants())
    manifest.save()
    return manifest


def recover(manifest: Manifest, retry_failed: bool, wait: float = 60.0) -> None:
    """Runs left running by a killed study become pending (after their process exits);
    failed runs become pending with ``retry_failed``."""
    for entry in manifest.runs:
        if entry["status"] == "running":
            deadline = time.time() + wait
            while _alive(entry.get("pid")) and time.time() < deadline:
                time.sleep(0.2)
            entry.update(status="pending", error="interrupted", pid=None)
        elif entry["status"] == "failed" and retry_failed:
            entry.update(status="pending", error=None)
    manifest.save()


def task_for(manifest: Manifest, entry: Dict[str, Any], nproc: int = 1) -> Task:
    """``python -m tacegen train --config configs/NAME.toml --out runs/NAME --quiet --resume|--force``
    (under ``torchrun --standalone --nproc-per-node nproc`` when ``nproc > 1``)."""
    root = manifest.root
    values = dict(manifest.options)
    values.update(entry["params"])
    values["seed"] = entry["seed"]
    config_path = root / "configs" / f"{entry['name']}.toml"
    from tacegen.cache import atomic_write_text

    atomic_write_text(config_path, dump_toml(values, header=f"options of run {entry['name']} of study {root}"))
    run_dir = manifest.run_dir(entry)
    resume = (run_dir / "last.pt").is_file()
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    argv = [*launcher, "-m", "tacegen", "train", "--config", str(config_path), "--out", str(run_dir),
            "--quiet", "--resume" if resume else "--force"]
    return Task(entry["name"], argv, str(root / "logs" / f"{entry['name']}.log"))


def make_executor(options: StudyOptions):
    if options.executor == "local":
        return LocalExecutor(options.workers, options.threads or max(1, cores() // (options.workers * options.nproc)))
    if options.executor in ("slurm", "submitit-local"):
        cluster = "slurm" if options.executor == "slurm" else "local"
        return SubmititExecutor(Path(options.out) / "submitit", cluster, options.partition, options.time_min,
                                options.cpus, options.gpus, options.array_size,
                                options.threads or max(1, options.cpus // options.nproc))
    raise StudyError(f"--executor must be local or slurm, got {options.executor!r}")


def measure_done(manifest: Manifest, options: StudyOptions) -> None:
    """Measure every done run that has no measurements yet (one at a time, in this process)."""
    from tacegen.study.measure import measure_run

    timing = options.timing_data
    if timing is None:
        tests = manifest.options.get("test") or []
        timing = tests[0] if tests else manifest.options.get("train")
    for entry in manifest.runs:
        if entry["status"] != "done" or entry.get("measured"):
            continue
        try:
            measured = measure_run(manifest.run_dir(entry), timing, options.timing_structures,
                                   options.timing_threads, options.numba_timing)
        except Exception as error:  # a run that trained but cannot be measured stays done, with the reason
            manifest.set(entry["name"], error=f"measurement failed: {type(error).__name__}: "
                                              f"{str(error).splitlines()[0][:300] if str(error) else ''}")
            continue
        manifest.set(entry["name"], measured=measured, error=None)


def run_study(axes: Axes, train_options: Dict[str, Any], options: StudyOptions) -> Manifest:
    """Run (or resume) the study; returns its manifest. Interruptions leave it resumable."""
    shared = shared_options(train_options, axes)
    executor = make_executor(options)
    root = Path(options.out)
    lock = _lock(root)
    try:
        manifest = open_manifest(root, shared, axes)
        recover(manifest, options.retry_failed)
        pending = [e for e in manifest.runs if e["status"] == "pending"]
        tasks = [task_for(manifest, e, options.nproc) for e in pending]
        epochs = int(shared.get("epochs", TrainConfig.epochs))
        table = LiveTable(manifest, epochs, options.quiet)

        def started(name, handle):
            manifest.set(name, status="running", pid=handle if isinstance(handle, int) else None,
                         job=None if isinstance(handle, int) else str(handle), error=None)

        def finished(name, code, error):
            if code == 0:
                manifest.set(name, status="done", pid=None, error=None)
            elif code == 130 or error == "interrupted":
                manifest.set(name, status="pending", pid=None, error="interrupted")
            else:
                manifest.set(name, status="failed", pid=None, error=error)
            table.update()

        table.start()
        try:
            executor.run(tasks, started, finished, table.update)
        finally:
            table.stop()
        if options.measure:
            measure_done(manifest, options)
        write_report(root)
        return manifest
    finally:
        lock.close()
