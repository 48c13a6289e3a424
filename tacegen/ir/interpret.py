"""Reference semantics of the IR: a direct numpy interpreter (float64).

Slow and obvious on purpose: every back end and every optimiser rewrite is tested
against it. Coupling tables are applied entry by entry from their exact coefficients.
"""

from __future__ import annotations

import numpy as np

from ..algebra.adjoint import ict_reduced_vjp
from ..algebra.ict import ict_reduced
from .nodes import (
    ChannelSum,
    Couple,
    EdgeICT,
    EdgeICTGrad,
    Gather,
    GatherReceivers,
    Program,
    Scale,
    Scatter,
    ScatterSenders,
    Stack,
    Sum,
    Zeros,
    bind_params,
)

# Extension point: op type -> ``rule(op, env, weights, graph) -> array``, consulted only for
# op types this module does not know (see tacegen.ir.dense_interpret).
EXTENSIONS: dict = {}

# which end of each edge a node<->edge op uses
_INDEX = {Gather: "senders", ScatterSenders: "senders", GatherReceivers: "receivers", Scatter: "receivers"}


def run(program: Program, inputs: dict, weights: dict | None = None, graph: dict | None = None) -> dict:
    """Evaluate ``program``.

    inputs: name -> array (items, [channels,] 2l+1); weights: name -> (items, channels, count);
    graph: ``senders`` (E,), ``receivers`` (E,), ``num_nodes`` for Gather/Scatter.
    Returns name -> array for the program outputs.
    """
    weights = weights or {}
    env = {v.name: np.asarray(inputs[v.name], dtype=np.float64) for v in program.inputs}
    for op in program.ops:
        env[op.out.name] = _step(bind_params(op, weights), env, weights, graph)
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
        shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1]) + (op.coupling.dims[2],)
        out = np.zeros(shape)
        for m1, m2, m3, c in op.coupling.entries:
            out[..., m3] += float(c) * a[..., m1] * b[..., m2]
        return out
    if isinstance(op, Scale):
        return env[op.src.name] * weights[op.weight][:, :, op.index, None]
    if isinstance(op, Sum):
        return sum(env[t.name] for t in op.terms)
    if isinstance(op, (Gather, GatherReceivers)):
        return env[op.src.name][graph[_INDEX[type(op)]]]
    if isinstance(op, (Scatter, ScatterSenders)):
        src = env[op.src.name]
        out = np.zeros((graph["num_nodes"],) + src.shape[1:])
        np.add.at(out, graph[_INDEX[type(op)]], src)
        return out
    # ops of the reverse pass (tacegen.ir.reverse)
    if isinstance(op, EdgeICTGrad):
        return ict_reduced_vjp(env[op.direction.name], env[op.cotangent.name], op.l)
    if isinstance(op, ChannelSum):
        return env[op.src.name].sum(axis=1)
    if isinstance(op, Zeros):
        return np.zeros_like(env[op.like.name])
    if isinstance(op, Stack):
        out = np.zeros_like(np.asarray(weights[op.weight], dtype=np.float64))
        for k, column in enumerate(op.columns):
            if column is not None:
                out[:, :, k] = env[column.name][:, :, 0]
        return out
    rule = EXTENSIONS.get(type(op))
    if rule is not None:
        return rule(op, env, weights, graph)
    raise TypeError(f"unknown op {type(op).__name__}")


def program_runner(programs: dict[str, Program]):
    """The reference runner of :class:`tacegen.runtime.chain.ModelChain`: :func:`run` on the
    named programs (dense and long-range ops registered), returning the outputs in order."""
    from . import dense_reverse, long_range  # noqa: F401  (register the dense and long-range ops)

    def runner(name, values, weights, graph):
        p = programs[name]
        env = run(p, values, weights, graph)
        return tuple(env[v.name] for v in p.outputs)

    return runner
