"""The IR: optimiser passes keep the value, the interpreter matches dense 3^l algebra,
and the printed PyTorch blocks match the interpreter.

The reference chain is: dense Cartesian tensors (coupling_tensor / ict_tensor, written
out here) == IR interpreter on reduced (2l+1) storage == every optimised program ==
the generated torch modules (float64, 1e-12 relative).
"""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from model_helpers import (build_module, evaluate, make_model, random_crystal, random_molecule, rel_err,
                           torch_threads)
from tacegen.algebra import ict
from tacegen.algebra.coupling import coupling, coupling_tensor
from tacegen.backends.torch_printer import class_name
from tacegen.build import compile_spec
from tacegen.ir.build import build_programs, natural_pieces, product_pathsets, tree_label
from tacegen.ir.cost import program_cost
from tacegen.ir.interpret import run
from tacegen.ir.nodes import EDGE, NODE, Couple, Gather, Program, Scale, Scatter, Sum, Value, WeightSpec
from tacegen.ir.optimise import PASSES, drop_dead, factor_weights, optimise, scale_early, scatter_once, share_subtrees
from tacegen.spec import ModelSpec

# torch 2.13 deprecates TorchScript; it is still the deployment path tested here
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")

SPECS = [ModelSpec(lmax=l, nu=n, hidden_lmax=h)
         for l, n, h in [(1, 1, 0), (1, 2, 1), (2, 2, 1), (2, 3, 0), (3, 2, 1), (3, 3, 1), (2, 3, 2), (3, 3, 0)]]
ITEMS = [None, {"edge": 1.0, "node": 1.0}, {"edge": 200.0, "node": 1.0}]
TOL = 1e-12


def _programs():
    out = {}
    for spec in SPECS:
        p = build_programs(spec)
        for prog in (p.edge_basis, *p.interactions, *p.products):
            out[f"l{spec.lmax}_nu{spec.nu}_h{spec.hidden_lmax}:{prog.name}"] = prog
    return out


PROGRAMS = _programs()


def random_case(program: Program, rng: np.random.Generator, nodes: int = 5, edges: int = 14, channels: int = 3):
    """Random inputs, weights and a random graph (every node receives at least one edge)."""
    receivers = np.sort(np.concatenate([np.arange(nodes), rng.integers(0, nodes, edges - nodes)]))
    graph = {"senders": rng.integers(0, nodes, edges), "receivers": receivers, "num_nodes": nodes}
    count = {EDGE: edges, NODE: nodes}
    inputs = {}
    for v in program.inputs:
        shape = (count[v.domain], channels, v.size) if v.channels else (count[v.domain], v.size)
        inputs[v.name] = rng.standard_normal(shape)
    weights = {w.name: rng.standard_normal((count[w.domain], channels, w.count)) for w in program.weights}
    return inputs, weights, graph


def assert_same_value(p1: Program, p2: Program, seeds=(0, 1)) -> None:
    assert [v.name for v in p1.outputs] == [v.name for v in p2.outputs]
    assert p1.inputs == p2.inputs and p1.weights == p2.weights
    for seed in seeds:
        inputs, weights, graph = random_case(p1, np.random.default_rng(seed))
        r1, r2 = run(p1, inputs, weights, graph), run(p2, inputs, weights, graph)
        for name in r1:
            assert r1[name].shape == r2[name].shape
            assert np.abs(r1[name]).max() > 0, f"{name} is identically zero: a vacuous comparison"
            assert rel_err(r1[name], r2[name]) < TOL, f"{p1.name}: output {name} changed"


# ----------------------------------------------------------------------------- optimiser

@pytest.mark.parametrize("key", sorted(PROGRAMS))
def test_every_pass_and_optimise_keep_the_value(key):
    naive = PROGRAMS[key]
    # each pass alone on the naive program
    assert set(PASSES) <= {share_subtrees, scatter_once, factor_weights, scale_early, drop_dead}, \
        "a new pass: add it to the tests"
    for p in (share_subtrees, scatter_once, scale_early, drop_dead):
        assert_same_value(naive, p(naive))
    for items in ITEMS:
        assert_same_value(naive, factor_weights(naive, items))
    # the pipeline step by step, as optimise runs it
    current = naive
    for p in PASSES:
        current = p(current, None) if p is factor_weights else p(current)
        assert_same_value(naive, current, seeds=(2,))
    for items in ITEMS:
        assert_same_value(naive, optimise(naive, items))


@pytest.mark.parametrize("key", sorted(PROGRAMS))
def test_optimised_cost_is_not_higher(key):
    naive = PROGRAMS[key]
    for items in ITEMS:
        opt = optimise(naive, items)
        before, after = program_cost(naive, items), program_cost(opt, items)
        assert after.flops <= before.flops + 1e-9
        assert len(opt.ops) <= len(naive.ops)
        opt.check()


def _normal_form(program: Program) -> tuple:
    return tuple(replace(op, terms=tuple(sorted(op.terms, key=lambda v: v.name))) if isinstance(op, Sum) else op
                 for op in program.ops)


@pytest.mark.parametrize("key", sorted(PROGRAMS))
def test_passes_are_idempotent_on_their_own_output(key):
    """optimise's docstring: each pass is idempotent on its own output."""
    naive = PROGRAMS[key]
    for p in (share_subtrees, scatter_once, scale_early, drop_dead):
        once = p(naive)
        assert _normal_form(p(once)) == _normal_form(once), p.__name__
    once = factor_weights(naive)
    assert _normal_form(factor_weights(once)) == _normal_form(once)  # up to the order of summed terms
    opt = optimise(naive)
    assert program_cost(optimise(opt)).flops == pytest.approx(program_cost(opt).flops)


def test_optimiser_does_real_work():
    """Guard against vacuous value tests: the passes do rewrite the larger programs."""
    spec = ModelSpec(lmax=3, nu=3, hidden_lmax=1)
    progs = build_programs(spec)
    product01 = progs.products[0]
    opt = optimise(product01)
    assert len(opt.ops) < len(product01.ops)
    assert program_cost(opt).flops < program_cost(product01).flops
    assert len(share_subtrees(product01).ops) < len(product01.ops)
    inter = progs.interactions[1]
    assert sum(isinstance(op, Scatter) for op in scatter_once(inter).ops) == spec.lmax + 1
    assert sum(isinstance(op, Scatter) for op in inter.ops) > spec.lmax + 1
    assert any(op.comment.startswith("factored") for op in opt.ops if isinstance(op, Couple))
    # scale_early moves the radial weight of h0 x Y2 -> A2 onto the (smaller) gathered h0
    early = scale_early(inter)
    producer = {op.out.name: op for op in early.ops}
    assert any(isinstance(op, Scale) and isinstance(producer.get(op.src.name), Gather) for op in early.ops)
    assert program_cost(early).flops < program_cost(inter).flops


def test_optimise_keeps_value_under_a_perturbed_program():
    """The value check detects a wrong rewrite (the comparison can fail)."""
    naive = PROGRAMS["l2_nu2_h1:product_01"]
    ops = list(naive.ops)
    k = next(i for i, op in enumerate(ops) if isinstance(op, Scale))
    ops[k] = replace(ops[k], index=(ops[k].index + 1) % naive.weights[0].count)
    broken = replace(naive, ops=tuple(ops)).check()
    with pytest.raises(AssertionError):
        assert_same_value(naive, broken)


# ----------------------------------------------------------------------------- Program.check

def _tiny():
    a = Value("a", 1, NODE)
    b = Value("b", 1, NODE)
    w = WeightSpec("w", NODE, 2)
    s = Value("s", 1, NODE)
    return a, b, w, s


def test_check_accepts_a_valid_program():
    a, b, w, s = _tiny()
    c = Value("c", 2, NODE)
    prog = Program("ok", "", (a, b), (w,), (Scale(s, a, "w", 1), Couple(c, s, b, coupling(1, 1, 2))), (c,))
    assert prog.check() is prog


@pytest.mark.parametrize("case", ["undefined", "wrong_rank", "twice", "input_twice", "index_high", "index_negative",
                                  "unknown_weight", "weight_domain", "output_missing"])
def test_check_rejects_malformed_programs(case):
    a, b, w, s = _tiny()
    edge_w = WeightSpec("w", EDGE, 2)
    ghost = Value("ghost", 1, NODE)
    programs = {
        "undefined": ((a,), (w,), (Scale(s, ghost, "w", 0),), (s,), "ghost"),
        "wrong_rank": ((a,), (w,), (Scale(Value("s", 2, NODE), Value("a", 2, NODE), "w", 0),), (), "undefined value a"),
        "twice": ((a, b), (w,), (Scale(s, a, "w", 0), Scale(s, b, "w", 1)), (s,), "s assigned twice"),
        "input_twice": ((a, b), (w,), (Scale(a, b, "w", 0),), (a,), "a assigned twice"),
        "index_high": ((a,), (w,), (Scale(s, a, "w", 2),), (s,), r"w\[2\]"),
        "index_negative": ((a,), (w,), (Scale(s, a, "w", -1),), (s,), r"w\[-1\]"),
        "unknown_weight": ((a,), (w,), (Scale(s, a, "radial", 0),), (s,), r"radial\[0\]"),
        "weight_domain": ((a,), (edge_w,), (Scale(s, a, "w", 0),), (s,), r"w\[0\]"),
        "output_missing": ((a,), (w,), (Scale(s, a, "w", 0),), (Value("out", 1, NODE),), "out is never computed"),
    }
    inputs, weights, ops, outputs, pattern = programs[case]
    with pytest.raises(ValueError, match=pattern):
        Program("bad", "", inputs, weights, ops, outputs).check()


# ----------------------------------------------------------------------------- dense reference

def _dense(reduced: np.ndarray, l: int) -> np.ndarray:
    """Reduced coordinates (..., 2l+1) -> dense (..., 3**l) through the exact completion map."""
    comp = np.array([[float(row.get(m, 0)) for m in range(2 * l + 1)] for row in ict.completion_matrix(l)])
    sym = reduced @ comp.T
    return sym[..., ict.dense_pattern_positions(l)]


def _explicit_T(n: np.ndarray, l: int) -> np.ndarray:
    """T_l(n) for l <= 3 written out (math.md section 1), dense (E, 3**l)."""
    d = np.eye(3)
    if l == 0:
        return np.ones((len(n), 1))
    if l == 1:
        return n
    if l == 2:
        return (np.einsum("ei,ej->eij", n, n) - d / 3).reshape(len(n), 9)
    t = np.einsum("ei,ej,ek->eijk", n, n, n)
    t -= (np.einsum("ei,jk->eijk", n, d) + np.einsum("ej,ik->eijk", n, d) + np.einsum("ek,ij->eijk", n, d)) / 5
    return t.reshape(len(n), 27)


def _unit_vectors(rng, count):
    v = rng.standard_normal((count, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_edge_basis_matches_explicit_formulas():
    prog = PROGRAMS["l3_nu3_h1:edge_basis"]
    n = _unit_vectors(np.random.default_rng(0), 9)
    out = run(prog, {"direction": n})
    for l in range(4):
        got = _dense(out[f"Y{l}"], l)
        assert rel_err(got, _explicit_T(n, l)) < TOL
        assert rel_err(got, ict.ict_tensor(n, l).reshape(len(n), -1)) < TOL


def _couple_dense(a: np.ndarray, b: np.ndarray, l1: int, l2: int, l3: int) -> np.ndarray:
    """out[K] = sum_{I,J} a[I] b[J] C[I,J,K], dense; a (..., 3**l1), b (..., 3**l2)."""
    c = coupling_tensor(l1, l2, l3).reshape(3**l1, 3**l2, 3**l3)
    return np.einsum("...i,...j,ijk->...k", a, b, c)


@pytest.mark.parametrize("lmax,in_ranks", [(1, (0,)), (2, (0, 1)), (3, (0, 1)), (2, (0, 1, 2))])
def test_interaction_matches_dense_cartesian_computation(lmax, in_ranks):
    """A_{i,l3} = sum_{j->i} sum_{l1,l2 even paths} R_{ij,path} (h_{j,l1} (x) T_l2(r_ij)) -> l3, in 3^l form."""
    spec = ModelSpec(lmax=lmax, nu=1, hidden_lmax=max(in_ranks))
    progs = build_programs(spec)
    prog = progs.interactions[0] if in_ranks == (0,) else progs.interactions[1]
    rng = np.random.default_rng(lmax)
    nodes, channels = 3, 2
    edges = [(1, 0), (2, 0), (0, 1), (2, 1), (0, 2), (1, 2), (2, 0)]  # (sender j, receiver i); one pair twice
    senders = np.array([j for j, _ in edges])
    receivers = np.array([i for _, i in edges])
    n = _unit_vectors(rng, len(edges))
    h = {l: rng.standard_normal((nodes, channels, 2 * l + 1)) for l in in_ranks}
    Y = run(PROGRAMS["l3_nu3_h1:edge_basis"], {"direction": n})
    radial = rng.standard_normal((len(edges), channels, prog.weights[0].count))
    inputs = {**{f"h{l}": h[l] for l in in_ranks}, **{f"Y{l}": Y[f"Y{l}"] for l in range(lmax + 1)}}
    got = run(prog, inputs, {"radial": radial},
              {"senders": senders, "receivers": receivers, "num_nodes": nodes})

    # the paths, derived here: even couplings h_l1 x T_l2 -> A_l3 with l3 <= lmax
    paths = [(l1, l2, l3) for l1 in in_ranks for l2 in range(lmax + 1) for l3 in range(lmax + 1)
             if abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0]
    labels = list(prog.weights[0].labels)
    assert sorted(labels) == sorted(f"h{a} x Y{b} -> A{c}" for a, b, c in paths)
    expected = {l: np.zeros((nodes, channels, 3**l)) for l in range(lmax + 1)}
    for l1, l2, l3 in paths:
        column = labels.index(f"h{l1} x Y{l2} -> A{l3}")
        h_dense = _dense(h[l1], l1)[senders]                      # (E, C, 3^l1)
        t_dense = _explicit_T(n, l2)[:, None, :]                   # (E, 1, 3^l2)
        message = _couple_dense(h_dense, t_dense, l1, l2, l3) * radial[:, :, column, None]
        np.add.at(expected[l3], receivers, message)
    for l in range(lmax + 1):
        assert np.abs(expected[l]).max() > 0
        assert rel_err(_dense(got[f"A{l}"], l), expected[l]) < TOL
    # and the optimised program agrees
    opt = run(optimise(prog), inputs, {"radial": radial},
              {"senders": senders, "receivers": receivers, "num_nodes": nodes})
    for l in range(lmax + 1):
        assert rel_err(opt[f"A{l}"], got[f"A{l}"]) < TOL


@pytest.mark.parametrize("lmax,nu,out_ranks", [(2, 2, (0, 1)), (3, 3, (0,)), (2, 3, (0, 1, 2))])
def test_product_matches_dense_cartesian_trees(lmax, nu, out_ranks):
    """B_L = sum_trees w_tree (((A_a x A_b) -> m1) x A_c -> ...) -> L, each step a dense coupling."""
    spec = ModelSpec(lmax=lmax, nu=nu, hidden_lmax=max(out_ranks))
    progs = build_programs(spec)
    prog = next(p for p in progs.products if tuple(p.name.split("_")[1]) == tuple(str(r) for r in out_ranks))
    rng = np.random.default_rng(nu)
    nodes, channels = 2, 3
    A = {l: rng.standard_normal((nodes, channels, 2 * l + 1)) for l in range(lmax + 1)}
    w = rng.standard_normal((nodes, channels, prog.weights[0].count))
    got = run(prog, {f"A{l}": A[l] for l in A}, {"product": w})
    A_dense = {l: _dense(A[l], l) for l in A}
    labels = list(prog.weights[0].labels)
    assert len(set(labels)) == len(labels)
    pieces = natural_pieces(lmax)
    expected = {L: np.zeros((nodes, channels, 3**L)) for L in out_ranks}
    used = 0
    for ps in product_pathsets(lmax, nu, out_ranks):
        for tree in ps.independent:
            value = A_dense[tree.leaves[0]]
            for (l1, l2, l3), leaf in zip(tree.steps(pieces), tree.leaves[1:]):
                value = _couple_dense(value, A_dense[leaf], l1, l2, l3)
            expected[ps.L] += w[:, :, labels.index(tree_label(tree, lmax)), None] * value
            used += 1
    assert used == len(labels)
    for L in out_ranks:
        assert rel_err(_dense(got[f"B{L}"], L), expected[L]) < TOL


# ----------------------------------------------------------------------------- torch blocks

BLOCK_SPECS = [ModelSpec(lmax=2, nu=2, hidden_lmax=1), ModelSpec(lmax=3, nu=3, hidden_lmax=1),
               ModelSpec(lmax=2, nu=3, hidden_lmax=2)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("ir_blocks")
    out = {}
    for spec in BLOCK_SPECS:
        compiled = compile_spec(spec)
        for optimised in (True, False):
            folder = root / f"{spec.name}_h{spec.hidden_lmax}_{'opt' if optimised else 'naive'}"
            out[(spec, optimised)] = (compiled, build_module(spec, folder, optimised=optimised))
    return out


def _torch(x):
    return torch.as_tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("optimised", [True, False], ids=["optimised", "naive"])
@pytest.mark.parametrize("spec", BLOCK_SPECS, ids=lambda s: f"l{s.lmax}_nu{s.nu}_h{s.hidden_lmax}")
def test_generated_torch_blocks_match_interpreter(built, spec, optimised):
    compiled, module = built[(spec, optimised)]
    generated = importlib.import_module(module.__name__ + ".model")  # the blocks live in model.py
    programs = compiled.programs(optimised)
    assert len(programs) == 1 + len(compiled.naive.interactions) + len(compiled.naive.products)
    with torch_threads(1):
        for k, prog in enumerate(programs):
            inputs, weights, graph = random_case(prog, np.random.default_rng(k), nodes=6, edges=17, channels=4)
            if prog.name == "edge_basis":
                inputs["direction"] = _unit_vectors(np.random.default_rng(k), 17)
            block = getattr(generated, class_name(prog))(torch.float64)
            args = [_torch(inputs[v.name]) for v in prog.inputs] + [_torch(weights[w.name]) for w in prog.weights]
            if any(isinstance(op, (Gather, Scatter)) for op in prog.ops):
                args += [torch.as_tensor(graph["senders"]), torch.as_tensor(graph["receivers"]), graph["num_nodes"]]
            got = block(*args)
            ref = run(prog, inputs, weights, graph)
            assert len(got) == len(prog.outputs)
            for v, tensor in zip(prog.outputs, got):
                assert tensor.dtype == torch.float64
                assert tuple(tensor.shape) == ref[v.name].shape, f"{prog.name}.{v.name}"
                assert rel_err(tensor.numpy(), ref[v.name]) < TOL, f"{prog.name}.{v.name}"
            # scripted blocks compute the same
            scripted = torch.jit.script(block)
            for a, b in zip(scripted(*args), got):
                torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_optimised_and_naive_builds_differ_but_agree(built):
    """The whole models agree: the naive build (the IR printed without the optimiser) is the
    reference for the optimised one; same weights, a molecule and a crystal in one batch
    (energy, per-atom energies, forces, stress)."""
    spec = BLOCK_SPECS[1]
    _, opt = built[(spec, True)]
    _, naive = built[(spec, False)]
    opt_src = open(opt.__file__.replace("__init__.py", "model.py")).read()
    naive_src = open(naive.__file__.replace("__init__.py", "model.py")).read()
    assert opt_src != naive_src
    assert "factored" in opt_src and "factored" not in naive_src
    fast = make_model(opt, elements=("Cu", "O"), seed=3, layers=2)
    reference = make_model(naive, elements=("Cu", "O"), seed=4, layers=2)
    assert list(fast.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(fast.state_dict())
    rng = np.random.default_rng(11)
    structures = [random_molecule(rng, symbols=("Cu", "O")), random_crystal(rng, 4, symbols=("Cu", "O"))]
    with torch_threads(1):
        got, ref = evaluate(fast, structures), evaluate(reference, structures)
    assert np.abs(ref["forces"]).max() > 1e-2  # not vacuous
    for key in ("energy", "node_energy", "forces"):
        assert rel_err(got[key], ref[key]) < 1e-12, key
    assert rel_err(got["stress"][1], ref["stress"][1]) < 1e-12
