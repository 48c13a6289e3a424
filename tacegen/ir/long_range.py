"""Long-range electrostatics as IR ops: latent Ewald summation (LES) and classic Ewald.

The energies of :mod:`tacegen.runtime.electrostatics` (the float64 torch reference) as
IR ops, so that a whole-energy program with a long-range term is reversed by
:func:`tacegen.ir.reverse.reverse` (forces and virial by the IR reverse pass) and both
back ends print it (kernels: ``templates/long_range_numba.py.j2`` and
``templates/long_range_torch.py.j2``, rendered by
:mod:`tacegen.backends.long_range_printer`). Importing this module registers the numpy
(float64) interpreter semantics in :data:`tacegen.ir.interpret.EXTENSIONS` and the
adjoint rules in :data:`tacegen.ir.reverse.ADJOINT_RULES`.

Units and conventions
---------------------
* Energies eV, lengths Å, charges e, ``K_E = 14.3996454784`` eV Å / e^2 (Coulomb constant
  1 / (4 pi eps0)); ``alpha``, ``k_cut`` in Å^-1, ``gamma`` in Å^2, ``sigma`` in Å.
* Values (as :mod:`tacegen.ir.dense_ops`): ``positions`` a vector (node, 3); ``charges``
  an Array (node, ()); ``cell`` an Array (structure, (3, 3)) whose *rows* are the lattice
  vectors (an all-zero cell marks a non-periodic structure, as in
  :func:`tacegen.runtime.data.batch_atoms`); ``shifts`` an Array (edge, (3,)) of integer
  cell shifts; energies Arrays (structure, ()).
* ``strain`` (optional Array (structure, (3, 3)), evaluated at zero) deforms positions
  AND cell: ``r -> r (I + strain[b])``, ``cell -> cell (I + strain[b])`` (row vectors).
  The reverse pass's ``d_strain`` is dE/d(strain); the virial is ``-d_strain`` and the
  stress ``d_strain / V`` (ASE sign, positive = tensile). The runtime symmetrises.
* Graph data (interpreter ``graph`` dict): ``batch`` (N,) structure of each atom (sorted:
  the atoms of a structure are contiguous), ``num_structures``, ``num_nodes``; pair ops
  also ``senders`` j and ``receivers`` i of a directed edge list sorted by receiver,
  ``r_ij = (r_j - r_i + shifts @ cell[b]) (I + strain[b])`` with ``b = batch[i]``.

Reciprocal space (:class:`ReciprocalEnergy`)
-------------------------------------------
Per structure b with V = |det cell'|, cell' = cell (I + strain)::

    E_b = (4 pi K_E / V) sum_{k in H} exp(-gamma k^2) / k^2 |S(k)|^2
          - self_coefficient K_E sum_i q_i^2                  [- 2 pi K_E gamma Q^2 / V]

with ``S(k) = sum_{i in b} q_i exp(i k . r_i')`` and H the *half sphere*: integer
``n != 0`` with ``k = n @ (2 pi inv(cell')^T)``, ``|k| <= k_cut (1 + SPHERE_RTOL)`` and
the first non-zero component of n positive (one of each pair k, -k; the factor 4 pi
instead of 2 pi counts both). The integer set is enumerated inside the op from the
(strained) cell of each structure, exactly like
:func:`tacegen.runtime.electrostatics.kvectors_in_sphere`: ``|n_a| <= floor(k_cut |a_a|
/ (2 pi) (1 + 1e-9))``, then filtered. It is a constant of differentiation (the set is
fixed at the current geometry). The optional last term (``background=True``) is the
energy of a uniform neutralising background, ``-K_E pi Q^2 / (2 V alpha^2)`` for Ewald,
``Q = sum_{i in b} q_i``. k = 0 is always dropped. Structures with an all-zero cell
(molecules) get E_b = 0 (no self term either).

* LES periodic (Cheng et al.): ``gamma = sigma^2 / 2``, ``self_coefficient = 1 / (sigma
  sqrt(2 pi))``, no background; see :func:`les_reciprocal`.
* Classic Ewald reciprocal + self (+ background): ``gamma = 1 / (4 alpha^2)``,
  ``self_coefficient = alpha / sqrt(pi)``; see :func:`ewald_reciprocal`.

Since ``k' . r' = 2 pi n . s`` (s the fractional coordinates), the phases do not depend
on the strain: the strain derivative comes from k'^2 and V only (the textbook Ewald
virial), ``dE/d strain_ab = (4 pi K_E / V) sum_k A_k [2 (gamma + 1/k^2) u_a k_b -
D^-T_ab] (+ 2 pi K_E gamma Q^2 / V D^-T_ab)``, A_k = exp(-gamma k^2)/k^2 |S(k)|^2,
D = I + strain, u = k D^-1 (u = k at zero strain).

Real space (:class:`PairEnergy`)
--------------------------------
Per structure b, over the directed edges e = (j -> i) whose receiver is in b::

    E_b = (K_E / 2) sum_e q_i q_j phi(|r_ij|),   phi(r) = erfc(alpha r) / r  ("erfc")
                                                 phi(r) = erf(alpha r) / r   ("erf")

The 1/2 counts each unordered pair once in a full (both directions) neighbour list.
"erfc" with a periodic neighbour list of cutoff r_cut is the Ewald real-space term
(self-images i = j with non-zero shift included, as the reference); "erf" with
``alpha = 1 / (sqrt(2) sigma)`` over all directed pairs i != j (zero cell, zero shifts)
is the LES energy of a finite system. ``r_cut`` (optional) drops listed pairs with
``|r_ij| > r_cut``. The edge list must not contain an edge from an atom to itself with
zero shift; "erf" takes its finite limit ``2 alpha / sqrt(pi)`` at r = 0 (coincident
distinct atoms), evaluated by a series for ``alpha r < PAIR_SERIES_X``. The ops assume
nothing about symmetry of the edge list: gradients scatter to receivers and senders
(the numba kernels through a sender CSR, race-free).

Reverse pass
------------
``ReciprocalEnergy`` and ``PairEnergy`` get two adjoint ops each: a joint per-atom
gradient (``wrt="atoms"``, Array (node, (4,)) = [dE/dr, dE/dq], one pass over atoms x k or
edges, since both need the same cos/sin or pair terms) split by :class:`Columns` into the
positions and charges adjoints, and the strain gradient (``wrt="strain"``). ``cell`` and
``shifts`` are not differentiated (NotImplementedError if requested).

Charges (:class:`ConstrainCharges`)
-----------------------------------
``out_i = q_i - (sum_{j in b} q_j - Q_b) / N_b``, Q_b = ``total[b]`` (None: neutral):
the orthogonal projection onto charges summing to Q_b per structure. Adjoint: ``g_i -
mean_b(g)`` for the charges (a ConstrainCharges without total) and ``mean_b(g)`` for
the total (:class:`StructureMean`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dense_interpret import unstrained_edge_vectors
from .dense_ops import STRUCTURE, Array
from .interpret import EXTENSIONS
from .nodes import UnaryOp, Value
from .reverse import ADJOINT_RULES, _like

__all__ = [
    "K_E", "SPHERE_RTOL", "NMAX_RTOL", "PAIR_SERIES_X", "PAIR_KERNELS",
    "ConstrainCharges", "StructureMean", "ReciprocalEnergy", "ReciprocalEnergyGrad",
    "PairEnergy", "PairEnergyGrad", "Columns", "LongRangeOp",
    "les_reciprocal", "ewald_reciprocal", "les_finite", "ewald_real_space",
    "kvector_integers", "pair_kernel", "structure_energy",
]

#: Coulomb constant 1 / (4 pi eps0) in eV Å / e^2 (= tacegen.runtime.electrostatics.K_E;
#: the IR does not import the runtime).
K_E = 14.3996454784

#: k-vectors with |k| <= k_cut (1 + SPHERE_RTOL) are inside the sphere (the reference's).
SPHERE_RTOL = 1e-12

#: Relative slack of the integer bounds floor(k_cut |a| / (2 pi) (1 + NMAX_RTOL)).
NMAX_RTOL = 1e-9

#: "erf" pair kernel: below x = alpha r = PAIR_SERIES_X, erf(x)/x and its derivative are
#: evaluated by their Taylor series (no 0/0 at coincident atoms, no cancellation).
PAIR_SERIES_X = 0.1

#: Taylor coefficients of erf(x)/x = (2/sqrt(pi)) sum_n c_n x^(2n), c_n = (-1)^n / (n! (2n+1)).
ERF_SERIES = tuple((-1.0) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(9))

PAIR_KERNELS = ("erfc", "erf")
GRAD_TARGETS = ("atoms", "strain")
ATOM_COLUMNS = 4  # joint per-atom gradient: dE/dr (3 columns), dE/dq (1)


# ----------------------------------------------------------------------------- forward ops


@dataclass(frozen=True)
class ConstrainCharges:
    """out_i = q_i - (sum_{j in b} q_j - total[b]) / N_b, b = batch[i]: Array (node, ()).

    ``charges``: Array (node, ()); ``total``: Array (structure, ()) of the total charge Q_b
    of each structure in e, or None for neutral structures (Q_b = 0)."""

    out: Array
    charges: Array
    total: Array | None = None

    @property
    def inputs(self) -> tuple:
        return (self.charges,) + ((self.total,) if self.total is not None else ())


@dataclass(frozen=True)
class StructureMean(UnaryOp):
    """out[b] = mean of src[i] over the atoms i of structure b (0 for an empty structure):
    Array (structure, ()) from Array (node, ()). The adjoint of ConstrainCharges for its
    ``total``."""


@dataclass(frozen=True)
class ReciprocalEnergy:
    """Reciprocal-space Gaussian-charge energy per structure, eV: Array (structure, ()).

    ``E_b = (4 pi K_E / V) sum_{k in half sphere} exp(-gamma k^2) / k^2 |S(k)|^2 -
    self_coefficient K_E sum_i q_i^2 [- 2 pi K_E gamma Q^2 / V if background]``; see the
    module docstring (k-set, strain, zero cells). ``gamma`` Å^2, ``k_cut`` Å^-1,
    ``self_coefficient`` Å^-1. LES: :func:`les_reciprocal`; Ewald: :func:`ewald_reciprocal`.
    Graph: ``batch``, ``num_structures``."""

    out: Array
    positions: Value
    charges: Array
    cell: Array
    strain: Array | None
    gamma: float
    k_cut: float
    self_coefficient: float
    background: bool = False

    @property
    def inputs(self) -> tuple:
        return (self.positions, self.charges, self.cell) + ((self.strain,) if self.strain is not None else ())


@dataclass(frozen=True)
class PairEnergy:
    """Real-space pair energy per structure, eV: Array (structure, ()).

    ``E_b = (K_E / 2) sum_{e: batch[i] = b} q_i q_j phi(|r_ij|)`` over the directed edges
    (j = senders[e], i = receivers[e]), ``r_ij = (r_j - r_i + shifts[e] @ cell[b]) (I +
    strain[b])``; ``phi(r) = erfc(alpha r)/r`` (kernel "erfc", Ewald real space) or
    ``erf(alpha r)/r`` (kernel "erf", LES finite); pairs with ``|r_ij| > r_cut`` are dropped
    (r_cut None: none). Graph: ``senders``, ``receivers`` (sorted), ``batch``,
    ``num_structures``."""

    out: Array
    positions: Value
    charges: Array
    cell: Array
    shifts: Array
    strain: Array | None
    alpha: float
    kernel: str = "erfc"
    r_cut: float | None = None

    def __post_init__(self):
        if self.kernel not in PAIR_KERNELS:
            raise ValueError(f"PairEnergy: kernel must be one of {PAIR_KERNELS}, got {self.kernel!r}")

    @property
    def inputs(self) -> tuple:
        return (self.positions, self.charges, self.cell, self.shifts) + (
            (self.strain,) if self.strain is not None else ())


# ----------------------------------------------------------------------------- adjoint ops


@dataclass(frozen=True)
class ReciprocalEnergyGrad:
    """Vector-Jacobian product of :class:`ReciprocalEnergy` (same fields) with ``cotangent``
    (Array (structure, ())) for ``wrt``:

    * "atoms": out Array (node, (4,)), columns 0-2 the positions gradient
      ``g_b (4 pi K_E / V) sum_k w_k 2 q_i (Im S cos - Re S sin)(k.r_i) k`` (k of the
      *unstrained* cell: d(k'.r')/dr = k), column 3 the charges gradient ``g_b [(4 pi K_E / V)
      sum_k w_k 2 (Re S cos + Im S sin)(k.r_i) - 2 self_coefficient K_E q_i (- 4 pi K_E gamma
      Q / V)]``. Both from one pass over (atom, k) (they share every cos and sin); split by
      :class:`Columns`.
    * "strain": out (structure, (3, 3)), the strain derivative of the module docstring times g_b.

    w_k = exp(-gamma k'^2) / k'^2; the k-set is that of the forward op."""

    out: Value
    positions: Value
    charges: Array
    cell: Array
    strain: Array | None
    cotangent: Array
    wrt: str
    gamma: float
    k_cut: float
    self_coefficient: float
    background: bool = False

    def __post_init__(self):
        if self.wrt not in GRAD_TARGETS:
            raise ValueError(f"ReciprocalEnergyGrad: wrt must be one of {GRAD_TARGETS}, got {self.wrt!r}")

    @property
    def inputs(self) -> tuple:
        return (self.positions, self.charges, self.cell) + (
            (self.strain,) if self.strain is not None else ()) + (self.cotangent,)


@dataclass(frozen=True)
class PairEnergyGrad:
    """Vector-Jacobian product of :class:`PairEnergy` (same fields) with ``cotangent``
    (Array (structure, ())) for ``wrt``. With ``c_e = g_b (K_E/2) q_i q_j phi'(r) r_ij / r``
    (dE/dr_ij) and D = I + strain[b]:

    * "atoms": out Array (node, (4,)): columns 0-2 the positions gradient
      ``sum_{e: j = n} c_e D^T - sum_{e: i = n} c_e D^T``, column 3 the charges gradient
      ``(K_E/2) [sum_{e: i = n} g_b q_j phi + sum_{e: j = n} g_b q_i phi]`` (one pass over the
      edges; split by :class:`Columns`). The numba kernel also needs the sender CSR
      (``sender_order``, ``sender_offsets``).
    * "strain": out (structure, (3, 3)) = sum_{e in b} outer(r0_e, c_e), r0_e the unstrained
      edge vector."""

    out: Value
    positions: Value
    charges: Array
    cell: Array
    shifts: Array
    strain: Array | None
    cotangent: Array
    wrt: str
    alpha: float
    kernel: str = "erfc"
    r_cut: float | None = None

    def __post_init__(self):
        if self.wrt not in GRAD_TARGETS:
            raise ValueError(f"PairEnergyGrad: wrt must be one of {GRAD_TARGETS}, got {self.wrt!r}")
        if self.kernel not in PAIR_KERNELS:
            raise ValueError(f"PairEnergyGrad: kernel must be one of {PAIR_KERNELS}, got {self.kernel!r}")

    @property
    def inputs(self) -> tuple:
        return (self.positions, self.charges, self.cell, self.shifts) + (
            (self.strain,) if self.strain is not None else ()) + (self.cotangent,)


@dataclass(frozen=True)
class Columns(UnaryOp):
    """out = src[:, start:stop] of an Array (items, (width,)): a vector (items, 3) for three
    columns, an Array (items, ()) for one (squeezed). Splits the joint "atoms" gradients of
    ReciprocalEnergyGrad / PairEnergyGrad into the positions and charges adjoints."""

    start: int
    stop: int


LongRangeOp = ConstrainCharges | StructureMean | ReciprocalEnergy | PairEnergy | ReciprocalEnergyGrad \
    | PairEnergyGrad | Columns


# ----------------------------------------------------------------------------- constructors


def les_reciprocal(out, positions, charges, cell, strain=None, sigma: float = 1.0,
                   k_cut: float = math.pi) -> ReciprocalEnergy:
    """LES periodic energy (Cheng et al.): gamma = sigma^2/2, self 1/(sigma sqrt(2 pi)),
    no background (reference defaults sigma = 1 Å, k_cut = pi Å^-1)."""
    return ReciprocalEnergy(out, positions, charges, cell, strain, 0.5 * sigma * sigma, float(k_cut),
                            1.0 / (sigma * math.sqrt(2.0 * math.pi)), False)


def ewald_reciprocal(out, positions, charges, cell, strain=None, *, alpha: float, k_cut: float,
                     background: bool = False) -> ReciprocalEnergy:
    """Classic Ewald reciprocal + self (+ neutralising background) energy:
    gamma = 1/(4 alpha^2), self alpha/sqrt(pi)."""
    return ReciprocalEnergy(out, positions, charges, cell, strain, 1.0 / (4.0 * alpha * alpha), float(k_cut),
                            alpha / math.sqrt(math.pi), bool(background))


def les_finite(out, positions, charges, cell, shifts, strain=None, sigma: float = 1.0) -> PairEnergy:
    """LES energy of a finite system over an all-pairs (i != j) directed edge list:
    kernel "erf" with alpha = 1/(sqrt(2) sigma), no cutoff."""
    return PairEnergy(out, positions, charges, cell, shifts, strain, 1.0 / (math.sqrt(2.0) * sigma), "erf", None)


def ewald_real_space(out, positions, charges, cell, shifts, strain=None, *, alpha: float,
                     r_cut: float | None = None) -> PairEnergy:
    """Classic Ewald real-space energy over a full periodic neighbour list: kernel "erfc"."""
    return PairEnergy(out, positions, charges, cell, shifts, strain, float(alpha), "erfc",
                      None if r_cut is None else float(r_cut))


# ----------------------------------------------------------------------------- numpy helpers


def kvector_integers(cell: np.ndarray, k_cut: float) -> np.ndarray:
    """Integer vectors n (M, 3) of the half sphere ``0 < |n @ (2 pi inv(cell)^T)| <= k_cut
    (1 + SPHERE_RTOL)`` (first non-zero component positive), as
    :func:`tacegen.runtime.electrostatics.kvectors_in_sphere` (``cell`` rows = lattice vectors)."""
    cell = np.asarray(cell, dtype=np.float64)
    nmax = np.floor(k_cut * np.linalg.norm(cell, axis=1) / (2.0 * math.pi) * (1.0 + NMAX_RTOL)).astype(np.int64)
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in nmax], indexing="ij")
    n = np.stack([g.reshape(-1) for g in grids], axis=1)
    half = (n[:, 0] > 0) | ((n[:, 0] == 0) & (n[:, 1] > 0)) | ((n[:, 0] == 0) & (n[:, 1] == 0) & (n[:, 2] > 0))
    n = n[half]
    k = n @ (2.0 * math.pi * np.linalg.inv(cell).T)
    return n[np.sum(k * k, axis=1) <= k_cut * k_cut * (1.0 + SPHERE_RTOL)]


_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def pair_kernel(r: np.ndarray, alpha: float, kernel: str):
    """(phi(r), phi'(r)) of the pair kernel ("erfc": erfc(alpha r)/r, "erf": erf(alpha r)/r)."""
    r = np.asarray(r, dtype=np.float64)
    two_over_sqrt_pi = 2.0 / math.sqrt(math.pi)
    if kernel == "erfc":
        value = _erfc(alpha * r) / r
        return value, -value / r - two_over_sqrt_pi * alpha * np.exp(-(alpha * r) ** 2) / r
    x = alpha * r
    small = x < PAIR_SERIES_X
    safe = np.where(small, 1.0, r)
    value = _erf(alpha * safe) / safe
    slope = two_over_sqrt_pi * alpha * np.exp(-(alpha * safe) ** 2) / safe - value / safe
    x2 = x * x
    series = np.zeros_like(x)
    series_slope = np.zeros_like(x)
    for n in reversed(range(len(ERF_SERIES))):  # Horner in x^2
        series = series * x2 + ERF_SERIES[n]
        if n > 0:
            series_slope = series_slope * x2 + 2 * n * ERF_SERIES[n]
    series_slope = series_slope * x  # d/dx sum c_n x^2n = x sum 2n c_n x^(2n-2)
    value = np.where(small, two_over_sqrt_pi * alpha * series, value)
    slope = np.where(small, two_over_sqrt_pi * alpha * alpha * series_slope, slope)
    return value, slope


def _batch(graph):
    return np.asarray(graph["batch"], dtype=np.int64), int(graph["num_structures"])


def _deformations(env, strain, num_structures):
    if strain is None:
        return np.broadcast_to(np.eye(3), (num_structures, 3, 3))
    return np.eye(3) + env[strain.name]


# ----------------------------------------------------------------------------- interpreter


def _constrain(op: ConstrainCharges, env, weights, graph):
    batch, nb = _batch(graph)
    q = env[op.charges.name]
    total = env[op.total.name] if op.total is not None else np.zeros(nb)
    sums = np.bincount(batch, weights=q, minlength=nb)
    counts = np.bincount(batch, minlength=nb)
    shift = (sums - total) / np.maximum(counts, 1)
    return q - shift[batch]


def _structure_mean(op: StructureMean, env, weights, graph):
    batch, nb = _batch(graph)
    counts = np.bincount(batch, minlength=nb)
    return np.bincount(batch, weights=env[op.src.name], minlength=nb) / np.maximum(counts, 1)


def _atoms(d_positions, d_charges):
    """The joint per-atom gradient (node, 4): dE/dr, dE/dq."""
    return np.concatenate([d_positions, d_charges[:, None]], axis=1)


def _columns(op: Columns, env, weights, graph):
    src = env[op.src.name]
    return src[:, op.start] if op.stop - op.start == 1 else src[:, op.start:op.stop]


def _reciprocal(op, env, graph, wrt: str | None = None):
    """Energy (wrt None) or the VJP of ReciprocalEnergy[Grad] ``op`` for ``wrt``."""
    batch, nb = _batch(graph)
    pos, q, cell = env[op.positions.name], env[op.charges.name], env[op.cell.name]
    deform = _deformations(env, op.strain, nb)
    g = env[op.cotangent.name] if wrt is not None else np.ones(nb)
    if wrt == "atoms":
        return _atoms(_reciprocal(op, env, graph, "positions"), _reciprocal(op, env, graph, "charges"))
    result = {None: np.zeros(nb), "positions": np.zeros_like(pos), "charges": np.zeros_like(q),
              "strain": np.zeros((nb, 3, 3))}[wrt]
    pref, gamma = 4.0 * math.pi * K_E, op.gamma
    for b in range(nb):
        if not np.any(cell[b]):
            continue  # non-periodic structure: no reciprocal term
        atoms = np.nonzero(batch == b)[0]
        d = deform[b]
        strained = cell[b] @ d
        n = kvector_integers(strained, op.k_cut).astype(np.float64)
        k = n @ (2.0 * math.pi * np.linalg.inv(strained).T)  # strained k: weights
        k0 = n @ (2.0 * math.pi * np.linalg.inv(cell[b]).T)  # unstrained k: phases k0 . r = k . r'
        vol = abs(np.linalg.det(strained))
        k2 = np.sum(k * k, axis=1)
        w = np.exp(-gamma * k2) / k2
        phase = pos[atoms] @ k0.T  # (atoms, M)
        cos, sin = np.cos(phase), np.sin(phase)
        qb = q[atoms]
        re, im = qb @ cos, qb @ sin
        a = w * (re * re + im * im)
        qtot = qb.sum()
        if wrt is None:
            e = pref / vol * a.sum() - op.self_coefficient * K_E * np.sum(qb * qb)
            if op.background:
                e -= 0.5 * pref * gamma * qtot * qtot / vol
            result[b] = e
        elif wrt == "positions":
            coef = (im * cos - re * sin) * w  # (atoms, M)
            result[atoms] = g[b] * pref / vol * 2.0 * qb[:, None] * (coef @ k0)
        elif wrt == "charges":
            dq = pref / vol * 2.0 * ((re * cos + im * sin) @ w) - 2.0 * op.self_coefficient * K_E * qb
            if op.background:
                dq -= pref * gamma * qtot / vol
            result[atoms] = g[b] * dq
        else:
            dinv_t = np.linalg.inv(d).T
            u = k @ np.linalg.inv(d)
            grad = pref / vol * (np.einsum("m,ma,mb->ab", 2.0 * a * (gamma + 1.0 / k2), u, k) - a.sum() * dinv_t)
            if op.background:
                grad += 0.5 * pref * gamma * qtot * qtot / vol * dinv_t
            result[b] = g[b] * grad
    return result


def _pair(op, env, graph, wrt: str | None = None):
    """Energy (wrt None) or the VJP of PairEnergy[Grad] ``op`` for ``wrt``."""
    batch, nb = _batch(graph)
    senders, receivers = np.asarray(graph["senders"], dtype=np.int64), np.asarray(graph["receivers"], dtype=np.int64)
    pos, q = env[op.positions.name], env[op.charges.name]
    eb = batch[receivers]
    deform = _deformations(env, op.strain, nb)[eb]
    r0 = unstrained_edge_vectors(pos, env[op.cell.name], env[op.shifts.name], graph)
    r = np.einsum("ea,eab->eb", r0, deform)
    dist = np.sqrt(np.sum(r * r, axis=1))
    phi, dphi = pair_kernel(dist, op.alpha, op.kernel)
    if op.r_cut is not None:
        inside = dist <= op.r_cut
        phi, dphi = np.where(inside, phi, 0.0), np.where(inside, dphi, 0.0)
    qi, qj = q[receivers], q[senders]
    if wrt == "atoms":
        return _atoms(_pair(op, env, graph, "positions"), _pair(op, env, graph, "charges"))
    g = env[op.cotangent.name][eb] if wrt is not None else np.ones(len(eb))
    half = 0.5 * K_E
    if wrt is None:
        return np.bincount(eb, weights=half * qi * qj * phi, minlength=nb)
    if wrt == "charges":
        n = len(q)
        return (np.bincount(receivers, weights=half * g * qj * phi, minlength=n)
                + np.bincount(senders, weights=half * g * qi * phi, minlength=n))
    safe = np.where(dist > 0.0, dist, 1.0)
    c = (half * g * qi * qj * dphi / safe)[:, None] * r  # dE/dr_ij (dphi = 0 at r = 0)
    if wrt == "positions":
        c0 = np.einsum("eb,eab->ea", c, deform)  # c D^T
        out = np.zeros_like(pos)
        np.add.at(out, senders, c0)
        np.add.at(out, receivers, -c0)
        return out
    out = np.zeros((nb, 3, 3))
    np.add.at(out, eb, r0[:, :, None] * c[:, None, :])
    return out


RULES = {
    ConstrainCharges: _constrain,
    StructureMean: _structure_mean,
    ReciprocalEnergy: lambda op, env, w, g: _reciprocal(op, env, g),
    ReciprocalEnergyGrad: lambda op, env, w, g: _reciprocal(op, env, g, op.wrt),
    PairEnergy: lambda op, env, w, g: _pair(op, env, g),
    PairEnergyGrad: lambda op, env, w, g: _pair(op, env, g, op.wrt),
    Columns: _columns,
}

EXTENSIONS.update(RULES)


# ----------------------------------------------------------------------------- adjoint rules


def _grad_value(rv, target):
    return _like(target, rv.names.fresh(f"g_{target.name}"))


def _add(rv, target, op):
    rv.contrib[target.name].append(rv.emit(op))


def _refuse(rv, op, values):
    for v in values:
        if v is not None and v.name in rv.wrt:
            raise NotImplementedError(f"reverse: {type(op).__name__} is not differentiated with respect to {v.name!r}")


def _constrain_adjoint(rv, op: ConstrainCharges, g):
    _add(rv, op.charges, ConstrainCharges(_grad_value(rv, op.charges), g, None))
    if op.total is not None:
        _add(rv, op.total, StructureMean(_grad_value(rv, op.total), g))


def _energy_adjoint(rv, op, make):
    """One joint "atoms" gradient split into the positions and charges adjoints, and the
    strain adjoint; ``make(out, wrt)`` builds the gradient op."""
    joint = Array(rv.names.fresh(f"g_atoms_{op.out.name}"), 0, op.charges.domain, False, "array", (ATOM_COLUMNS,))
    rv.emit(make(joint, "atoms"))
    _add(rv, op.positions, Columns(_grad_value(rv, op.positions), joint, 0, 3))
    _add(rv, op.charges, Columns(_grad_value(rv, op.charges), joint, 3, 4))
    if op.strain is not None:
        _add(rv, op.strain, make(_grad_value(rv, op.strain), "strain"))


def _reciprocal_adjoint(rv, op: ReciprocalEnergy, g):
    _refuse(rv, op, (op.cell,))
    _energy_adjoint(rv, op, lambda out, wrt: ReciprocalEnergyGrad(
        out, op.positions, op.charges, op.cell, op.strain, g, wrt, op.gamma, op.k_cut, op.self_coefficient,
        op.background))


def _pair_adjoint(rv, op: PairEnergy, g):
    _refuse(rv, op, (op.cell, op.shifts))
    _energy_adjoint(rv, op, lambda out, wrt: PairEnergyGrad(
        out, op.positions, op.charges, op.cell, op.shifts, op.strain, g, wrt, op.alpha, op.kernel, op.r_cut))


ADJOINT_RULES.update({
    ConstrainCharges: _constrain_adjoint,
    ReciprocalEnergy: _reciprocal_adjoint,
    PairEnergy: _pair_adjoint,
})


def structure_energy(name: str) -> Array:
    """An energy value: Array (structure, ())."""
    return Array(name, 0, STRUCTURE, False, "array", ())
