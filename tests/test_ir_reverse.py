"""Reverse mode as an IR transformation (tacegen.ir.reverse).

The reverse program of every builder program is checked against
* finite differences of the interpreted forward program's <cotangent, output>: every
  program is a polynomial of degree <= 3 along any line, so the five-point stencil is
  exact up to rounding and the tolerance can be tight;
* torch.autograd through an independent torch implementation of the forward ops;
* the reverse program of the optimised forward program;
and the exact algebra behind it (transposed tables, EdgeICT derivative polynomials)
against its definitions and sympy.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import sympy
import torch

from tacegen.algebra import ict
from tacegen.algebra.adjoint import (
    AdjointTable,
    ict_gradient_polynomials,
    ict_reduced_gradient,
    pairing,
    transpose,
)
from tacegen.algebra.coupling import allowed_outputs, coupling
from tacegen.ir.build import edge_basis_program, interaction_program, product_program
from tacegen.ir.interpret import run
from tacegen.ir.nodes import (
    EDGE,
    NODE,
    ChannelSum,
    Couple,
    EdgeICT,
    EdgeICTGrad,
    Program,
    Scale,
    Stack,
    Sum,
    Value,
    WeightArray,
    WeightSpec,
    Zeros,
)
from tacegen.ir.optimise import optimise
from model_helpers import rel_err  # refuses an all-zero reference
from ir_torch_reference import torch_run
from tacegen.ir.reverse import FORWARD_OPS, REVERSE_OPS, cotangent_name, gradient_name, reverse

torch.set_num_threads(1)

PROGRAMS = {
    **{f"edge_basis_l{l}": edge_basis_program(l) for l in (1, 2, 3)},
    **{f"interaction_0_l{l}": interaction_program((0,), l) for l in (1, 2, 3)},
    **{f"interaction_01_l{l}": interaction_program((0, 1), l) for l in (1, 2, 3)},
    "interaction_012_l2": interaction_program((0, 1, 2), 2),
    **{f"product_{''.join(map(str, r))}_l{l}_nu{nu}": product_program(l, nu, r)
       for l in (1, 2, 3) for nu in (1, 2, 3) for r in ((0,), (0, 1))},
}


def wrt_all(program: Program) -> list[str]:
    return [v.name for v in program.inputs] + [w.name for w in program.weights]


def random_case(program: Program, rng, nodes=4, edges=9, channels=3):
    """Random inputs, weights, graph and one cotangent per output (every node receives an edge)."""
    receivers = np.sort(np.concatenate([np.arange(nodes), rng.integers(0, nodes, edges - nodes)]))
    graph = {"senders": rng.integers(0, nodes, edges), "receivers": receivers, "num_nodes": nodes}
    count = {EDGE: edges, NODE: nodes}

    def array(v):
        return rng.standard_normal((count[v.domain], channels, v.size) if v.channels else (count[v.domain], v.size))

    inputs = {v.name: array(v) for v in program.inputs}
    weights = {w.name: rng.standard_normal((count[w.domain], channels, w.count)) for w in program.weights}
    cotangents = {cotangent_name(v.name): array(v) for v in program.outputs}
    return inputs, weights, graph, cotangents


def objective(program, inputs, weights, graph, cotangents) -> float:
    out = run(program, inputs, weights, graph)
    return sum(float(np.sum(cotangents[cotangent_name(k)] * v)) for k, v in out.items())


def directional(program, inputs, weights, graph, cotangents, name, direction, h=0.5) -> float:
    """d/dt <cot, O(x + t v)> at t = 0 by the five-point stencil (exact for degree <= 4)."""
    def at(t):
        ins, ws = dict(inputs), dict(weights)
        if name in ins:
            ins[name] = ins[name] + t * direction
        else:
            ws[name] = ws[name] + t * direction
        return objective(program, ins, ws, graph, cotangents)

    return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)


def gradients(program, inputs, weights, graph, cotangents, wrt=None, **kw) -> dict:
    wrt = wrt_all(program) if wrt is None else wrt
    rev = reverse(program, wrt, **kw)
    got = run(rev, {**inputs, **cotangents}, weights, graph)
    return {name: got[gradient_name(name)] for name in wrt}


def fd_check(program, inputs, weights, graph, cotangents, grads, rng, directions=3, tol=1e-9):
    for name, g in grads.items():
        base = inputs.get(name, weights.get(name))
        assert g.shape == base.shape, name
        for _ in range(directions):
            v = rng.standard_normal(base.shape)
            fd = directional(program, inputs, weights, graph, cotangents, name, v)
            bound = np.linalg.norm(g) * np.linalg.norm(v) + 1e-300
            assert abs(fd - float(np.sum(g * v))) / bound < tol, f"{program.name}: d/d{name}"


# ----------------------------------------------------------------------------- finite differences

@pytest.mark.parametrize("key", sorted(PROGRAMS))
def test_reverse_matches_finite_differences(key):
    program = PROGRAMS[key]
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    case = random_case(program, rng)
    grads = gradients(program, *case)
    read = {v.name for op in program.ops for v in op.inputs}
    for name, g in grads.items():
        if name in read or name in {w.name for w in program.weights}:
            assert np.abs(g).max() > 0, f"{key}: d_{name} vanishes: a vacuous comparison"
    fd_check(program, *case, grads, rng)


@pytest.mark.parametrize("key", ["interaction_01_l2", "product_01_l2_nu3", "edge_basis_l3"])
def test_reverse_matches_finite_differences_entry_by_entry(key):
    """Every entry of every input and weight, not only random directions."""
    program = PROGRAMS[key]
    rng = np.random.default_rng(7)
    inputs, weights, graph, cot = random_case(program, rng, nodes=3, edges=5, channels=2)
    grads = gradients(program, inputs, weights, graph, cot)
    for name, g in grads.items():
        base = inputs.get(name, weights.get(name))
        fd = np.zeros_like(base)
        for index in np.ndindex(base.shape):
            e = np.zeros_like(base)
            e[index] = 1.0
            fd[index] = directional(program, inputs, weights, graph, cot, name, e)
        assert rel_err(fd, g) < 1e-10, f"{key}: d_{name}"


# ----------------------------------------------------------------------------- torch autograd



@pytest.mark.parametrize("key", ["interaction_0_l3", "interaction_01_l3", "interaction_012_l2",
                                 "product_01_l3_nu3", "product_0_l2_nu3", "edge_basis_l3"])
def test_reverse_matches_torch_autograd(key):
    program = PROGRAMS[key]
    inputs, weights, graph, cot = random_case(program, np.random.default_rng(3))
    grads = gradients(program, inputs, weights, graph, cot)
    t_in = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    t_w = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    out = torch_run(program, t_in, t_w, graph)
    loss = sum((torch.as_tensor(cot[cotangent_name(k)]) * v).sum() for k, v in out.items())
    leaves = {**t_in, **t_w}
    names = wrt_all(program)
    autograd = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    for name, g in zip(names, autograd):
        ref = np.zeros_like(grads[name]) if g is None else g.detach().numpy()
        assert rel_err(grads[name], ref) < 1e-12, f"{key}: d_{name}"


# ----------------------------------------------------------------------------- structure

@pytest.mark.parametrize("key", sorted(PROGRAMS))
def test_reverse_of_optimised_program_agrees(key):
    program = PROGRAMS[key]
    opt = optimise(program)
    case = random_case(program, np.random.default_rng(11))
    naive, optimised = gradients(program, *case), gradients(opt, *case)
    used = {v.name for op in program.ops for v in op.inputs} | {w.name for w in program.weights}
    for name in naive:
        if name not in used:  # an input the program does not use (e.g. A2 of a nu=1 product)
            assert not np.any(naive[name]) and not np.any(optimised[name]), f"{key}: d_{name}"
        else:
            assert rel_err(optimised[name], naive[name]) < 1e-12, f"{key}: d_{name}"


@pytest.mark.parametrize("key", sorted(PROGRAMS))
def test_reverse_program_is_well_formed(key):
    program = PROGRAMS[key]
    for forward in (program, optimise(program)):
        rev = reverse(forward, wrt_all(forward))
        assert rev.check() is rev
        assert all(isinstance(op, FORWARD_OPS + REVERSE_OPS) for op in rev.ops)
        names = [op.out.name for op in rev.ops] + [v.name for v in rev.inputs]
        assert len(names) == len(set(names))
        assert rev.inputs == forward.inputs + tuple(replace(v, name=f"d_{v.name}") for v in forward.outputs)
        assert rev.weights == forward.weights
        assert [v.name for v in rev.outputs] == [f"d_{n}" for n in wrt_all(forward)]
        for v, x in zip(rev.outputs, forward.inputs):
            assert v == replace(x, name=f"d_{x.name}")
        for v, w in zip(rev.outputs[len(forward.inputs):], forward.weights):
            assert v == WeightArray(f"d_{w.name}", w.domain, w.count)
        # every op result is used (dead code dropped) and every value is computed once
        read = {x.name for op in rev.ops for x in op.inputs} | {v.name for v in rev.outputs}
        assert all(op.out.name in read for op in rev.ops)
        keys = [(type(op).__name__, tuple(x.name for x in op.inputs), getattr(op, "coupling", None),
                 getattr(op, "index", None)) for op in rev.ops if not isinstance(op, Sum)]
        assert len(keys) == len(set(keys)), "an op is computed twice"


def test_reverse_keeps_only_what_the_requested_gradients_need():
    inter = PROGRAMS["interaction_01_l3"]
    only_h = reverse(inter, ["h1"])
    assert not any(isinstance(op, Stack) for op in only_h.ops)
    assert not any(isinstance(op, Couple) and isinstance(op.coupling, AdjointTable)
                   and op.coupling.origin.startswith("pairing") for op in only_h.ops)
    assert not any(isinstance(op, ChannelSum) for op in only_h.ops)  # only edge ICT adjoints need it
    only_radial = reverse(inter, ["radial"])
    # dR needs the forward couplings (recomputed) but no transposed table
    assert all(not isinstance(op, Couple) or not isinstance(op.coupling, AdjointTable)
               or op.coupling.origin.startswith("pairing") for op in only_radial.ops)
    assert any(isinstance(op, Couple) and not isinstance(op.coupling, AdjointTable) for op in only_radial.ops)
    basis = reverse(PROGRAMS["edge_basis_l3"], ["direction"])
    assert sum(isinstance(op, EdgeICTGrad) for op in basis.ops) == 3  # l = 1..3; T_0 is constant
    assert not any(isinstance(op, EdgeICT) for op in basis.ops)      # no recomputation needed


def test_unread_inputs_get_zero_gradients():
    program = PROGRAMS["product_0_l3_nu1"]  # B_0 = w A_0: A_1..A_3 are never read
    rev = reverse(program, ["A0", "A2", "product"])
    assert any(isinstance(op, Zeros) and op.out.name == "d_A2" for op in rev.ops)
    inputs, weights, graph, cot = random_case(program, np.random.default_rng(0))
    got = run(rev, {**inputs, **cot}, weights, graph)
    assert got["d_A2"].shape == inputs["A2"].shape and not got["d_A2"].any()
    assert rel_err(got["d_A0"], cot["d_B0"] * weights["product"][:, :, :1]) < 1e-15
    assert rel_err(got["d_product"][:, :, 0], (cot["d_B0"] * inputs["A0"]).sum(-1)) < 1e-15


def test_with_forward_also_returns_the_forward_outputs():
    program = PROGRAMS["interaction_01_l2"]
    inputs, weights, graph, cot = random_case(program, np.random.default_rng(1))
    rev = reverse(program, ["h1"], with_forward=True)
    got = run(rev, {**inputs, **cot}, weights, graph)
    ref = run(program, inputs, weights, graph)
    assert [v.name for v in rev.outputs] == [v.name for v in program.outputs] + ["d_h1"]
    for name, value in ref.items():
        assert rel_err(got[name], value) < 1e-15


def test_weight_used_by_several_scales_accumulates():
    """Two Scales read one weight column and one value feeds two ops: contributions add up."""
    a = Value("a", 1, NODE)
    s1, s2, c = Value("s1", 1, NODE), Value("s2", 1, NODE), Value("c", 2, NODE)
    out, out2 = Value("out", 2, NODE), Value("o2", 1, NODE)
    w = WeightSpec("w", NODE, 3)
    program = Program("shared", "", (a,), (w,), (
        Scale(s1, a, "w", 1), Scale(s2, s1, "w", 1), Couple(c, s2, a, coupling(1, 1, 2)),
        Sum(out, (c, c)), Sum(out2, (s1, a, a))), (out, out2)).check()
    rng = np.random.default_rng(5)
    case = random_case(program, rng)
    grads = gradients(program, *case)
    assert not grads["w"][:, :, [0, 2]].any() and grads["w"][:, :, 1].any()
    fd_check(program, *case, grads, rng)


def test_reverse_rejects_bad_requests():
    program = PROGRAMS["interaction_0_l1"]
    with pytest.raises(ValueError, match="neither an input nor a weight"):
        reverse(program, ["A0"])
    with pytest.raises(ValueError, match="duplicate"):
        reverse(program, ["h0", "h0"])
    rev = reverse(program, ["h0"])
    with pytest.raises(NotImplementedError, match="no adjoint rule"):
        reverse(rev, ["h0"])
    clash = Program("clash", "", (Value("x", 0, NODE), Value("d_x", 0, NODE)), (),
                    (Sum(Value("y", 0, NODE), (Value("x", 0, NODE),)),), (Value("y", 0, NODE),)).check()
    with pytest.raises(ValueError, match="already used"):
        reverse(clash, ["x"])


def test_swapping_roles_of_a_coupling_is_not_its_adjoint():
    """The check detects a wrong adjoint table: using the equivariant coupling l3 x l2 -> l1
    (what "swap the roles" would suggest) instead of the exact transpose fails."""
    program = PROGRAMS["product_0_l2_nu2"]
    rev = reverse(program, ["A2"])
    ops = list(rev.ops)
    k = next(i for i, op in enumerate(ops) if isinstance(op, Couple) and isinstance(op.coupling, AdjointTable)
             and set(op.coupling.entries) != set(coupling(*_ranks(op.coupling)).entries))
    ops[k] = replace(ops[k], coupling=coupling(*_ranks(ops[k].coupling)))
    broken = replace(rev, ops=tuple(ops)).check()
    rng = np.random.default_rng(2)
    inputs, weights, graph, cot = case = random_case(program, rng)
    good = run(rev, {**inputs, **cot}, weights, graph)["d_A2"]
    bad = run(broken, {**inputs, **cot}, weights, graph)["d_A2"]
    assert rel_err(good, bad) > 1e-3
    fd_check(program, *case, {"A2": good}, rng)
    with pytest.raises(AssertionError):
        fd_check(program, *case, {"A2": bad}, rng)


def _ranks(c):
    return c.l1, c.l2, c.l3


# ----------------------------------------------------------------------------- exact algebra

COUPLINGS = [(l1, l2, l3) for l1 in range(4) for l2 in range(4) for l3 in allowed_outputs(l1, l2) if l3 <= 4]


@pytest.mark.parametrize("l1,l2,l3", COUPLINGS)
def test_transposed_tables_are_exact_adjoints(l1, l2, l3):
    """<g, c(a, b)> = <transpose_left(g, b), a> = <transpose_right(a, g), b>, in exact arithmetic."""
    c = coupling(l1, l2, l3)
    rng = np.random.default_rng(l1 * 25 + l2 * 5 + l3)

    def rand(l):
        return [Fraction(int(x), 7) for x in rng.integers(-20, 21, 2 * l + 1)]

    a, b, g = rand(l1), rand(l2), rand(l3)
    left, right = transpose(c, "left"), transpose(c, "right")
    assert (left.l1, left.l2, left.l3) == (l3, l2, l1) and (right.l1, right.l2, right.l3) == (l1, l3, l2)
    assert left.nnz == right.nnz == c.nnz and left.odd == right.odd == c.odd

    def dot(x, y):
        return sum(p * q for p, q in zip(x, y))

    value = dot(g, c.apply(a, b))
    assert dot(left.apply(g, b), a) == value
    assert dot(right.apply(a, g), b) == value
    assert isinstance(left, AdjointTable) and left != coupling(l3, l2, l1)
    if l1 == l2 == l3 == 2:  # not the equivariant coupling with the same ranks (non-orthonormal storage)
        assert set(left.entries) != set(coupling(l3, l2, l1).entries)
    x, y = rand(l1), rand(l1)
    assert pairing(l1).apply(x, y) == [dot(x, y)]


@pytest.mark.parametrize("l", range(6))
def test_edge_ict_derivative_polynomials_are_exact(l):
    """Against sympy differentiation of ict_symbolic (l <= 3 per the brief, up to 5 here)."""
    xyz = sympy.symbols("x y z")
    dense = ict.ict_symbolic(l, xyz)
    grads = ict_gradient_polynomials(l)
    assert len(grads) == 2 * l + 1
    for m, (a, b, c) in enumerate(ict.reduced_patterns(l)):
        index = (0,) * a + (1,) * b + (2,) * c
        component = dense[index] if l else dense[()]
        for k in range(3):
            mine = sympy.Add(*[sympy.Rational(v.numerator, v.denominator) * xyz[0]**e[0] * xyz[1]**e[1] * xyz[2]**e[2]
                               for e, v in grads[m][k].items()])
            assert sympy.expand(sympy.diff(component, xyz[k]) - mine) == 0, (l, m, k)


def test_edge_ict_float_jacobian_matches_central_differences():
    rng = np.random.default_rng(0)
    r = rng.standard_normal((6, 3))
    for l in range(5):
        J = ict_reduced_gradient(r, l)
        assert J.shape == (6, 2 * l + 1, 3)
        h = 1e-5
        for k in range(3):
            e = np.zeros(3)
            e[k] = h
            fd = (ict.ict_reduced(r + e, l, normalize=False) - ict.ict_reduced(r - e, l, normalize=False)) / (2 * h)
            assert np.abs(fd - J[..., k]).max() < 1e-8
