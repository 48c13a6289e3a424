"""The documented conversion of a generated PyTorch ``TACE`` module's weights to the numpy
arrays and run-time scalars the printed Numba programs read (:func:`convert_state`)."""

from __future__ import annotations

from itertools import chain

import numpy as np

from .chain import LayerInfo, LayerWeights, ModelWeights
from .long_range import les_kernel_parameters


def _linears(sequential) -> list:
    import torch

    return [m for m in sequential.modules() if isinstance(m, torch.nn.Linear)]


def convert_state(model, kinds: dict[str, LayerInfo], dtype=np.float64) -> ModelWeights:
    """Numpy weights of a generated PyTorch ``TACE`` module.

    Conversion (PyTorch name -> program weight):

    * ``embedding`` (elements, C) -> h0 = embedding[z] as (N, C, 1);
    * ``blocks[t].linear_up[k].weight`` (C, C) -> ``up<rank>`` (einsum "ncd,ck->nkd", as is);
    * ``blocks[t].linear_A[l].weight / avg_num_neighbors`` -> ``mixA<l>`` (the neighbour-sum
      normalisation folded into the linear map that follows it);
    * ``linear_B[k]``, ``skip[k]`` -> ``mixB<rank>``, ``skip<rank>``;
    * ``radial.net`` Linear ``weight`` (fan_out, fan_in) -> the ``weight`` of the programs
      ``radial_hidden`` (one per hidden layer) and ``radial_out_<paths>`` = weight.T;
    * ``readout`` Linear ``weight`` -> ``readout<k>`` = weight.T;
    * ``product_weights`` (elements, C, trees) -> gathered by element per atom;
    * ``atomic_energies``, ``scale``, ``shift`` as is;
    * ``r_cut``, ``bessel.num_basis``, ``cutoff.p`` -> the run-time scalars ``r_cut``,
      ``num_basis``, ``cutoff_p`` of ``radial_basis``;
    * long range "les": ``charge_readout.weight`` (1, C) -> ``charge0`` = weight.T, and the
      scalars of :func:`tacegen.runtime.long_range.les_kernel_parameters` (``les_sigma``,
      ``les_k_cut``).
    """
    def arr(t):
        return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)

    layers = []
    for block in model.blocks:
        name = type(block).__name__.lower()
        if name not in kinds:
            raise ValueError(f"layer class {type(block).__name__} has no Numba program (known: {sorted(kinds)})")
        kind = kinds[name]
        params = {}
        for k, lin in zip(kind.in_ranks, block.linear_up):
            params[f"up{k}"] = arr(lin.weight)
        for l, lin in enumerate(block.linear_A):
            params[f"mixA{l}"] = arr(lin.weight * block.inv_avg_num_neighbors)
        for k, lin in zip(kind.out_ranks, block.linear_B):
            params[f"mixB{k}"] = arr(lin.weight)
        for k, lin in zip(block.skip_ranks, block.skip):
            params[f"skip{k}"] = arr(lin.weight)
        radial = [arr(lin.weight.t()) for lin in _linears(block.radial.net)]
        readout_linears = _linears(block.readout)
        readout = {f"readout{k}": arr(lin.weight.t()) for k, lin in enumerate(readout_linears)}
        layers.append(LayerWeights(name, params, radial, readout, arr(block.product_weights),
                                   f"radial_out_{kind.num_edge_paths}",
                                   "readout_linear" if len(readout_linears) == 1 else "readout_mlp"))
    radial_basis = {"r_cut": float(model.r_cut), "num_basis": int(model.bessel.num_basis),
                    "cutoff_p": int(model.cutoff.p)}
    weights = ModelWeights(arr(model.embedding), arr(model.atomic_energies), float(model.scale),
                           float(model.shift), layers, radial_basis=radial_basis)
    if getattr(model, "long_range", "none") == "les":
        gamma, k_cut, self_coefficient, alpha = les_kernel_parameters(model.les_sigma, model.les_k_cut)
        weights.long_range = {"charge0": arr(model.charge_readout.weight.t()), "gamma": gamma, "k_cut": k_cut,
                              "self_coefficient": self_coefficient, "alpha": alpha}
    return weights


#: float attributes of the model that :func:`convert_state` reads besides its tensors
_SCALARS = ("scale", "shift", "r_cut", "les_sigma", "les_k_cut")


def state_key(model) -> tuple:
    """A cheap fingerprint of everything :func:`convert_state` reads: each parameter and
    buffer by identity, storage and version counter (bumped by every in-place write, such as
    ``load_state_dict`` or an optimiser step), and the float attributes (``scale``,
    ``shift``, ...) of the model and its layers. Equal keys: the converted weights are still
    current."""
    tensors = tuple((name, id(t), t.data_ptr(), t._version)
                    for name, t in chain(model.named_parameters(), model.named_buffers()))
    scalars = tuple(getattr(model, name, None) for name in _SCALARS)
    layers = tuple(getattr(block, "inv_avg_num_neighbors", None) for block in model.blocks)
    return tensors, scalars, layers
