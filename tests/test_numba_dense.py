"""The dense Numba printer (tacegen.backends.numba_dense): printed functions == the IR
interpreter, for every supported op alone (forward and adjoint), for a composed all-dense
program and its reverse pass, in float64 and float32; reductions are bitwise independent
of the thread count; unsupported ops are refused by name.

All functions are printed into ONE module (compiled lazily, one JIT per function and
dtype) in a per-module temporary folder. JIT time dominates (~0.5 s per prange loop, ~15 s
for the composed reverse program), so op variants the composed program covers are not
repeated alone, float32 runs on a sample, and the float32 composed run needs
``TACEGEN_SLOW_TESTS=1``.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import pytest

from tacegen.algebra.coupling import coupling
from tacegen.backends.numba_dense import (
    DensePrinter,
    dense_graph_arguments,
    render_dense_module,
    render_dense_program,
)
from tacegen.backends.numba_printer import load_source, render_program
from tacegen.ir import dense_ops as d
from tacegen.ir import dense_reverse  # noqa: F401  (registers interpreter + adjoint rules)
from tacegen.ir.dense_interpret import normalised_silu_gain
from tacegen.ir.interpret import run
from tacegen.ir.nodes import EDGE, NODE, Couple, Program, Sum, Value, Zeros
from tacegen.ir.reverse import cotangent_name, reverse
from model_helpers import rel_err

STRUCT = d.STRUCTURE
R_CUT = 4.5
TOL64, TOL32 = 1e-13, 2e-5
SLOW = os.environ.get("TACEGEN_SLOW_TESTS") == "1"


def make_graph(rng, structures=(4, 3, 5), edges_per_node=6, isolated=1):
    """Atoms of each structure, edges within a structure (random senders and cell shifts),
    sorted by receiver; the last ``isolated`` atoms of the last structure receive no edge."""
    batch = np.repeat(np.arange(len(structures)), structures)
    n = len(batch)
    senders, receivers, shifts = [], [], []
    for i in range(n - isolated):
        atoms = np.flatnonzero(batch == batch[i])
        for _ in range(edges_per_node):
            j, shift = rng.choice(atoms), rng.integers(-1, 2, 3)
            if j == i and not shift.any():
                shift[0] = 1  # no zero-length edge
            senders.append(j)
            receivers.append(i)
            shifts.append(shift)
    graph = dict(senders=np.array(senders), receivers=np.array(receivers), num_nodes=n, batch=batch,
                 num_structures=len(structures))
    return graph, np.array(shifts, dtype=np.float64)


GRAPH, SHIFTS = make_graph(np.random.default_rng(0))
NN, NE, NS = GRAPH["num_nodes"], len(GRAPH["senders"]), GRAPH["num_structures"]


def prog(name, inputs, ops, outputs, weights=()):
    return Program(name, name, tuple(inputs), tuple(weights), tuple(ops), tuple(outputs)).check()


def geometry(rng):
    cell = np.stack([np.diag([3.3, 3.6, 3.9]) + 0.2 * rng.normal(size=(3, 3)) for _ in range(NS)])
    return rng.uniform(0.0, 3.0, (NN, 3)), cell


def lengths(rng):
    r = rng.uniform(0.3, 1.2 * R_CUT, NE)
    r[:4] = [0.0, 1e-4, 2e-4, R_CUT]  # sinc(0), the series branch of dB/dr, the cutoff's edge
    return r


# ----------------------------------------------------------------------------- single-op cases

def single_op_cases() -> dict:
    """name -> (program, inputs, weights): every supported op alone in a program. Variants
    the composed program covers (strain, normalised activations, p = 6, rank-1 NodeSum /
    GatherStructures, Sum of arrays) are left to it: every function costs JIT time."""
    rng = np.random.default_rng(7)
    positions, cell = geometry(rng)
    pos, cel, shf = d.vector("positions", NODE), d.array("cell", STRUCT, (3, 3)), d.array("shifts", EDGE, (3,))
    geo = {"positions": positions, "cell": cell, "shifts": SHIFTS}
    vec, g3 = d.vector("vectors", EDGE), d.vector("g", EDGE)
    vectors, cot3 = rng.normal(size=(NE, 3)) * 2.0, rng.normal(size=(NE, 3))
    cases = {}
    rij = d.vector("rij", EDGE)
    cases["edge_vectors"] = (prog("ev", (pos, cel, shf), [d.EdgeVectors(rij, pos, cel, shf)], [rij]), geo, {})
    dp = d.vector("d_positions", NODE)
    cases["edge_vectors_grad"] = (prog("evg", (g3,), [d.EdgeVectorsGrad(dp, g3)], [dp]), {"g": cot3}, {})
    ds = d.array("d_strain", STRUCT, (3, 3))
    cases["edge_vectors_strain_grad"] = (
        prog("evsg", (pos, cel, shf, g3), [d.EdgeVectorsStrainGrad(ds, pos, cel, shf, g3)], [ds]),
        {**geo, "g": cot3}, {})
    ln, dr = d.array("r", EDGE), d.vector("n", EDGE)
    cases["edge_length"] = (prog("el", (vec,), [d.EdgeLength(ln, vec)], [ln]), {"vectors": vectors}, {})
    cases["edge_direction"] = (prog("ed", (vec,), [d.EdgeDirection(dr, vec)], [dr]), {"vectors": vectors}, {})
    gl, dv = d.array("gl", EDGE), d.vector("d_vectors", EDGE)
    cases["edge_length_grad"] = (prog("elg", (vec, gl), [d.EdgeLengthGrad(dv, vec, gl)], [dv]),
                                 {"vectors": vectors, "gl": rng.normal(size=NE)}, {})
    cases["edge_direction_grad"] = (prog("edg", (vec, g3), [d.EdgeDirectionGrad(dv, vec, g3)], [dv]),
                                    {"vectors": vectors, "g": cot3}, {})
    lens, nb = d.array("lengths", EDGE), 7
    rb, grb, dl = d.array("rb", EDGE, (nb,)), d.array("g_rb", EDGE, (nb,)), d.array("d_lengths", EDGE)
    for p in (1,):
        cases[f"radial_basis_p{p}"] = (prog("rb", (lens,), [d.RadialBasis(rb, lens, R_CUT, nb, p)], [rb]),
                                       {"lengths": lengths(rng)}, {})
        cases[f"radial_basis_grad_p{p}"] = (
            prog("rbg", (lens, grb), [d.RadialBasisGrad(dl, lens, grb, R_CUT, nb, p)], [dl]),
            {"lengths": lengths(rng), "g_rb": rng.normal(size=(NE, nb))}, {})
    x, y = d.array("x", EDGE, (5,)), d.array("y", EDGE, (6,))
    W = {"W": rng.normal(size=(5, 6))}
    cases["dense"] = (prog("de", (x,), [d.Dense(y, x, "W")], [y], [d.ParamSpec("W", (5, 6))]),
                      {"x": rng.normal(size=(NE, 5))}, W)
    cases["dense_transposed"] = (prog("dt", (y,), [d.DenseTransposed(x, y, "W")], [x], [d.ParamSpec("W", (5, 6))]),
                                 {"y": rng.normal(size=(NE, 6))}, W)
    u, z = d.vector("u", NODE), d.array("z", NODE, (4,))  # Dense of a channel-free vector Value
    cases["dense_of_vector"] = (prog("dv", (u,), [d.Dense(z, u, "V")], [z], [d.ParamSpec("V", (3, 4))]),
                                {"u": rng.normal(size=(NN, 3))}, {"V": rng.normal(size=(3, 4))})
    for norm in (False,):
        tag = "normalised" if norm else "plain"
        a, ga, dx = d.array("a", EDGE, (5,)), d.array("ga", EDGE, (5,)), d.array("dx", EDGE, (5,))
        cases[f"activation_{tag}"] = (prog("ac", (x,), [d.Activation(a, x, norm)], [a]),
                                      {"x": 3.0 * rng.normal(size=(NE, 5))}, {})
        cases[f"activation_grad_{tag}"] = (prog("acg", (x, ga), [d.ActivationGrad(dx, x, ga, norm)], [dx]),
                                           {"x": 3.0 * rng.normal(size=(NE, 5)), "ga": rng.normal(size=(NE, 5))}, {})
    for rank in (0, 2):
        h, m = Value("h", rank, NODE), Value("m", rank, NODE)
        M = {"M": rng.normal(size=(3, 4))}
        size = 2 * rank + 1
        cases[f"channel_mix_l{rank}"] = (
            prog("cm", (h,), [d.ChannelMix(m, h, "M")], [m], [d.ParamSpec("M", (3, 4))]),
            {"h": rng.normal(size=(NN, 3, size))}, M)
        cases[f"channel_mix_transposed_l{rank}"] = (
            prog("cmt", (m,), [d.ChannelMixTransposed(h, m, "M")], [h], [d.ParamSpec("M", (3, 4))]),
            {"m": rng.normal(size=(NN, 4, size))}, M)
    flat, wa = d.array("flat", EDGE, (6,)), d.array("R", EDGE, (2, 3))
    cases["reshape"] = (prog("rs", (flat,), [d.Reshape(wa, flat)], [wa]), {"flat": rng.normal(size=(NE, 6))}, {})
    h0, h0f = Value("h0", 0, NODE), d.array("h0f", NODE, (3,))
    cases["reshape_value"] = (prog("rsv", (h0,), [d.Reshape(h0f, h0)], [h0f]), {"h0": rng.normal(size=(NN, 3, 1))}, {})
    back = d.array("back", EDGE, (6,))
    cases["reshape_like"] = (prog("rl", (wa, flat), [d.ReshapeLike(back, wa, flat)], [back]),
                             {"R": rng.normal(size=(NE, 2, 3)), "flat": rng.normal(size=(NE, 6))}, {})
    h1, m1 = Value("h1", 1, NODE), Value("m1", 1, NODE)
    cases["mul"] = (prog("mu", (h1,), [d.Mul(m1, h1, 0.37)], [m1]), {"h1": rng.normal(size=(NN, 3, 3))}, {})
    for shape in ((2, 3),):
        e, s = d.array("e", NODE, shape), d.array("E", STRUCT, shape)
        cases[f"node_sum{len(shape)}"] = (prog("ns", (e,), [d.NodeSum(s, e)], [s]),
                                          {"e": rng.normal(size=(NN,) + shape)}, {})
        cases[f"gather_structures{len(shape)}"] = (prog("gs", (s,), [d.GatherStructures(e, s)], [e]),
                                                   {"E": rng.normal(size=(NS,) + shape)}, {})
    terms = [Value(f"t{k}", 2, NODE) for k in range(3)]
    total = Value("total", 2, NODE)
    cases["sum_values"] = (prog("sv", terms, [Sum(total, tuple(terms))], [total]),
                           {t.name: rng.normal(size=(NN, 3, 5)) for t in terms}, {})
    zero = Value("zero", 1, NODE)
    cases["zeros"] = (prog("ze", (h1,), [Zeros(zero, h1)], [zero]), {"h1": rng.normal(size=(NN, 3, 3))}, {})
    return cases


# ----------------------------------------------------------------------------- composed program

def composed_program():
    """Geometry (strained edge vectors -> length, direction) -> radial basis -> Dense ->
    Activation -> Dense per edge, plus the direction through its own Dense; a node branch
    (positions -> Dense -> NodeSum) so that structures get an energy (not physical: it only
    gives the reverse pass a GatherStructures and a Sum of two position adjoints)."""
    pos, cel, shf = d.vector("positions", NODE), d.array("cell", STRUCT, (3, 3)), d.array("shifts", EDGE, (3,))
    strain = d.array("strain", STRUCT, (3, 3))
    rij, r, u = d.vector("rij", EDGE), d.array("r", EDGE), d.vector("direction", EDGE)
    nb, hid = 8, 6
    rb, z0, zu, z = (d.array("rb", EDGE, (nb,)), d.array("z0", EDGE, (hid,)), d.array("zu", EDGE, (hid,)),
                     d.array("z", EDGE, (hid,)))
    a, z1, ee, edge_energy = (d.array("a", EDGE, (hid,)), d.array("z1", EDGE, (1,)), d.array("ee", EDGE),
                              d.array("edge_energy", EDGE))
    p0, pe, energy = d.array("p0", NODE, (1,)), d.array("pe", NODE), d.array("energy", STRUCT)
    ops = [d.EdgeVectors(rij, pos, cel, shf, strain), d.EdgeLength(r, rij), d.EdgeDirection(u, rij),
           d.RadialBasis(rb, r, R_CUT, nb, 6), d.Dense(z0, rb, "W0"), d.Dense(zu, u, "Wu"), Sum(z, (z0, zu)),
           d.Activation(a, z), d.Dense(z1, a, "W1"), d.Reshape(ee, z1), d.Mul(edge_energy, ee, 0.5),
           d.Dense(p0, pos, "Wp"), d.Reshape(pe, p0), d.NodeSum(energy, pe)]
    shapes = {"W0": (nb, hid), "Wu": (3, hid), "W1": (hid, 1), "Wp": (3, 1)}
    program = prog("composed", (pos, cel, shf, strain), ops, [edge_energy, energy],
                   [d.ParamSpec(k, v) for k, v in shapes.items()])
    rng = np.random.default_rng(13)
    positions, cell = geometry(rng)
    inputs = {"positions": positions, "cell": cell, "shifts": SHIFTS, "strain": 0.02 * rng.normal(size=(NS, 3, 3)),
              cotangent_name("edge_energy"): rng.normal(size=NE), cotangent_name("energy"): np.ones(NS)}
    weights = {k: rng.normal(size=v) / np.sqrt(v[0]) for k, v in shapes.items()}
    return program, inputs, weights


CASES = single_op_cases()
COMPOSED, COMPOSED_INPUTS, COMPOSED_WEIGHTS = composed_program()
REVERSED = reverse(COMPOSED, ["positions", "strain"], with_forward=True)
# the reverse program recomputes the forward one (with_forward): one function checks both
PROGRAMS = {**{key: value[0] for key, value in CASES.items()}, "composed_reverse": REVERSED}
# float32 (a second JIT of each function): a sample of the op families
FLOAT32 = ("edge_vectors", "radial_basis_grad_p1", "dense", "channel_mix_l2")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """case -> jitted function, all in one module (numba's cache files go next to it)."""
    source = render_dense_module([render_dense_program(p, f"f_{key}") for key, p in PROGRAMS.items()],
                                 title="dense test kernels")
    module = load_source(source, tmp_path_factory.mktemp("numba_dense"))
    return {key: getattr(module, f"f_{key}") for key in PROGRAMS}


def call(fn, program, inputs, weights, graph=GRAPH, dtype=np.float64, weight_dtype=None):
    """Call a printed function with the arguments of its signature, floats cast to ``dtype``
    (weights to ``weight_dtype``, default ``dtype``)."""
    args = [np.asarray(inputs[v.name], dtype) for v in program.inputs]
    args += [np.asarray(weights[w.name], weight_dtype or dtype) for w in program.weights]
    return fn(*args, *dense_graph_arguments(program, graph))


def check(fn, program, inputs, weights, dtype, tol, weight_dtype=None):
    got = call(fn, program, inputs, weights, dtype=dtype, weight_dtype=weight_dtype)
    # the reference sees the same (rounded) inputs: only the arithmetic differs
    rounded = {k: np.asarray(v, dtype).astype(np.float64) for k, v in inputs.items()}
    wr = {k: np.asarray(v, dtype).astype(np.float64) for k, v in weights.items()}
    want = run(program, rounded, wr, GRAPH)
    assert len(got) == len(program.outputs)
    for value, out in zip(got, program.outputs):
        ref = want[out.name]
        assert value.dtype == dtype, out.name
        assert value.shape == ref.shape, out.name
        if out.name == "zero":  # the Zeros op: exactly zero, no relative error of zeros
            assert not np.any(ref) and not np.any(value), out.name
            continue
        assert np.max(np.abs(ref)) > 0, out.name  # a real comparison
        assert rel_err(value, ref) < tol, (out.name, rel_err(value, ref))


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("key", sorted(CASES))
def test_single_op_matches_interpreter_float64(kernels, key):
    program, inputs, weights = CASES[key]
    check(kernels[key], program, inputs, weights, np.float64, TOL64)


@pytest.mark.parametrize("key", FLOAT32)
def test_single_op_matches_interpreter_float32(kernels, key):
    program, inputs, weights = CASES[key]
    # float64 weights for one case: the printed function casts them to the input dtype
    check(kernels[key], program, inputs, weights, np.float32, TOL32, np.float64 if key == "dense" else None)


def test_every_supported_op_is_tested_alone():
    seen = {type(op) for program, _, _ in CASES.values() for op in program.ops if len(program.ops) == 1}
    assert seen == set(DensePrinter.SUPPORTED)


@pytest.mark.parametrize("dtype, tol", [
    (np.float64, TOL64),
    pytest.param(np.float32, TOL32, marks=pytest.mark.skipif(
        not SLOW, reason="a second ~20 s JIT of the largest function; TACEGEN_SLOW_TESTS=1 runs it"))])
def test_composed_program_and_its_reverse_match_interpreter(kernels, dtype, tol):
    kinds = {type(op).__name__ for op in REVERSED.ops}
    assert {"EdgeVectorsGrad", "EdgeVectorsStrainGrad", "EdgeLengthGrad", "EdgeDirectionGrad", "RadialBasisGrad",
            "DenseTransposed", "ActivationGrad", "ReshapeLike", "GatherStructures", "Sum", "Mul"} <= kinds
    assert [v.name for v in REVERSED.outputs] == ["edge_energy", "energy", "d_positions", "d_strain"]
    check(kernels["composed_reverse"], REVERSED, COMPOSED_INPUTS, COMPOSED_WEIGHTS, dtype, tol)


def test_composed_forces_are_minus_the_energy_gradient(kernels):
    """The printed reverse pass differentiates the printed forward pass (central differences)."""
    rev, inputs, weights = kernels["composed_reverse"], COMPOSED_INPUTS, COMPOSED_WEIGHTS
    grad = dict(zip([v.name for v in REVERSED.outputs], call(rev, REVERSED, inputs, weights)))

    def objective(positions):  # the forward outputs of the printed reverse program
        e_edge, e = call(rev, REVERSED, {**inputs, "positions": positions}, weights)[:2]
        return float(np.sum(inputs["d_edge_energy"] * e_edge) + np.sum(e))

    u = np.random.default_rng(3).normal(size=inputs["positions"].shape)
    h = 1e-5
    fd = (objective(inputs["positions"] + h * u) - objective(inputs["positions"] - h * u)) / (2 * h)
    assert abs(fd - np.sum(grad["d_positions"] * u)) < 1e-6 * max(1.0, abs(fd))


def _big_case(seed: int):
    rng = np.random.default_rng(seed)
    graph, shifts = make_graph(rng, structures=(60, 90, 50), edges_per_node=24)
    return rng, graph, shifts


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_reductions_are_bitwise_independent_of_the_thread_count(kernels):
    rng, graph, shifts = _big_case(5)
    nn, ne, ns = graph["num_nodes"], len(graph["senders"]), graph["num_structures"]
    positions, cell = rng.uniform(0.0, 3.0, (nn, 3)), np.stack([np.eye(3) * 4.0] * ns)
    geo = {"positions": positions, "cell": cell, "shifts": shifts, "strain": 0.05 * rng.normal(size=(ns, 3, 3)),
           "g": rng.normal(size=(ne, 3)), "e": rng.normal(size=(nn, 2, 3)),
           "d_edge_energy": rng.normal(size=ne), "d_energy": np.ones(ns)}
    jobs = [(k, CASES[k][0], geo, {}) for k in ("edge_vectors_grad", "edge_vectors_strain_grad", "node_sum2")]
    jobs.append(("composed_reverse", REVERSED, geo, COMPOSED_WEIGHTS))
    before = numba.get_num_threads()
    try:
        for key, program, inputs, weights in jobs:
            results = []
            for threads in (1, 2):
                numba.set_num_threads(threads)
                args = [np.asarray(inputs[v.name], np.float64) for v in program.inputs]
                args += [np.asarray(weights[w.name]) for w in program.weights]
                results.append(kernels[key](*args, *dense_graph_arguments(program, graph)))
            for one, two in zip(*results):
                assert one.tobytes() == two.tobytes(), key
            # and still the interpreter's result on the big graph
            want = run(program, inputs, weights, graph)
            for value, out in zip(results[0], program.outputs):
                assert rel_err(value, want[out.name]) < TOL64, (key, out.name)
    finally:
        numba.set_num_threads(before)


def test_graph_arguments_are_only_those_the_ops_need():
    sig = {key: DensePrinter(p).graph_args for key, p in PROGRAMS.items()}
    assert sig["dense"] == () and sig["activation_plain"] == () and sig["channel_mix_l2"] == ()
    assert sig["edge_vectors"] == ("senders", "receivers", "batch", "num_nodes", "num_structures")
    assert sig["edge_vectors_grad"] == ("senders", "receivers", "receiver_offsets", "sender_order",
                                        "sender_offsets", "num_nodes")
    assert sig["node_sum2"] == ("batch", "num_nodes", "num_structures")
    args = dense_graph_arguments(CASES["edge_vectors_grad"][0], GRAPH)
    order, offsets = args[3], args[4]
    assert np.all(np.diff(GRAPH["senders"][order]) >= 0) and offsets[-1] == NE and args[-1] == NN


def test_bad_graphs_are_refused(kernels):
    program, inputs, weights = CASES["edge_vectors_grad"]
    unsorted = {**GRAPH, "receivers": GRAPH["receivers"][::-1].copy(), "senders": GRAPH["senders"][::-1].copy()}
    with pytest.raises(ValueError):
        call(kernels["edge_vectors_grad"], program, inputs, weights, graph=unsorted)
    program, inputs, weights = CASES["node_sum2"]
    bad_batch = {**GRAPH, "batch": np.where(GRAPH["batch"] == 2, 3, GRAPH["batch"])}  # structure 3 of 3
    with pytest.raises(ValueError):
        call(kernels["node_sum2"], program, inputs, weights, graph=bad_batch)
    program, inputs, weights = CASES["edge_vectors"]
    bad_sender = {**GRAPH, "senders": np.where(np.arange(NE) == 5, NN, GRAPH["senders"])}
    with pytest.raises(ValueError):
        call(kernels["edge_vectors"], program, inputs, weights, graph=bad_sender)
    program, inputs, weights = CASES["dense"]
    with pytest.raises(ValueError):
        call(kernels["dense"], program, inputs, {"W": np.ones((6, 5))})


def test_printing_is_deterministic_and_prints_the_runtime_gain():
    for key, program in PROGRAMS.items():
        assert render_dense_program(program) == render_dense_program(program), key
    body = "\n".join(render_dense_program(REVERSED)["body"])
    assert repr(normalised_silu_gain()) in body
    assert repr(normalised_silu_gain()) not in "\n".join(render_dense_program(CASES["activation_plain"][0])["body"])
    # one comment per op, naming the op and its output (on its own line, or after a one-line op)
    reverse_body = render_dense_program(REVERSED)["body"]
    for op in REVERSED.ops:
        assert any(line.startswith(f"# {type(op).__name__} -> {op.out.name} ")
                   or f"  # {type(op).__name__} -> {op.out.name} " in line for line in reverse_body), op.out.name


def test_unsupported_ops_are_refused_by_name():
    h, w, s = Value("h", 1, EDGE), d.array("w", EDGE, (3, 2)), Value("s", 1, EDGE)
    scale_by = prog("sb", (h, w), [d.ScaleBy(s, h, w, 0)], [s])
    with pytest.raises(NotImplementedError, match="ScaleBy"):
        render_dense_program(scale_by)
    gw = d.array("gw", EDGE, (3, 2))
    grad = prog("sbg", (h, s, w), [d.ScaleByWeightGrad(gw, h, s, w, 0)], [gw])
    with pytest.raises(NotImplementedError, match="ScaleByWeightGrad"):
        render_dense_program(grad)
    c = Value("c", 0, EDGE)
    couple = prog("cp", (h,), [Couple(c, h, h, coupling(1, 1, 0))], [c])
    with pytest.raises(NotImplementedError, match="Couple"):
        DensePrinter(couple)
    assert not DensePrinter.supports(couple.ops[0]) and DensePrinter.supports(CASES["dense"][0].ops[0])

    class Mystery:
        out = Value("m", 1, EDGE)
        inputs = (h,)

    with pytest.raises(NotImplementedError, match="Mystery"):
        DensePrinter(Program("my", "", (h,), (), (Mystery(),), ()))


def test_mixed_module_renders_core_and_dense_functions(tmp_path):
    """A Program the dense printer cannot print goes to the core printer; dicts pass through."""
    h, q = Value("h", 1, EDGE), Value("q", 0, EDGE)
    core = prog("core", (h,), [Couple(q, h, h, coupling(1, 1, 0))], [q])
    source = render_dense_module([core, render_dense_program(CASES["mul"][0], "dense_mul"),
                                  render_program(core, "core_again")])
    assert "def core(" in source and "def dense_mul(" in source and "def core_again(" in source
    compile(source, "mixed", "exec")
