"""The training loop of ``tacegen train`` and its run folder.

SIGINT (Ctrl-C) or SIGTERM (SLURM pre-emption) stops the run after the current step
with a consistent ``last.pt``; a second signal stops at once (the previous ``last.pt``
stays valid).

Run folder (``--out``): ``config.toml`` (effective configuration), ``metrics.csv`` (one
row per epoch), ``train.log``, ``last.pt`` (every epoch, and on interruption) and
``best.pt`` (lowest validation loss, EMA weights), ``test.json`` at the end. Only rank 0
writes. Checkpoints restore everything (see :mod:`tacegen.train.checkpoint`), so
``--resume`` continues bit-identically, also from the middle of an epoch (the batch
order of an epoch is drawn from the sampler state saved at its start).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from tacegen.train import checkpoint, distributed
from tacegen.train.config import RESUMABLE_CHANGES, TrainConfig
from tacegen.train.dataset import AtomsDataset, batches, model_inputs, shard, species_map
from tacegen.train.ema import EMA
from tacegen.train.evaluate import check_elements, evaluate_files, part_projectors, render_table
from tacegen.train.labels import DataError, LabelKeys
from tacegen.train.targets import Extras, extras_for, register_targets
from tacegen.train.loss import Loss, counts
from tacegen.train.metrics import Metrics
from tacegen.train.responses import hessian_rows, responses
from tacegen.train.normalise import compute as compute_normalisation, set_category_energies

RUN_FILES = ("config.toml", "metrics.csv", "train.log", "last.pt", "best.pt", "test.json")
METRIC_COLUMNS = ("epoch", "stage", "lr", "train_loss", "valid_loss", "valid_energy_mae", "valid_energy_rmse",
                  "valid_forces_mae", "valid_forces_rmse", "valid_stress_mae", "valid_stress_rmse", "seconds")


class RunFolderError(ValueError):
    pass


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT after saving a consistent ``last.pt``."""


def _atomic_text(path: Path, text: str) -> None:
    from tacegen.cache import atomic_write_text

    atomic_write_text(path, text)


def _check_folder(config: TrainConfig) -> Path:
    """Refuse a run folder that holds a run (unless --resume/--force); writes nothing."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"run folder {out} is a file")
    existing = [name for name in RUN_FILES if (out / name).exists()] if out.exists() else []
    if config.resume:
        if not (out / "last.pt").is_file():
            raise RunFolderError(f"cannot resume: {out / 'last.pt'} does not exist")
    elif existing and not config.force:
        raise RunFolderError(f"run folder {out} already holds a run ({', '.join(existing)}); pass --resume to "
                             f"continue it or --force to start it afresh")
    return out


def _open_folder(out: Path, config: TrainConfig, ctx: distributed.Context) -> None:
    """Once everything has loaded: (rank 0) clear the old run for --force and create the folder."""
    distributed.barrier(ctx)  # every rank has checked and loaded before rank 0 changes anything
    if ctx.main:
        if config.force:
            for name in RUN_FILES:
                if (out / name).exists():
                    (out / name).unlink()
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier(ctx)


def _logger(out: Path, main: bool) -> logging.Logger:
    log = logging.getLogger(f"tacegen.train.{os.getpid()}.{id(out)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if main:
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return log


class Trainer:
    """One training run (see module docstring); :meth:`run` trains and returns the run folder."""

    def __init__(self, config: TrainConfig, ctx: Optional[distributed.Context] = None):
        self.ctx = ctx or distributed.Context()
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} requested but CUDA is not available; use --device cpu")
        if self.ctx.active and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
        self.out = _check_folder(config)
        payload = None
        if config.resume:
            payload = checkpoint.read(self.out / "last.pt")
            config = self._resumed_config(payload["config"], config)
        self.config = config
        self.dtype = config.torch_dtype
        self.notes: List[str] = []  # logged once the run folder exists
        self.keys = LabelKeys(config.energy_key, config.forces_key, config.stress_key, config.virials_key,
                              config.weight_key, config.config_type_key)
        torch.manual_seed(config.seed)
        self.extras = self._extras(payload)
        self._load_data()
        self._build_model(payload)
        self._build_optimisation()
        self.sampler = torch.Generator().manual_seed(config.seed + 1)
        self.epoch, self.step, self.best, self.stale, self.elapsed, self.stage = 0, 0, math.inf, 0, 0.0, 1
        self.epoch_sampler_state = self.sampler.get_state()
        self.epoch_loss = [0.0, 0]
        self.rows: List[Dict[str, object]] = []
        if payload is not None:
            self._restore(payload)

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _resumed_config(stored: Dict[str, object], given: TrainConfig) -> TrainConfig:
        defaults = TrainConfig(train=given.train)
        changed = [k for k in TrainConfig.keys() if k not in RESUMABLE_CHANGES
                   and getattr(given, k) != getattr(defaults, k) and getattr(given, k) != stored.get(k)]
        if changed:
            k = changed[0]
            raise RunFolderError(f"--resume continues the run as it was configured; option {k}={getattr(given, k)!r} "
                                 f"differs from the run's {stored.get(k)!r} (options that may change on resume: "
                                 f"{sorted(RESUMABLE_CHANGES - {'resume', 'force'})})")
        merged = dict(stored)
        for k in RESUMABLE_CHANGES:
            if getattr(given, k) != getattr(defaults, k):
                merged[k] = getattr(given, k)
        merged["resume"], merged["force"] = True, False
        config = TrainConfig(**merged)
        config.validate()
        return config

    def _extras(self, payload) -> Extras:
        """Inputs and tensor targets of the model (tacegen.train.targets); empty for a plain model."""
        c = self.config
        spec = None
        if payload is not None:
            spec = payload["spec"]
        elif c.model is not None and (Path(c.model) / "spec.json").is_file():
            spec = json.loads((Path(c.model) / "spec.json").read_text())["spec"]
        extras = extras_for(spec, c.targets)
        register_targets(extras)
        return extras

    def _load_data(self) -> None:
        c = self.config
        full = AtomsDataset.from_file(c.train, c.r_cut, self.keys, cache=c.data_cache, extras=self.extras)
        if c.valid is not None:
            self.train_set = full
            self.valid_set = AtomsDataset.from_file(c.valid, c.r_cut, self.keys, cache=c.data_cache,
                                                    extras=self.extras)
        elif c.valid_fraction > 0 and len(full) > 1:
            order = torch.randperm(len(full), generator=torch.Generator().manual_seed(c.seed)).tolist()
            n_valid = min(len(full) - 1, max(1, round(c.valid_fraction * len(full))))
            self.valid_set, self.train_set = full.subset(order[:n_valid]), full.subset(order[n_valid:])
        else:
            self.train_set, self.valid_set = full, None
        if len(self.train_set) == 0:
            raise DataError(f"{c.train}: the training set is empty")
        if c.elements:
            self.elements = list(c.elements)
        else:
            from ase.data import chemical_symbols

            self.elements = [chemical_symbols[int(z)] for z in self.train_set.numbers()]
        for dataset in (self.train_set, self.valid_set):
            if dataset is not None:
                check_elements(dataset, self.elements)
        self.species = species_map(self.elements)

    def _build_dir(self):
        c = self.config
        if c.model is not None:
            folder = Path(c.model)
            if not (folder / "model.py").is_file() or not (folder / "spec.json").is_file():
                raise ValueError(f"--model {folder} is not a tacegen build folder (it needs model.py and spec.json)")
            return folder.resolve(), json.loads((folder / "spec.json").read_text())["spec"]
        from tacegen.spec import ModelSpec

        spec = ModelSpec(lmax=c.lmax, nu=c.nu, hidden_lmax=c.hidden_lmax, long_range=c.long_range,
                         basis=c.basis).to_dict()
        return checkpoint.build_for_spec(spec).resolve(), spec

    def _build_model(self, payload) -> None:
        c = self.config
        if payload is not None:
            self.build_dir = checkpoint.resolve_build(payload, self.out / "last.pt", c.model)
            self.spec = payload["spec"]
            self.model_kwargs = dict(payload["model_kwargs"])
        else:
            self.build_dir, self.spec = self._build_dir()
            norm = compute_normalisation(self.train_set, self.elements, c.e0s)
            self.model_kwargs = dict(
                elements=self.elements, channels=c.channels, r_cut=c.r_cut, layers=c.layers, num_radial=c.num_radial,
                radial_hidden=list(c.radial_hidden), readout_hidden=c.readout_hidden, cutoff_p=c.cutoff_p,
                edge_chunk=c.edge_chunk, dtype=c.dtype, **norm.as_dict())
            self.notes.append(f"normalisation: {json.dumps(norm.as_dict())}")
            if norm.category_energies:
                self.notes.append(f"per-category E0 offsets (eV): {json.dumps(norm.category_energies)}")
        self.elements = list(self.model_kwargs["elements"])
        self.species = species_map(self.elements)
        self.model = checkpoint.construct(self.build_dir, self.model_kwargs)
        if payload is None:
            set_category_energies(self.model, norm.category_energies, c.train)
        self.model = self.model.to(self.device)
        self.model.train()
        self.source_hash = checkpoint.source_hash(self.build_dir)

    def _loss_weights(self, stage: int) -> Dict[str, float]:
        c = self.config
        if stage == 2:
            weights = {"energy": c.stage_two_energy_weight, "forces": c.stage_two_forces_weight,
                       "stress": c.stage_two_stress_weight}
        else:
            weights = {"energy": c.energy_weight, "forces": c.forces_weight, "stress": c.stress_weight}
        weights.update(self.extras.weights())  # tensor targets keep their weight in both stages
        return {k: (w if self.train_set.has(k) else 0.0) for k, w in weights.items()}

    def _build_optimisation(self) -> None:
        c = self.config
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay,
                                           amsgrad=True)
        if c.scheduler == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=c.lr_factor, patience=c.scheduler_patience)
        elif c.scheduler == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        else:
            self.scheduler = None
        self.ema = EMA(self.model, c.ema_decay) if c.ema_decay > 0 else None
        self.loss = Loss(self._loss_weights(1), c.loss, c.huber_delta)

    def _restore(self, payload) -> None:
        self.model.load_state_dict(payload["model"])
        if self.ema is not None and payload.get("ema"):
            self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None and payload.get("scheduler"):
            self.scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["rng"])
        self.epoch_sampler_state = payload["sampler"]
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.best, self.stale = float(payload["best"]), int(payload["stale"])
        self.elapsed, self.stage = float(payload["elapsed"]), int(payload["stage"])
        self.epoch_loss = list(payload["epoch_loss"])
        self.rows = [dict(r) for r in payload["rows"]]
        if self.stage == 2:
            self.loss = Loss(self._loss_weights(2), self.config.loss, self.config.huber_delta)
        self.notes.append(f"resumed from {self.out / 'last.pt'} at epoch {self.epoch} step {self.step}")

    # ------------------------------------------------------------------ checkpoints
    def _payload(self) -> Dict[str, object]:
        return {
            "format": checkpoint.FORMAT, "version": checkpoint.VERSION,
            "spec": self.spec, "source_hash": self.source_hash, "build_dir": str(self.build_dir),
            "model_kwargs": self.model_kwargs, "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "rng": torch.get_rng_state(), "sampler": self.epoch_sampler_state,
            "epoch": self.epoch, "step": self.step, "best": self.best, "stale": self.stale,
            "elapsed": self.elapsed, "stage": self.stage, "epoch_loss": list(self.epoch_loss),
            "rows": list(self.rows), "config": self.config.to_dict(),
        }

    def _save(self, name: str, payload=None) -> None:
        if self.ctx.main:
            checkpoint.save(self.out / name, payload if payload is not None else self._payload())

    def _write_metrics(self) -> None:
        if not self.ctx.main:
            return
        buffer = io.StringIO()
        parts = part_projectors(self.model)  # rank >= 2 outputs: their errors per irreducible part too
        names = [q for t in self.extras.targets for q in [t[0]] + [p for p, _ in parts.get(t[0], ())]]
        columns = METRIC_COLUMNS[:-1] + tuple(f"valid_{q}_{m}" for q in names for m in ("mae", "rmse")) \
            + METRIC_COLUMNS[-1:]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
        _atomic_text(self.out / "metrics.csv", buffer.getvalue())

    # ------------------------------------------------------------------ steps
    def _train_step(self, global_batch: List[int]) -> float:
        ctx = self.ctx
        local = shard(global_batch, ctx.rank, ctx.world)
        self.optimizer.zero_grad(set_to_none=True)
        batch = self.train_set.collate(local, self.species, self.dtype, self.device, self._hessian_rows()) if local \
            else None
        weights = {k: w for k, w in self.loss.weights.items() if w > 0}
        local_counts = counts(batch, weights) if batch is not None else {k: torch.zeros((), dtype=torch.float64)
                                                                         for k in weights}
        names = sorted(local_counts)
        total = distributed.all_sum(ctx, torch.stack([local_counts[k] for k in names]))
        global_counts = dict(zip(names, total))
        value = 0.0
        if batch is not None:
            inputs = model_inputs(batch)
            out = self.model(inputs, compute_forces=self.loss.needs_forces, compute_stress=self.loss.needs_stress)
            out.update(responses(self.model, batch, self.extras, create_graph=True))
            loss = self.loss(out, batch, global_counts) * ctx.world
            loss.backward()
            value = float(loss.detach()) / ctx.world
        distributed.average_gradients(ctx, self.model)
        if self.config.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return value

    def _hessian_rows(self):
        """``rows(s, n)`` for :meth:`AtomsDataset.collate`: --hessian-rows K rows of structure s drawn
        from (seed, epoch, s), or None (every row)."""
        k = self.config.hessian_rows
        if k is None or "hessian" not in self.extras.per().values():
            return None
        seed, epoch = self.config.seed, self.epoch
        return lambda s, n: hessian_rows(seed, epoch, s, n, k)

    def _validate(self):
        """(validation loss, Metrics) with the EMA weights; (None, None) without a validation set."""
        if self.valid_set is None:
            return None, None
        ctx = self.ctx
        size = self.config.valid_batch_size or self.config.batch_size
        lists = batches(range(len(self.valid_set)), self.valid_set.sizes(), size)[ctx.rank::ctx.world]
        metrics = Metrics(extra={t[0]: t[2] for t in self.extras.targets}, parts=part_projectors(self.model))
        weights = {k: w for k, w in self.loss.weights.items() if w > 0}
        names = sorted(weights)
        sums = torch.zeros(2 * len(names), dtype=torch.float64)
        context = self.ema.applied(self.model) if self.ema is not None else _nullcontext(self.model)
        with context:
            self.model.eval()
            try:
                for positions in lists:
                    batch = self.valid_set.collate(positions, self.species, self.dtype, self.device)
                    inputs = model_inputs(batch)
                    out = self.model(inputs, compute_forces=self.valid_set.has("forces"),
                                     compute_stress=self.valid_set.has("stress"))
                    out.update(responses(self.model, batch, self.extras, create_graph=False))  # every Hessian row
                    terms = self.loss.terms(out, batch)
                    c = counts(batch, weights)
                    for k, name in enumerate(names):
                        sums[2 * k] += float(terms[name].detach())
                        sums[2 * k + 1] += float(c[name])
                    metrics.add(out, batch)
            finally:
                self.model.train()
        distributed.all_sum(ctx, sums)
        vector = distributed.all_sum(ctx, metrics.vector())
        metrics.load_vector(vector)
        loss = sum(weights[name] * float(sums[2 * k]) / max(float(sums[2 * k + 1]), 1.0)
                   for k, name in enumerate(names))
        return loss, metrics

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        c, ctx = self.config, self.ctx
        _open_folder(self.out, c, ctx)
        self.log = _logger(self.out, ctx.main)
        if ctx.main:
            _atomic_text(self.out / "config.toml", c.to_toml())
        for note in self.notes:
            self.log.info(note)
        self.log.info("training %s on %s (%d train, %d valid structures), elements %s, build %s",
                      self.out, c.train, len(self.train_set), len(self.valid_set or []), self.elements, self.build_dir)
        stop = {"signal": False}

        def request_stop(signum, frame):  # first SIGINT/SIGTERM: stop after this step; second: at once
            if stop["signal"]:
                raise KeyboardInterrupt
            stop["signal"] = True

        previous = {}
        if ctx.main and _main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C; SLURM's pre-emption and scancel
                previous[signum] = signal.signal(signum, request_stop)
        progress = _Progress(quiet=c.quiet or not ctx.main)
        stage_two = (math.ceil(c.stage_two_start * c.epochs) if c.stage_two_start is not None else None)
        start = time.perf_counter() - self.elapsed
        reason = "epochs"
        try:
            while self.epoch < c.epochs:
                if stage_two is not None and self.stage == 1 and self.epoch >= stage_two:
                    self._enter_stage_two()
                self.sampler.set_state(self.epoch_sampler_state)
                order = torch.randperm(len(self.train_set), generator=self.sampler).tolist()
                lists = batches(order, self.train_set.sizes(), c.batch_size, c.max_atoms_per_batch)
                epoch_start = time.perf_counter()
                progress.start(self.epoch, c.epochs, len(lists), self.step)
                while self.step < len(lists):
                    value = self._train_step(lists[self.step])
                    self.step += 1
                    self.epoch_loss[0] += value
                    self.epoch_loss[1] += 1
                    progress.advance(value)
                    self.elapsed = time.perf_counter() - start
                    over_time = c.max_time is not None and self.elapsed >= c.max_time
                    if distributed.broadcast_flag(ctx, stop["signal"] or over_time):
                        reason = "signal" if stop["signal"] else "max_time"
                        break
                progress.stop()
                if reason != "epochs" and self.step < len(lists):
                    self._save("last.pt")
                    break
                self._end_epoch(time.perf_counter() - epoch_start)
                if reason != "epochs":
                    break
                if c.patience is not None and self.stale >= c.patience:
                    reason = "patience"
                    self.log.info("early stopping: no validation improvement for %d epochs", self.stale)
                    break
        finally:
            progress.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if reason == "signal":
            self.log.info("interrupted at epoch %d step %d; last.pt saved", self.epoch, self.step)
            raise Interrupted(f"interrupted: {self.out / 'last.pt'} holds epoch {self.epoch} step {self.step}; "
                              f"continue with --resume")
        self.log.info("finished (%s) after %d epochs, %.1f s", reason, self.epoch, self.elapsed)
        self._final_tests()
        return self.out

    def close(self) -> None:
        """Close the run's log file."""
        log = getattr(self, "log", None)
        for handler in list(log.handlers) if log is not None else []:
            handler.close()
            log.removeHandler(handler)

    def _enter_stage_two(self) -> None:
        self.stage = 2
        self.loss = Loss(self._loss_weights(2), self.config.loss, self.config.huber_delta)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.stage_two_lr
        self.best, self.stale = math.inf, 0
        self.log.info("stage two from epoch %d: weights %s, lr %g", self.epoch, self.loss.weights,
                      self.config.stage_two_lr)

    def _end_epoch(self, seconds: float) -> None:
        ctx = self.ctx
        train_total = distributed.all_sum(ctx, torch.tensor([self.epoch_loss[0]], dtype=torch.float64))
        train_loss = float(train_total[0]) / max(self.epoch_loss[1], 1)
        valid_loss, metrics = self._validate()
        judged = valid_loss if valid_loss is not None else train_loss
        lr = self.optimizer.param_groups[0]["lr"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(judged)
        elif self.scheduler is not None:
            self.scheduler.step()
        summary = metrics.summary() if metrics is not None else {}
        row = {"epoch": self.epoch + 1, "stage": self.stage, "lr": lr, "train_loss": train_loss,
               "valid_loss": valid_loss, "seconds": round(seconds, 3)}
        row.update({f"valid_{k}": v for k, v in summary.items()})
        self.rows.append(row)
        improved = judged < self.best
        if improved:
            self.best, self.stale = judged, 0
        else:
            self.stale += 1
        self.epoch += 1
        self.step = 0
        self.epoch_sampler_state = self.sampler.get_state()
        self.epoch_loss = [0.0, 0]
        payload = self._payload()
        self._save("last.pt", payload)
        if improved:
            self._save("best.pt", payload)
        self._write_metrics()
        text = (f"epoch {self.epoch}/{self.config.epochs} loss {train_loss:.4g}"
                + (f" valid {valid_loss:.4g}" if valid_loss is not None else "")
                + "".join(f" {q[0].upper()} {summary.get(f'{q}_mae'):.2f}" for q in ("energy", "forces", "stress")
                          if summary.get(f"{q}_mae") is not None)
                + f" lr {lr:.3g} {seconds:.1f}s" + (" *" if improved else ""))
        self.log.info(text)
        if self.ctx.main and not self.config.quiet:
            _console().print(text, soft_wrap=True)

    def _final_tests(self) -> None:
        if not self.ctx.main:
            return
        files = list(self.config.test)
        if not files:
            return
        best = self.out / "best.pt" if (self.out / "best.pt").is_file() else self.out / "last.pt"
        model = checkpoint.load_checkpoint(best, device=self.device, model_dir=self.build_dir)
        results, _ = evaluate_files(model, files, self.keys, batch_size=self.config.valid_batch_size
                                    or self.config.batch_size, cache=self.config.data_cache,
                                    targets=self.config.targets)
        _atomic_text(self.out / "test.json", json.dumps(results, indent=1) + "\n")
        if not self.config.quiet:
            _console().print(render_table(results, title=f"Test errors of {best} (E meV/atom, F meV/Å, S meV/Å³)"))


class _nullcontext:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


_CONSOLE = None


def _console():
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console()
    return _CONSOLE


class _Progress:
    """A rich progress bar per epoch with the live mean loss (nothing when quiet)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None

    def start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        if self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), transient=True,
                            console=_console())
        self.task = self.bar.add_task("train", total=steps, completed=done, epoch=f"{epoch + 1}/{epochs}", loss="-")
        self.sum, self.n = 0.0, 0
        self.bar.start()

    def advance(self, value: float) -> None:
        if self.bar is None:
            return
        self.sum += value
        self.n += 1
        self.bar.update(self.task, advance=1, loss=f"{self.sum / self.n:.4g}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def train(config: TrainConfig) -> Path:
    """Run ``tacegen train`` with ``config`` (data-parallel under torchrun/srun); returns the run folder."""
    ctx = distributed.setup(config.device)
    finished = False
    try:
        trainer = Trainer(config, ctx)
        try:
            out = trainer.run()
            finished = True
            return out
        finally:
            trainer.close()
    finally:
        distributed.teardown(ctx, synchronise=finished)
