"""``tacegen eval``: errors of a trained model on labelled data files.

Per file and per config type: energy MAE/RMSE (meV/atom), forces MAE/RMSE (meV/Å, per
component), stress MAE/RMSE (meV/Å^3, per component), only where labels exist (else
None / null); tensor and response targets ``<name>_mae``/``<name>_rmse`` (milli-units of their
labels, per component; every Hessian row), and for rank >= 2 outputs also per irreducible
part (``<name>_<part>_mae``, :func:`part_projectors`). :func:`evaluate_files` returns the JSON object ``{"files": {path: {...}}}``;
:func:`render_table` prints it with rich; :func:`parity_plots` writes PNG parity plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from tacegen.train.dataset import AtomsDataset, batches, model_inputs, species_map
from tacegen.train.labels import DataError, LabelKeys
from tacegen.train.metrics import Metrics
from tacegen.train.responses import responses



def check_elements(dataset: AtomsDataset, elements: Sequence[str]) -> None:
    from ase.data import chemical_symbols

    allowed = set(elements)
    for z in dataset.numbers():
        if chemical_symbols[int(z)] not in allowed:
            a = dataset.arrays
            ptr = np.asarray(a["atom_ptr"])
            numbers = np.asarray(a["numbers"])
            atom = int(np.flatnonzero(numbers == z)[0])
            s = int(np.searchsorted(ptr, atom, side="right") - 1)
            raise DataError(f"{dataset.path}: structure {s} atom {atom - ptr[s]} is {chemical_symbols[int(z)]!r}, "
                            f"which is not one of the model's elements {list(elements)}")


def evaluate_dataset(evaluate, dataset: AtomsDataset, elements: Sequence[str], dtype: torch.dtype,
                     batch_size: int = 8, device: torch.device = torch.device("cpu"), keep_values: bool = False,
                     batch_lists: Optional[List[List[int]]] = None, model=None) -> Metrics:
    """Errors of ``evaluate(batch, compute_forces=..., compute_stress=...)`` on ``dataset``; the
    response targets (:mod:`tacegen.train.responses`) of the data set's extras by autograd on
    ``model`` (default: ``evaluate``)."""
    check_elements(dataset, elements)
    table = species_map(elements)
    metrics = Metrics(keep_values=keep_values, extra={t[0]: t[2] for t in dataset.extras.targets},
                      parts=part_projectors(evaluate))
    want_forces = dataset.has("forces")
    want_stress = dataset.has("stress")
    if batch_lists is None:
        batch_lists = batches(range(len(dataset)), dataset.sizes(), batch_size)
    for positions in batch_lists:
        batch = dataset.collate(positions, table, dtype, device)
        inputs = model_inputs(batch)
        out = evaluate(inputs, compute_forces=want_forces, compute_stress=want_stress)
        out.update(responses(evaluate if model is None else model, batch, dataset.extras, create_graph=False))
        types = [dataset.config_types[int(dataset.indices[p])] for p in positions]
        metrics.add(out, batch, types)
    return metrics


def part_projectors(model) -> Dict[str, list]:
    """Output name -> [(``<name>_<part>``, projector (3^n, 3^n))] for the rank >= 2 outputs of a
    model with tensor outputs (:class:`tacegen.runtime.inputs.TensorReadout`): the projector
    onto each irreducible part along the others (from the parts' exact embeddings), so the
    error of a rank-2 target splits into its 0e, 1e and 2e parts."""
    readout = getattr(model, "outputs", None)
    out: Dict[str, list] = {}
    for o in getattr(readout, "outputs", []):
        if int(o["rank"]) < 2:
            continue
        matrices = [m.detach().double().cpu().numpy() for m in readout.part_matrices(o["name"])]
        inverse = np.linalg.pinv(np.concatenate(matrices, axis=1))
        rows, start, seen = [], 0, {}
        for part, m in zip(o["parts"], matrices):
            seen[part["label"]] = seen.get(part["label"], 0) + 1
            suffix = part["label"] + (f"_{seen[part['label']]}" if seen[part["label"]] > 1 else "")
            rows.append((f"{o['name']}_{suffix}", m @ inverse[start:start + m.shape[1]]))
            start += m.shape[1]
        out[o["name"]] = rows
    return out


def evaluate_files(model, files: Sequence[str], keys: LabelKeys = LabelKeys(), backend: str = "torch",
                   batch_size: int = 8, keep_values: bool = False, cache: bool = True, targets: Sequence[str] = ()):
    """``({"files": {path: report}}, {path: Metrics})`` for a model and data files. ``targets``:
    ``NAME=KEY`` tensor targets (:mod:`tacegen.train.targets`) reported as ``NAME_mae``/``NAME_rmse``."""
    from tacegen.runtime.inputs import input_specs_of, output_specs_of
    from tacegen.train.targets import extras_for

    spec = {"inputs": input_specs_of(model), "outputs": output_specs_of(model)}
    extras = extras_for(spec, targets)
    if backend == "numba":
        from tacegen.train.responses import wanted

        if wanted(extras):
            raise ValueError(f"response targets {sorted(wanted(extras))} are derivatives by autograd: evaluate "
                             f"them with --backend torch")
        evaluate = model.numba_backend()
    elif backend == "torch":
        evaluate = model
    else:
        raise ValueError(f"backend must be 'torch' or 'numba', got {backend!r}")
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    results: Dict[str, dict] = {}
    raw: Dict[str, Metrics] = {}
    for path in files:
        dataset = AtomsDataset.from_file(path, float(model.r_cut), keys, cache=cache, extras=extras)
        metrics = evaluate_dataset(evaluate, dataset, list(model.elements), dtype, batch_size, device, keep_values)
        report = {"n_structures": metrics.structures, **metrics.summary(),
                  "by_config_type": metrics.by_config_type()}
        results[str(path)] = report
        raw[str(path)] = metrics
    return {"files": results}, raw


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_table(results: dict, title: str = "Errors (E meV/atom, F meV/Å, S meV/Å³)"):
    from rich.table import Table

    table = Table(title=title)
    extra = []  # tensor targets (milli-units of their labels)
    for report in results["files"].values():
        extra += [k[:-4] for k in report if k.endswith("_mae") and k[:-4] not in ("energy", "forces", "stress")
                  and k[:-4] not in extra]
    for col in ("file", "config type", "structures", "E MAE", "E RMSE", "F MAE", "F RMSE", "S MAE", "S RMSE",
                *[f"{name} {m}" for name in extra for m in ("MAE", "RMSE")]):
        table.add_column(col, justify="left" if col in ("file", "config type") else "right")
    for path, report in results["files"].items():
        rows = [("all", report, report["n_structures"])]
        rows += [(name, r, "") for name, r in report["by_config_type"].items()]
        for name, r, n in rows:
            table.add_row(path if name == "all" else "", name, str(n),
                          *[_fmt(r.get(f"{q}_{m}")) for q in ("energy", "forces", "stress", *extra)
                            for m in ("mae", "rmse")])
    return table


def parity_plots(raw: Dict[str, Metrics], folder: str) -> List[Path]:
    """One PNG per file: predicted against reference energy (eV/atom), forces (eV/Å), stress (eV/Å^3)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plots needs matplotlib: pip install 'tacegen[plots]'") from None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, (path, metrics) in enumerate(raw.items()):
        quantities = [q for q in ("energy", "forces", "stress") if metrics.values[f"{q}_ref"]]
        fig, axes = plt.subplots(1, len(quantities), figsize=(4 * len(quantities), 4), squeeze=False)
        units = {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}
        for ax, q in zip(axes[0], quantities):
            ref = np.concatenate(metrics.values[f"{q}_ref"])
            pred = np.concatenate(metrics.values[f"{q}_pred"])
            ax.scatter(ref, pred, s=4, alpha=0.6)
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlabel(f"reference {q} ({units[q]})")
            ax.set_ylabel(f"predicted {q} ({units[q]})")
            ax.set_title(q)
        fig.suptitle(Path(path).name)
        fig.tight_layout()
        target = out / f"parity_{k}_{Path(path).stem}.png"
        fig.savefig(target, dpi=120)
        plt.close(fig)
        written.append(target)
    return written
