"""Reference semantics of the IR: a direct numpy interpreter (float64).

Slow and obvious on purpose: every back end and every optimiser rewrite is tested
against it. Coupling tables are applied entry by entry from their exact coefficients.
"""

from __future__ import annotations

import numpy as np

from ..algebra.ict import ict_reduced
from .nodes import Couple, EdgeICT, Gather, Program, Scale, Scatter, Sum


def run(program: Program, inputs: dict, weights: dict | None = None, graph: dict | None = None) -> dict:
    """Evaluate ``program``.

    inputs: name -> array (items, [channels,] 2l+1); weights: name -> (items, channels, count);
    graph: ``senders`` (E,), ``receivers`` (E,), ``num_nodes`` for Gather/Scatter.
    Returns name -> array for the program outputs.
    """
    weights = weights or {}
    env = {v.name: np.asarray(inputs[v.name], dtype=np.float64) for v in program.inputs}
    for op in program.ops:
        env[op.out.name] = _step(op, env, weights, graph)
    return {v.name: env[v.name] for v in program.outputs}


def _step(op, env, weights, graph):
    if isinstance(op, EdgeICT):
        return ict_reduced(env[op.direction.name], op.out.rank, normalize=False)
    if isinstance(op, Couple):
        a, b = env[op.left.name], env[op.right.name]
        if op.left.channels and not op.right.channels:
            b = b[:, None, :]
        elif op.right.channels and not op.left.channels:
            a = a[:, None, :]
        shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1]) + (2 * op.coupling.l3 + 1,)
        out = np.zeros(shape)
        for m1, m2, m3, c in op.coupling.entries:
            out[..., m3] += float(c) * a[..., m1] * b[..., m2]
        return out
    if isinstance(op, Scale):
        return env[op.src.name] * weights[op.weight][:, :, op.index, None]
    if isinstance(op, Sum):
        return sum(env[t.name] for t in op.terms)
    if isinstance(op, Gather):
        return env[op.src.name][graph["senders"]]
    if isinstance(op, Scatter):
        src = env[op.src.name]
        out = np.zeros((graph["num_nodes"],) + src.shape[1:])
        np.add.at(out, graph["receivers"], src)
        return out
    raise TypeError(f"unknown op {type(op).__name__}")
