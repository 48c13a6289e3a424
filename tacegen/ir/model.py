"""Lower a whole TACE model to IR programs: the source of truth of the Numba back end.

The PyTorch template composes the generated blocks (edge basis, interaction, product) with
hand-written torch modules and differentiates with autograd. The Numba back end has no
autograd: every piece of the energy is an IR program, and forces and the virial come from
:func:`tacegen.ir.reverse.reverse` applied to those programs. The model is a short *chain*
of programs (the number of layers is a run-time choice, so the chain is walked by the
driver, which passes values forward and cotangents backward between programs):

============  =================================================================  ==========
program       computes                                                           sizes
============  =================================================================  ==========
geometry      positions, cell, shifts, strain -> edge directions and lengths    none
edge_basis    directions -> T_l(r_ij/|r_ij|), l = 0..lmax (core)                 none
layer_<kind>  node features h, edge ICTs Y, radial weights R, product weights W  channels
              -> new node features: channel mixing, interaction (A), channel
              mixing (with 1/avg_num_neighbors folded into its weights),
              product basis (B), channel mixing, residual
radial_basis  lengths -> Bessel x polynomial cutoff                              r_cut, p
radial_mlp    radial basis -> R (edges, channels, paths), per layer               widths
readout       invariant node features -> node energy contribution, per layer     widths
============  =================================================================  ==========

All are printed at build time: the sizes and scalars of a model instance (cut-off, basis
size, MLP widths and depth, long-range parameters) are run-time sizes and run-time scalars
(:class:`~tacegen.ir.nodes.Param`) of the programs (see "instance sizes" below).

Value names follow the PyTorch template: ``h<k>`` node features of rank k, ``Y<l>`` edge
ICTs, weights ``radial`` (edges, channels, paths) and ``product`` (nodes, channels,
trees); parameters (global matrices, :class:`~tacegen.ir.dense_ops.ParamSpec`) ``up<k>``,
``mixA<l>``, ``mixB<k>``, ``skip<k>`` of shape (channels, channels), ``radial<k>`` and
``readout<k>`` of shape (fan_in, fan_out).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import dense_ops as d
from .nodes import EDGE, NODE, Param, Program, Sum, Value
from .optimise import map_inputs

CHANNELS = -1  # a run-time size in an Array shape (the number of channels)


def inline(program: Program, prefix: str, bind: dict) -> tuple[list, dict]:
    """The ops of ``program`` with its inputs replaced by the values in ``bind`` (input name
    -> Value of the same rank, domain and channels) and every other value renamed
    ``prefix + name``. Returns (ops, {output name: Value})."""
    rename: dict = {}
    for v in program.inputs:
        target = bind[v.name]
        if (target.rank, target.domain, target.channels) != (v.rank, v.domain, v.channels):
            raise ValueError(f"inline {program.name}: {target.name} cannot stand for input {v.name}")
        rename[v.name] = target
    ops = []
    for op in program.ops:
        op = map_inputs(op, rename)
        out = replace(op.out, name=prefix + op.out.name)
        rename[op.out.name] = out
        ops.append(replace(op, out=out))
    return ops, {v.name: rename[v.name] for v in program.outputs}


@dataclass(frozen=True)
class LayerKind:
    """One kind of message-passing layer: which node ranks go in and out. ``first``: used
    only as the first layer (its input, the element embedding, needs no gradient)."""

    name: str
    first: bool
    last: bool
    in_ranks: tuple
    out_ranks: tuple
    skip_ranks: tuple
    program: Program

    @property
    def num_edge_paths(self) -> int:
        return next(w.count for w in self.program.weights if getattr(w, "name", "") == "radial")

    @property
    def num_trees(self) -> int:
        return next(w.count for w in self.program.weights if getattr(w, "name", "") == "product")

    @property
    def edge_ranks(self) -> tuple:
        return tuple(v.rank for v in self.program.inputs if v.name.startswith("Y"))

    def info(self):
        """The plain-data summary the run-time chain walker needs."""
        from ..runtime.chain import LayerInfo

        return LayerInfo(self.name, self.first, self.last, tuple(self.in_ranks), tuple(self.out_ranks),
                         tuple(self.skip_ranks), self.num_edge_paths, self.num_trees, self.edge_ranks)


def layer_program(name: str, interaction: Program, product: Program, in_ranks, out_ranks, skip_ranks) -> Program:
    """One layer, as the PyTorch template's ``LayerBase.forward`` without the readout:

    up_k = h_k W_up_k; A = interaction(up, Y; R); A'_l = A_l W_A_l (1/avg_num_neighbors is
    folded into W_A_l by the weight conversion); B = product(A'; W[z]);
    out_k = B_k W_B_k (+ h_k W_skip_k for the residual ranks)."""
    h = {k: Value(f"h{k}", k, NODE) for k in in_ranks}
    Y = {v.name: v for v in interaction.inputs if v.name.startswith("Y")}
    params, ops = [], []
    up = {}
    for k in in_ranks:
        up[k] = Value(f"up{k}_h", k, NODE)
        ops.append(d.ChannelMix(up[k], h[k], f"up{k}"))
        params.append(d.ParamSpec(f"up{k}", (CHANNELS, CHANNELS)))
    bind = {**{f"h{k}": up[k] for k in in_ranks}, **Y}
    inter_ops, A_raw = inline(interaction, "i_", bind)
    ops += inter_ops
    A = {}
    for v in product.inputs:
        l = v.rank
        A[v.name] = Value(f"mixA{l}_A", l, NODE, storage=v.storage)
        ops.append(d.ChannelMix(A[v.name], A_raw[v.name], f"mixA{l}"))
        params.append(d.ParamSpec(f"mixA{l}", (CHANNELS, CHANNELS)))
    prod_ops, B = inline(product, "p_", A)
    ops += prod_ops
    outputs = []
    for k in out_ranks:
        mixed = Value(f"mixB{k}_B" if k in skip_ranks else f"h_out{k}", k, NODE)
        ops.append(d.ChannelMix(mixed, B[f"B{k}"], f"mixB{k}"))
        params.append(d.ParamSpec(f"mixB{k}", (CHANNELS, CHANNELS)))
        if k in skip_ranks:
            skip = Value(f"skip{k}_h", k, NODE)
            ops.append(d.ChannelMix(skip, h[k], f"skip{k}"))
            params.append(d.ParamSpec(f"skip{k}", (CHANNELS, CHANNELS)))
            mixed_out = Value(f"h_out{k}", k, NODE)
            ops.append(Sum(mixed_out, (mixed, skip)))
            mixed = mixed_out
        outputs.append(mixed)
    weights = tuple(interaction.weights) + tuple(product.weights) + tuple(params)
    return Program(name, f"Layer with node ranks {tuple(in_ranks)} in and {tuple(out_ranks)} out: channel "
                   f"mixing, {interaction.name}, channel mixing, {product.name}, channel mixing"
                   + (f", residual ranks {tuple(skip_ranks)}" if skip_ranks else "") + ".",
                   tuple(h.values()) + tuple(Y.values()), weights, tuple(ops), tuple(outputs)).check()


def layer_kinds(interactions, products, hidden_ranks) -> list[LayerKind]:
    """The distinct layer kinds (first/last layer or not), named like the PyTorch classes."""
    kinds: dict[str, LayerKind] = {}
    hidden = tuple(hidden_ranks)
    for first in (True, False):
        for last in (True, False):
            inter = interactions[0] if first else interactions[-1]
            prod = products[-1] if last else products[0]
            in_ranks = (0,) if first else hidden
            out_ranks = (0,) if last else hidden
            skip = tuple(k for k in out_ranks if k in in_ranks and not first)
            name = f"layer_{inter.name.split('_')[1]}_{prod.name.split('_')[1]}"
            if name not in kinds:  # the first combination defines the kind, as in the PyTorch template
                kinds[name] = LayerKind(name, first, last, in_ranks, out_ranks, skip,
                                        layer_program(name, inter, prod, in_ranks, out_ranks, skip))
            elif not first and kinds[name].first:
                # also used after the first layer (scalar hidden features): its reverse pass
                # must then give the gradient of its input features too
                kinds[name] = replace(kinds[name], first=False)
    return list(kinds.values())


def geometry_program() -> Program:
    """positions (N, 3), cell (B, 3, 3), integer shifts (E, 3), strain (B, 3, 3) -> edge
    directions (E, 3) and lengths (E,). Reversed for ``positions`` and ``strain``: forces are
    ``-d_positions`` and the (unsymmetrised) virial ``-d_strain``."""
    pos, cell = d.vector("positions", NODE), d.array("cell", d.STRUCTURE, (3, 3))
    shifts, strain = d.array("shifts", EDGE, (3,)), d.array("strain", d.STRUCTURE, (3, 3))
    vectors, lengths, direction = d.vector("vectors", EDGE), d.array("lengths", EDGE), d.vector("direction", EDGE)
    ops = (d.EdgeVectors(vectors, pos, cell, shifts, strain), d.EdgeLength(lengths, vectors),
           d.EdgeDirection(direction, vectors))
    return Program("geometry", "Edge vectors r_j - r_i + S cell under a homogeneous strain; their lengths and "
                   "directions.", (pos, cell, shifts, strain), (), ops, (direction, lengths)).check()


# --------------------------------------------------------------------------- instance sizes
#
# The programs below depend on a model instance's constructor arguments only through
# run-time sizes (WIDTH: read from the arrays and weights) and run-time scalars (Param:
# passed with the weights), so they are printed once at build time and serve every
# instance. The radial MLP has a run-time depth: it is a sequence of ``radial_hidden``
# programs (one per hidden layer) and one ``radial_out_<paths>`` program, walked by
# :class:`tacegen.runtime.chain.ModelChain`.

WIDTH = -1  # a run-time size in an Array or ParamSpec shape
R_CUT, NUM_BASIS, CUTOFF_P = Param("r_cut"), Param("num_basis", integer=True), Param("cutoff_p", integer=True)
#: LES and Ewald scalars (values: tacegen.runtime.long_range.les_kernel_parameters and
#: ewald_kernel_parameters)
GAMMA, K_CUT, SELF_COEFFICIENT, ALPHA = Param("gamma"), Param("k_cut"), Param("self_coefficient"), Param("alpha")
REAL_CUT = Param("r_cut")


def radial_basis_program() -> Program:
    """lengths (E,) -> Bessel x polynomial-cutoff features (E, num_basis); run-time scalars
    ``r_cut`` (Å), ``num_basis``, ``cutoff_p``."""
    lengths, features = d.array("lengths", EDGE), d.array("features", EDGE, (WIDTH,))
    return Program("radial_basis", "num_basis Bessel functions times the polynomial cutoff of order cutoff_p at "
                   "r_cut (Å); all three are run-time scalars.", (lengths,),
                   (d.scalar(R_CUT), d.scalar(NUM_BASIS), d.scalar(CUTOFF_P)),
                   (d.RadialBasis(features, lengths, R_CUT, NUM_BASIS, CUTOFF_P),), (features,)).check()


def mlp_ops(source: d.Array, widths, prefix: str, normalised: bool) -> tuple[list, d.Array, list]:
    """Ops of an MLP without biases: Dense -> activation -> ... -> Dense (no final activation)."""
    ops, params, x = [], [], source
    for k in range(len(widths) - 1):
        y = d.array(f"{prefix}{k}_z", source.domain, (widths[k + 1],))
        params.append(d.ParamSpec(f"{prefix}{k}", (widths[k], widths[k + 1])))
        ops.append(d.Dense(y, x, f"{prefix}{k}"))
        x = y
        if k < len(widths) - 2:
            a = d.array(f"{prefix}{k}_a", source.domain, (widths[k + 1],))
            ops.append(d.Activation(a, x, normalised=normalised))
            x = a
    return ops, x, params


def radial_hidden_program() -> Program:
    """One hidden layer of the RadialMLP: x (E, fan_in) -> normalised SiLU(x @ weight)
    (E, fan_out), ``weight`` (fan_in, fan_out) of run-time sizes."""
    x, z, y = (d.array(n, EDGE, (WIDTH,)) for n in ("x", "z", "y"))
    return Program("radial_hidden", "Radial MLP hidden layer: normalised SiLU(x @ weight).", (x,),
                   (d.ParamSpec("weight", (WIDTH, WIDTH)),),
                   (d.Dense(z, x, "weight"), d.Activation(y, z, normalised=True)), (y,)).check()


def radial_out_program(num_paths: int) -> Program:
    """The last layer of the RadialMLP and the template's ``.view(-1, C, P)``: x (E, fan_in)
    -> radial weights R (E, channels, num_paths), ``weight`` (fan_in, channels * num_paths)."""
    x, z = d.array("x", EDGE, (WIDTH,)), d.array("z", EDGE, (WIDTH,))
    radial = d.array("radial", EDGE, (WIDTH, num_paths))
    return Program(f"radial_out_{num_paths}", f"Radial MLP output layer x @ weight -> (edges, channels, "
                   f"{num_paths}).", (x,), (d.ParamSpec("weight", (WIDTH, WIDTH)),),
                   (d.Dense(z, x, "weight"), d.Reshape(radial, z)), (radial,)).check()


def readout_program(hidden: bool) -> Program:
    """Invariant node features h_out0 (N, channels, 1) -> node energy contribution (N,):
    Linear(channels, 1) (``readout_linear``), or Linear -> SiLU -> Linear(hidden, 1)
    (``readout_mlp``, the last layer); widths are run-time sizes."""
    h = Value("h_out0", 0, NODE)
    flat = d.array("features", NODE, (WIDTH,))
    widths = (WIDTH, WIDTH, 1) if hidden else (WIDTH, 1)
    ops, x, params = mlp_ops(flat, widths, "readout", False)
    out = d.array("node_readout", NODE)
    ops = [d.Reshape(flat, h)] + ops + [d.Reshape(out, x)]
    name = "readout_mlp" if hidden else "readout_linear"
    return Program(name, "Readout " + ("Linear -> SiLU -> Linear" if hidden else "Linear") + " of the invariant "
                   "channels.", (h,), tuple(params), tuple(ops), (out,)).check()


# --------------------------------------------------------------------------- long range


def les_program(constrained: bool) -> Program:
    """Latent Ewald summation (math.md section 5): invariant features of the last layer
    h_out0 (N, channels, 1) -> latent charges q (N,) = Linear(channels, 1) (parameter
    ``charge0`` (channels, 1)), constrained to the structure's total charge ``total`` (B,)
    when ``constrained`` -> E_lr (B,) = reciprocal sum over |k| <= k_cut with Gaussian width
    sigma, self term and neutralising background (periodic structures, zero for neutral
    ones) + pairwise erf(alpha r) / r over all pairs of each finite structure (the
    long-range graph: its edges are those pairs, not the model's neighbour list).

    Run-time scalars: gamma = sigma^2 / 2, k_cut, self_coefficient = 1 / (sigma sqrt(2 pi)),
    alpha = 1 / (sqrt(2) sigma) (:func:`tacegen.runtime.long_range.les_kernel_parameters`)."""
    from . import long_range as lr

    h = Value("h_out0", 0, NODE)
    pos, cell = d.vector("positions", NODE), d.array("cell", d.STRUCTURE, (3, 3))
    shifts, strain = d.array("shifts", EDGE, (3,)), d.array("strain", d.STRUCTURE, (3, 3))
    flat, raw1 = d.array("features", NODE, (WIDTH,)), d.array("charge_z", NODE, (1,))
    raw = d.array("raw_charges" if constrained else "charges", NODE)
    ops = [d.Reshape(flat, h), d.Dense(raw1, flat, "charge0"), d.Reshape(raw, raw1)]
    inputs = [h, pos, cell, shifts, strain]
    charges = raw
    if constrained:
        total = d.array("total", d.STRUCTURE)
        inputs.append(total)
        charges = d.array("charges", NODE)
        ops.append(lr.ConstrainCharges(charges, raw, total))
    e_k, e_p, energy = (lr.structure_energy(n) for n in ("energy_k", "energy_pairs", "energy_lr"))
    ops += [lr.ReciprocalEnergy(e_k, pos, charges, cell, strain, GAMMA, K_CUT, SELF_COEFFICIENT, True),
            lr.PairEnergy(e_p, pos, charges, cell, shifts, strain, ALPHA, "erf", None),
            Sum(energy, (e_k, e_p))]
    scalars = tuple(d.scalar(p) for p in (GAMMA, K_CUT, SELF_COEFFICIENT, ALPHA))
    return Program("long_range" if constrained else "long_range_free",
                   "Latent Ewald summation, charges " + ("constrained to the total charge." if constrained
                                                         else "unconstrained."),
                   tuple(inputs), (d.ParamSpec("charge0", (WIDTH, 1)),) + scalars, tuple(ops),
                   (energy, charges)).check()


def ewald_program(periodic: bool) -> Program:
    """Classic Ewald energy (B,) of given charges (N,). ``periodic`` (``ewald``): real space
    erfc(alpha r)/r within r_cut over the long-range graph + reciprocal sum within k_cut +
    self + neutralising background, run-time scalars alpha, r_cut, k_cut, gamma = 1 /
    (4 alpha^2), self_coefficient = alpha / sqrt(pi)
    (:func:`tacegen.runtime.long_range.ewald_kernel_parameters`). Finite (``coulomb``): the
    bare Coulomb sum 1/r over all pairs of each structure (alpha = 0, no cut-off)."""
    from . import long_range as lr

    pos, cell = d.vector("positions", NODE), d.array("cell", d.STRUCTURE, (3, 3))
    shifts, strain = d.array("shifts", EDGE, (3,)), d.array("strain", d.STRUCTURE, (3, 3))
    charges = d.array("charges", NODE)
    inputs = (pos, charges, cell, shifts, strain)
    energy = lr.structure_energy("energy_lr")
    if not periodic:
        return Program("coulomb", "Coulomb energy of given charges, all pairs of each finite structure.", inputs,
                       (), (lr.PairEnergy(energy, pos, charges, cell, shifts, strain, 0.0, "erfc", None),),
                       (energy,)).check()
    e_r, e_k = lr.structure_energy("energy_real"), lr.structure_energy("energy_k")
    ops = (lr.PairEnergy(e_r, pos, charges, cell, shifts, strain, ALPHA, "erfc", REAL_CUT),
           lr.ReciprocalEnergy(e_k, pos, charges, cell, strain, GAMMA, K_CUT, SELF_COEFFICIENT, True),
           Sum(energy, (e_r, e_k)))
    scalars = tuple(d.scalar(p) for p in (ALPHA, REAL_CUT, K_CUT, GAMMA, SELF_COEFFICIENT))
    return Program("ewald", "Classic Ewald energy of given charges: real + reciprocal + self + background; "
                   "run-time alpha (Å^-1), r_cut (Å), k_cut (Å^-1).", inputs, scalars, ops, (energy,)).check()
