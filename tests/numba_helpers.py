"""Shared helpers of the Numba-printer tests: random program inputs and calling a kernel."""

from __future__ import annotations

import numpy as np

from tacegen.backends.numba_printer import NumbaPrinter, graph_arguments
from tacegen.ir.nodes import EDGE, NODE, Program


def random_values(program: Program, rng, graph: dict, channels: int = 3):
    """Random inputs (unit vectors for ``direction``) and weights sized for ``graph``."""
    count = {EDGE: len(graph["receivers"]), NODE: graph["num_nodes"]}
    inputs = {}
    for v in program.inputs:
        shape = (count[v.domain], channels, v.size) if v.channels else (count[v.domain], v.size)
        inputs[v.name] = rng.standard_normal(shape)
    if "direction" in inputs:
        d = inputs["direction"]
        inputs["direction"] = d / np.linalg.norm(d, axis=1, keepdims=True)
    weights = {w.name: rng.standard_normal((count[w.domain], channels, w.count)) for w in program.weights}
    return inputs, weights


def call(fn, program: Program, inputs, weights, graph, dtype=np.float64):
    """Call a printed kernel with the arguments its signature lists, cast to ``dtype``."""
    args = [np.asarray(inputs[v.name], dtype) for v in program.inputs]
    args += [np.asarray(weights[w.name], dtype) for w in program.weights]
    printer = NumbaPrinter(program)
    if printer.graph:
        args += list(graph_arguments(graph, by_sender=printer.by_sender))
    return fn(*args)
