"""Numpy (float64) reference semantics of the ops of :mod:`tacegen.ir.dense_ops`.

Importing this module registers every op in :data:`tacegen.ir.interpret.EXTENSIONS`, so
:func:`tacegen.ir.interpret.run` evaluates programs mixing them with the core ops.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import dense_ops as d
from .interpret import EXTENSIONS


def sigmoid(x):
    """Logistic function, overflow-free: 0.5 (1 + tanh(x/2))."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def silu(x):
    return x * sigmoid(x)


def silu_derivative(x):
    s = sigmoid(x)
    return s + x * s * (1.0 - s)


@functools.lru_cache(maxsize=None)
def normalised_silu_gain(points: int = 64) -> float:
    """1/sqrt(E[silu(z)^2]), z ~ N(0,1), by the Gauss-Hermite rule of
    tacegen.runtime.radial.second_moment (same nodes, weights and reduction)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(points)
    moment = float(np.sum(weights * silu(nodes) ** 2) / math.sqrt(2.0 * math.pi))
    return 1.0 / math.sqrt(moment)


def _gain(normalised: bool) -> float:
    return normalised_silu_gain() if normalised else 1.0


def _edge_structure(graph):
    return np.asarray(graph["batch"])[np.asarray(graph["receivers"])]


def unstrained_edge_vectors(positions, cell, shifts, graph):
    """positions[j] - positions[i] + shifts @ cell[batch[i]], (E, 3)."""
    s, r = np.asarray(graph["senders"]), np.asarray(graph["receivers"])
    edge_cell = cell[_edge_structure(graph)]
    return positions[s] - positions[r] + np.einsum("ea,eab->eb", shifts, edge_cell)


def _deformation(strain):
    return np.eye(3) + strain


def bessel(r, r_cut, num_basis):
    """B_n(r), (E, num_basis), evaluated like BesselBasis.forward (via sinc)."""
    h = np.arange(1, num_basis + 1, dtype=np.float64)
    x = (r / r_cut)[..., None] * h
    return (math.sqrt(2.0 / r_cut) * (math.pi / r_cut)) * h * np.sinc(x)


def bessel_derivative(r, r_cut, num_basis):
    """d B_n / dr, (E, num_basis)."""
    w = np.arange(1, num_basis + 1, dtype=np.float64) * (math.pi / r_cut)
    r = np.asarray(r, dtype=np.float64)[..., None]
    wr = w * r
    small = np.abs(wr) < 1e-3
    safe_r = np.where(small, 1.0, r)
    safe_wr = np.where(small, 1.0, wr)
    exact = (safe_wr * np.cos(safe_wr) - np.sin(safe_wr)) / safe_r**2
    series = -(w**3) * r / 3.0 + (w**5) * r**3 / 30.0
    return math.sqrt(2.0 / r_cut) * np.where(small, series, exact)


def cutoff(r, r_cut, p):
    """PolynomialCutoff, same expression order as the runtime."""
    pf = float(p)
    x = r / r_cut
    xp = x**p
    f = 1.0 - 0.5 * (pf + 1.0) * (pf + 2.0) * xp + pf * (pf + 2.0) * xp * x - 0.5 * pf * (pf + 1.0) * xp * x * x
    return np.where(x < 1.0, f, 0.0)


def cutoff_derivative(r, r_cut, p):
    x = r / r_cut
    g = -0.5 * p * (p + 1.0) * (p + 2.0) * x ** (p - 1) * (1.0 - x) ** 2 / r_cut
    return np.where(x < 1.0, g, 0.0)


def _edge_vectors(op, env, weights, graph):
    r0 = unstrained_edge_vectors(env[op.positions.name], env[op.cell.name], env[op.shifts.name], graph)
    if op.strain is None:
        return r0
    return np.einsum("ea,eab->eb", r0, _deformation(env[op.strain.name])[_edge_structure(graph)])


def _scatter(values, index, size):
    out = np.zeros((size,) + values.shape[1:])
    np.add.at(out, index, values)
    return out


def _edge_vectors_grad(op, env, weights, graph):
    c = env[op.cotangent.name]
    if op.strain is not None:
        c = np.einsum("eb,eab->ea", c, _deformation(env[op.strain.name])[_edge_structure(graph)])
    n = graph["num_nodes"]
    return _scatter(c, np.asarray(graph["senders"]), n) - _scatter(c, np.asarray(graph["receivers"]), n)


def _edge_vectors_strain_grad(op, env, weights, graph):
    r0 = unstrained_edge_vectors(env[op.positions.name], env[op.cell.name], env[op.shifts.name], graph)
    outer = r0[:, :, None] * env[op.cotangent.name][:, None, :]
    return _scatter(outer, _edge_structure(graph), graph["num_structures"])


def _norm(v):
    return np.sqrt(np.sum(v * v, axis=-1))


def _direction_grad(op, env, weights, graph):
    v, c = env[op.vectors.name], env[op.cotangent.name]
    r = _norm(v)[:, None]
    n = v / r
    return (c - np.sum(c * n, axis=-1, keepdims=True) * n) / r


def _radial_basis(op, env, weights, graph):
    r = env[op.lengths.name]
    return bessel(r, op.r_cut, op.num_basis) * cutoff(r, op.r_cut, op.p)[..., None]


def _radial_basis_grad(op, env, weights, graph):
    r = env[op.lengths.name]
    b, db = bessel(r, op.r_cut, op.num_basis), bessel_derivative(r, op.r_cut, op.num_basis)
    f, df = cutoff(r, op.r_cut, op.p), cutoff_derivative(r, op.r_cut, op.p)
    return np.sum(env[op.cotangent.name] * (db * f[..., None] + b * df[..., None]), axis=-1)


def _scale_by_weight_grad(op, env, weights, graph):
    out = np.zeros_like(env[op.like.name])
    out[:, :, op.index] = np.sum(env[op.cotangent.name] * env[op.src.name], axis=-1)
    return out


def _node_sum(op, env, weights, graph):
    return _scatter(env[op.src.name], np.asarray(graph["batch"]), graph["num_structures"])


RULES = {
    d.EdgeVectors: _edge_vectors,
    d.EdgeLength: lambda op, env, w, g: _norm(env[op.vectors.name]),
    d.EdgeDirection: lambda op, env, w, g: env[op.vectors.name] / _norm(env[op.vectors.name])[:, None],
    d.RadialBasis: _radial_basis,
    d.Dense: lambda op, env, w, g: env[op.src.name] @ np.asarray(w[op.weight], dtype=np.float64),
    d.Activation: lambda op, env, w, g: _gain(op.normalised) * silu(env[op.src.name]),
    d.ChannelMix: lambda op, env, w, g: np.einsum("ncd,ck->nkd", env[op.src.name],
                                                  np.asarray(w[op.weight], dtype=np.float64)),
    d.Reshape: lambda op, env, w, g: env[op.src.name].reshape((env[op.src.name].shape[0],) + op.out.shape),
    d.ScaleBy: lambda op, env, w, g: env[op.src.name] * env[op.weight.name][:, :, op.index, None],
    d.Mul: lambda op, env, w, g: op.factor * env[op.src.name],
    d.NodeSum: _node_sum,
    # adjoints
    d.EdgeVectorsGrad: _edge_vectors_grad,
    d.EdgeVectorsStrainGrad: _edge_vectors_strain_grad,
    d.EdgeLengthGrad: lambda op, env, w, g: env[op.cotangent.name][:, None] * env[op.vectors.name]
    / _norm(env[op.vectors.name])[:, None],
    d.EdgeDirectionGrad: _direction_grad,
    d.RadialBasisGrad: _radial_basis_grad,
    d.DenseTransposed: lambda op, env, w, g: env[op.src.name] @ np.asarray(w[op.weight], dtype=np.float64).T,
    d.ActivationGrad: lambda op, env, w, g: env[op.cotangent.name] * _gain(op.normalised)
    * silu_derivative(env[op.src.name]),
    d.ChannelMixTransposed: lambda op, env, w, g: np.einsum("nkd,ck->ncd", env[op.src.name],
                                                            np.asarray(w[op.weight], dtype=np.float64)),
    d.ReshapeLike: lambda op, env, w, g: env[op.src.name].reshape(env[op.like.name].shape),
    d.ScaleByWeightGrad: _scale_by_weight_grad,
    d.GatherStructures: lambda op, env, w, g: env[op.src.name][np.asarray(g["batch"])],
}

EXTENSIONS.update(RULES)
