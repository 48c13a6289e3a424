"""Exact irreducible parts of output tensors (tacegen.algebra.tensor_parts) and the spec's
input/output descriptors (tacegen.io_spec)."""

from fractions import Fraction

import numpy as np
import pytest

from tacegen.algebra.ict import components_from_dense, reduce
from tacegen.algebra.tensor_parts import (decompose, ict_embedding, output_parts, recombine,
                                          symmetry_projector)
from tacegen.io_spec import SYMMETRIES, part_weights

# rank 4: the elastic (major and minor) symmetry; general rank 4 (19 copies) is checked by weights only
CASES = [(n, sym) for sym, ranks in SYMMETRIES.items() for n in ranks if n <= 3] + [(4, "elastic")]


def _random_orthogonal(rng, improper):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q


def _rotate_dense(t, q):
    for axis in range(t.ndim):
        t = np.moveaxis(np.tensordot(q, t, axes=([1], [axis])), 0, axis)
    return t


def _rotate_reduced(x, j, q):
    if j == 0:
        return np.asarray(x, dtype=float)
    dense = (ict_embedding(j).astype(float) @ np.asarray(x, dtype=float)).reshape((3,) * j)
    return np.asarray(reduce(list(components_from_dense(_rotate_dense(dense, q), j)), j), dtype=float)


@pytest.mark.parametrize("n,symmetry", CASES)
def test_weights_match_the_spec_table(n, symmetry):
    assert tuple(p.weight for p in output_parts(n, symmetry, (-1) ** n)) == part_weights(n, symmetry)


@pytest.mark.parametrize("n,symmetry", CASES)
def test_decompose_then_recombine_is_the_identity_exactly(n, symmetry):
    rng = np.random.default_rng(n)
    pi = symmetry_projector(n, symmetry)
    parts = output_parts(n, symmetry, (-1) ** n)
    raw = np.array([Fraction(int(v), 7) for v in rng.integers(-20, 20, size=3**n)], dtype=object)
    tensor = pi.dot(raw)  # a random exact tensor of the class
    if symmetry == "symmetric_traceless":  # the group average keeps traces: build one from its part
        tensor = recombine(parts, [[Fraction(int(v)) for v in rng.integers(-5, 5, size=2 * n + 1)]])
    assert any(v != 0 for v in tensor)
    x = decompose(parts, tensor)
    back = recombine(parts, x)
    assert all(a == b for a, b in zip(back, tensor))
    # every part lies in the class
    for p in parts:
        assert all(v == 0 for v in (pi.dot(p.matrix) - p.matrix).reshape(-1))


@pytest.mark.parametrize("n,symmetry", CASES)
@pytest.mark.parametrize("improper", [False, True])
def test_embeddings_are_equivariant_with_their_parity(n, symmetry, improper):
    rng = np.random.default_rng(3)
    q = _random_orthogonal(rng, improper)
    det = np.linalg.det(q)
    parity = (-1) ** n  # a true rank-n tensor; pseudo parts pick up det Q
    for part in output_parts(n, symmetry, parity):
        m = part.matrix.astype(float)
        x = rng.normal(size=2 * part.weight + 1)
        lhs = m @ _rotate_reduced(x, part.weight, q) * (1.0 if part.natural else det)
        rhs = _rotate_dense((m @ x).reshape((3,) * n), q).reshape(-1)
        assert np.abs(rhs).max() > 1e-3
        np.testing.assert_allclose(lhs, rhs, atol=1e-12)


def test_rank2_general_parts_are_the_textbook_ones():
    trace, antisym, sym = output_parts(2, "general", 1)
    assert (trace.weight, trace.natural) == (0, True)
    assert (antisym.weight, antisym.natural, antisym.label) == (1, False, "1e")
    assert (sym.weight, sym.natural) == (2, True)
    t = trace.matrix.astype(float).reshape(3, 3)
    assert np.allclose(t / t[0, 0], np.eye(3))
    a = (antisym.matrix.astype(float) @ np.array([1.0, 2.0, 3.0])).reshape(3, 3)
    assert np.allclose(a, -a.T) and np.abs(a).max() > 0


def test_general_rank4_has_the_weights_of_the_spec_table():
    assert tuple(p.weight for p in output_parts(4, "general", 1)) == part_weights(4, "general")
