"""Which lmax and nu buy the most accuracy for the cost? A 2x2 study on EMT copper.

    python examples/study_cu_emt.py [--out studies/cu_emt] [--max-time 75s] [--workers 2]

1. The EMT copper data of ``examples/train_cu_emt.py`` (Langevin MD at 300-1200 K and
   strained 32-atom cells; train.xyz and test.xyz).
2. ``tacegen study run --lmax 1,2 --nu 1,2``: four ``tacegen train`` runs with the same
   options and the same wall-clock budget each (``--max-time``), two at a time with one
   thread each, then the measurements (test errors, parameters, paths, FLOPs, E+F time
   per atom with one thread) and the report: results.md, results.csv, pareto.png,
   learning_curves.png in the study folder.

Rerunning the command resumes the study (done runs are skipped). On 2 CPU cores it takes
about 4 minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cu_emt import make_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="studies/cu_emt")
    parser.add_argument("--max-time", default="75s", help="Training budget of each run.")
    parser.add_argument("--workers", default="2")
    args = parser.parse_args()
    out = Path(args.out)
    data = out.parent / f"{out.name}_data"
    if (data / "train.xyz").is_file() and (data / "test.xyz").is_file():
        train, test = str(data / "train.xyz"), str(data / "test.xyz")
    else:
        train, test = make_data(data)
    command = ["study", "run", "--lmax", "1,2", "--nu", "1,2", "--train", train, "--test", test,
               "--hidden-lmax", "0", "--channels", "16", "--radial-hidden", "32,32", "--batch-size", "4",
               "--epochs", "200", "--max-time", args.max_time, "--workers", args.workers, "--out", str(out)]
    print("$ tacegen " + " ".join(command), flush=True)
    subprocess.run([sys.executable, "-m", "tacegen", *command], check=True)
    print((out / "results.md").read_text())
    print(f"figures: {out / 'pareto.png'}, {out / 'learning_curves.png'}")


if __name__ == "__main__":
    main()
