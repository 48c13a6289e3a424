"""Rewrites that keep a program's value and lower its cost.

Each pass is a function Program -> Program; :func:`optimise` runs them to a fixed point.
Every pass is checked against :mod:`tacegen.ir.interpret` in the tests.

* ``share_subtrees``: common-subexpression elimination. Identical ops on identical inputs
  (for example the prefix (A1 x A1)->2 shared by many trees and by lower correlation
  orders, or a Gather of the same node feature for several edge paths) are computed once.
* ``scatter_once``: a sum of neighbour sums becomes one neighbour sum of a sum (the
  scatter is linear), so each output rank is scattered once.
* ``factor_weights``: sum_k w_k couple(P_k, X) = couple(sum_k w_k P_k, X) for one coupling
  table and one right operand (the coupling is bilinear and w_k are per-channel scalars).
  Applied only where the cost model says it is cheaper.
* ``scale_early``: w * couple(a, b) = couple(w * a, b); the per-channel weight is applied
  to the coupling's input when that is smaller than its output (on edges this turns
  E x C x (2l3+1) multiplies into E x C x (2l1+1)).
* ``drop_dead``: removes ops whose results nobody reads.

Structural zeros never enter: coupling tables store nonzeros only, and the path
selection has already removed trees that vanish identically.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import fields, replace

from .cost import op_cost
from .nodes import Couple, Program, Scale, Scatter, Sum, Value, WeightArray


def map_inputs(op, rename: dict):
    """``op`` with every input value renamed through ``rename`` (by name); any op type."""
    def r(x):
        if isinstance(x, (Value, WeightArray)):
            return rename.get(x.name, x)
        if isinstance(x, tuple):
            return tuple(r(y) for y in x)
        return x

    return replace(op, **{f.name: r(getattr(op, f.name)) for f in fields(op) if f.name != "out"})


def op_key(op):
    """What makes two ops compute the same value: type, inputs and static data (exact
    coupling tables compared by their entries), not the output name or comment."""
    if isinstance(op, Sum):
        return ("Sum", op.out.channels) + tuple(sorted(t.name for t in op.terms))
    parts = []
    for f in fields(op):
        if f.name in ("out", "comment"):
            continue
        x = getattr(op, f.name)
        if isinstance(x, (Value, WeightArray)):
            x = x.name
        elif isinstance(x, tuple):
            x = tuple(y.name if isinstance(y, (Value, WeightArray)) else y for y in x)
        parts.append((f.name, x))
    return (type(op).__name__, op.out.rank if isinstance(op.out, Value) else None) + tuple(parts)


def _finish(program: Program, ops, rename: dict) -> Program:
    outputs = tuple(rename.get(v.name, v) for v in program.outputs)
    # outputs keep their public names: re-alias through a one-term Sum only if renamed
    fixed = list(ops)
    final = []
    for original, new in zip(program.outputs, outputs):
        if new.name != original.name:
            fixed.append(Sum(original, (new,)))
        final.append(original)
    return replace(program, ops=tuple(fixed), outputs=tuple(final)).check()


def share_subtrees(program: Program) -> Program:
    """Compute identical ops on identical inputs once (any op type); outputs keep their names."""
    seen: dict = {}
    rename: dict[str, Value] = {}
    ops = []
    for op in program.ops:
        op = map_inputs(op, rename)
        key = op_key(op)
        if key in seen:
            rename[op.out.name] = seen[key]
            continue
        seen[key] = op.out
        ops.append(op)
    return _finish(program, ops, rename)


def _consumers(ops) -> Counter:
    return Counter(v.name for op in ops for v in op.inputs)


def scatter_once(program: Program) -> Program:
    ops = list(program.ops)
    producer = {op.out.name: op for op in ops}
    uses = _consumers(ops) + Counter(v.name for v in program.outputs)
    out_ops = []
    replaced = set()
    for op in ops:
        if isinstance(op, Sum) and len(op.terms) > 1 and all(
                isinstance(producer.get(t.name), Scatter) and uses[t.name] == 1 for t in op.terms):
            sources = tuple(producer[t.name].src for t in op.terms)
            edge_sum = Value(f"{op.out.name}_edges", op.out.rank, sources[0].domain, op.out.channels, op.out.storage)
            out_ops += [Sum(edge_sum, sources), Scatter(op.out, edge_sum)]
            replaced.update(t.name for t in op.terms)
            continue
        out_ops.append(op)
    out_ops = [op for op in out_ops if op.out.name not in replaced]
    return replace(program, ops=tuple(_reorder(out_ops, program))).check()


def _reorder(ops, program: Program):
    """Topological order that keeps the original order wherever possible."""
    defined = {v.name for v in program.inputs}
    pending = list(ops)
    ordered = []
    while pending:
        for i, op in enumerate(pending):
            if all(v.name in defined for v in op.inputs):
                ordered.append(op)
                defined.add(op.out.name)
                del pending[i]
                break
        else:
            raise ValueError(f"{program.name}: cycle or undefined input while reordering")
    return ordered


def factor_weights(program: Program, items_per_atom: dict | None = None) -> Program:
    ops = list(program.ops)
    producer = {op.out.name: op for op in ops}
    new_ops: list = []
    removed: set[str] = set()
    for op in ops:
        if not isinstance(op, Sum):
            new_ops.append(op)
            continue
        groups: dict = defaultdict(list)
        others = []
        for t in op.terms:
            scale = producer.get(t.name)
            inner = producer.get(scale.src.name) if isinstance(scale, Scale) else None
            if isinstance(inner, Couple) and inner.left.channels:
                c = inner.coupling
                groups[(c.l1, c.l2, c.l3, inner.right.name, c)].append((scale, inner))
            else:
                others.append(t)
        terms = list(others)
        tags: Counter = Counter()
        for key, members in groups.items():
            if len(members) < 2 or not _factoring_pays(members, items_per_atom):
                terms += [s.out for s, _ in members]
                continue
            tag = f"{op.out.name}_f{key[0]}_{key[1]}_{key[3]}"
            tags[tag] += 1
            if tags[tag] > 1:  # another table with the same ranks (moment tables): keep names unique
                tag += f"_{tags[tag] - 1}"
            scaled = []
            for k, (s, inner) in enumerate(members):
                v = Value(f"{tag}_{k}", inner.left.rank, inner.left.domain, True, inner.left.storage)
                new_ops.append(Scale(v, inner.left, s.weight, s.index, s.comment))
                scaled.append(v)
                removed.add(s.out.name)
            left = Value(f"{tag}_sum", members[0][1].left.rank, members[0][1].left.domain, True, members[0][1].left.storage)
            new_ops.append(Sum(left, tuple(scaled)))
            out = Value(f"{tag}_out", key[2], left.domain, True, members[0][1].out.storage)
            first = members[0][1]
            new_ops.append(Couple(out, left, first.right, first.coupling,
                                  f"factored: {len(members)} weighted {first.coupling.l1}x{first.coupling.l2}"
                                  f"->{first.coupling.l3} couplings as one"))
            terms.append(out)
        new_ops.append(replace(op, terms=tuple(terms)))
    new_ops = [op for op in new_ops if op.out.name not in removed]
    return drop_dead(replace(program, ops=tuple(_reorder(new_ops, program))))


def _factoring_pays(members, items_per_atom) -> bool:
    before = sum(op_cost(inner, items_per_atom).flops + op_cost(s, items_per_atom).flops for s, inner in members)
    first = members[0][1]
    left = Value("x", first.left.rank, first.left.domain, True, first.left.storage)
    after = sum(op_cost(Scale(left, inner.left, s.weight, s.index), items_per_atom).flops for s, inner in members)
    after += op_cost(Sum(left, tuple(left for _ in members)), items_per_atom).flops
    after += op_cost(Couple(Value("y", first.coupling.l3, left.domain, storage=first.out.storage), left, first.right, first.coupling),
                     items_per_atom).flops
    return after < before


def scale_early(program: Program) -> Program:
    ops = list(program.ops)
    producer = {op.out.name: op for op in ops}
    uses = _consumers(ops) + Counter(v.name for v in program.outputs)
    rewritten = {}
    for op in ops:
        inner = producer.get(op.src.name) if isinstance(op, Scale) else None
        if (isinstance(inner, Couple) and uses[inner.out.name] == 1 and inner.left.channels
                and not inner.right.channels and inner.left.size < inner.out.size):
            early = Value(f"{op.out.name}_in", inner.left.rank, inner.left.domain, True, inner.left.storage)
            rewritten[inner.out.name] = None  # the unscaled coupling disappears
            rewritten[op.out.name] = (Scale(early, inner.left, op.weight, op.index, op.comment),
                                      replace(inner, out=op.out, left=early))
    out_ops = []
    for op in ops:
        if op.out.name not in rewritten:
            out_ops.append(op)
        elif rewritten[op.out.name] is not None:
            out_ops.extend(rewritten[op.out.name])
    return replace(program, ops=tuple(_reorder(out_ops, program))).check()


def drop_dead(program: Program) -> Program:
    """Remove ops whose results no output needs (any op type)."""
    live = {v.name for v in program.outputs}
    kept = []
    for op in reversed(program.ops):
        if op.out.name in live:
            kept.append(op)
            live.update(v.name for v in op.inputs)
    return replace(program, ops=tuple(reversed(kept))).check()


PASSES = (share_subtrees, scatter_once, factor_weights, scale_early, share_subtrees, drop_dead)


def optimise(program: Program, items_per_atom: dict | None = None) -> Program:
    """Run all passes (a fixed sequence; each is idempotent on its own output)."""
    for p in PASSES:
        program = p(program, items_per_atom) if p is factor_weights else p(program)
    return replace(program, name=program.name)
