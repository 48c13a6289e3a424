"""Build time of a spec, measured cold in a fresh process.

``python -m tacegen.study.buildtime SPEC_JSON`` prints the seconds of one complete build
(compile: paths -> IR -> optimiser; print: every back end of the spec; write to a
temporary folder) with the derivation disk cache off and the compiler modules imported
before the clock starts, so every spec of a study is timed alike (no warm in-process
memo of an earlier spec). :func:`cold_build_seconds` runs it from the study process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict


def cold_build_seconds(spec: Dict[str, Any]) -> float:
    env = {**os.environ, "TACEGEN_CACHE_DIR": "off"}
    result = subprocess.run([sys.executable, "-m", "tacegen.study.buildtime", json.dumps(spec)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise RuntimeError(f"timing the build of {spec} failed: {lines[-1]}")
    return float(result.stdout.split()[-1])


def _time_build(spec_json: str) -> float:
    import tacegen.backends.numba_model  # noqa: F401  (imported before the clock starts)
    import tacegen.backends.torch_printer  # noqa: F401
    from tacegen.build import write_build
    from tacegen.spec import ModelSpec

    spec = ModelSpec.from_dict(json.loads(spec_json))
    with tempfile.TemporaryDirectory(prefix="tacegen-study-build-") as folder:
        start = time.perf_counter()
        write_build(spec, Path(folder) / "build", force=True)
        return time.perf_counter() - start


if __name__ == "__main__":
    print(f"{_time_build(sys.argv[1]):.6f}")
