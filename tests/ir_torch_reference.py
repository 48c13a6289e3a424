"""An independent torch implementation of the core IR ops (dense tables, einsum), used by
the tests to compare the interpreter and the IR reverse pass with torch autograd."""

from __future__ import annotations

import torch

from tacegen.algebra import ict
from tacegen.ir.nodes import Couple, EdgeICT, Gather, Program, Scale, Scatter, Sum


def core_op(op, env: dict, weights: dict, graph: dict):
    """Torch value of one core op, or None for an op type this function does not know."""
    if isinstance(op, EdgeICT):
        r = env[op.direction.name]
        polys, idx = ict.ict_polynomials(op.out.rank), ict.pattern_index(op.out.rank)
        return torch.stack([sum(float(c) * r[:, 0] ** m[0] * r[:, 1] ** m[1] * r[:, 2] ** m[2]
                                for m, c in polys[idx[alpha]].items())
                            for alpha in ict.reduced_patterns(op.out.rank)], dim=-1)
    if isinstance(op, Couple):
        table = torch.as_tensor(op.coupling.dense())
        sa = "ncm" if op.left.channels else "nm"
        sb = "nck" if op.right.channels else "nk"
        so = "ncj" if op.out.channels else "nj"
        return torch.einsum(f"{sa},{sb},mkj->{so}", env[op.left.name], env[op.right.name], table)
    if isinstance(op, Scale):
        return env[op.src.name] * weights[op.weight][:, :, op.index, None]
    if isinstance(op, Sum):
        return sum(env[t.name] for t in op.terms)
    if isinstance(op, Gather):
        return env[op.src.name].index_select(0, torch.as_tensor(graph["senders"]))
    if isinstance(op, Scatter):
        src = env[op.src.name]
        receivers = torch.as_tensor(graph["receivers"])
        return src.new_zeros((graph["num_nodes"],) + tuple(src.shape[1:])).index_add(0, receivers, src)
    return None


def torch_run(program: Program, inputs: dict, weights: dict, graph: dict, extra=None) -> dict:
    """Evaluate ``program`` in torch; ``extra(op, env, weights, graph)`` handles more op types."""
    env = dict(inputs)
    for op in program.ops:
        value = extra(op, env, weights, graph) if extra is not None else None
        if value is None:
            value = core_op(op, env, weights, graph)
        if value is None:
            raise TypeError(type(op).__name__)
        env[op.out.name] = value
    return {v.name: env[v.name] for v in program.outputs}
