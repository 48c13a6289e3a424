"""Exact homogeneous polynomials in three variables, the working form of symmetric tensors.

A symmetric rank-l tensor S corresponds one to one to the homogeneous degree-l polynomial

    P_S(u) = S_{i1...il} u_{i1} ... u_{il} = sum_alpha multinomial(alpha) S_alpha u^alpha,

where alpha = (a, b, c), a + b + c = l, counts how many indices are x, y and z, and
S_alpha is the (common) value of every component with that index pattern. Contractions,
symmetrisation and detracing become derivatives and multiplications of polynomials,
which is why the whole ICT algebra lives here in exact rational arithmetic.

A polynomial is a plain ``dict`` mapping exponent tuples ``(a, b, c)`` to ``Fraction``
coefficients (zero coefficients are never stored). Helpers here are small and pure.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from math import factorial
from typing import Dict, Iterator, Tuple

Monomial = Tuple[int, int, int]
Poly = Dict[Monomial, Fraction]

AXES = (0, 1, 2)


def unit(axis: int) -> Monomial:
    """Exponent tuple of the single variable u_axis."""
    return tuple(1 if i == axis else 0 for i in AXES)  # type: ignore[return-value]


def patterns(l: int) -> list[Monomial]:
    """All index patterns (a, b, c) of a symmetric rank-l tensor, in a fixed order.

    Order: descending a, then descending b (x^l, x^(l-1) y, ..., z^l).
    """
    return [(a, b, l - a - b) for a in range(l, -1, -1) for b in range(l - a, -1, -1)]


@lru_cache(maxsize=None)
def multinomial(alpha: Monomial) -> int:
    """Number of rank-l index tuples with pattern alpha: l! / (a! b! c!)."""
    a, b, c = alpha
    return factorial(a + b + c) // (factorial(a) * factorial(b) * factorial(c))


def add(p: Poly, q: Poly, scale: Fraction | int = 1) -> Poly:
    """p + scale * q, dropping zeros."""
    out = dict(p)
    for m, v in q.items():
        w = out.get(m, 0) + scale * v
        if w:
            out[m] = Fraction(w)
        else:
            out.pop(m, None)
    return out


def scale(p: Poly, s: Fraction | int) -> Poly:
    if not s:
        return {}
    return {m: v * s for m, v in p.items()}


def mul(p: Poly, q: Poly) -> Poly:
    out: Poly = {}
    for m1, v1 in p.items():
        for m2, v2 in q.items():
            m = (m1[0] + m2[0], m1[1] + m2[1], m1[2] + m2[2])
            w = out.get(m, 0) + v1 * v2
            if w:
                out[m] = w
            else:
                out.pop(m, None)
    return out


def diff(p: Poly, axis: int) -> Poly:
    """Partial derivative with respect to u_axis."""
    out: Poly = {}
    for m, v in p.items():
        e = m[axis]
        if e:
            mm = list(m)
            mm[axis] -= 1
            out[tuple(mm)] = v * e  # type: ignore[index]
    return out


def diff_multi(p: Poly, beta: Monomial) -> Poly:
    """Mixed partial derivative d^beta = d_x^a d_y^b d_z^c."""
    for axis in AXES:
        for _ in range(beta[axis]):
            p = diff(p, axis)
            if not p:
                return p
    return p


def laplacian(p: Poly) -> Poly:
    out: Poly = {}
    for axis in AXES:
        out = add(out, diff(diff(p, axis), axis))
    return out


SQUARED_NORM: Poly = {(2, 0, 0): Fraction(1), (0, 2, 0): Fraction(1), (0, 0, 2): Fraction(1)}


def power(p: Poly, k: int) -> Poly:
    out: Poly = {(0, 0, 0): Fraction(1)}
    for _ in range(k):
        out = mul(out, p)
    return out


def degree(p: Poly) -> int:
    """Degree of a homogeneous polynomial (0 for the zero polynomial)."""
    for m in p:
        return sum(m)
    return 0


def multi_indices(k: int) -> Iterator[Monomial]:
    """All beta = (a, b, c) with a + b + c = k."""
    return iter(patterns(k))


def double_factorial(n: int) -> int:
    """n!! with (-1)!! = 0!! = 1."""
    out = 1
    while n > 1:
        out *= n
        n -= 2
    return out


def linear_form(vector) -> Poly:
    """The polynomial n . u for a vector of rationals."""
    return {unit(i): Fraction(vector[i]) for i in AXES if vector[i]}
