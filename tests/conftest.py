"""Shared test configuration: hypothesis profile, cache isolation, random O(3) strategies.

Rule for every test (tests/README.md): each comparison states its independent reference
and guards against vacuous zeros (a nonzero reference, rattled structures, a visible share
for the part under test; ``model_helpers.rel_err`` refuses an all-zero reference).

* Hypothesis: the ``ci`` profile (30 examples, no deadline) is loaded by default so the
  suite stays fast; ``HYPOTHESIS_PROFILE=thorough`` runs 300 examples per property.
* Cache: ``TACEGEN_CACHE_DIR`` points at a private temporary folder for the whole test
  session (set at import, before any test module is collected, and removed at exit),
  so no test ever reads or writes ``~/.cache/tacegen``.
* BLAS: ``OPENBLAS_NUM_THREADS`` defaults to 1 (set before numpy is imported). The small
  dense linear algebra of these tests is ~100x slower with two OpenBLAS threads when the
  other core is busy (spin-waiting), e.g. under ``pytest -n 2``.
* Fault injection: with ``TACEGEN_TEST_MUTATION=<name>`` (set only by
  test_fault_injection.py) every generated ``model.py`` is edited by that mutation of
  tests/mutations.py before it is imported.
* Strategies (import them with ``from conftest import ...``): Haar-random proper and
  improper orthogonal matrices (normal 3x3 -> QR, signs fixed by diag(R)), random unit
  vectors, and a helper rotating a tensor on every axis.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# --------------------------------------------------------------------------- cache isolation

_SESSION_CACHE = tempfile.mkdtemp(prefix="tacegen-test-cache-")
os.environ["TACEGEN_CACHE_DIR"] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)


# --------------------------------------------------------------------------- fault injection

# Set by tests/test_fault_injection.py in the pytest runs it starts: edit every generated
# model.py the tests build (see tests/mutations.py). Never set in an ordinary run.
if os.environ.get("TACEGEN_TEST_MUTATION"):
    from mutations import install_generated_mutation  # noqa: E402

    install_generated_mutation(os.environ["TACEGEN_TEST_MUTATION"])


@pytest.fixture(autouse=True, scope="session")
def _isolated_tacegen_cache():
    """Guard: every test of the session sees the private cache folder."""
    os.environ["TACEGEN_CACHE_DIR"] = _SESSION_CACHE
    yield _SESSION_CACHE


# --------------------------------------------------------------------------- hypothesis

settings.register_profile("ci", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# --------------------------------------------------------------------------- O(3) helpers

SEEDS = st.integers(min_value=0, max_value=2**63 - 1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a whole test module (small models are latency bound: two
    threads on a busy 2-core machine make them much slower). Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    from model_helpers import torch_threads

    with torch_threads(1):
        yield


def haar_orthogonal(rng: np.random.Generator, proper: bool) -> np.ndarray:
    """Haar-random 3x3 orthogonal matrix with det = +1 (proper) or -1 (improper).

    QR of a standard-normal matrix, with the signs of Q's columns fixed by diag(R)
    (this makes Q Haar distributed on O(3)); the determinant is then set by flipping
    the sign of the whole matrix (-I commutes with everything, so Haar is preserved).
    """
    while True:
        m = rng.standard_normal((3, 3))
        q, r = np.linalg.qr(m)
        d = np.diag(r)
        if np.all(np.abs(d) > 1e-6):
            break
    q = q * np.sign(d)
    if (np.linalg.det(q) > 0) != proper:
        q = -q
    return q


def random_unit_vector(rng: np.random.Generator) -> np.ndarray:
    while True:
        v = rng.standard_normal(3)
        n = np.linalg.norm(v)
        if n > 1e-3:
            return v / n


def proper_rotations() -> st.SearchStrategy:
    """SO(3), Haar."""
    return SEEDS.map(lambda s: haar_orthogonal(np.random.default_rng(s), True))


def improper_rotations() -> st.SearchStrategy:
    """O(3) with det = -1 (rotation times inversion), Haar."""
    return SEEDS.map(lambda s: haar_orthogonal(np.random.default_rng(s), False))


def orthogonal_matrices() -> st.SearchStrategy:
    """Proper or improper, each half of the time."""
    return st.one_of(proper_rotations(), improper_rotations())


def unit_vectors() -> st.SearchStrategy:
    return SEEDS.map(lambda s: random_unit_vector(np.random.default_rng(s)))


def rngs() -> st.SearchStrategy:
    """A numpy Generator (drawn from a hypothesis-controlled seed)."""
    return SEEDS.map(np.random.default_rng)


def rotate(tensor: np.ndarray, q: np.ndarray, axes: int | None = None) -> np.ndarray:
    """Q^(x)l T: apply q on each of the last ``axes`` axes (all axes by default)."""
    t = np.asarray(tensor)
    n = t.ndim if axes is None else axes
    for ax in range(t.ndim - n, t.ndim):
        t = np.moveaxis(np.tensordot(q, t, axes=([1], [ax])), 0, ax)
    return t


def kron_power(q: np.ndarray, n: int) -> np.ndarray:
    """The 3^n x 3^n matrix of Q^(x)n (C order of the flattened tensor)."""
    out = np.ones((1, 1))
    for _ in range(n):
        out = np.kron(out, q)
    return out


def reduced_representation(q: np.ndarray, l: int) -> np.ndarray:
    """D_l(Q): the (2l+1)x(2l+1) matrix of T -> Q^(x)l T in the reduced ICT coordinates.

    Column m is the reduced form of the rotated reduced basis tensor e_m (completed to a
    dense tensor, rotated on every axis, read back). Built only from the storage maps of
    :mod:`tacegen.algebra.ict`, never from the couplings.
    """
    from tacegen.algebra import ict

    basis = _dense_reduced_basis(l)  # (2l+1, 3, ..., 3)
    rotated = rotate(basis, q, axes=l) if l else basis
    comps = ict.components_from_dense(rotated, l)  # (2l+1, n_patterns)
    return np.array([ict.reduce(list(c), l) for c in comps], dtype=float).T


_BASIS_CACHE: dict = {}


def _dense_reduced_basis(l: int) -> np.ndarray:
    if l not in _BASIS_CACHE:
        from tacegen.algebra import ict

        d = 2 * l + 1
        rows = [[float(c) for c in ict.complete([1.0 if i == m else 0.0 for i in range(d)], l)]
                for m in range(d)]
        _BASIS_CACHE[l] = ict.dense_from_components(np.array(rows), l)
    return _BASIS_CACHE[l]


def proper_and_improper() -> st.SearchStrategy:
    """A pair (R, S): one proper and one improper Haar-random matrix, so a property
    checked for both in every example is always exercised on both components of O(3)."""
    return st.tuples(proper_rotations(), improper_rotations())


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fault_injection: runs the focused tests against deliberate faults (tests/mutations.py)")
