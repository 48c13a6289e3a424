"""Radial basis, cutoff envelope and radial MLP."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tacegen.runtime.radial import BesselBasis, NormalisedActivation, PolynomialCutoff, RadialMLP

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script


def derivatives(fn, r, order):
    """[f, f', ..., f^(order)] at r by autograd (float64)."""
    r = r.clone().requires_grad_(True)
    values = [fn(r)]
    for _ in range(order):
        (g,) = torch.autograd.grad(values[-1].sum(), r, create_graph=True)
        values.append(g)
    return [v.detach() for v in values]


@settings(max_examples=25, deadline=None)
@given(st.floats(1.0, 8.0), st.integers(1, 8))
def test_cutoff_is_one_at_zero_and_c2_zero_at_r_cut(r_cut, p):
    cutoff = PolynomialCutoff(r_cut, p)
    f0 = derivatives(cutoff, torch.zeros(1, dtype=torch.float64), 1)
    assert f0[0].item() == 1.0
    at_cut = derivatives(cutoff, torch.tensor([r_cut * (1 - 1e-12)], dtype=torch.float64), 2)
    for k, value in enumerate(at_cut):
        assert abs(value.item()) < 1e-8 * r_cut ** (-k), f"derivative {k} at r_cut is {value.item()}"
    beyond = derivatives(cutoff, torch.linspace(r_cut, 3 * r_cut, 7, dtype=torch.float64), 2)
    assert all(torch.all(v == 0) for v in beyond)


@settings(max_examples=25, deadline=None)
@given(st.floats(1.0, 8.0), st.integers(1, 8))
def test_cutoff_decreases_monotonically_with_the_documented_derivative(r_cut, p):
    cutoff = PolynomialCutoff(r_cut, p)
    r = torch.linspace(0, r_cut, 201, dtype=torch.float64)[1:-1]
    f, df = derivatives(cutoff, r, 1)
    assert torch.all(f > 0) and torch.all(f <= 1) and f[-1] < f[0]
    assert torch.all(f[1:] <= f[:-1])
    x = r / r_cut
    expected = -p * (p + 1) * (p + 2) / 2 * x ** (p - 1) * (1 - x) ** 2 / r_cut
    torch.testing.assert_close(df, expected)
    # the autograd derivative itself agrees with central differences
    h = 1e-6
    numerical = (cutoff(r + h) - cutoff(r - h)) / (2 * h)
    torch.testing.assert_close(df, numerical, atol=1e-7, rtol=1e-6)


def test_cutoff_first_and_second_derivatives_are_continuous_across_r_cut():
    cutoff = PolynomialCutoff(5.0, p=6)
    for delta in (1e-3, 1e-4, 1e-5):
        r = torch.tensor([5.0 - delta, 5.0 + delta], dtype=torch.float64)
        f, df, d2f = derivatives(cutoff, r, 2)
        assert abs(f[0]) < 10 * delta**3 and abs(df[0]) < 10 * delta**2 and abs(d2f[0]) < 10 * delta
        assert f[1] == 0 and df[1] == 0 and d2f[1] == 0


def test_bessel_basis_matches_formula_and_is_orthonormal():
    r_cut, n = 4.0, 6
    basis = BesselBasis(r_cut, n).double()
    r = torch.linspace(1e-3, r_cut, 20001, dtype=torch.float64)
    values = basis(r)
    assert values.shape == (20001, n)
    freq = torch.arange(1, n + 1, dtype=torch.float64) * math.pi / r_cut
    expected = math.sqrt(2 / r_cut) * torch.sin(freq * r[:, None]) / r[:, None]
    torch.testing.assert_close(values, expected)
    # spherical Bessel orthonormality: int_0^rc r^2 B_n B_m dr = delta_nm
    weighted = values * r[:, None]
    gram = torch.trapezoid(weighted[:, :, None] * weighted[:, None, :], r, dim=0)
    torch.testing.assert_close(gram, torch.eye(n, dtype=torch.float64), atol=1e-4, rtol=0)


def test_bessel_basis_at_zero_is_the_finite_limit_with_the_exact_gradient():
    """References: closed forms. B_n(0) = sqrt(2/rc) w_n; B_n is even in r, so
    dB_n/dr(0) = 0 exactly; elsewhere dB_n/dr = sqrt(2/rc) (w r cos wr - sin wr) / r^2, and
    near 0 its Taylor series -sqrt(2/rc) (w^3 r / 3 - w^5 r^3 / 30) (no cancellation)."""
    basis = BesselBasis(5.0, 4).double()
    r = torch.tensor([0.0, 1e-3, 0.7, 2.3], dtype=torch.float64, requires_grad=True)
    values = basis(r)
    w = torch.arange(1, 5, dtype=torch.float64) * math.pi / 5.0
    prefactor = math.sqrt(2 / 5.0)
    torch.testing.assert_close(values[0], prefactor * w, rtol=1e-15, atol=0)
    jacobian = torch.stack([torch.autograd.grad(values[:, n].sum(), r, retain_graph=True)[0]
                            for n in range(4)], dim=1)  # (radii, basis)
    assert torch.all(jacobian[0] == 0)
    small = r.detach()[1]
    taylor = -prefactor * (w**3 * small / 3 - w**5 * small**3 / 30)
    torch.testing.assert_close(jacobian[1], taylor, rtol=1e-9, atol=0)
    rr = r.detach()[2:, None]
    closed = prefactor * (w * rr * torch.cos(w * rr) - torch.sin(w * rr)) / rr**2
    assert closed.abs().min() > 1e-2  # not vacuous
    torch.testing.assert_close(jacobian[2:], closed, rtol=1e-12, atol=0)


def test_bessel_trainable_frequencies():
    fixed, trainable = BesselBasis(5.0, 3), BesselBasis(5.0, 3, trainable=True)
    assert "harmonics" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    assert [name for name, _ in trainable.named_parameters()] == ["harmonics"]
    trainable(torch.rand(10) * 5).sum().backward()
    assert torch.all(trainable.harmonics.grad != 0)


def test_radial_mlp_shapes_and_zero_map():
    mlp = RadialMLP(8, [16, 16], 5)
    assert mlp(torch.randn(7, 8)).shape == (7, 5)
    assert mlp(torch.randn(2, 3, 8)).shape == (2, 3, 5)
    assert torch.all(mlp(torch.zeros(4, 8)) == 0)  # no biases
    linear = RadialMLP(3, [], 2)
    assert len(linear.net) == 1


def test_normalised_activation_has_unit_second_moment():
    torch.manual_seed(0)
    z = torch.randn(1_000_000, dtype=torch.float64)
    for act in (nn.SiLU(), nn.Tanh(), nn.GELU()):
        moment = (NormalisedActivation(act)(z) ** 2).mean().item()
        assert moment == pytest.approx(1.0, abs=0.01), act


def test_radial_mlp_init_preserves_the_second_moment():
    # exact in the wide limit; unnormalised SiLU layers would give ~0.36^2 = 0.13 here
    torch.manual_seed(0)
    x = torch.randn(512, 64)
    for _ in range(2):
        moment = (RadialMLP(64, [256, 256], 256)(x) ** 2).mean().item()
        assert moment == pytest.approx(1.0, abs=0.15)


def test_modules_are_scriptable():
    r = torch.rand(11) * 5
    for module in (BesselBasis(5.0, 4), PolynomialCutoff(5.0), RadialMLP(4, [8], 3)):
        scripted = torch.jit.script(module)
        x = r if not isinstance(module, RadialMLP) else torch.randn(11, 4)
        torch.testing.assert_close(scripted(x), module(x))


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: PolynomialCutoff(0.0), ValueError, r"r_cut must be a finite number > 0, got 0.0"),
        (lambda: PolynomialCutoff(5.0, p=0), ValueError, r"p must be an int >= 1, got 0"),
        (lambda: PolynomialCutoff(5.0, p=2.5), TypeError, r"p must be an int >= 1, got 2.5"),
        (lambda: BesselBasis(float("inf"), 4), ValueError, r"r_cut .* got inf"),
        (lambda: BesselBasis(5.0, 0), ValueError, r"num_basis must be an int >= 1, got 0"),
        (lambda: RadialMLP(4, [8, -1], 3), ValueError, r"hidden\[1\] must be an int >= 1, got -1"),
        (lambda: RadialMLP(4, 8, 3), TypeError, r"hidden must be a list of ints, got 8"),
        (lambda: RadialMLP(0, [8], 3), ValueError, r"in_features must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments_are_named(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()
