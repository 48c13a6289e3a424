"""torch.compile of generated models: graph breaks, compile time and E+F time per back end.

Run as ``python -m benchmarks.bench_compile [--kind none|les|ewald] [--backends eager,aot_eager,inductor]``
(from the repository root). Builds a small lmax=2, nu=2 model of the chosen kind into a
temporary folder and, for each torch.compile back end, prints the first call (dynamo
trace + compile + run), the steady E+F time of a rattled fcc cell and the largest
deviation from eager mode; ``torch._dynamo.explain`` gives the number of graphs and graph
breaks (data-dependent shapes: neighbour lists, k-vector sets; ``torch.autograd.grad``
for forces). "inductor" generates and compiles C++ (minutes on a small machine: that is
why the tests use "aot_eager"/"eager"). The machine may be shared: compare ratios of
one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cu_fcc


def build(kind: str, folder: Path):
    from tacegen.build import write_build
    from tacegen.runtime.loader import load
    from tacegen.spec import ModelSpec

    return load(write_build(ModelSpec(lmax=2, nu=2, hidden_lmax=1, backends="torch", long_range=kind), folder))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="none", choices=["none", "les", "ewald"])
    parser.add_argument("--backends", default="eager,aot_eager,inductor")
    parser.add_argument("--rep", type=int, default=3, help="fcc cubic cells per side (4 rep^3 atoms)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    torch._logging.set_logs(dynamo=logging.ERROR)  # the graph-break report is the table below
    warnings.filterwarnings("ignore")

    from tacegen.runtime.data import batch_atoms

    with tempfile.TemporaryDirectory() as tmp:
        module = build(args.kind, Path(tmp) / args.kind)
        elements = ["Na", "Cl"] if args.kind == "ewald" else ["Cu"]
        torch.manual_seed(0)
        model = module.TACE(elements, channels=16, r_cut=4.5).eval()
        atoms = cu_fcc(args.rep)
        if args.kind == "ewald":
            atoms.set_chemical_symbols(["Na", "Cl"] * (len(atoms) // 2))
            atoms.set_initial_charges([1.0, -1.0] * (len(atoms) // 2))
        batch = batch_atoms(atoms, model.elements, model.r_cut)
        ref = model(batch)

        def steady(fn):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn(batch)
                times.append(time.perf_counter() - t0)
            return float(np.median(times))

        print(f"kind={args.kind}  atoms={len(atoms)}  threads={args.threads}  torch {torch.__version__}")
        print(f"{'backend':>10} {'graphs':>7} {'breaks':>7} {'first call s':>13} {'E+F ms':>9} {'max |dF|':>10}")
        print(f"{'(none)':>10} {'':>7} {'':>7} {'':>13} {1e3 * steady(model):9.2f} {0.0:10.1e}")
        for backend in args.backends.split(","):
            torch._dynamo.reset()
            explained = torch._dynamo.explain(model)(batch)
            torch._dynamo.reset()
            compiled = torch.compile(model, backend=backend)
            t0 = time.perf_counter()
            out = compiled(batch)
            first = time.perf_counter() - t0
            dev = float((out["forces"] - ref["forces"]).abs().max())
            print(f"{backend:>10} {explained.graph_count:7d} {explained.graph_break_count:7d} {first:13.1f} "
                  f"{1e3 * steady(compiled):9.2f} {dev:10.1e}")


if __name__ == "__main__":
    main()
