"""Walk the program chain of a TACE model forward (energy) and backward (forces, virial).

The Numba back end has no autograd. The model is lowered to a chain of IR programs
(:mod:`tacegen.ir.model`); each program's vector-Jacobian product is itself an IR program
derived by :func:`tacegen.ir.reverse.reverse`. This module only passes values forward and
cotangents backward between the programs (the chain rule across program boundaries:
where a value feeds several programs its cotangents are added), so nothing here knows a
rank, a coupling or a derivative.

A *runner* evaluates one program: ``runner(name, values, weights, graph) -> tuple of
outputs`` in the program's output order, where ``values`` maps input names to arrays,
``weights`` maps weight and parameter names to arrays and ``graph`` holds the edges (the
model's neighbour list, or a long-range graph) and the structure index. The interpreter runner
(:func:`tacegen.ir.interpret.program_runner`) is the reference; the printed Numba module
supplies the fast one. Both see the same chain, so a disagreement is a printer bug, not a
model one.

Run-time sizes and scalars: every program is printed at build time; what a model instance
chooses (cut-off, basis size, widths, long-range parameters) reaches the programs as
array shapes and as scalars in ``weights``. The radial MLP has a run-time depth: the
chain walks one ``radial_hidden`` program per hidden layer and one ``radial_out_<paths>``
program (their reverse passes in the opposite order).

Conventions: forces = -dE/dr; the strain ``eps`` deforms positions and cell by
``(I + eps)`` and is evaluated at zero; virial = -sym(dE/d eps), stress = sym(dE/d eps) / V
(``tacegen.runtime.autograd``), NaN for structures that are not fully periodic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Runner = Callable[[str, dict, dict, dict], tuple]


@dataclass(frozen=True)
class LayerInfo:
    """What the chain needs to know of a layer kind (plain data, printed into the module)."""

    name: str
    first: bool
    last: bool
    in_ranks: tuple
    out_ranks: tuple
    skip_ranks: tuple
    num_edge_paths: int
    num_trees: int
    edge_ranks: tuple  # the l of the edge ICT inputs Y<l>


@dataclass
class LayerWeights:
    """Numpy weights of one layer, converted from the PyTorch module (see
    :func:`tacegen.runtime.numba_weights.convert_state`)."""

    kind: str                 # LayerKind name
    params: dict              # ChannelMix matrices up<k>, mixA<l>, mixB<k>, skip<k>
    radial: list              # radial MLP matrices (fan_in, fan_out), input layer first
    readout: dict             # readout<k>
    product: np.ndarray       # (elements, channels, trees)
    radial_program: str       # radial_out_<paths>: the radial MLP's output program
    readout_program: str      # readout_linear or readout_mlp


@dataclass
class ModelWeights:
    embedding: np.ndarray     # (elements, channels)
    atomic_energies: np.ndarray
    scale: float
    shift: float
    layers: list = field(default_factory=list)
    long_range: dict = field(default_factory=dict)  # LES: charge0 (C, 1) and the LES scalars
    radial_basis: dict = field(default_factory=dict)  # run-time scalars r_cut, num_basis, cutoff_p


@dataclass
class LongRangeCall:
    """The long-range program of one evaluation: its name (reverse: ``<name>_reverse``), the
    long-range graph (finite structures: all pairs; Ewald: the real-space neighbour list),
    its extra inputs (pair ``shifts``; ``total`` charges or given ``charges``), its
    parameters, and whether it reads the last layer's invariant features (LES)."""

    program: str
    graph: dict
    inputs: dict
    weights: dict = field(default_factory=dict)
    reads_features: bool = True


class ModelChain:
    """Energy, forces and virial of a lowered TACE model, given a runner per program.

    ``kinds``: the LayerKinds by name; programs are addressed by name, reverse programs by
    ``<name>_reverse`` (inputs: forward inputs then ``d_<output>`` cotangents; outputs:
    ``d_<x>`` for the differentiated inputs, see :func:`reverse_wrt`)."""

    def __init__(self, kinds: dict[str, LayerInfo], weights: ModelWeights, runner):
        self.kinds = kinds
        self.weights = weights
        self.runner = runner

    def run(self, name, values, weights, graph):
        return self.runner(name, values, weights, graph)

    def radial(self, layer: LayerWeights, features, graph) -> tuple:
        """(R, inputs of each radial MLP program): the hidden layers, then the output layer."""
        xs = [features]
        for matrix in layer.radial[:-1]:
            (y,) = self.run("radial_hidden", {"x": xs[-1]}, {"weight": matrix}, graph)
            xs.append(y)
        (R,) = self.run(layer.radial_program, {"x": xs[-1]}, {"weight": layer.radial[-1]}, graph)
        return R, xs

    def radial_reverse(self, layer: LayerWeights, xs: list, d_radial, graph):
        """d(features) from d(R) through the radial MLP programs, output layer first."""
        (d_x,) = self.run(layer.radial_program + "_reverse", {"x": xs[-1], "d_radial": d_radial},
                          {"weight": layer.radial[-1]}, graph)
        for matrix, x in zip(reversed(layer.radial[:-1]), reversed(xs[:-1])):
            (d_x,) = self.run("radial_hidden_reverse", {"x": x, "d_y": d_x}, {"weight": matrix}, graph)
        return d_x

    def evaluate(self, inputs: dict, graph: dict, compute_forces: bool = True, compute_stress: bool = True,
                 dtype=np.float64, long_range: list | None = None) -> dict:
        """``inputs``: positions (N, 3), cell (B, 3, 3), shifts (E, 3), species (N,);
        ``graph``: senders, receivers (sorted), batch, num_nodes, num_structures and the CSR
        arrays of :func:`tacegen.runtime.numba_driver.graph_arrays`; ``long_range``: the
        long-range programs of this batch (:class:`LongRangeCall`). Returns numpy energy
        (B,), node_energy (N,) (short range), long_range_energy (B,) and charges (N,) with
        a long range, and, as requested, forces (N, 3) and virial (B, 3, 3)."""
        w = self.weights
        cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        strain = np.zeros((graph["num_structures"], 3, 3), dtype)
        geo_in = {"positions": cast(inputs["positions"]), "cell": cast(inputs["cell"]),
                  "shifts": cast(inputs["shifts"]), "strain": strain}
        direction, lengths = self.run("geometry", geo_in, {}, graph)
        Y = self.run("edge_basis", {"direction": direction}, {}, graph)
        Y_in = {f"Y{l}": y for l, y in enumerate(Y)}
        (features,) = self.run("radial_basis", {"lengths": lengths}, w.radial_basis, graph)
        species = np.asarray(inputs["species"])
        h = {"h0": cast(w.embedding[species][:, :, None])}
        tape = []
        readout = np.zeros(graph["num_nodes"], dtype)
        for layer in w.layers:
            kind = self.kinds[layer.kind]
            R, radial_xs = self.radial(layer, features, graph)
            W = cast(layer.product[species])
            lw = {"radial": R, "product": W, **layer.params}
            outs = self.run(kind.name, {**h, **Y_in}, lw, graph)
            h_out = {f"h_out{k}": v for k, v in zip(kind.out_ranks, outs)}
            (node_readout,) = self.run(layer.readout_program, {"h_out0": h_out["h_out0"]}, layer.readout, graph)
            readout = readout + node_readout
            tape.append((layer, kind, h, lw, h_out, radial_xs))
            h = {f"h{k}": v for k, v in zip(kind.out_ranks, outs)}
        node_energy = w.atomic_energies[species] + w.scale * readout + w.shift
        energy = np.zeros(graph["num_structures"], np.float64)
        np.add.at(energy, np.asarray(graph["batch"]), node_energy.astype(np.float64))
        out = {"node_energy": node_energy.astype(dtype)}
        calls = list(long_range or [])
        lr_state = []
        for call in calls:
            lr_in = {"positions": geo_in["positions"], "cell": geo_in["cell"], "strain": strain, **call.inputs}
            if call.reads_features:
                lr_in["h_out0"] = tape[-1][4]["h_out0"]
            lr_out = self.run(call.program, lr_in, call.weights, call.graph)
            lr_state.append((call, lr_in, lr_out))
            out["long_range_energy"] = out.get("long_range_energy", 0.0) + lr_out[0]
            if len(lr_out) > 1:
                out["charges"] = lr_out[1]
            elif "charges" in call.inputs:
                out["charges"] = call.inputs["charges"]
            energy = energy + lr_out[0]
        out["energy"] = energy.astype(dtype)
        if not (compute_forces or compute_stress):
            return out

        # reverse sweep: d(total energy)/d(value), one cotangent per value
        d_readout = np.full(graph["num_nodes"], w.scale, dtype)
        d_h: dict = {}
        d_lr_positions = d_lr_strain = 0.0
        for call, lr_in, lr_out in lr_state:
            cot = {"d_energy_lr": np.ones(graph["num_structures"], dtype)}
            if len(lr_out) > 1:
                cot["d_charges"] = np.zeros_like(lr_out[1])
            grads = self.run(call.program + "_reverse", {**lr_in, **cot}, call.weights, call.graph)
            if call.reads_features:
                d_h["h0"] = d_h["h0"] + grads[0] if "h0" in d_h else grads[0]
                grads = grads[1:]
            d_lr_positions = d_lr_positions + grads[0]
            d_lr_strain = d_lr_strain + grads[1]
        d_features = np.zeros_like(features)
        d_Y = {f"d_Y{l}": np.zeros_like(y) for l, y in enumerate(Y)}
        for layer, kind, h_in, lw, h_out, radial_xs in reversed(tape):
            (d_h_out0,) = self.run(layer.readout_program + "_reverse",
                                   {"h_out0": h_out["h_out0"], "d_node_readout": d_readout}, layer.readout, graph)
            cot = {f"d_h_out{k}": d_h.get(f"h{k}", None) for k in kind.out_ranks}
            cot["d_h_out0"] = d_h_out0 if cot["d_h_out0"] is None else cot["d_h_out0"] + d_h_out0
            for key, value in cot.items():
                if value is None:
                    cot[key] = np.zeros_like(h_out[key[2:]])
            grads = self.run(kind.name + "_reverse", {**h_in, **Y_in, **cot}, lw, graph)
            names = reverse_wrt(kind)
            g = dict(zip(names, grads))
            for l in kind.edge_ranks:
                d_Y[f"d_Y{l}"] = d_Y[f"d_Y{l}"] + g[f"Y{l}"]
            d_features = d_features + self.radial_reverse(layer, radial_xs, g["radial"], graph)
            d_h = {k: v for k, v in g.items() if k.startswith("h")}
        (d_lengths,) = self.run("radial_basis_reverse", {"lengths": lengths, "d_features": d_features},
                                w.radial_basis, graph)
        (d_direction,) = self.run("edge_basis_reverse", {"direction": direction, **d_Y}, {}, graph)
        d_positions, d_strain = self.run("geometry_reverse", {**geo_in, "d_direction": d_direction,
                                                              "d_lengths": d_lengths}, {}, graph)
        d_positions = d_positions + d_lr_positions
        d_strain = d_strain + d_lr_strain
        if compute_forces:
            out["forces"] = -d_positions
        if compute_stress:
            out["virial"] = -0.5 * (d_strain + np.swapaxes(d_strain, 1, 2))
        return out


def reverse_wrt(kind: LayerInfo) -> list[str]:
    """What a layer's reverse program differentiates: the node features (not for the first
    layer, whose input is the element embedding), the edge ICTs and the radial weights."""
    names = [] if kind.first else [f"h{k}" for k in kind.in_ranks]
    return names + [f"Y{l}" for l in kind.edge_ranks] + ["radial"]
