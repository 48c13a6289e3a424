"""IR ops for the non-equivariant scaffolding of a TACE model (geometry, radial network,
channel mixing, readout, energy sum), so that the *whole* energy is one IR program and
forces / virial come from the IR reverse pass (:mod:`tacegen.ir.reverse`).

Same style as :mod:`tacegen.ir.nodes`: frozen dataclasses with an ``out`` field and an
``inputs`` property. Interpreter semantics: :mod:`tacegen.ir.dense_interpret`; adjoint
rules: :mod:`tacegen.ir.dense_reverse` (importing it registers both).

Values
------
* ICT values stay :class:`~tacegen.ir.nodes.Value` s with layout ``(items, [channels,] 2l+1)``.
  Cartesian 3-vectors (positions ``(N, 3)``, edge vectors ``(E, 3)``, edge directions) are
  rank-1 channel-free Values (as the ``direction`` input of :class:`~tacegen.ir.nodes.EdgeICT`).
* Everything else is an :class:`Array`: a plain float array of shape ``(items,) + shape``
  on a domain ("edge", "node" or "structure"). :class:`Array` subclasses ``Value`` (rank 0,
  no channels, storage "array") so the generic passes (Program.check, optimise.share_subtrees,
  drop_dead) rename and compare it like any value.
* Dense weights (``Dense``, ``ChannelMix``) are named run-time parameters looked up in the
  interpreter's ``weights`` dict (global, not per item); declare them in ``Program.weights``
  with :class:`ParamSpec`. They are constants of the reverse pass (inference only).

Graph data (interpreter ``graph`` dict): ``senders`` (E,) = j, ``receivers`` (E,) = i,
``num_nodes``; for :class:`EdgeVectors` / :class:`NodeSum` also ``batch`` (N,) (structure
of each atom) and ``num_structures``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .nodes import Param, UnaryOp, Value

STRUCTURE = "structure"


@dataclass(frozen=True)
class Array(Value):
    """A plain float64 array of shape ``(items on domain,) + shape``."""

    shape: tuple = ()

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def array(name: str, domain: str, shape: tuple = ()) -> Array:
    """An :class:`Array` value (rank 0, no channels, storage "array")."""
    return Array(name, 0, domain, False, "array", tuple(int(s) for s in shape))


def vector(name: str, domain: str) -> Value:
    """A Cartesian 3-vector per item: a rank-1 channel-free Value, layout (items, 3)."""
    return Value(name, 1, domain, channels=False)


@dataclass(frozen=True)
class ParamSpec:
    """A global dense weight matrix of shape ``shape`` (for Dense / ChannelMix); a negative
    size is a run-time size (read from the weight). Shape ``()``: a run-time scalar
    (:class:`~tacegen.ir.nodes.Param`, declared with :func:`scalar`)."""

    name: str
    shape: tuple
    labels: tuple = field(default=(), compare=False)


def scalar(param: Param) -> ParamSpec:
    """The declaration in ``Program.weights`` of a run-time scalar ``param``."""
    return ParamSpec(param.name, (), ("int",) if param.integer else ("float",))


# ----------------------------------------------------------------------------- forward ops


@dataclass(frozen=True)
class EdgeVectors:
    """out[e] = (positions[j] - positions[i] + shifts[e] @ cell[b]) @ (I + strain[b]), shape (E, 3).

    j = senders[e], i = receivers[e], b = batch[i] (as tacegen.runtime.data.edge_vectors).
    positions: vector (N, 3); cell: Array (structure, (3, 3)), rows are lattice vectors;
    shifts: Array (edge, (3,)), integer cell shifts S; strain: optional Array (structure,
    (3, 3)), a homogeneous deformation evaluated at zero, so that ``d_strain`` of the
    reverse pass is dE/d(strain) and the virial is ``-d_strain`` (the runtime symmetrises
    the strain; its virial is the symmetric part of this one)."""

    out: Value
    positions: Value
    cell: Array
    shifts: Array
    strain: Array | None = None

    @property
    def inputs(self) -> tuple:
        return (self.positions, self.cell, self.shifts) + ((self.strain,) if self.strain is not None else ())


@dataclass(frozen=True)
class EdgeLength:
    """out[e] = |vectors[e]|, Array (edge, ())."""

    out: Array
    vectors: Value

    @property
    def inputs(self) -> tuple:
        return (self.vectors,)


@dataclass(frozen=True)
class EdgeDirection:
    """out[e] = vectors[e] / |vectors[e]|, vector (E, 3) (the ``direction`` of EdgeICT)."""

    out: Value
    vectors: Value

    @property
    def inputs(self) -> tuple:
        return (self.vectors,)


@dataclass(frozen=True)
class RadialBasis:
    """out[e, n] = B_n(r_e) * f(r_e / r_cut), Array (edge, (num_basis,)), n = 1..num_basis.

    B_n(r) = sqrt(2/r_cut) * w_n * sinc(w_n r / pi) = sqrt(2/r_cut) sin(w_n r) / r,
    w_n = n pi / r_cut (tacegen.runtime.radial.BesselBasis); f(x) = 1 - (p+1)(p+2)/2 x^p
    + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0 (PolynomialCutoff)."""

    out: Array
    lengths: Array
    r_cut: float
    num_basis: int
    p: int = 6

    @property
    def inputs(self) -> tuple:
        return (self.lengths,)


@dataclass(frozen=True)
class Dense(UnaryOp):
    """out = src @ weights[weight]: (items, fin) x (fin, fout) -> (items, fout), no bias.

    (torch.nn.Linear(fin, fout, bias=False) has ``weight`` of shape (fout, fin): pass its
    transpose.)"""

    weight: str


@dataclass(frozen=True)
class Activation(UnaryOp):
    """out = gain * silu(src), silu(x) = x * sigmoid(x), elementwise (any layout).

    ``normalised=True``: gain = 1/sqrt(E[silu(z)^2]), z ~ N(0,1), by 64-point
    Gauss-Hermite quadrature, exactly as tacegen.runtime.radial.NormalisedActivation
    (RadialMLP); ``normalised=False``: gain = 1 (the readout's plain torch.nn.SiLU)."""

    normalised: bool = True


@dataclass(frozen=True)
class ChannelMix(UnaryOp):
    """out[n, k, d] = sum_c src[n, c, d] * weights[weight][c, k] (einsum "ncd,ck->nkd").

    src, out: ICT Values with channels, same rank (ChannelLinear of the torch template)."""

    weight: str


@dataclass(frozen=True)
class Reshape(UnaryOp):
    """out = src.reshape((items,) + out.shape) (row-major, numpy/torch ``view``).

    E.g. the radial MLP output (E, C*P) -> the radial weight array (E, C, P) read by
    :class:`ScaleBy` (the template's ``.view(-1, C, P)``), or a rank-0 node Value
    (N, C, 1) -> Array (N, (C,)) for the readout. src may be any value."""


@dataclass(frozen=True)
class ScaleBy:
    """out = src * weight[:, :, index, None]: :class:`~tacegen.ir.nodes.Scale` with the weight
    array a computed value (Array (domain, (C, P))) instead of a run-time weight."""

    out: Value
    src: Value
    weight: Array
    index: int
    comment: str = ""

    @property
    def inputs(self) -> tuple:
        return (self.src, self.weight)


@dataclass(frozen=True)
class Mul(UnaryOp):
    """out = factor * src (a compile-time constant; any layout), e.g. 1/avg_num_neighbors."""

    factor: float


@dataclass(frozen=True)
class NodeSum(UnaryOp):
    """out[b] = sum of src[n] over the atoms n with batch[n] == b: Array (structure, shape)."""


DenseOp = EdgeVectors | EdgeLength | EdgeDirection | RadialBasis | Dense | Activation | ChannelMix | Reshape \
    | ScaleBy | Mul | NodeSum


# ----------------------------------------------------------------------------- adjoint ops
# ``cotangent`` has the layout of the primal output; ``out`` that of the primal input.


@dataclass(frozen=True)
class EdgeVectorsGrad:
    """out[n] = sum_{e: senders[e]=n} c_e - sum_{e: receivers[e]=n} c_e, (N, 3), with
    c_e = cotangent[e] @ (I + strain[b])^T (c_e = cotangent[e] without strain): the adjoint
    of EdgeVectors for ``positions``."""

    out: Value
    cotangent: Value
    strain: Array | None = None

    @property
    def inputs(self) -> tuple:
        return (self.cotangent,) + ((self.strain,) if self.strain is not None else ())


@dataclass(frozen=True)
class EdgeVectorsStrainGrad:
    """out[b] = sum_{e in b} outer(r0_e, cotangent[e]), (structure, (3, 3)), with r0_e =
    positions[j] - positions[i] + shifts[e] @ cell[b] the unstrained edge vector: the adjoint
    of EdgeVectors for ``strain`` (dE/d strain; the virial is its negative)."""

    out: Array
    positions: Value
    cell: Array
    shifts: Array
    cotangent: Value

    @property
    def inputs(self) -> tuple:
        return (self.positions, self.cell, self.shifts, self.cotangent)


@dataclass(frozen=True)
class EdgeLengthGrad:
    """out[e] = cotangent[e] * vectors[e] / |vectors[e]|, (E, 3)."""

    out: Value
    vectors: Value
    cotangent: Array

    @property
    def inputs(self) -> tuple:
        return (self.vectors, self.cotangent)


@dataclass(frozen=True)
class EdgeDirectionGrad:
    """out[e] = (c - (c . n) n) / |r|, c = cotangent[e], r = vectors[e], n = r/|r|, (E, 3)."""

    out: Value
    vectors: Value
    cotangent: Value

    @property
    def inputs(self) -> tuple:
        return (self.vectors, self.cotangent)


@dataclass(frozen=True)
class RadialBasisGrad:
    """out[e] = sum_n cotangent[e, n] * d/dr [B_n(r) f(r/r_cut)] at r = lengths[e], (E,).

    Exact analytic derivative: B_n' f + B_n f', B_n'(r) = sqrt(2/r_cut) (w r cos(w r) -
    sin(w r)) / r^2 (series -w^3 r/3 + w^5 r^3/30 for w r < 1e-3), f'(r) = -p(p+1)(p+2)/2
    x^(p-1) (1-x)^2 / r_cut for x = r/r_cut < 1, else 0."""

    out: Array
    lengths: Array
    cotangent: Array
    r_cut: float
    num_basis: int
    p: int = 6

    @property
    def inputs(self) -> tuple:
        return (self.lengths, self.cotangent)


@dataclass(frozen=True)
class DenseTransposed(UnaryOp):
    """out = src @ weights[weight].T: (items, fout) -> (items, fin) (adjoint of Dense)."""

    weight: str


@dataclass(frozen=True)
class ActivationGrad:
    """out = cotangent * gain * silu'(src), silu'(x) = s + x s (1 - s), s = sigmoid(x);
    src is the *input* of the Activation."""

    out: Array
    src: Array
    cotangent: Array
    normalised: bool = True

    @property
    def inputs(self) -> tuple:
        return (self.src, self.cotangent)


@dataclass(frozen=True)
class ChannelMixTransposed(UnaryOp):
    """out[n, c, d] = sum_k src[n, k, d] * weights[weight][c, k] (adjoint of ChannelMix)."""

    weight: str


@dataclass(frozen=True)
class ReshapeLike:
    """out = src.reshape(like.shape) (array shape of the value ``like``; adjoint of Reshape)."""

    out: Value
    src: Value
    like: Value

    @property
    def inputs(self) -> tuple:
        return (self.src, self.like)


@dataclass(frozen=True)
class ScaleByWeightGrad:
    """out = zeros shaped like ``like`` (the weight array, (items, C, P)) with
    out[:, :, index] = sum_m cotangent[:, :, m] * src[:, :, m] (adjoint of ScaleBy for its
    weight)."""

    out: Array
    src: Value
    cotangent: Value
    like: Array
    index: int

    @property
    def inputs(self) -> tuple:
        return (self.src, self.cotangent, self.like)


@dataclass(frozen=True)
class GatherStructures(UnaryOp):
    """out[n] = src[batch[n]]: Array (node, shape) (adjoint of NodeSum)."""


DenseReverseOp = EdgeVectorsGrad | EdgeVectorsStrainGrad | EdgeLengthGrad | EdgeDirectionGrad | RadialBasisGrad \
    | DenseTransposed | ActivationGrad | ChannelMixTransposed | ReshapeLike | ScaleByWeightGrad | GatherStructures
