"""Accuracy at an equal budget: tacegen and mace-torch trained on the same split.

    python -m benchmarks.accuracy_vs_mace [--data cu|molecule|both] [--epochs 20] [--out bench_runs/acc]

Data (made here with ASE's EMT, so the script needs nothing but the packages):
- ``cu``: examples/train_cu_emt.py's copper set (Langevin MD 300-1200 K, strained cells),
  220 training / 40 test 32-atom cells, energies, forces and stresses;
- ``molecule``: Langevin MD of one ethanol molecule at 500 K under ASE's EMT
  parametrisation for H, C, O (a smooth reference function for a molecule, not
  chemistry), energies and forces; 300 training / 50 test frames.

Both models: lmax / max_ell 2, nu / correlation 2, 2 layers, r_cut 4.5 Å (5 Å for the
molecule), 8 Bessel functions, the same epochs, batch size, lr 0.01, AdamW amsgrad,
ReduceLROnPlateau (factor 0.8, patience 5), EMA 0.99, energy/forces/stress weights
1/10/10, float64, seed 0, the same validation file. MACE's hidden irreps are
``{C}x0e + {C}x1o``; tacegen's channel count is chosen so that its parameter count is
the closest to MACE's (printed; the goal is within 10 %). Test MAEs of energy (meV/atom),
forces (meV/Å) and stress (meV/Å^3) are printed side by side.

MACE is trained with its own ``mace_run_train`` CLI in a subprocess (e3nn 0.4.4 needs
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 there) and evaluated with ``MACECalculator``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import REPO_ROOT

MACE_EVAL = r"""
import json, sys, warnings
import numpy as np, ase.io
warnings.filterwarnings("ignore")
from mace.calculators import MACECalculator
model, test = sys.argv[1], sys.argv[2]
calc = MACECalculator(model_paths=model, device="cpu", default_dtype="float64")
de, df, ds = [], [], []
for atoms in ase.io.read(test, ":"):
    atoms.calc = calc
    de.append((atoms.get_potential_energy() - atoms.info["REF_energy"]) / len(atoms))
    df.append((atoms.get_forces() - atoms.arrays["REF_forces"]).ravel())
    if "REF_stress" in atoms.info and atoms.pbc.all():
        ds.append(atoms.get_stress(voigt=False).ravel() - np.asarray(
            __import__("ase.stress", fromlist=["x"]).voigt_6_to_full_3x3_stress(atoms.info["REF_stress"])).ravel())
params = sum(p.numel() for p in calc.models[0].parameters())
out = {"energy_mae": 1e3 * float(np.mean(np.abs(de))), "forces_mae": 1e3 * float(np.mean(np.abs(np.concatenate(df)))),
       "stress_mae": 1e3 * float(np.mean(np.abs(np.concatenate(ds)))) if ds else None, "params": params}
print(json.dumps(out))
"""


def molecule_data(folder: Path, seed: int = 0):
    import ase.io
    from ase import units
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    rng = np.random.default_rng(seed)
    atoms = molecule("CH3CH2OH")
    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=500, rng=rng)
    md = Langevin(atoms, 0.5 * units.fs, temperature_K=500, friction=0.02, fixcm=False, rng=rng)
    md.run(200)
    frames = []
    for _ in range(350):
        md.run(5)
        copy = atoms.copy()
        copy.calc = EMT()
        copy.info.update(REF_energy=copy.get_potential_energy(), config_type="md_500K")
        copy.arrays["REF_forces"] = copy.get_forces()
        copy.calc = None
        frames.append(copy)
    order = rng.permutation(len(frames))
    folder.mkdir(parents=True, exist_ok=True)
    ase.io.write(folder / "train.xyz", [frames[k] for k in order[50:]])
    ase.io.write(folder / "test.xyz", [frames[k] for k in order[:50]])
    return str(folder / "train.xyz"), str(folder / "test.xyz")


def split_valid(train: str, folder: Path, fraction: float = 0.1, seed: int = 0):
    import ase.io

    frames = ase.io.read(train, ":")
    order = np.random.default_rng(seed).permutation(len(frames))
    n = max(1, round(fraction * len(frames)))
    ase.io.write(folder / "fit.xyz", [frames[k] for k in order[n:]])
    ase.io.write(folder / "valid.xyz", [frames[k] for k in order[:n]])
    return str(folder / "fit.xyz"), str(folder / "valid.xyz")


def tacegen_params(channels: int, elements, r_cut: float) -> int:
    import torch

    from tacegen.train.checkpoint import build_for_spec, construct
    from tacegen.spec import ModelSpec

    folder = build_for_spec(ModelSpec(lmax=2, nu=2, hidden_lmax=1).to_dict())
    model = construct(folder, dict(elements=elements, channels=channels, r_cut=r_cut, layers=2, dtype="float64"))
    del torch
    return sum(p.numel() for p in model.parameters())


def mace_env():
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_mace(fit, valid, test, out: Path, args, r_cut, stress: bool) -> dict:
    work = out / "mace"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    script = Path(sys.executable).parent / "mace_run_train"
    command = [str(script) if script.exists() else (shutil.which("mace_run_train") or "mace_run_train"), "--name", "mace", "--work_dir", str(work),
               "--train_file", fit, "--valid_file", valid, "--test_file", test, "--E0s", "average",
               "--model", "MACE", "--hidden_irreps", f"{args.mace_channels}x0e + {args.mace_channels}x1o",
               "--r_max", str(r_cut), "--max_ell", "2", "--correlation", "2", "--num_interactions", "2",
               "--batch_size", str(args.batch), "--max_num_epochs", str(args.epochs), "--lr", "0.01",
               "--scheduler_patience", "5", "--ema", "--ema_decay", "0.99", "--amsgrad",
               "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--stress_key", "REF_stress",
               "--loss", "stress" if stress else "weighted", "--energy_weight", "1", "--forces_weight", "10",
               "--stress_weight", "10", "--device", "cpu", "--default_dtype", "float64", "--seed", "0",
               "--num_workers", "0", "--eval_interval", "1"]
    subprocess.run(command, env=mace_env(), check=True, capture_output=not args.verbose)
    model = sorted(work.glob("*.model"))[0]
    result = subprocess.run([sys.executable, "-c", MACE_EVAL, str(model), test], env=mace_env(),
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_tacegen(fit, valid, test, out: Path, args, channels: int, r_cut: float) -> dict:
    run = out / "tacegen"
    command = [sys.executable, "-m", "tacegen", "train", "--train", fit, "--valid", valid, "--test", test,
               "--out", str(run), "--force", "--lmax", "2", "--nu", "2", "--hidden-lmax", "1",
               "--channels", str(channels), "--layers", "2", "--r-cut", str(r_cut), "--batch-size", str(args.batch),
               "--epochs", str(args.epochs), "--lr", "0.01", "--scheduler-patience", "5", "--ema-decay", "0.99",
               "--energy-weight", "1", "--forces-weight", "10", "--stress-weight", "10", "--e0s", "average",
               "--seed", "0", "--quiet"]
    subprocess.run(command, check=True, capture_output=not args.verbose)
    report = json.loads((run / "test.json").read_text())["files"][test]
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=("cu", "molecule", "both"), default="both")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--mace-channels", type=int, default=16)
    ap.add_argument("--out", default="bench_runs/accuracy")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    from train_cu_emt import make_data

    rows = []
    for name in (("cu", "molecule") if args.data == "both" else (args.data,)):
        out = Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        if name == "cu":
            train, test = make_data(out / "data")
            r_cut, elements, stress = 4.5, ["Cu"], True
        else:
            train, test = molecule_data(out / "data")
            r_cut, elements, stress = 5.0, ["H", "C", "O"], False
        fit, valid = split_valid(train, out / "data")
        mace = run_mace(fit, valid, test, out, args, r_cut, stress)
        channels = min(range(4, 129, 2), key=lambda c: abs(tacegen_params(c, elements, r_cut) - mace["params"]))
        ours = run_tacegen(fit, valid, test, out, args, channels, r_cut)
        ours["params"] = tacegen_params(channels, elements, r_cut)
        rows.append((name, ours, mace, channels))
    print(f"test MAE after {args.epochs} epochs, batch {args.batch} (E meV/atom, F meV/Å, S meV/Å^3)")
    print(f"{'data':9} {'model':8} {'params':>8} {'E MAE':>8} {'F MAE':>8} {'S MAE':>8}")
    for name, ours, mace, channels in rows:
        for label, r in ((f"tacegen", ours), ("MACE", mace)):
            s = "-" if r.get("stress_mae") is None else f"{r['stress_mae']:8.2f}"
            print(f"{name:9} {label:8} {r['params']:8d} {r['energy_mae']:8.2f} {r['forces_mae']:8.2f} {s:>8}")
        print(f"{'':9} params tacegen/MACE {ours['params'] / mace['params']:.2f} (tacegen channels {channels})")


if __name__ == "__main__":
    main()
