"""Cold-start wall time of ``tacegen paths`` (the product-basis path derivation).

Runs, each as a fresh subprocess with a fresh, empty cache folder and ``--no-cache``:

    tacegen paths --lmax 3 --nu 3 --no-cache     goal < 5 s
    tacegen paths --lmax 4 --nu 4 --no-cache     goal < 60 s

and prints the wall times (process start to exit, imports included) against the goals
and their ratio. Usage (from the repository root):

    python -m benchmarks.bench_paths [--repeats N] [--json]

Exit status: 0 when both commands succeed (whether or not the goals are met), 1 if a
command fails; ``--strict`` also exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT

CASES = (
    {"lmax": 3, "nu": 3, "goal": 5.0},
    {"lmax": 4, "nu": 4, "goal": 60.0},
)


def tacegen_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m tacegen.cli``."""
    script = Path(sys.executable).parent / "tacegen"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tacegen.cli"]


def run_cold(lmax: int, nu: int) -> tuple[float, str]:
    """One cold run in a fresh cache folder; returns (wall seconds, stdout)."""
    folder = tempfile.mkdtemp(prefix="tacegen-bench-cache-")
    env = dict(os.environ)
    env["TACEGEN_CACHE_DIR"] = folder
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = tacegen_command() + ["paths", "--lmax", str(lmax), "--nu", str(nu), "--no-cache", "--json"]
    try:
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="cold runs per case (median reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} is outside the allowed range 1..")

    results = []
    for case in CASES:
        try:
            times = []
            for _ in range(args.repeats):
                seconds, stdout = run_cold(case["lmax"], case["nu"])
                times.append(seconds)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        rows = json.loads(stdout)
        results.append({
            "command": f"tacegen paths --lmax {case['lmax']} --nu {case['nu']} --no-cache",
            "lmax": case["lmax"], "nu": case["nu"],
            "seconds": statistics.median(times), "all_seconds": times, "goal_seconds": case["goal"],
            "meets_goal": statistics.median(times) < case["goal"],
            "rows": len(rows), "independent_paths": sum(r["independent"] for r in rows),
            "derivation_seconds": round(sum(r["seconds"] for r in rows), 4),
        })

    small, large = results
    ratio = large["seconds"] / small["seconds"]
    print(f"cold `tacegen paths` ({' '.join(tacegen_command())}), fresh cache, median of {args.repeats}:")
    for r in results:
        status = "OK  " if r["meets_goal"] else "MISS"
        print(f"  [{status}] {r['command']:<42} {r['seconds']:7.2f} s  (goal < {r['goal_seconds']:.0f} s; "
              f"{r['rows']} rows, {r['independent_paths']} paths, derivation {r['derivation_seconds']:.2f} s)")
    print(f"  ratio (lmax 4, nu 4) / (lmax 3, nu 3): {ratio:.1f}x")
    if args.json:
        print(json.dumps({"benchmark": "bench_paths", "results": results, "ratio": ratio}))
    if args.strict and not all(r["meets_goal"] for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
