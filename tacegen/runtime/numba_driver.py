"""Run a generated Numba model: bind PyTorch weights, evaluate batches, return torch tensors.

``NumbaTACE(model, numba_module)`` (normally through ``model.numba_backend()`` or the
generated module's ``bind(model)``) copies the model's weights to numpy
(:func:`tacegen.backends.numba_model.convert_state`), prints the instance-specific
programs (radial basis, radial MLPs, readouts: they depend on constructor arguments such
as r_cut and the MLP widths) from the IR into a module cached on disk by content hash
(so numba's ``cache=True`` makes a second process start fast), and evaluates batches
from :func:`tacegen.runtime.data.batch_atoms` through :class:`~tacegen.runtime.chain.ModelChain`.

Neighbour lists come from the runtime (vesin) as for the PyTorch model. Outputs match the
PyTorch model's dict: energy (B,), node_energy (N,), forces (N, 3), virial and stress
(B, 3, 3; stress NaN for structures that are not fully periodic).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..backends.numba_printer import load_source, receiver_offsets, sender_csr
from .chain import LayerInfo, ModelChain

_NUMPY = {torch.float64: np.float64, torch.float32: np.float32}


def graph_arrays(batch: dict) -> dict:
    """The ``graph`` dict of the printed programs from a runtime batch (edges sorted by receiver)."""
    senders = np.ascontiguousarray(batch["edge_index"][0].cpu().numpy(), dtype=np.int64)
    receivers = np.ascontiguousarray(batch["edge_index"][1].cpu().numpy(), dtype=np.int64)
    n = int(batch["positions"].shape[0])
    order, offsets = sender_csr(senders, n)
    return {"senders": senders, "receivers": receivers, "receiver_offsets": receiver_offsets(receivers, n),
            "sender_order": order, "sender_offsets": offsets,
            "batch": np.ascontiguousarray(batch["batch"].cpu().numpy(), dtype=np.int64),
            "num_nodes": n, "num_structures": int(batch["num_atoms"].shape[0])}


def instance_cache_folder() -> Path:
    """Where instance modules (and numba's cache of them) live: the tacegen cache, or a
    temporary folder when the cache is off."""
    from ..cache import default_directory

    base = default_directory()
    if base is None:
        return Path(tempfile.mkdtemp(prefix="tacegen-numba-"))
    return base / "numba"


class NumbaTACE:
    """A TACE model evaluated by its generated Numba programs (see module docstring)."""

    def __init__(self, model, module):
        from ..backends.numba_model import convert_state, render_instance_module

        torch_module = sys.modules.get(type(model).__module__)
        model_spec = getattr(torch_module, "SPEC", None)
        if model_spec is not None and model_spec != module.SPEC:
            raise ValueError(f"the model was built from spec {model_spec} but the Numba module from {module.SPEC}")
        if model.dtype not in _NUMPY:
            raise TypeError(f"the Numba back end runs float32 or float64 models, not {model.dtype}")
        self.module = module
        self.torch_dtype = model.dtype
        self.dtype = _NUMPY[model.dtype]
        self.elements = list(model.elements)
        self.r_cut = float(model.r_cut)
        self.kinds = {name: LayerInfo(name, *row) for name, row in module.LAYER_KINDS.items()}
        weights, sizes = convert_state(model, self.kinds, self.dtype)
        self.instance = load_source(render_instance_module(sizes), instance_cache_folder())
        self.chain = ModelChain(self.kinds, weights, self._run)

    def _run(self, name, values, weights, graph):
        module = self.module if name in self.module.PROGRAMS else self.instance
        inputs, specs = module.SIGNATURES[name]
        args = [values[n] for n in inputs] + [weights[n] for n in specs]
        return module.PROGRAMS[name](*args, weights, graph)

    def __call__(self, batch: dict, compute_forces: bool = True, compute_stress: bool = True) -> dict:
        positions = batch["positions"]
        if positions.dtype != self.torch_dtype:
            raise TypeError(f"batch positions have dtype {positions.dtype} but this Numba model was bound to a "
                            f"{self.torch_dtype} model; build the batch with dtype={self.torch_dtype} or bind a "
                            f"model of dtype {positions.dtype}")
        if positions.device.type != "cpu":
            raise ValueError(f"the Numba back end runs on the CPU; the batch is on {positions.device}")
        graph = graph_arrays(batch)
        inputs = {"positions": positions.detach().numpy(), "cell": batch["cell"].detach().numpy(),
                  "shifts": batch["edge_shift"].detach().numpy(), "species": batch["species"].numpy()}
        out = self.chain.evaluate(inputs, graph, compute_forces, compute_stress, self.dtype)
        result = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
        if compute_stress:
            cell = batch["cell"].detach().to(torch.float64)
            volume = torch.linalg.det(cell).abs()
            periodic = batch["pbc"].all(dim=1)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            stress = -result["virial"].to(torch.float64) / safe.view(-1, 1, 1)
            stress = torch.where(periodic.view(-1, 1, 1), stress, torch.full_like(stress, float("nan")))
            result["stress"] = stress.to(self.torch_dtype)
        return result
