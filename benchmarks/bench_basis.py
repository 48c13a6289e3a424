"""TMP (moment basis) against TACE (ICT basis) at matched (lmax, nu, channels), in one run.

    python -m benchmarks.bench_basis [--lmax 3] [--nu 3] [--channels 64] [--repeats 5] [--threads 2]
                                     [--accuracy] [--epochs 15] [--max-time 6m] [--train-size N]
                                     [--skip-timing] [--out bench_runs/basis]

Part 1 (always): for each basis, the cost model of the optimised programs (MFLOP per atom
for ``--layers`` layers and ``--channels`` channels, floats stored per atom, product-basis
trees) and the measured wall time of energy + forces with the PyTorch back end on Cu fcc
4x4x4 (256 atoms, rattled 0.05 Å, r_cut 5 Å), random weights, median of ``--repeats``
after warm-up (the setup of benchmarks/bench_model.py).

Part 2 (``--accuracy``): both bases trained with ``tacegen train`` on the EMT copper data
of examples/train_cu_emt.py (same split, seed, epochs, wall-clock cap, lmax, nu, channels,
2 layers, r_cut 4.5 Å), then their test MAEs side by side.

Timings on a shared machine are noisy: compare the two columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import REPO_ROOT, cu_fcc, set_threads, time_call
from tacegen.build import compile_spec, write_build
from tacegen.ir.cost import DEFAULT_ITEMS, program_cost
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.loader import load
from tacegen.spec import ModelSpec

BASES = ("ict", "moment")


def cost_figures(spec: ModelSpec, layers: int, channels: int) -> dict:
    """Cost-model figures of the optimised core programs of ``spec`` per atom."""
    compiled = compile_spec(spec)
    progs = compiled.optimised
    flops = program_cost(progs.edge_basis, DEFAULT_ITEMS).flops
    floats = program_cost(progs.edge_basis, DEFAULT_ITEMS).floats
    for layer in range(layers):
        inter = progs.interactions[0] if layer == 0 else progs.interactions[-1]
        prod = progs.products[-1] if layer == layers - 1 else progs.products[0]
        for p in (inter, prod):
            c = program_cost(p, DEFAULT_ITEMS)
            flops += channels * c.flops
            floats += channels * c.floats
    atomic = sum(v.size for v in progs.products[0].inputs)
    return {"compiled": compiled, "mflop": flops / 1e6, "kib": floats * 8 / 1024, "atomic_components": atomic,
            "trees": [p.weights[0].count for p in progs.products]}


def time_energy_forces(package, channels: int, repeats: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = package.TACE(elements=["Cu"], channels=channels, r_cut=5.0, layers=2, dtype=torch.float64)
    model.requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    batch = batch_atoms([cu_fcc(n_rep=4)], ["Cu"], 5.0, dtype=torch.float64)
    result = time_call(lambda: model(batch, compute_forces=True, compute_stress=False), repeats=repeats)
    return result["median"], params


def train_both(args, out: Path) -> dict:
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    from train_cu_emt import make_data

    train, test = make_data(out / "data")
    if args.train_size:
        import ase.io

        subset = str(out / "data" / f"train_{args.train_size}.xyz")
        ase.io.write(subset, ase.io.read(train, f":{args.train_size}"))
        train = subset
    results = {}
    for basis in BASES:
        run = out / basis
        command = [sys.executable, "-m", "tacegen", "train", "--train", train, "--test", test, "--out", str(run),
                   "--force", "--basis", basis, "--lmax", str(args.lmax), "--nu", str(args.nu), "--hidden-lmax", "1",
                   "--channels", str(args.channels), "--layers", "2", "--r-cut", "4.5", "--batch-size", "4",
                   "--epochs", str(args.epochs), "--max-time", args.max_time, "--lr", "0.01", "--ema-decay", "0.99",
                   "--energy-weight", "1", "--forces-weight", "10", "--stress-weight", "10", "--e0s", "average",
                   "--seed", "0", "--quiet"]
        subprocess.run(command, check=True, capture_output=not args.verbose)
        results[basis] = json.loads((run / "test.json").read_text())["files"][test]
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lmax", type=int, default=3)
    ap.add_argument("--nu", type=int, default=3)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--accuracy", action="store_true", help="also train both on EMT Cu and compare test errors")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--max-time", default="6m", help="wall-clock cap of each training run")
    ap.add_argument("--train-size", type=int, default=0, help="train on the first N structures only (0: all 220)")
    ap.add_argument("--skip-timing", action="store_true", help="only the accuracy part")
    ap.add_argument("--out", default="bench_runs/basis")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    rows = {}
    if args.skip_timing:
        args.accuracy = True
    with tempfile.TemporaryDirectory() as tmp:
        for basis in () if args.skip_timing else BASES:
            spec = ModelSpec(lmax=args.lmax, nu=args.nu, backends=("torch",), basis=basis)
            fig = cost_figures(spec, args.layers, args.channels)
            package = load(write_build(spec, Path(tmp) / spec.name, compiled=fig.pop("compiled")))
            fig["seconds"], fig["params"] = time_energy_forces(package, args.channels, args.repeats)
            rows[basis] = fig
    if rows:
        print_timing(rows, args)
    if args.accuracy:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        errors = train_both(args, out)
        size = args.train_size or 220
        print(f"\ntest MAE on EMT Cu (40 test cells), {size} training cells (10 % of them for validation), "
              f"{args.epochs} epochs capped at {args.max_time} each (E meV/atom, F meV/Å, S meV/Å^3)")
        for basis, r in errors.items():
            stress = r.get("stress_mae")
            print(f"{basis:8} E {r['energy_mae']:8.3f}  F {r['forces_mae']:8.2f}  "
                  f"S {stress if stress is not None else float('nan'):8.3f}")


def print_timing(rows: dict, args) -> None:
    print(f"E+F, Cu fcc 256 atoms, lmax={args.lmax}, nu={args.nu}, {args.channels} channels, {args.layers} layers, "
          f"float64, PyTorch, {args.threads} threads (median of {args.repeats})")
    print(f"{'basis':8} {'A comps':>8} {'trees':>10} {'params':>8} {'MFLOP/atom':>11} {'KiB/atom':>9} {'E+F ms':>8}")
    for basis, r in rows.items():
        trees = "/".join(str(t) for t in r["trees"])
        print(f"{basis:8} {r['atomic_components']:8d} {trees:>10} {r['params']:8d} {r['mflop']:11.2f} "
              f"{r['kib']:9.1f} {r['seconds'] * 1e3:8.1f}")
    ict, mom = rows["ict"], rows["moment"]
    print(f"moment/ict: time {mom['seconds'] / ict['seconds']:.2f}x, model FLOPs {mom['mflop'] / ict['mflop']:.2f}x, "
          f"stored floats {mom['kib'] / ict['kib']:.2f}x")


if __name__ == "__main__":
    main()
