"""Whole-energy IR scaffolding (tacegen.ir.dense_ops / dense_interpret / dense_reverse).

* every new op's interpreter == an independent torch implementation (the runtime's own
  edge_vectors, BesselBasis, PolynomialCutoff, NormalisedActivation, RadialMLP);
* every adjoint rule (through tacegen.ir.reverse) == finite differences of the interpreted
  forward (float64, five-point stencil) and == torch.autograd;
* a composed energy program (geometry -> radial MLP -> coupling -> Scatter -> channel
  mixing -> readout -> per-structure energy) reversed by tacegen.ir.reverse gives forces ==
  -finite-difference gradient and d_strain == finite-difference strain derivative.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tacegen.algebra.coupling import coupling
from tacegen.ir import dense_ops as d
from tacegen.ir import dense_reverse  # noqa: F401  (registers interpreter + adjoint rules)
from tacegen.ir.dense_interpret import normalised_silu_gain
from tacegen.ir.interpret import run
from model_helpers import rel_err  # refuses an all-zero reference
from ir_torch_reference import torch_run as reference_torch_run
from tacegen.ir.nodes import EDGE, NODE, Couple, EdgeICT, Gather, Program, Scatter, Sum, Value, WeightSpec
from tacegen.ir.reverse import cotangent_name, gradient_name, reverse
from tacegen.runtime.data import edge_vectors as runtime_edge_vectors
from tacegen.runtime.radial import BesselBasis, NormalisedActivation, PolynomialCutoff, RadialMLP

R_CUT = 4.5
C, P = 3, 3  # channels, radial weight columns
STRUCT = d.STRUCTURE


def make_graph():
    """Two structures (3 and 2 atoms); every ordered pair plus two periodic images each."""
    batch = np.array([0, 0, 0, 1, 1])
    senders, receivers, shifts = [], [], []
    for atoms in ([0, 1, 2], [3, 4]):
        for i in atoms:
            for j in atoms:
                for s in ((0, 0, 0), (1, 0, 0), (0, -1, 1)):
                    if i == j and s == (0, 0, 0):
                        continue
                    senders.append(j)
                    receivers.append(i)
                    shifts.append(s)
    graph = dict(senders=np.array(senders), receivers=np.array(receivers), num_nodes=5, batch=batch,
                 num_structures=2)
    return graph, np.array(shifts, dtype=np.float64)


GRAPH, SHIFTS = make_graph()
NE = len(GRAPH["senders"])


def geometry(rng):
    cell = np.stack([np.diag([3.3, 3.6, 3.9]) + 0.2 * rng.normal(size=(3, 3)) for _ in range(2)])
    positions = rng.uniform(0.0, 3.0, (5, 3))
    return positions, cell


def prog(name, inputs, ops, outputs, weights=()):
    return Program(name, name, tuple(inputs), tuple(weights), tuple(ops), tuple(outputs)).check()


# ----------------------------------------------------------------------------- independent torch semantics

def _dense_op(op, env: dict, weights: dict, graph: dict):
    """Torch value of a scaffolding op (tacegen.ir.dense_ops), or None."""
    senders = torch.as_tensor(graph["senders"])
    receivers = torch.as_tensor(graph["receivers"])
    batch = torch.as_tensor(graph["batch"])
    if isinstance(op, d.EdgeVectors):
        value = runtime_edge_vectors(env[op.positions.name], env[op.cell.name], batch,
                                     torch.stack([senders, receivers]), env[op.shifts.name])
        if op.strain is not None:
            deform = torch.eye(3, dtype=torch.float64) + env[op.strain.name]
            value = torch.bmm(value.unsqueeze(1), deform[batch[receivers]]).squeeze(1)
        return value
    if isinstance(op, d.EdgeLength):
        return torch.linalg.vector_norm(env[op.vectors.name], dim=-1)
    if isinstance(op, d.EdgeDirection):
        v = env[op.vectors.name]
        return v / torch.linalg.vector_norm(v, dim=-1).unsqueeze(-1)
    if isinstance(op, d.RadialBasis):
        r = env[op.lengths.name]
        bessel = BesselBasis(op.r_cut, op.num_basis).to(torch.float64)
        return bessel(r) * PolynomialCutoff(op.r_cut, op.p)(r).unsqueeze(-1)
    if isinstance(op, d.Dense):
        return torch.nn.functional.linear(env[op.src.name], weights[op.weight].T)
    if isinstance(op, d.Activation):
        act = NormalisedActivation(torch.nn.SiLU()) if op.normalised else torch.nn.SiLU()
        return act(env[op.src.name])
    if isinstance(op, d.ChannelMix):
        return torch.einsum("ncd,ck->nkd", env[op.src.name], weights[op.weight])
    if isinstance(op, d.Reshape):
        src = env[op.src.name]
        return src.view((src.shape[0],) + op.out.shape)
    if isinstance(op, d.ScaleBy):
        return env[op.src.name] * env[op.weight.name][:, :, op.index, None]
    if isinstance(op, d.Mul):
        return op.factor * env[op.src.name]
    if isinstance(op, d.NodeSum):
        src = env[op.src.name]
        return src.new_zeros((graph["num_structures"],) + tuple(src.shape[1:])).index_add(0, batch, src)
    return None


def torch_run(program: Program, inputs: dict, weights: dict, graph: dict) -> dict:
    return reference_torch_run(program, inputs, weights, graph, extra=_dense_op)


# ----------------------------------------------------------------------------- single-op cases

def single_op_cases():
    rng = np.random.default_rng(7)
    positions, cell = geometry(rng)
    pos, cel, shf = d.vector("positions", NODE), d.array("cell", STRUCT, (3, 3)), d.array("shifts", EDGE, (3,))
    strain = d.array("strain", STRUCT, (3, 3))
    vec = d.vector("vectors", EDGE)
    lengths = d.array("lengths", EDGE)
    cases = {}
    geo = {"positions": positions, "cell": cell, "shifts": SHIFTS}
    out = d.vector("rij", EDGE)
    cases["edge_vectors"] = (prog("ev", (pos, cel, shf), [d.EdgeVectors(out, pos, cel, shf)], [out]),
                             geo, {}, ["positions"])
    cases["edge_vectors_strained"] = (
        prog("evs", (pos, cel, shf, strain), [d.EdgeVectors(out, pos, cel, shf, strain)], [out]),
        {**geo, "strain": 0.05 * rng.normal(size=(2, 3, 3))}, {}, ["positions", "strain"])
    vectors = rng.normal(size=(NE, 3)) * 2.0
    ln = d.array("r", EDGE)
    cases["edge_length"] = (prog("el", (vec,), [d.EdgeLength(ln, vec)], [ln]), {"vectors": vectors}, {}, ["vectors"])
    dr = d.vector("n", EDGE)
    cases["edge_direction"] = (prog("ed", (vec,), [d.EdgeDirection(dr, vec)], [dr]), {"vectors": vectors}, {},
                               ["vectors"])
    r = rng.uniform(0.3, 1.2 * R_CUT, NE)
    r[0], r[1] = 1e-4, -2e-4  # series branch of the Bessel derivative (analytic, even in r)
    for p in (1, 2, 6):
        rb = d.array("rb", EDGE, (5,))
        cases[f"radial_basis_p{p}"] = (prog("rb", (lengths,), [d.RadialBasis(rb, lengths, R_CUT, 5, p)], [rb]),
                                       {"lengths": r}, {}, ["lengths"])
    x = d.array("x", EDGE, (4,))
    y = d.array("y", EDGE, (6,))
    cases["dense"] = (prog("de", (x,), [d.Dense(y, x, "W")], [y], [d.ParamSpec("W", (4, 6))]),
                      {"x": rng.normal(size=(NE, 4))}, {"W": rng.normal(size=(4, 6))}, ["x"])
    for norm in (True, False):
        a = d.array("a", EDGE, (4,))
        cases[f"activation_{'normalised' if norm else 'plain'}"] = (
            prog("ac", (x,), [d.Activation(a, x, norm)], [a]), {"x": 3.0 * rng.normal(size=(NE, 4))}, {}, ["x"])
    h2, m2 = Value("h2", 2, NODE), Value("m2", 2, NODE)
    cases["channel_mix"] = (prog("cm", (h2,), [d.ChannelMix(m2, h2, "M")], [m2], [d.ParamSpec("M", (C, 4))]),
                            {"h2": rng.normal(size=(5, C, 5))}, {"M": rng.normal(size=(C, 4))}, ["h2"])
    flat, wa = d.array("flat", EDGE, (C * P,)), d.array("R", EDGE, (C, P))
    cases["reshape_weights"] = (prog("rs", (flat,), [d.Reshape(wa, flat)], [wa]),
                                {"flat": rng.normal(size=(NE, C * P))}, {}, ["flat"])
    h0, h0f = Value("h0", 0, NODE), d.array("h0f", NODE, (C,))
    cases["reshape_scalar"] = (prog("rs0", (h0,), [d.Reshape(h0f, h0)], [h0f]),
                               {"h0": rng.normal(size=(5, C, 1))}, {}, ["h0"])
    c1, s1 = Value("c1", 1, EDGE), Value("s1", 1, EDGE)
    cases["scale_by"] = (prog("sb", (c1, wa), [d.ScaleBy(s1, c1, wa, 1)], [s1]),
                         {"c1": rng.normal(size=(NE, C, 3)), "R": rng.normal(size=(NE, C, P))}, {}, ["c1", "R"])
    m = Value("m", 1, NODE)
    cases["mul"] = (prog("mu", (Value("h1", 1, NODE),), [d.Mul(m, Value("h1", 1, NODE), 0.37)], [m]),
                    {"h1": rng.normal(size=(5, C, 3))}, {}, ["h1"])
    for shape in ((), (2,)):
        e, s = d.array("e", NODE, shape), d.array("E", STRUCT, shape)
        cases[f"node_sum{len(shape)}"] = (prog("ns", (e,), [d.NodeSum(s, e)], [s]),
                                          {"e": rng.normal(size=(5,) + shape)}, {}, ["e"])
    return cases


CASES = single_op_cases()


def objective(program, inputs, weights, cot):
    out = run(program, inputs, weights, GRAPH)
    return sum(float(np.sum(cot[cotangent_name(k)] * v)) for k, v in out.items())


def reverse_gradients(program, inputs, weights, cot, wrt):
    rp = reverse(program, wrt)
    out = run(rp, {**inputs, **cot}, weights, GRAPH)
    return {name: out[gradient_name(name)] for name in wrt}


def directional_fd(program, inputs, weights, cot, name, u, h):
    def at(t):
        return objective(program, {**inputs, name: inputs[name] + t * u}, weights, cot)
    return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)


def case_cotangent(key):
    program, inputs, weights, _ = CASES[key]
    rng = np.random.default_rng(11)
    out = run(program, inputs, weights, GRAPH)
    return {cotangent_name(k): rng.normal(size=v.shape) for k, v in out.items()}


@pytest.mark.parametrize("key", sorted(CASES))
def test_interpreter_matches_torch(key):
    program, inputs, weights, _ = CASES[key]
    ours = run(program, inputs, weights, GRAPH)
    ref = torch_run(program, {k: torch.tensor(v) for k, v in inputs.items()},
                    {k: torch.tensor(v) for k, v in weights.items()}, GRAPH)
    for name, value in ours.items():
        assert value.shape == tuple(ref[name].shape)
        assert rel_err(value, ref[name].numpy()) < 1e-14, name


@pytest.mark.parametrize("key", sorted(CASES))
def test_adjoint_matches_finite_differences(key):
    program, inputs, weights, wrt = CASES[key]
    cot = case_cotangent(key)
    grads = reverse_gradients(program, inputs, weights, cot, wrt)
    rng = np.random.default_rng(5)
    for name in wrt:
        assert grads[name].shape == np.shape(inputs[name])
        for _ in range(2):
            u = rng.normal(size=np.shape(inputs[name]))
            fd = directional_fd(program, inputs, weights, cot, name, u, 1e-3)
            assert abs(fd - float(np.sum(grads[name] * u))) <= 1e-8 * max(1.0, abs(fd)), name


@pytest.mark.parametrize("key", sorted(CASES))
def test_adjoint_matches_torch_autograd(key):
    program, inputs, weights, wrt = CASES[key]
    cot = case_cotangent(key)
    grads = reverse_gradients(program, inputs, weights, cot, wrt)
    leaves = {k: torch.tensor(v, requires_grad=k in wrt) for k, v in inputs.items()}
    out = torch_run(program, leaves, {k: torch.tensor(v) for k, v in weights.items()}, GRAPH)
    loss = sum((torch.as_tensor(cot[cotangent_name(k)]) * v).sum() for k, v in out.items())
    auto = torch.autograd.grad(loss, [leaves[n] for n in wrt])
    for name, g in zip(wrt, auto):
        assert rel_err(grads[name], g.numpy()) < 1e-12, name


def test_normalised_silu_gain_is_the_runtime_constant():
    assert abs(normalised_silu_gain() - NormalisedActivation(torch.nn.SiLU()).gain) < 1e-15
    assert abs(normalised_silu_gain() - 1.6765) < 1e-3  # sanity: SiLU second moment ~ 0.356


def test_radial_mlp_matches_runtime_modules():
    """RadialBasis -> Dense/Activation chain -> Reshape == runtime BesselBasis x cutoff ->
    RadialMLP -> .view(-1, C, P), with the runtime's weights copied in; and its reverse pass
    == autograd through the runtime modules."""
    torch.manual_seed(0)
    nb, hidden = 6, [7, 5]
    mlp = RadialMLP(nb, hidden, C * P).to(torch.float64)
    linears = [m for m in mlp.net if isinstance(m, torch.nn.Linear)]
    weights = {f"W{k}": lin.weight.detach().numpy().T.copy() for k, lin in enumerate(linears)}
    lengths = d.array("lengths", EDGE)
    x = d.array("rb", EDGE, (nb,))
    ops = [d.RadialBasis(x, lengths, R_CUT, nb, 5)]
    widths = [nb] + hidden + [C * P]
    for k in range(len(linears)):
        y = d.array(f"z{k}", EDGE, (widths[k + 1],))
        ops.append(d.Dense(y, x, f"W{k}"))
        x = y
        if k < len(linears) - 1:
            a = d.array(f"a{k}", EDGE, (widths[k + 1],))
            ops.append(d.Activation(a, x))
            x = a
    R = d.array("R", EDGE, (C, P))
    ops.append(d.Reshape(R, x))
    program = prog("radial", (lengths,), ops, [R], [d.ParamSpec(k, v.shape) for k, v in weights.items()])
    r = np.random.default_rng(2).uniform(0.5, 1.1 * R_CUT, NE)
    ours = run(program, {"lengths": r}, weights, GRAPH)["R"]
    rt = torch.tensor(r, requires_grad=True)
    bessel = BesselBasis(R_CUT, nb).to(torch.float64)
    ref = mlp(bessel(rt) * PolynomialCutoff(R_CUT, 5)(rt).unsqueeze(-1)).view(-1, C, P)
    assert rel_err(ours, ref.detach().numpy()) < 1e-13
    cot = np.random.default_rng(3).normal(size=ours.shape)
    (auto,) = torch.autograd.grad((ref * torch.as_tensor(cot)).sum(), [rt])
    grads = reverse_gradients(program, {"lengths": r}, weights, {"d_R": cot}, ["lengths"])
    assert rel_err(grads["lengths"], auto.numpy()) < 1e-12


# ----------------------------------------------------------------------------- composed energy

def energy_program():
    """positions -> edge vectors (strained) -> length/direction -> Y1, Y2 and radial basis ->
    2-hidden-layer MLP -> (E, C, P) weights -> ScaleBy of h_j (x) Y_l couplings -> Scatter ->
    1/avg -> ChannelMix -> invariant couplings -> ChannelMix -> readout MLP -> scale -> NodeSum."""
    nb, hid, ro = 5, (6, 4), 4
    pos, cel, shf = d.vector("positions", NODE), d.array("cell", STRUCT, (3, 3)), d.array("shifts", EDGE, (3,))
    strain, h0 = d.array("strain", STRUCT, (3, 3)), Value("h0", 0, NODE)
    rij, r, n = d.vector("rij", EDGE), d.array("r", EDGE), d.vector("direction", EDGE)
    ops = [d.EdgeVectors(rij, pos, cel, shf, strain), d.EdgeLength(r, rij), d.EdgeDirection(n, rij)]
    Y = {l: Value(f"Y{l}", l, EDGE, channels=False) for l in (1, 2)}
    ops += [EdgeICT(Y[l], n) for l in (1, 2)]
    x = d.array("rb", EDGE, (nb,))
    ops.append(d.RadialBasis(x, r, R_CUT, nb, 6))
    widths = (nb,) + hid + (C * P,)
    params = {}
    for k in range(3):
        params[f"W{k}"] = (widths[k], widths[k + 1])
        y = d.array(f"z{k}", EDGE, (widths[k + 1],))
        ops.append(d.Dense(y, x, f"W{k}"))
        x = y
        if k < 2:
            a = d.array(f"a{k}", EDGE, (widths[k + 1],))
            ops.append(d.Activation(a, x))
            x = a
    R = d.array("R", EDGE, (C, P))
    ops.append(d.Reshape(R, x))
    hj = Value("hj", 0, EDGE)
    ops.append(Gather(hj, h0))
    A = {}
    for l in (0, 1, 2):
        if l == 0:
            c = hj
        else:
            c = Value(f"c{l}", l, EDGE)
            ops.append(Couple(c, hj, Y[l], coupling(0, l, l)))
        s, a, am, mixed = (Value(f"s{l}", l, EDGE), Value(f"sc{l}", l, NODE), Value(f"am{l}", l, NODE),
                           Value(f"A{l}", l, NODE))
        params[f"M{l}"] = (C, C)
        ops += [d.ScaleBy(s, c, R, l), Scatter(a, s), d.Mul(am, a, 1.0 / 3.0), d.ChannelMix(mixed, am, f"M{l}")]
        A[l] = mixed
    inv = [A[0]]
    for l in (1, 2):
        q = Value(f"q{l}", 0, NODE)
        ops.append(Couple(q, A[l], A[l], coupling(l, l, 0)))
        inv.append(q)
    B0, B0m = Value("B0", 0, NODE), Value("B0m", 0, NODE)
    params["MB"] = (C, C)
    feat, z, za, e1, e = (d.array("feat", NODE, (C,)), d.array("ro_z", NODE, (ro,)), d.array("ro_a", NODE, (ro,)),
                          d.array("ro_e", NODE, (1,)), d.array("node_e", NODE))
    params["V0"], params["V1"] = (C, ro), (ro, 1)
    es, energy = d.array("node_es", NODE), d.array("energy", STRUCT)
    ops += [Sum(B0, tuple(inv)), d.ChannelMix(B0m, B0, "MB"), d.Reshape(feat, B0m), d.Dense(z, feat, "V0"),
            d.Activation(za, z, normalised=False), d.Dense(e1, za, "V1"), d.Reshape(e, e1), d.Mul(es, e, 1.3),
            d.NodeSum(energy, es)]
    program = prog("energy", (pos, cel, shf, strain, h0), ops, [energy],
                   [d.ParamSpec(k, v) for k, v in params.items()])
    rng = np.random.default_rng(13)
    weights = {k: rng.normal(size=v) / math.sqrt(v[0]) for k, v in params.items()}
    positions, cell = geometry(rng)
    inputs = {"positions": positions, "cell": cell, "shifts": SHIFTS, "strain": np.zeros((2, 3, 3)),
              "h0": rng.normal(size=(5, C, 1))}
    return program, inputs, weights


def test_composed_energy_forces_and_virial():
    program, inputs, weights = energy_program()
    rp = reverse(program, ["positions", "strain"], with_forward=True)
    out = run(rp, {**inputs, "d_energy": np.ones(2)}, weights, GRAPH)
    energy = out["energy"]
    assert energy.shape == (2,) and np.all(np.isfinite(energy))
    assert rel_err(energy, run(program, inputs, weights, GRAPH)["energy"]) < 1e-15
    forces, de_dstrain = -out["d_positions"], out["d_strain"]

    def total(name, value):
        return float(np.sum(run(program, {**inputs, name: value}, weights, GRAPH)["energy"]))

    def fd(name, index, h=1e-4):
        def at(t):
            x = inputs[name].copy()
            x[index] += t
            return total(name, x)
        return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)

    fd_forces = np.array([[-fd("positions", (i, a)) for a in range(3)] for i in range(5)])
    assert rel_err(forces, fd_forces) < 1e-8
    assert np.max(np.abs(forces)) > 1e-3  # not trivially zero
    fd_strain = np.array([[[fd("strain", (b, i, j)) for j in range(3)] for i in range(3)] for b in range(2)])
    assert rel_err(de_dstrain, fd_strain) < 1e-8
    # no net force on an isolated structure's atoms
    # (a structure is translation invariant: forces of each structure sum to zero)
    for b in range(2):
        assert np.max(np.abs(forces[GRAPH["batch"] == b].sum(axis=0))) < 1e-12 * max(1.0, np.max(np.abs(forces)))

    # == torch.autograd through the independent torch semantics
    leaves = {k: torch.tensor(v, requires_grad=k in ("positions", "strain")) for k, v in inputs.items()}
    e_t = torch_run(program, leaves, {k: torch.tensor(v) for k, v in weights.items()}, GRAPH)["energy"]
    assert rel_err(energy, e_t.detach().numpy()) < 1e-13
    g_pos, g_strain = torch.autograd.grad(e_t.sum(), [leaves["positions"], leaves["strain"]])
    assert rel_err(out["d_positions"], g_pos.numpy()) < 1e-12
    assert rel_err(de_dstrain, g_strain.numpy()) < 1e-12


def test_composed_forces_and_virial_match_the_runtime_convention():
    """tacegen.runtime.autograd (symmetrised strain of positions and cell): forces ==
    -d_positions and virial == -sym(d_strain)."""
    from tacegen.runtime.autograd import apply_strain, derivatives

    program, inputs, weights = energy_program()
    out = run(reverse(program, ["positions", "strain"]), {**inputs, "d_energy": np.ones(2)}, weights, GRAPH)
    batch = torch.as_tensor(GRAPH["batch"])
    positions, displacement, spos, scell = apply_strain(torch.tensor(inputs["positions"]),
                                                        torch.tensor(inputs["cell"]), batch, 2)
    t_in = {k: torch.tensor(v) for k, v in inputs.items()}
    t_in.update(positions=spos, cell=scell)
    energy = torch_run(program, t_in, {k: torch.tensor(v) for k, v in weights.items()}, GRAPH)["energy"]
    ref = derivatives(energy, positions, displacement, torch.tensor(inputs["cell"]),
                      torch.ones(2, 3, dtype=torch.bool), True, True, False)
    m = out["d_strain"]
    assert rel_err(-out["d_positions"], ref["forces"].numpy()) < 1e-12
    assert rel_err(-0.5 * (m + m.transpose(0, 2, 1)), ref["virial"].numpy()) < 1e-12


def test_composed_reverse_program_needs_no_unknown_ops():
    program, inputs, weights = energy_program()
    rp = reverse(program, ["positions"])
    kinds = {type(op).__name__ for op in rp.ops}
    assert {"EdgeVectorsGrad", "EdgeLengthGrad", "EdgeDirectionGrad", "EdgeICTGrad", "RadialBasisGrad",
            "DenseTransposed", "ActivationGrad", "ChannelMixTransposed", "ReshapeLike", "ScaleByWeightGrad",
            "GatherStructures", "GatherReceivers"} <= kinds
    assert "ScatterSenders" not in kinds  # h0 is not differentiated: the Gather adjoint is dead
    assert "EdgeVectorsStrainGrad" not in kinds  # not requested: dropped as dead code


def test_reverse_refuses_what_it_cannot_differentiate():
    program, _, _ = energy_program()
    with pytest.raises(NotImplementedError):
        reverse(program, ["cell"])
    with pytest.raises(NotImplementedError):
        reverse(program, ["W0"])


def test_core_behaviour_unchanged_for_unknown_ops():
    class Unknown:
        out = Value("u", 0, NODE)
        inputs = ()

    bad = Program("bad", "", (), (), (Unknown(),), ())
    with pytest.raises(TypeError):
        run(bad, {}, {}, GRAPH)
    with pytest.raises(NotImplementedError):
        reverse(replace_ops(bad), [])


def replace_ops(program):
    return Program(program.name, program.doc, program.inputs, (WeightSpec("w", NODE, 1),), program.ops, ())
