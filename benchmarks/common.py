"""Shared helpers for the benchmarks: test structures, timing, threads, peer subprocesses.

Peer models (mace-torch, ...) are never imported here nor in tacegen: they run in a
subprocess (``python -m benchmarks.<module> ... --json``) whose environment alone
carries the workarounds they need (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for e3nn 0.4.4
under torch >= 2.6).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent

# Python package each peer benchmark module needs (for a clear "not installed" error).
PEER_PACKAGES = {
    "peer_mace": "mace",
}

_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "NUMBA_NUM_THREADS")
_subprocess_threads: int | None = None


def cu_fcc(n_rep=4, a: float = 3.61, rattle: float = 0.05, seed: int = 0):
    """Cubic fcc Cu (4 atoms per cubic cell) repeated n_rep^3 times (or (na, nb, nc)
    times for a tuple), rattled.

    n_rep=4 -> 256 atoms, 8 -> 2048, (16, 16, 8) -> 8192, 16 -> 16384.
    """
    from ase.build import bulk

    reps = tuple(n_rep) if isinstance(n_rep, (tuple, list)) else (n_rep, n_rep, n_rep)
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(reps)
    if rattle:
        atoms.rattle(stdev=rattle, seed=seed)
    return atoms


def n_rep_for_atoms(n_atoms: int):
    """Inverse of cu_fcc's size: n_rep with 4 * n_rep^3 == n_atoms (256 -> 4, 2048 -> 8),
    else the most nearly cubic (na, nb, nc) with 4 * na * nb * nc == n_atoms
    (8192 -> (16, 16, 8)); a size that is not 4 * a whole number of cells is an error."""
    n_rep = round((n_atoms / 4) ** (1.0 / 3.0))
    if 4 * n_rep**3 == n_atoms:
        return n_rep
    if n_atoms % 4 or n_atoms < 4:
        raise ValueError(f"{n_atoms} atoms is not a multiple of the 4-atom fcc cell "
                         "(try 32, 108, 256, 500, 864, 2048, 8192, 16384)")
    cells = n_atoms // 4
    best = None
    for na in range(1, cells + 1):
        if cells % na:
            continue
        for nb in range(1, na + 1):
            if (cells // na) % nb:
                continue
            nc = cells // na // nb
            if nc > nb:
                continue
            if best is None or na / nc < best[0] / best[2]:
                best = (na, nb, nc)
    return best


def time_call(fn: Callable[[], Any], repeats: int = 10, warmup: int = 2) -> dict:
    """Wall-clock seconds of ``fn()``: warm-up calls first, then ``repeats`` timed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "all": times}


def rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux /proc; 0.0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (ru_maxrss is in kB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(n: int) -> None:
    """Use ``n`` threads in this process (torch, and numba if already imported).

    OMP/MKL thread variables are not changed in this process (they only take effect at
    library load); they are recorded and passed to subprocesses started by
    ``run_peer_subprocess``.
    """
    global _subprocess_threads
    n = int(n)
    import torch

    torch.set_num_threads(n)
    numba = sys.modules.get("numba")
    if numba is not None:
        try:
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        except Exception:  # pragma: no cover - numba without a threading layer
            pass
    _subprocess_threads = n


def subprocess_env(threads: int | None = None) -> dict:
    """Environment for a peer subprocess (a copy: this process's environment is untouched)."""
    env = dict(os.environ)
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    n = threads if threads is not None else _subprocess_threads
    if n is not None:
        for var in _THREAD_ENV_VARS:
            env[var] = str(n)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _threads_from_args(args: Sequence[str]) -> int | None:
    args = list(args)
    for i, a in enumerate(args):
        if a == "--threads" and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return None


def _peer_installed(package: str, env: dict) -> bool:
    """Is ``package`` importable by the subprocess interpreter? (checked without importing it)"""
    probe = ("import importlib.util, sys; "
             f"sys.exit(0 if importlib.util.find_spec({package!r}) else 1)")
    r = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO_ROOT,
                       capture_output=True)
    return r.returncode == 0


def run_peer_subprocess(module: str, args: Sequence[str] = (), timeout: float | None = None) -> dict:
    """Run ``python -m benchmarks.<module> *args --json`` in a subprocess; return its JSON.

    The subprocess gets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (in its own environment only),
    cwd = repository root, and the thread count from ``--threads`` in ``args`` (else the
    last ``set_threads``) in OMP_NUM_THREADS etc.
    """
    module = module.removeprefix("benchmarks.")
    args = [str(a) for a in args]
    if "--json" not in args:
        args.append("--json")
    env = subprocess_env(_threads_from_args(args))

    package = PEER_PACKAGES.get(module)
    if package is not None and not _peer_installed(package, env):
        raise RuntimeError(
            f"peer benchmark {module!r} needs the Python package {package!r}, which is not "
            f"installed in {sys.executable}. Install the peer models with `make peers` "
            f"(from {REPO_ROOT}).")

    cmd = [sys.executable, "-m", f"benchmarks.{module}", *args]
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"peer benchmark failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-4000:]}")
    # The JSON object is the last non-empty stdout line (libraries may print before it).
    for line in reversed(proc.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON in the output of {' '.join(cmd)}:\n{proc.stdout[-4000:]}")
