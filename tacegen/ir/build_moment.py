"""Lower a TMP (``basis="moment"``) spec to IR programs: the moment-tensor sibling of
:mod:`tacegen.ir.build`, with the same program names, inputs, outputs and weights, so the
layer scaffolding, the optimiser, the cost model and both printers serve both bases.

* ``edge_basis``: the edge moments Y_l = r_hat^(x)l, l = 0..lmax: Y_0 = 1 and Y_1 = r_hat
  (:class:`~tacegen.ir.nodes.EdgeICT`, ranks <= 1 are their own moments), then
  Y_l = Sym(Y_{l-1} (x) Y_1) by one exact table each (symmetric storage from rank 2).
* ``interaction_<ranks>``: the moment atomic basis
  ``A_{i,l3} = sum_j sum_{paths} R_{ij,path} Sym(contract_k(h_{j,l1}, Y_l2(r_ij)))`` over the
  same (l1, l2, l3) paths as TACE (:func:`tacegen.ir.build.edge_paths`: k = (l1 + l2 - l3)/2
  pairs, no Levi-Civita), A_l symmetric (not traceless) in symmetric storage; for the
  first layer (h scalar) A_l = sum_j R_l(r_ij) h_j M_l(r_hat_ij).
* ``product_<ranks>``: ``B_{i,L} = sum_trees w_{z_i,tree} tree(A_i)`` over the independent
  moment trees of :mod:`tacegen.moment_paths` for every order 1..nu; each contraction step
  is one :class:`~tacegen.algebra.moments.MomentTable`, the last one ending in the ICT of
  rank L (reduced storage), so node features between layers are ICTs as in TACE.
"""

from __future__ import annotations

from ..algebra.moments import REDUCED, contraction
from ..moment_paths import MomentPathSet, MomentTree, derive_moment, moment_storage
from .build import _ranks_tag, edge_paths, l_tag
from .nodes import EDGE, NODE, Couple, EdgeICT, Gather, Program, Scale, Scatter, Sum, Value, WeightSpec


def edge_moment_program(lmax: int) -> Program:
    direction = Value("direction", 1, EDGE, channels=False)
    ops, outs = [], []
    for l in range(lmax + 1):
        y = Value(f"Y{l}", l, EDGE, channels=False, storage=moment_storage(l))
        if l <= 1:
            ops.append(EdgeICT(y, direction))
        else:
            table = contraction(l - 1, 1, l, (moment_storage(l - 1), REDUCED, moment_storage(l)))
            ops.append(Couple(y, outs[-1], outs[1], table, f"M_{l} = Sym(M_{l - 1} (x) r_hat)"))
        outs.append(y)
    return Program("edge_basis", f"Moment tensors r_hat^(x)l for l = 0..{lmax}, symmetric storage from rank 2.",
                   (direction,), (), tuple(ops), tuple(outs)).check()


def interaction_moment_program(in_ranks, lmax: int) -> Program:
    paths = edge_paths(in_ranks, lmax)
    h = {l: Value(f"h{l}", l, NODE) for l in in_ranks}
    Y = {l: Value(f"Y{l}", l, EDGE, channels=False, storage=moment_storage(l)) for l in range(lmax + 1)}
    radial = WeightSpec("radial", EDGE, len(paths), tuple(p.label for p in paths))
    ops: list = []
    per_rank: dict[int, list[Value]] = {l: [] for l in range(lmax + 1)}
    for p_index, p in enumerate(paths):
        st = moment_storage(p.l3)
        g = Value(f"hj{l_tag(p)}", p.l1, EDGE)
        c = Value(f"c{l_tag(p)}", p.l3, EDGE, storage=st)
        s = Value(f"s{l_tag(p)}", p.l3, EDGE, storage=st)
        a = Value(f"a{l_tag(p)}", p.l3, NODE, storage=st)
        table = contraction(p.l1, p.l2, p.l3, (REDUCED, moment_storage(p.l2), st))
        ops += [Gather(g, h[p.l1]),
                Couple(c, g, Y[p.l2], table, f"Sym(h{p.l1} . M{p.l2}) -> A{p.l3}"),
                Scale(s, c, "radial", p_index, f"R[{p.label}]"),
                Scatter(a, s)]
        per_rank[p.l3].append(a)
    outs = []
    for l, terms in per_rank.items():
        out = Value(f"A{l}", l, NODE, storage=moment_storage(l))
        ops.append(Sum(out, tuple(terms)))
        outs.append(out)
    return Program(
        f"interaction_{_ranks_tag(in_ranks)}",
        f"Moment atomic basis A_0..A_{lmax} (symmetric, not traceless) from node features of ranks "
        f"{tuple(in_ranks)} and edge moments.",
        tuple(h.values()) + tuple(Y.values()), (radial,), tuple(ops), tuple(outs)).check()


def moment_pathsets(lmax: int, nu: int, out_ranks) -> list[MomentPathSet]:
    """Independent moment trees per (order, L) with natural output parity, in a fixed order."""
    return [derive_moment(lmax, order, L, (-1) ** L)
            for L in out_ranks for order in range(1, nu + 1) if L <= order * lmax]


def product_moment_program(lmax: int, nu: int, out_ranks) -> Program:
    A = {l: Value(f"A{l}", l, NODE, storage=moment_storage(l)) for l in range(lmax + 1)}
    trees: list[tuple[int, MomentTree]] = []
    for ps in moment_pathsets(lmax, nu, out_ranks):
        trees += [(ps.L, t) for t in ps.independent]
    labels = tuple(t.label() for _, t in trees)
    weights = WeightSpec("product", NODE, len(trees), labels)
    ops: list = []
    terms: dict[int, list[Value]] = {L: [] for L in out_ranks}
    for index, (L, tree) in enumerate(trees):
        value = A[tree.leaves[0]]
        tables = tree.tables()
        for step, (table, leaf) in enumerate(zip(tables, tree.leaves[1:])):
            last = step == len(tables) - 1
            out = Value(f"t{index}_{step}", table.l3, NODE, storage=REDUCED if last else moment_storage(table.l3))
            ops.append(Couple(out, value, A[leaf], table, f"{labels[index]} step {step + 1}"))
            value = out
        scaled = Value(f"w{index}", L, NODE)  # an ICT of rank L (a lone leaf has L <= 1: the same layout)
        if value.storage != REDUCED:
            raise AssertionError(f"tree {labels[index]} does not end in reduced storage")
        ops.append(Scale(scaled, value, "product", index, labels[index]))
        terms[L].append(scaled)
    outs = []
    for L in out_ranks:
        if not terms[L]:
            raise ValueError(f"the moment basis has no rank-{L} features at lmax={lmax}, nu={nu}")
        out = Value(f"B{L}", L, NODE)
        ops.append(Sum(out, tuple(terms[L])))
        outs.append(out)
    return Program(
        f"product_{_ranks_tag(out_ranks)}",
        f"Moment product basis B_L for L in {tuple(out_ranks)}: independent moment-tensor contraction trees of "
        f"orders 1..{nu} over A_0..A_{lmax}, each ending in the ICT of rank L.",
        tuple(A.values()), (weights,), tuple(ops), tuple(outs)).check()
