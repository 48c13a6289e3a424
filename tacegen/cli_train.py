"""``tacegen train`` and ``tacegen eval``: thin click front ends of :mod:`tacegen.train`.

Every ``train`` flag is also a key of ``--config run.toml`` (flag names with ``_``);
flags win over the file, the file over the defaults.
"""

from __future__ import annotations

import json
import sys

import click

from .train.config import BASES, DTYPES, LONG_RANGE, LOSSES, SCHEDULERS

_TRAIN_OPTIONS = [
    # (flag, type, help)
    ("--model", click.Path(file_okay=False), "Build folder to train (e.g. generated/tace_l3_nu3); default: build "
                                             "--lmax/--nu/--hidden-lmax/--long-range on the fly (cached)."),
    ("--lmax", click.IntRange(0, 6), "Largest edge rank (MACE max_ell) of a build made on the fly. [3]"),
    (("--nu", "--correlation"), click.IntRange(1, 4), "Correlation order (MACE correlation; under torchrun write "
                                                     "--correlation, which torchrun's parser does not take for its "
                                                     "--numa-binding). [3]"),
    ("--hidden-lmax", click.IntRange(0, 6), "Largest rank of the features between layers (MACE max_L). [1]"),
    ("--long-range", click.Choice(LONG_RANGE), "Long-range block of a build made on the fly. [none]"),
    ("--basis", click.Choice(BASES), "Basis of a build made on the fly: ict (TACE) or moment (TMP). [ict]"),
    ("--channels", click.IntRange(1), "Feature channels. [64]"),
    ("--layers", click.IntRange(1), "Message-passing layers. [2]"),
    ("--r-cut", click.FloatRange(0, min_open=True), "Cut-off radius, Å. [5.0]"),
    ("--num-radial", click.IntRange(1), "Bessel radial functions. [8]"),
    ("--radial-hidden", str, "Hidden widths of the radial MLP, comma separated. [64,64,64]"),
    ("--readout-hidden", click.IntRange(1), "Hidden width of the last readout. [16]"),
    ("--cutoff-p", click.IntRange(1), "Order of the polynomial cut-off envelope. [6]"),
    ("--edge-chunk", click.IntRange(1), "Edges per block of the checkpointed atomic basis. [16384]"),
    ("--elements", str, "Elements of the model, comma separated (default: those of the training data)."),
    ("--train", click.Path(dir_okay=False), "Training data, any format ASE reads (extxyz first)."),
    ("--valid", click.Path(dir_okay=False), "Validation data (default: --valid-fraction of --train)."),
    ("--valid-fraction", click.FloatRange(0, 1, max_open=True), "Seeded share of --train kept for validation. [0.1]"),
    ("--energy-key", str, "info key of the energy, eV (default REF_energy, falling back to the calculator's)."),
    ("--forces-key", str, "arrays key of the forces, eV/Å. [REF_forces]"),
    ("--stress-key", str, "info key of the stress, eV/Å^3 (Voigt or 3x3). [REF_stress]"),
    ("--virials-key", str, "info key of the virials, eV (used where no stress is given). [REF_virials]"),
    ("--weight-key", str, "info key of a per-structure weight. [config_weight]"),
    ("--config-type-key", str, "info key of the config type. [config_type]"),
    ("--hessian-rows", click.IntRange(1), "With --target hessian=KEY: train on K random rows of each Hessian per "
                                          "step (drawn from --seed, the epoch and the structure); default all 3N."),
    ("--batch-size", click.IntRange(1), "Structures per (global) batch. [4]"),
    ("--valid-batch-size", click.IntRange(1), "Structures per validation batch (default --batch-size)."),
    ("--max-atoms-per-batch", click.IntRange(1), "Also cap batches by atoms (mixed sizes without OOM)."),
    ("--e0s", str, "least-squares, average, or a JSON file {element: eV}. [least-squares]"),
    ("--loss", click.Choice(LOSSES), "Error function. [mse]"),
    ("--huber-delta", click.FloatRange(0, min_open=True), "Huber delta. [0.01]"),
    ("--energy-weight", click.FloatRange(0), "Weight of the per-atom energy term. [1]"),
    ("--forces-weight", click.FloatRange(0), "Weight of the forces term. [100]"),
    ("--stress-weight", click.FloatRange(0), "Weight of the stress term. [1]"),
    ("--stage-two-start", click.FloatRange(0, 1, max_open=True), "Fraction of --epochs after which stage two "
                                                                "(own weights and lr) starts; off by default."),
    ("--stage-two-energy-weight", click.FloatRange(0), "Stage-two energy weight. [1000]"),
    ("--stage-two-forces-weight", click.FloatRange(0), "Stage-two forces weight. [100]"),
    ("--stage-two-stress-weight", click.FloatRange(0), "Stage-two stress weight. [1]"),
    ("--stage-two-lr", click.FloatRange(0, min_open=True), "Stage-two learning rate. [0.001]"),
    ("--lr", click.FloatRange(0, min_open=True), "Learning rate of AdamW (amsgrad). [0.01]"),
    ("--weight-decay", click.FloatRange(0), "AdamW weight decay. [5e-7]"),
    ("--scheduler", click.Choice(SCHEDULERS), "Learning-rate schedule. [plateau]"),
    ("--lr-factor", click.FloatRange(0, 1, min_open=True, max_open=True), "Plateau factor. [0.8]"),
    ("--scheduler-patience", click.IntRange(1), "Plateau patience, epochs. [50]"),
    ("--clip-grad", click.FloatRange(0, min_open=True), "Gradient-norm clip. [10]"),
    ("--ema-decay", click.FloatRange(0, 1, max_open=True), "EMA decay, 0 disables. [0.99]"),
    ("--dtype", click.Choice(DTYPES), "Floating-point type. [float64]"),
    ("--epochs", click.IntRange(1), "Epochs. [100]"),
    ("--max-time", str, "Wall-clock budget (seconds or 90s/45m/2h); the run stops and saves when it is spent."),
    ("--patience", click.IntRange(1), "Early stopping after this many epochs without validation improvement."),
    ("--seed", click.IntRange(0), "Seed of initial weights, split and batch order. [0]"),
    ("--device", str, "cpu or cuda. [cpu]"),
    ("--out", click.Path(file_okay=False), "Run folder. [runs/run]"),
]


def _train_options(function):
    for flag, kind, text in reversed(_TRAIN_OPTIONS):
        flags = flag if isinstance(flag, tuple) else (flag,)
        function = click.option(*flags, type=kind, default=None, help=text)(function)
    return function


@click.command("train")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file of options (keys as the flags, with _); flags win.")
@click.option("--test", multiple=True, type=click.Path(dir_okay=False),
              help="Test data file (repeatable); evaluated with best.pt at the end into test.json.")
@click.option("--target", "targets", multiple=True,
              help="Tensor target NAME=KEY[:WEIGHT] (repeatable): output NAME of the --model build trained on "
                   "atoms.info[KEY] (per structure) or atoms.arrays[KEY] (per atom), weight 1 by default; or a "
                   "response: hessian (3N x 3N in atoms.info), response:INPUT (-dE/dINPUT), response2:INPUT "
                   "(-d2E/dINPUT2), born:INPUT (Born charges, (N, 9) in atoms.arrays).")
@click.option("--no-data-cache", is_flag=True, default=None,
              help="Do not keep preprocessed neighbour lists in the cache.")
@click.option("--resume", is_flag=True, default=None, help="Continue the run in --out from its last.pt.")
@click.option("--force", is_flag=True, default=None, help="Start afresh in an --out that holds a run.")
@click.option("--quiet", is_flag=True, default=None, help="No progress bar or epoch lines (train.log still written).")
@_train_options
def train_command(config_file, no_data_cache, **flags):
    """Fit a TACE model to reference data (data-parallel under torchrun/srun).

    \b
    tacegen train --train data.xyz --lmax 2 --nu 2 --epochs 50 --out runs/cu
    torchrun --nproc-per-node 2 -m tacegen train --train data.xyz ...
    """
    from .train.config import TrainConfig
    from .train.loop import Interrupted, train

    flags = {k.replace("-", "_"): v for k, v in flags.items()}
    for key in ("test", "targets"):
        if flags.get(key) == ():
            flags[key] = None
    if no_data_cache:
        flags["data_cache"] = False
    config = TrainConfig.from_sources(config_file, **flags)
    try:
        out = train(config)
    except Interrupted as stop:
        click.echo(f"tacegen: {stop}", err=True)
        sys.exit(130)
    if not config.quiet:
        click.echo(f"run folder {out}: best.pt, last.pt, metrics.csv, train.log")


@click.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("data", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of a table.")
@click.option("--plots", type=click.Path(file_okay=False), default=None, help="Write parity plots (PNG) here.")
@click.option("--backend", type=click.Choice(["torch", "numba"]), default="torch", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the EMA weights.")
@click.option("--energy-key", default=None, help="Label keys; default: those the run trained with.")
@click.option("--forces-key", default=None)
@click.option("--stress-key", default=None)
@click.option("--virials-key", default=None)
@click.option("--config-type-key", default=None)
@click.option("--target", "targets", multiple=True,
              help="Tensor target NAME=KEY (repeatable); default: those the run trained with.")
def eval_command(checkpoint, data, as_json, plots, backend, batch_size, raw, targets, **keys):
    """Errors of a trained model (CHECKPOINT) on labelled DATA files: E meV/atom, F meV/Å, S meV/Å^3."""
    from .train import checkpoint as ckpt
    from .train.evaluate import evaluate_files, parity_plots, render_table
    from .train.labels import LabelKeys

    payload = ckpt.read(checkpoint)
    stored = payload.get("config", {})
    names = ("energy", "forces", "stress", "virials", "weight", "config_type")
    label_keys = LabelKeys(**{n: keys.get(f"{n}_key") or stored.get(f"{n}_key") or getattr(LabelKeys(), n)
                              for n in names})
    model = ckpt.model_from_payload(payload, checkpoint, use_ema=not raw)
    targets = list(targets) or list(stored.get("targets", []))
    results, metrics = evaluate_files(model, data, label_keys, backend=backend, batch_size=batch_size,
                                      keep_values=plots is not None, targets=targets)
    if plots is not None:
        written = parity_plots(metrics, plots)
        if not as_json:
            click.echo(f"parity plots: {', '.join(str(p) for p in written)}")
    if as_json:
        click.echo(json.dumps(results))
        return
    from rich.console import Console

    Console().print(render_table(results))
