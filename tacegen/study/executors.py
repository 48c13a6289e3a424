"""Executors: run the training commands of a study, each in its own process.

A :class:`Task` is one command line (``python -m tacegen train ... --out RUN``) with its
log file. :class:`LocalExecutor` runs ``workers`` of them at a time as child processes,
each with ``threads = cores // workers`` BLAS/OpenMP/torch threads (set through the
environment, so workers do not oversubscribe the cores); children get SIGINT when the
study process dies (Linux ``PR_SET_PDEATHSIG``), so a killed study leaves no orphans and
each run keeps a consistent ``last.pt``. :class:`SubmititExecutor` submits each task as
one job (a job array) through submitit: ``cluster="slurm"`` on a SLURM cluster, or
``cluster="local"`` (submitit's local executor, used in the tests).

Both call ``on_start(name, pid_or_job)`` and ``on_finish(name, returncode, error)`` from
the calling thread, and ``tick()`` about twice a second while waiting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")
POLL_SECONDS = 0.5


@dataclass
class Task:
    name: str
    argv: List[str]
    log: str
    env: Dict[str, str] = field(default_factory=dict)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_environment(threads: int) -> Dict[str, str]:
    return {name: str(threads) for name in THREAD_VARIABLES}


def error_line(log: str, returncode: int) -> str:
    """The one-line reason of a failed run: its ``tacegen: error`` line, else its last line."""
    try:
        lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("tacegen:"):
            return line[:500]
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return (lines[-1][:500] if lines else f"exit status {returncode}") + f" (exit status {returncode}; log {log})"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_task(argv: List[str], env: Dict[str, str], log: str) -> Tuple[int, Optional[str]]:
    """Run one task to the end (used by submitit jobs): (return code, error line or None)."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        code = subprocess.run(argv, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT).returncode
    return code, (error_line(log, code) if code else None)


class LocalExecutor:
    """``workers`` child processes at a time on this machine."""

    def __init__(self, workers: int = 1, threads: Optional[int] = None):
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        self.threads = threads or max(1, cores() // workers)

    def run(self, tasks: List[Task], on_start: Callable, on_finish: Callable, tick: Callable = lambda: None) -> None:
        queue = list(tasks)
        active: Dict[str, Tuple[subprocess.Popen, Task, object]] = {}
        try:
            while queue or active:
                while queue and len(active) < self.workers:
                    task = queue.pop(0)
                    Path(task.log).parent.mkdir(parents=True, exist_ok=True)
                    fh = open(task.log, "ab")
                    env = {**os.environ, **thread_environment(self.threads), **task.env}
                    process = subprocess.Popen(task.argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                               preexec_fn=_die_with_parent if os.name == "posix" else None)
                    active[task.name] = (process, task, fh)
                    on_start(task.name, process.pid)
                for name, (process, task, fh) in list(active.items()):
                    code = process.poll()
                    if code is None:
                        continue
                    fh.close()
                    del active[name]
                    on_finish(name, code, error_line(task.log, code) if code else None)
                tick()
                if active:
                    time.sleep(POLL_SECONDS)
        except BaseException:
            # Ctrl-C / kill of the study: let every run save its last.pt (SIGINT), then report it.
            for process, _, _ in active.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            for name, (process, task, fh) in active.items():
                try:
                    code = process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait()
                fh.close()
                on_finish(name, code, "interrupted")
            raise


class SubmititExecutor:
    """One submitit job per task (a job array on SLURM), polled until all finish.

    ``cluster``: ``"slurm"`` or ``"local"``; ``partition``, ``time`` (minutes), ``cpus``
    and ``gpus`` per job, and ``array_size`` (most jobs running at once) map to submitit's
    ``slurm_partition``, ``timeout_min``, ``cpus_per_task``, ``gpus_per_node`` and
    ``slurm_array_parallelism``; ``threads`` per training process (default ``cpus``).
    """

    def __init__(self, folder: Path, cluster: str = "slurm", partition: Optional[str] = None, time_min: int = 60,
                 cpus: int = 1, gpus: int = 0, array_size: int = 16, threads: Optional[int] = None):
        try:
            import submitit
        except ImportError:
            raise ValueError("--executor slurm needs submitit: pip install 'tacegen[slurm]'") from None
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params = dict(timeout_min=int(time_min), cpus_per_task=int(cpus))
        if cluster == "slurm":
            params.update(slurm_array_parallelism=int(array_size))
            if partition:
                params["slurm_partition"] = partition
            if gpus:
                params["gpus_per_node"] = int(gpus)
        self.executor.update_parameters(**params)
        self.threads = int(threads or cpus)

    def run(self, tasks: List[Task], on_start: Callable, on_finish: Callable, tick: Callable = lambda: None) -> None:
        if not tasks:
            return
        envs = [{**thread_environment(self.threads), **t.env} for t in tasks]
        jobs = self.executor.map_array(run_task, [t.argv for t in tasks], envs, [t.log for t in tasks])
        pending = dict(zip([t.name for t in tasks], jobs))
        for name, job in pending.items():
            on_start(name, f"job {job.job_id}")
        try:
            while pending:
                for name, job in list(pending.items()):
                    if not job.done():
                        continue
                    del pending[name]
                    try:
                        code, error = job.result()
                    except Exception as failure:  # the job itself failed (timeout, node failure, ...)
                        code, error = 1, f"job {job.job_id} failed: {str(failure).strip().splitlines()[-1][:300]}"
                    on_finish(name, code, error)
                tick()
                if pending:
                    time.sleep(POLL_SECONDS)
        except BaseException:
            for job in pending.values():
                job.cancel(check=False)
            for name in pending:
                on_finish(name, 130, "interrupted")
            raise
