"""Lower a ModelSpec and its derived paths to IR programs (naive, unoptimised form).

Three programs make the equivariant core of one TACE layer; the rest (embeddings, radial
MLP, channel mixing, readouts) is fixed scaffolding in the back-end templates.

* ``edge_basis``: T_l(r_ij) for l = 0..lmax.
* ``interaction_<ranks>``: the atomic basis
  ``A_{i,l3} = sum_j sum_{paths (l1, l2 -> l3)} R_{ij,path} couple(h_{j,l1}, T_l2(r_ij))``
  for node features h of the given ranks; only even paths, so A keeps natural parity.
* ``product_<ranks>``: the product basis
  ``B_{i,L} = sum_{trees eta} w_{z_i,eta} tree_eta(A_i)`` over the independent trees of
  :mod:`tacegen.paths` for every correlation order 1..nu.

The naive form evaluates every path and tree separately, exactly as written; the
optimiser (:mod:`tacegen.ir.optimise`) then shares and factors.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..algebra.coupling import coupling, is_odd_path, triangle
from ..paths import CouplingTree, PathSet, derive, natural_pieces
from ..spec import ModelSpec
from .nodes import EDGE, NODE, Couple, EdgeICT, Gather, Program, Scale, Scatter, Sum, Value, WeightSpec


def _ranks_tag(ranks) -> str:
    return "".join(str(r) for r in ranks)


def edge_basis_program(lmax: int) -> Program:
    direction = Value("direction", 1, EDGE, channels=False)
    ops, outs = [], []
    for l in range(lmax + 1):
        y = Value(f"Y{l}", l, EDGE, channels=False)
        ops.append(EdgeICT(y, direction))
        outs.append(y)
    return Program("edge_basis", f"T_l(r_ij / |r_ij|) for l = 0..{lmax}, reduced storage.",
                   (direction,), (), tuple(ops), tuple(outs)).check()


@dataclass(frozen=True)
class EdgePath:
    """One edge coupling path h_{l1} x T_{l2} -> A_{l3}."""

    l1: int
    l2: int
    l3: int

    @property
    def label(self) -> str:
        return f"h{self.l1} x Y{self.l2} -> A{self.l3}"


def edge_paths(in_ranks, lmax: int) -> list[EdgePath]:
    """All even (parity-preserving) couplings of node ranks with edge ranks into 0..lmax."""
    return [EdgePath(l1, l2, l3)
            for l1 in in_ranks for l2 in range(lmax + 1) for l3 in range(lmax + 1)
            if triangle(l1, l2, l3) and not is_odd_path(l1, l2, l3)]


def interaction_program(in_ranks, lmax: int) -> Program:
    paths = edge_paths(in_ranks, lmax)
    h = {l: Value(f"h{l}", l, NODE) for l in in_ranks}
    Y = {l: Value(f"Y{l}", l, EDGE, channels=False) for l in range(lmax + 1)}
    radial = WeightSpec("radial", EDGE, len(paths), tuple(p.label for p in paths))
    ops: list = []
    per_rank: dict[int, list[Value]] = {l: [] for l in range(lmax + 1)}
    for p_index, p in enumerate(paths):
        g = Value(f"hj{l_tag(p)}", p.l1, EDGE)
        c = Value(f"c{l_tag(p)}", p.l3, EDGE)
        s = Value(f"s{l_tag(p)}", p.l3, EDGE)
        a = Value(f"a{l_tag(p)}", p.l3, NODE)
        ops += [Gather(g, h[p.l1]),
                Couple(c, g, Y[p.l2], coupling(p.l1, p.l2, p.l3), p.label),
                Scale(s, c, "radial", p_index, f"R[{p.label}]"),
                Scatter(a, s)]
        per_rank[p.l3].append(a)
    outs = []
    for l, terms in per_rank.items():
        out = Value(f"A{l}", l, NODE)
        ops.append(Sum(out, tuple(terms)))
        outs.append(out)
    return Program(
        f"interaction_{_ranks_tag(in_ranks)}",
        f"Atomic basis A_0..A_{lmax} from node features of ranks {tuple(in_ranks)} and edge ICTs.",
        tuple(h.values()) + tuple(Y.values()), (radial,), tuple(ops), tuple(outs)).check()


def l_tag(p: EdgePath) -> str:
    return f"_{p.l1}_{p.l2}_{p.l3}"


def product_pathsets(lmax: int, nu: int, out_ranks) -> list[PathSet]:
    """Independent trees per (order, L) with natural output parity, in a fixed order."""
    pieces = natural_pieces(lmax)
    return [derive(pieces, order, L, (-1) ** L)
            for L in out_ranks for order in range(1, nu + 1) if L <= order * lmax]


def tree_label(tree: CouplingTree, lmax: int) -> str:
    return tree.label(natural_pieces(lmax))


def product_program(lmax: int, nu: int, out_ranks) -> Program:
    pieces = natural_pieces(lmax)
    A = {l: Value(f"A{l}", l, NODE) for l in range(lmax + 1)}
    trees: list[tuple[int, CouplingTree]] = []  # (L, tree)
    for ps in product_pathsets(lmax, nu, out_ranks):
        trees += [(ps.L, t) for t in ps.independent]
    labels = tuple(tree_label(t, lmax) for _, t in trees)
    weights = WeightSpec("product", NODE, len(trees), labels)
    ops: list = []
    terms: dict[int, list[Value]] = {L: [] for L in out_ranks}
    for index, (L, tree) in enumerate(trees):
        value = A[tree.leaves[0]]
        for step, ((l1, l2, l3), leaf) in enumerate(zip(tree.steps(pieces), tree.leaves[1:])):
            out = Value(f"t{index}_{step}", l3, NODE)
            ops.append(Couple(out, value, A[leaf], coupling(l1, l2, l3), f"{labels[index]} step {step + 1}"))
            value = out
        scaled = Value(f"w{index}", L, NODE)
        ops.append(Scale(scaled, value, "product", index, labels[index]))
        terms[L].append(scaled)
    outs = []
    for L in out_ranks:
        out = Value(f"B{L}", L, NODE)
        ops.append(Sum(out, tuple(terms[L])))
        outs.append(out)
    return Program(
        f"product_{_ranks_tag(out_ranks)}",
        f"Product basis B_L for L in {tuple(out_ranks)}: independent trees of orders 1..{nu} over A_0..A_{lmax}.",
        tuple(A.values()), (weights,), tuple(ops), tuple(outs)).check()


@dataclass(frozen=True)
class LayerPrograms:
    """The programs a model built from ``spec`` needs, naive form."""

    edge_basis: Program
    interactions: tuple  # (first layer: scalars in, later layers: hidden ranks in)
    products: tuple      # (inner layers: hidden ranks out, last layer: scalars out)


def build_programs(spec: ModelSpec) -> LayerPrograms:
    """The naive programs of ``spec``: TACE (this module) or, for ``basis="moment"``, TMP
    (:mod:`tacegen.ir.build_moment`, same program names and interfaces)."""
    from .embeddings import first_layer_ranks

    edge, interaction, product = edge_basis_program, interaction_program, product_program
    if spec.basis == "moment":
        from .build_moment import edge_moment_program, interaction_moment_program, product_moment_program

        edge, interaction, product = edge_moment_program, interaction_moment_program, product_moment_program
    hidden = spec.hidden_ranks
    first = first_layer_ranks(spec)  # (0,) unless equivariant inputs add node ranks
    interactions = (interaction(first, spec.lmax),)
    if hidden != first:
        interactions += (interaction(hidden, spec.lmax),)
    products = (product(spec.lmax, spec.nu, hidden),)
    if hidden != (0,):
        products += (product(spec.lmax, spec.nu, (0,)),)
    return LayerPrograms(edge(spec.lmax), interactions, products)
