"""Irreducible Cartesian tensors (ICTs): the detracer, the basis T_l and its storage forms.

Conventions
-----------
* Index order: a rank-l Cartesian tensor is indexed ``T[i1, ..., il]`` with ``i = 0, 1, 2``
  for x, y, z.
* Symmetric-component form: a symmetric tensor is stored by one value per index
  *pattern* ``alpha = (a, b, c)`` (how many indices are x, y, z); the order of patterns
  is :func:`tacegen.algebra.polynomial.patterns`. There are (l+1)(l+2)/2 of them.
* Reduced (2l+1) form: a symmetric *traceless* tensor is fixed by its components with
  at most one z index (c in {0, 1}); tracelessness gives the rest (zz = -xx - yy
  recursively). These 2l+1 numbers are the *reduced coordinates*. They are exact
  (rational maps both ways) but not orthonormal: ``gram(l)`` gives the exact metric
  ``<e_m, e_n> = sum over all 3^l components of e_m * e_n``.
* Normalisation of T_l: the detracer of math.md section 1,
  ``T_l(n) = sum_k (-1)^k (2l-2k-1)!!/(2l-1)!! {delta^k n^(l-2k)}``, so that
  ``T_l(n) : T_l(n) = l!/(2l-1)!!`` for a unit vector n. For a general vector r,
  ``r^l T_l(r/|r|)`` is the homogeneous polynomial returned by :func:`ict_polynomials`.
* Parity: T_l(-n) = (-1)^l T_l(n) (a true tensor of natural parity).

Everything here is exact (``fractions.Fraction``) and memoised; the float64 accessors
at the bottom exist for studies and tests.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from itertools import product
from math import factorial

import numpy as np
import sympy

from .polynomial import AXES, Poly, double_factorial, multinomial, patterns

LMAX_SUPPORTED = 10
"""Largest rank for which the public ICT accessors are offered (the issue's contract)."""


def _check_rank(l: int, name: str = "l", upper: int | None = None) -> None:
    if not isinstance(l, (int, np.integer)) or isinstance(l, bool):
        raise TypeError(f"{name} must be an integer, got {l!r}")
    if l < 0 or (upper is not None and l > upper):
        hi = "" if upper is None else f"..{upper}"
        raise ValueError(f"{name}={l} is outside the allowed range 0{hi}")


@lru_cache(maxsize=None)
def pattern_index(l: int) -> dict:
    """Map from pattern (a, b, c) to its position in ``patterns(l)``."""
    return {p: i for i, p in enumerate(patterns(l))}


@lru_cache(maxsize=None)
def reduced_patterns(l: int) -> tuple:
    """The 2l+1 patterns that are the reduced coordinates: those with c in {0, 1}.

    Order: the c = 0 patterns (x^l, x^(l-1) y, ..., y^l) then the c = 1 ones
    (x^(l-1) z, ..., y^(l-1) z). For l = 1 this is (x, y, z).
    """
    return tuple(p for p in patterns(l) if p[2] == 0) + tuple(p for p in patterns(l) if p[2] == 1)


def _shift(alpha, delta, sign):
    return tuple(a + sign * d for a, d in zip(alpha, delta))


@lru_cache(maxsize=None)
def detrace_matrix(l: int) -> tuple:
    """Exact detracer on symmetric-component form: ``S'_alpha = sum_beta D[alpha][beta] S_beta``.

    Implements math.md section 1 for any symmetric S: the k-fold traces of S replace
    n^(l-2k), the {delta^k ...} sum is counted per pattern (choosing and pairing 2 k_i of
    the alpha_i indices along axis i: C(alpha_i, 2k_i) (2k_i - 1)!! ways).
    Returned as a tuple of dicts (row alpha -> {beta: coefficient}).
    """
    pats = patterns(l)
    idx = pattern_index(l)
    norm = double_factorial(2 * l - 1)
    rows = []
    for alpha in pats:
        row: dict[int, Fraction] = {}
        for k in range(l // 2 + 1):
            c_k = Fraction((-1) ** k * double_factorial(2 * l - 2 * k - 1), norm)
            for kappa in patterns(k):
                if any(2 * kappa[i] > alpha[i] for i in AXES):
                    continue
                w = 1
                for i in AXES:
                    w *= _binomial(alpha[i], 2 * kappa[i]) * double_factorial(2 * kappa[i] - 1)
                gamma = _shift(alpha, kappa, -2)
                # (tr^k S)_gamma = sum_tau k!/tau! S_{gamma + 2 tau}
                for tau in patterns(k):
                    mult = factorial(k) // (factorial(tau[0]) * factorial(tau[1]) * factorial(tau[2]))
                    beta = idx[_shift(gamma, tau, 2)]
                    row[beta] = row.get(beta, 0) + c_k * w * mult
        rows.append({b: Fraction(v) for b, v in row.items() if v})
    return tuple(rows)


def _binomial(n: int, k: int) -> int:
    return factorial(n) // (factorial(k) * factorial(n - k))


def detrace_components(components, l: int):
    """Apply the detracer to symmetric components (a sequence over ``patterns(l)``).

    Works on any values supporting ``+`` and ``*`` by a Fraction (Fractions, sympy
    expressions, floats, numpy arrays broadcast along leading axes).
    """
    out = []
    for row in detrace_matrix(l):
        acc = 0
        for beta, coeff in row.items():
            acc = acc + coeff * components[beta]
        out.append(acc)
    return out


def detrace_polynomial(p: Poly, l: int) -> Poly:
    """Harmonic (traceless symmetric) projection of a degree-l polynomial P_S.

    Equivalent to detracing the symmetric tensor S with polynomial P_S.
    """
    pats = patterns(l)
    comps = [Fraction(p.get(a, 0)) / multinomial(a) for a in pats]
    out = detrace_components(comps, l)
    return {a: v * multinomial(a) for a, v in zip(pats, out) if v}


@lru_cache(maxsize=None)
def ict_polynomials(l: int) -> tuple:
    """r^l T_l(r/|r|) as exact polynomials in (x, y, z), one per pattern of ``patterns(l)``.

    The component T_{i1..il} with index pattern alpha equals entry alpha. Built by the
    detracer applied to r^(x)l, whose symmetric components are the monomials r^alpha.
    """
    pats = patterns(l)
    return tuple(
        {pats[beta]: c for beta, c in row.items()}
        for row in detrace_matrix(l)
    )


def ict_symbolic(l: int, symbols=None) -> sympy.Array:
    """Dense sympy array (3,)*l of r^l T_l(r/|r|), polynomials in ``symbols`` (x, y, z)."""
    _check_rank(l, "l", LMAX_SUPPORTED)
    x, y, z = symbols if symbols is not None else sympy.symbols("x y z")
    polys = [
        sympy.Add(*[sympy.Rational(c.numerator, c.denominator) * x**m[0] * y**m[1] * z**m[2]
                    for m, c in sorted(p.items())])
        for p in ict_polynomials(l)
    ]
    flat = [polys[i] for i in dense_pattern_positions(l)]
    return sympy.Array(flat, (3,) * l) if l else sympy.Array(polys[0])


@lru_cache(maxsize=None)
def dense_pattern_positions(l: int) -> np.ndarray:
    """For each of the 3^l dense components (C order), its pattern's position in patterns(l)."""
    idx = pattern_index(l)
    out = np.empty(3**l, dtype=np.int64)
    for flat, index in enumerate(product(AXES, repeat=l)):
        counts = (index.count(0), index.count(1), index.count(2))
        out[flat] = idx[counts]
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------- storage maps

@lru_cache(maxsize=None)
def completion_matrix(l: int) -> tuple:
    """Exact map from the 2l+1 reduced coordinates to all symmetric components.

    Row alpha (over ``patterns(l)``), column m (over ``reduced_patterns(l)``). A traceless
    symmetric tensor satisfies S_{(a,b,c+2)} = -S_{(a+2,b,c)} - S_{(a,b+2,c)}.
    """
    pats = patterns(l)
    red = reduced_patterns(l)
    cols = {p: m for m, p in enumerate(red)}
    rows: dict = {}
    # increasing c so the right-hand sides are known
    for alpha in sorted(pats, key=lambda p: p[2]):
        a, b, c = alpha
        if c <= 1:
            rows[alpha] = {cols[alpha]: Fraction(1)}
            continue
        acc: dict[int, Fraction] = {}
        for src in ((a + 2, b, c - 2), (a, b + 2, c - 2)):
            for m, v in rows[src].items():
                acc[m] = acc.get(m, 0) - v
        rows[alpha] = {m: v for m, v in acc.items() if v}
    return tuple(rows[p] for p in pats)


def complete(reduced, l: int) -> list:
    """Symmetric components (over patterns(l)) of the ICT with the given reduced coordinates."""
    out = []
    for row in completion_matrix(l):
        acc = 0
        for m, v in row.items():
            acc = acc + v * reduced[m]
        out.append(acc)
    return out


def reduce(components, l: int) -> list:
    """Reduced coordinates of a traceless symmetric tensor given by its symmetric components."""
    idx = pattern_index(l)
    return [components[idx[p]] for p in reduced_patterns(l)]


@lru_cache(maxsize=None)
def basis_polynomials(l: int) -> tuple:
    """Polynomials P_{e_m} of the reduced basis tensors e_m (reduced coordinate m = 1, rest 0)."""
    pats = patterns(l)
    comp = completion_matrix(l)
    out = []
    for m in range(2 * l + 1):
        out.append({a: row[m] * multinomial(a) for a, row in zip(pats, comp) if m in row})
    return tuple(out)


@lru_cache(maxsize=None)
def gram(l: int) -> tuple:
    """Exact metric of the reduced basis: G[m][n] = e_m : e_n (full contraction of 3^l components)."""
    pats = patterns(l)
    comp = completion_matrix(l)
    d = 2 * l + 1
    G = [[Fraction(0)] * d for _ in range(d)]
    for a, row in zip(pats, comp):
        w = multinomial(a)
        for m, vm in row.items():
            for n, vn in row.items():
                G[m][n] += w * vm * vn
    return tuple(tuple(r) for r in G)


def dense_from_components(components, l: int) -> np.ndarray:
    """Dense (3,)*l array from symmetric components (floats or exact objects)."""
    comps = np.asarray(components, dtype=object if isinstance(components[0], Fraction) else None)
    dense = comps[..., dense_pattern_positions(l)] if comps.ndim > 1 else comps[dense_pattern_positions(l)]
    return dense.reshape(comps.shape[:-1] + (3,) * l) if comps.ndim > 1 else dense.reshape((3,) * l)


def components_from_dense(tensor: np.ndarray, l: int) -> np.ndarray:
    """Symmetric components of a dense symmetric tensor (trailing l axes of size 3).

    Averages over the components sharing a pattern, so for a non-symmetric input it
    returns the components of its symmetrisation.
    """
    t = np.asarray(tensor)
    lead = t.shape[: t.ndim - l]
    flat = t.reshape(lead + (3**l,))
    pos = dense_pattern_positions(l)
    n = len(patterns(l))
    out = np.zeros(lead + (n,), dtype=flat.dtype)
    for p in range(n):
        sel = flat[..., pos == p]
        out[..., p] = sel.sum(axis=-1) / sel.shape[-1] if t.dtype != object else sum(
            sel[..., i] for i in range(sel.shape[-1])) / Fraction(sel.shape[-1])
    return out


def detrace(tensor: np.ndarray) -> np.ndarray:
    """Weight-l (traceless symmetric) part of a symmetric rank-l tensor (every axis is an index).

    Exact when the array holds Fractions (dtype=object), float otherwise. A
    non-symmetric input is symmetrised first.
    """
    t = np.asarray(tensor)
    l = t.ndim
    if any(s != 3 for s in t.shape):
        raise ValueError(f"detrace expects a tensor of shape (3,)*l, got shape {t.shape}")
    comps = components_from_dense(t, l)
    out = detrace_components(list(comps), l)
    if t.dtype == object:
        return dense_from_components(out, l)
    return np.asarray(out, dtype=float)[dense_pattern_positions(l)].reshape((3,) * l)


# --------------------------------------------------------------------------- float accessors

@lru_cache(maxsize=None)
def _monomial_table(l: int):
    """(exponents (M,3), coefficient matrix (n_patterns, M)) for evaluating ict_polynomials(l)."""
    polys = ict_polynomials(l)
    monos = sorted({m for p in polys for m in p})
    col = {m: i for i, m in enumerate(monos)}
    C = np.zeros((len(polys), len(monos)))
    for r, p in enumerate(polys):
        for m, v in p.items():
            C[r, col[m]] = float(v)
    return np.array(monos, dtype=np.int64).reshape(-1, 3), C


def ict_components(vectors, l: int, normalize: bool = True) -> np.ndarray:
    """Symmetric components (..., (l+1)(l+2)/2) of T_l(n), float64, n = vectors/|vectors|.

    With ``normalize=False`` returns r^l T_l(r/|r|) (a polynomial in r).
    """
    _check_rank(l, "l", LMAX_SUPPORTED)
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[-1:] != (3,):
        raise ValueError(f"vectors must have a trailing axis of size 3, got shape {v.shape}")
    if normalize:
        norms = np.linalg.norm(v, axis=-1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError("ict_tensor: zero vector has no direction")
        v = v / norms
    exps, C = _monomial_table(l)
    monos = np.prod(v[..., None, :] ** exps, axis=-1)  # (..., M)
    return monos @ C.T


def ict_tensor(vectors, l: int) -> np.ndarray:
    """T_l of the unit vectors n = v/|v|: float64 array of shape (..., 3, ..., 3) (l axes).

    Symmetric, traceless, T_l(n):T_l(n) = l!/(2l-1)!!, T_l(Qn) = Q^(x)l T_l(n).
    """
    comps = ict_components(vectors, l)
    dense = comps[..., dense_pattern_positions(l)]
    return dense.reshape(comps.shape[:-1] + (3,) * l)


def ict_reduced(vectors, l: int, normalize: bool = True) -> np.ndarray:
    """T_l(n) in the 2l+1 reduced coordinates, float64, shape (..., 2l+1)."""
    comps = ict_components(vectors, l, normalize)
    idx = pattern_index(l)
    return comps[..., [idx[p] for p in reduced_patterns(l)]]
