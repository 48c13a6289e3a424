"""Run a generated Numba model: bind PyTorch weights, evaluate batches, return torch tensors.

``NumbaTACE(model, numba_module)`` (normally through ``model.numba_backend()`` or the
generated module's ``bind(model)``) copies the model's weights to numpy
(:func:`tacegen.runtime.numba_weights.convert_state`; again whenever they change, see
:meth:`NumbaTACE.refresh`) and evaluates batches from
:func:`tacegen.runtime.data.batch_atoms` through :class:`~tacegen.runtime.chain.ModelChain`
with the build's printed programs: a model instance's sizes and scalars (cut-off, widths,
long-range parameters) are run-time arguments of those programs, so binding prints and
compiles nothing beyond the build (numba's ``cache=True`` keeps the compiled kernels next
to it). Nothing here imports the compiler.

Neighbour lists come from the runtime (vesin) as for the PyTorch model. Outputs match the
PyTorch model's dict: energy (B,), node_energy (N,), forces (N, 3), virial and stress
(B, 3, 3; stress NaN for structures that are not fully periodic).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from .chain import LayerInfo, LongRangeCall, ModelChain
from .csr import receiver_offsets, sender_csr
from .numba_weights import convert_state, state_key

_NUMPY = {torch.float64: np.float64, torch.float32: np.float32}
# edge-channel pairs per thread below which another thread costs more (waking it for each of
# the ~50 parallel loops of a call) than it saves; measured with benchmarks/bench_numba.py
WORK_PER_THREAD = 250_000


def parallel_threads(num_edges: int, channels: int) -> int:
    """Threads for one evaluation of ``num_edges`` edges with ``channels`` channels, chosen
    without any environment variable: one thread below :data:`WORK_PER_THREAD` edge-channel
    pairs (a small system: every parallel loop would spend its time waking threads), else
    one per ``WORK_PER_THREAD`` pairs, at most numba's thread count and at most PyTorch's
    (``torch.get_num_threads()``: the two pools share the cores, so numba never uses more
    threads than the user allowed PyTorch, and never oversubscribes alongside it)."""
    import numba

    limit = max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads()))
    return int(max(1, min(limit, (num_edges * channels) // WORK_PER_THREAD)))


def graph_arrays(batch: dict, edge_index=None) -> dict:
    """The ``graph`` dict of the printed programs from a runtime batch (edges sorted by
    receiver): the model's neighbour list, or the pairs ``edge_index`` (2, P) of a
    long-range graph."""
    edge_index = batch["edge_index"] if edge_index is None else edge_index
    senders = np.ascontiguousarray(edge_index[0].cpu().numpy(), dtype=np.int64)
    receivers = np.ascontiguousarray(edge_index[1].cpu().numpy(), dtype=np.int64)
    n = int(batch["positions"].shape[0])
    order, offsets = sender_csr(senders, n)
    return {"senders": senders, "receivers": receivers, "receiver_offsets": receiver_offsets(receivers, n),
            "sender_order": order, "sender_offsets": offsets,
            "batch": np.ascontiguousarray(batch["batch"].cpu().numpy(), dtype=np.int64),
            "num_nodes": n, "num_structures": int(batch["num_atoms"].shape[0])}


class NumbaTACE:
    """A TACE model evaluated by its generated Numba programs (see module docstring)."""

    def __init__(self, model, module):
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
        self.channels = int(model.channels)
        self.threads: int | None = None  # None: parallel_threads chooses per batch; else exactly this many
        self.kinds = {name: LayerInfo(name, *row) for name, row in module.LAYER_KINDS.items()}
        self.model = model
        self._state = state_key(model)
        weights = convert_state(model, self.kinds, self.dtype)
        self.long_range = module.SPEC.get("long_range", "none")
        self.chain = ModelChain(self.kinds, weights, self._run)
        self.total_charge = getattr(model, "total_charge", None)
        self.ewald_accuracy = getattr(model, "ewald_accuracy", None)

    def _run(self, name, values, weights, graph):
        module = self.module
        inputs, specs = module.SIGNATURES[name]
        args = [values[n] for n in inputs] + [weights[n] for n in specs]
        return module.PROGRAMS[name](*args, weights, graph)

    def refresh(self) -> bool:
        """Copy the model's weights again if they changed since they were last copied (a
        ``load_state_dict``, an optimiser step, a new ``scale``); called by every evaluation.
        Returns whether they were copied."""
        state = state_key(self.model)
        if state == self._state:
            return False
        if self.model.dtype != self.torch_dtype:
            raise TypeError(f"the model's dtype changed from {self.torch_dtype} to {self.model.dtype} after it was "
                            "bound to the Numba back end; bind it again (model.numba_backend())")
        self.chain.weights = convert_state(self.model, self.kinds, self.dtype)
        self._state = state
        return True

    def __call__(self, batch: dict, compute_forces: bool = True, compute_stress: bool = True) -> dict:
        self.refresh()
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
        calls = self._long_range_calls(batch) if self.long_range != "none" else None
        out = self._evaluate(inputs, graph, compute_forces, compute_stress, calls)
        result = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
        if calls is not None:
            result["dipole"] = self._dipole(batch, result["charges"])
        if compute_stress:
            cell = batch["cell"].detach().to(torch.float64)
            volume = torch.linalg.det(cell).abs()
            periodic = batch["pbc"].all(dim=1)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            stress = -result["virial"].to(torch.float64) / safe.view(-1, 1, 1)
            stress = torch.where(periodic.view(-1, 1, 1), stress, torch.full_like(stress, float("nan")))
            result["stress"] = stress.to(self.torch_dtype)
        return result

    def _evaluate(self, inputs, graph, compute_forces, compute_stress, calls) -> dict:
        """The chain at :attr:`threads` threads, by default :func:`parallel_threads` (numba's
        setting of the calling thread is restored afterwards)."""
        import numba

        previous = numba.get_num_threads()
        threads = self.threads or parallel_threads(int(graph["senders"].shape[0]), self.channels)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            return self.chain.evaluate(inputs, graph, compute_forces, compute_stress, self.dtype, calls)
        finally:
            numba.set_num_threads(previous)

    # -- long range ------------------------------------------------------------------------
    def _long_range_calls(self, batch: dict) -> list:
        """The long-range programs of this batch (see tacegen.runtime.long_range)."""
        from .long_range import (
            check_long_range_batch,
            ewald_batch_parameters,
            ewald_kernel_parameters,
            long_range_graph,
        )

        check_long_range_batch(batch)
        cast = lambda t: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=self.dtype)  # noqa: E731
        if self.long_range == "les":
            lr = long_range_graph(batch, "les")
            graph = graph_arrays(batch, lr["edge_index"])
            inputs = {"shifts": cast(lr["edge_shift"])}
            total = self._les_totals(batch)
            weights = self.chain.weights.long_range
            if total is None:
                return [LongRangeCall("long_range_free", graph, inputs, weights)]
            return [LongRangeCall("long_range", graph, {**inputs, "total": total}, weights)]
        charges = {"charges": cast(batch["charges"])}
        alpha, r_cut, k_cut = ewald_batch_parameters(batch, self.ewald_accuracy)
        lr = long_range_graph(batch, "ewald", r_cut if alpha > 0 else None)
        periodic = lr["periodic"].cpu().numpy().astype(bool)
        calls = []
        for mask, program in ((periodic, "ewald"), (~periodic, "coulomb")):
            if program == "ewald" and alpha == 0.0:
                continue  # nothing periodic
            if program == "coulomb" and not mask.any():
                continue  # no finite structure
            scalars = {}
            if program == "ewald":
                gamma, self_coefficient = ewald_kernel_parameters(alpha, k_cut)
                scalars = {"alpha": float(alpha), "r_cut": float(r_cut), "k_cut": float(k_cut), "gamma": gamma,
                           "self_coefficient": self_coefficient}
            edges = lr["edge_index"][:, torch.from_numpy(mask)]
            graph = graph_arrays(batch, edges)
            inputs = {**charges, "shifts": cast(lr["edge_shift"][torch.from_numpy(mask)])}
            calls.append(LongRangeCall(program, graph, inputs, scalars, reads_features=False))
        return calls

    def _les_totals(self, batch: dict):
        """Per-structure total charges (B,), or None when no structure is constrained."""
        num_structures = int(batch["num_atoms"].shape[0])
        given = batch.get("total_charge")
        given = None if given is None else given.detach().cpu().numpy().astype(np.float64)
        if given is None or not np.isfinite(given).any():
            if self.total_charge is None:
                return None
            return np.full(num_structures, self.total_charge, self.dtype)
        if self.total_charge is None and not np.isfinite(given).all():
            raise NotImplementedError("the Numba back end constrains the latent charges of all structures of a "
                                      "batch or of none: give atoms.info['charge'] for every structure, or "
                                      "evaluate the constrained ones in a separate batch")
        return np.where(np.isfinite(given), given, self.total_charge if self.total_charge is not None else 0.0
                        ).astype(self.dtype)

    @staticmethod
    def _dipole(batch: dict, charges: torch.Tensor) -> torch.Tensor:
        """sum_i (q_i - mean q) r_i for finite structures (NaN rows for periodic ones), as the
        PyTorch model."""
        structure = batch["batch"]
        num_structures = int(batch["num_atoms"].shape[0])
        q = charges.to(torch.float64)
        counts = batch["num_atoms"].to(torch.float64)
        mean = torch.zeros(num_structures, dtype=torch.float64).index_add(0, structure, q) / counts
        centred = q - mean[structure]
        pos = batch["positions"].detach().to(torch.float64)
        dipole = torch.zeros(num_structures, 3, dtype=torch.float64).index_add(0, structure, centred[:, None] * pos)
        periodic = batch["pbc"].any(dim=1)
        dipole = torch.where(periodic[:, None], torch.full_like(dipole, float("nan")), dipole)
        return dipole.to(charges.dtype)
