"""Response targets: derivatives of the energy trained on like outputs (issue 14).

Reserved target names (labels and shapes: :mod:`tacegen.train.targets`):

==================  ==========================================  =====================
``hessian``         d2E / dr_ia dr_jb, eV/Å^2                    (3N, 3N) per structure
``response:X``      -dE/dX of float input X (dipole for an       the shape of X
                    electric field, -dE/dm_i for moments)
``response2:X``     -d2E/dX2 of a per-structure float input X    (3, 3) for a vector
                    (polarizability for an electric field)
``born:X``          Z*_i,ab = d(-dE/dX_a)/dr_ib of a per-struc-  (N, 3, 3) per atom
                    ture vector input X (Born effective charges
                    for an electric field, e)
==================  ==========================================  =====================

:func:`responses` evaluates them for a batch by autograd on the model's ``node_energies``
(one extra forward pass beside the model's own), with ``create_graph`` while training so the
loss differentiates through them to the parameters. The Hessian rows of all structures of a
batch come from one backward pass per row index: the k-th chosen row of every structure is
taken together (the energy of a structure does not depend on another's atoms), so a batch
costs max_b(rows of b) passes; :func:`hessian_rows` draws K rows per structure and epoch
from the run seed (``--hessian-rows K``), so resumed runs draw the same rows.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

PREFIXES = ("response:", "response2:", "born:")


def parse_response(name: str) -> Optional[Tuple[str, Optional[str]]]:
    """("hessian", None), ("response", X), ("response2", X) or ("born", X) for a response target name,
    else None."""
    if name == "hessian":
        return ("hessian", None)
    for prefix in PREFIXES:
        if name.startswith(prefix):
            if not name[len(prefix):]:
                raise ValueError(f"target {name!r} names no input: write {prefix}INPUT, e.g. {prefix}electric_field")
            return (prefix[:-1], name[len(prefix):])
    return None


def wanted(extras) -> Dict[str, Tuple[str, Optional[str]]]:
    """Target name -> parsed response, for the response targets among ``extras``."""
    out = {}
    for row in extras.targets:
        parsed = parse_response(row[0])
        if parsed is not None:
            out[row[0]] = parsed
    return out


def hessian_rows(seed: int, epoch: int, structure: int, n: int, k: int) -> np.ndarray:
    """``k`` distinct rows (ascending) of the 3n Hessian rows of ``structure`` (its index in the data
    file), drawn from (seed, epoch, structure) alone; all rows when k >= 3n."""
    if k >= 3 * n:
        return np.arange(3 * n)
    rng = np.random.default_rng([int(seed), int(epoch), int(structure)])
    return np.sort(rng.choice(3 * n, size=k, replace=False))


def responses(model, batch: Dict[str, Tensor], extras, create_graph: bool) -> Dict[str, Tensor]:
    """The response targets of ``extras`` for ``batch`` (from :meth:`AtomsDataset.collate`, with the
    Hessian items of :func:`tacegen.train.targets.collate_extras`), by name: ``hessian`` (M, 3) in the
    layout of its label, ``response:X`` in the shape of input X, ``response2:X`` (B, 3, 3) (or (B,) for
    a scalar X), ``born:X`` (N, 3, 3). With ``create_graph`` they keep their graph to the parameters, else they are detached."""
    todo = wanted(extras)
    if not todo:
        return {}
    if getattr(model, "long_range", "none") != "none":
        raise ValueError(f"response targets {sorted(todo)} are derivatives of the short-range energy; this "
                         f"model has a long-range part ({model.long_range}), which they would leave out")
    if not hasattr(model, "node_energies"):
        raise ValueError(f"response targets {sorted(todo)} need the PyTorch model (autograd), not "
                         f"{type(model).__name__}")
    local = dict(batch)
    positions = batch["positions"].detach().clone().requires_grad_(True)
    local["positions"] = positions
    fields: Dict[str, Tensor] = {}
    for kind, name in todo.values():
        if name is not None and name not in fields:
            fields[name] = batch[f"input_{name}"].detach().clone().requires_grad_(True)
            local[f"input_{name}"] = fields[name]
    out: Dict[str, Tensor] = {}
    with torch.enable_grad():
        energy = model.node_energies(positions, local["cell"], local).sum()
        leaves = [positions] + list(fields.values())
        grads = torch.autograd.grad(energy, leaves, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
        by_field = dict(zip(fields, grads[1:]))
        for target, (kind, name) in todo.items():
            if kind == "response":
                out[target] = -by_field[name]
            elif kind == "response2":
                out[target] = -_second(by_field[name], fields[name], create_graph)
            elif kind == "born":
                out[target] = -_second(by_field[name], positions, create_graph)  # (N, 3 field, 3 position)
            else:
                out[target] = _hessian_items(grads[0], positions, batch, target, create_graph)
    if not create_graph:
        out = {k: v.detach() for k, v in out.items()}
    return out


def _second(grad: Tensor, field: Tensor, create_graph: bool) -> Tensor:
    """d grad_a / d field, summed over structures (their derivatives do not mix): (B, 3, 3) for (B, 3)
    fields, (B,) for scalar ones; with the positions as ``field`` (N, 3 a, 3)."""
    if grad.dim() == 1:
        (row,) = torch.autograd.grad(grad.sum(), field, create_graph=create_graph, retain_graph=True,
                                     allow_unused=True)
        return torch.zeros_like(field) if row is None else row
    flat = grad.reshape(grad.shape[0], -1)
    rows = []
    for a in range(flat.shape[1]):
        (row,) = torch.autograd.grad(flat[:, a].sum(), field, create_graph=create_graph, retain_graph=True,
                                     allow_unused=True)
        rows.append(torch.zeros_like(field) if row is None else row)
    return torch.stack(rows, dim=1)


def _hessian_items(grad: Tensor, positions: Tensor, batch: Dict[str, Tensor], name: str,
                   create_graph: bool) -> Tensor:
    """The chosen Hessian rows at the label's items (M, 3): pass k differentiates the sum of the k-th
    chosen row of every structure (rows of different structures do not mix)."""
    row, atom, passes = batch[f"{name}_row"], batch[f"{name}_atom"], batch[f"{name}_pass"]
    if row.numel() == 0:
        return torch.zeros((0, 3), dtype=positions.dtype, device=positions.device)
    flat = grad.reshape(-1)
    blocks = []
    for k in range(int(passes.max()) + 1):
        rows_k = torch.unique(row[passes == k])
        (block,) = torch.autograd.grad(flat.index_select(0, rows_k).sum(), positions, create_graph=create_graph,
                                       retain_graph=True, allow_unused=True)
        blocks.append(torch.zeros_like(positions) if block is None else block)
    return torch.stack(blocks)[passes, atom]
