"""The Numba printer on reverse-mode programs (tacegen.ir.reverse): printed kernels of the
vector-Jacobian products equal the IR interpreter, are race-free (neighbour sums by sender
through a sender CSR) and deterministic.

All programs are printed into ONE module, compiled once per function and dtype, the JIT
split over this process and one helper process (see :data:`MAIN_JIT`); numba's on-disk
cache in pytest's cache folder makes reruns skip the JIT. Cold: about 45 s, warm: 5 s.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import numba
import numpy as np
import pytest

from tacegen.algebra.adjoint import AdjointTable, pairing, transpose
from tacegen.algebra.coupling import coupling
from tacegen.backends.numba_printer import (
    graph_arguments,
    load_source,
    render_module,
    render_program,
    sender_csr,
)
from tacegen.ir.build import edge_basis_program, interaction_program, product_program
from tacegen.ir.interpret import run
from model_helpers import rel_err
from numba_helpers import call, random_values
from tacegen.ir.nodes import NODE, ChannelSum, Couple, Program, ScatterSenders, Value
from tacegen.ir.reverse import reverse

TOL64, TOL32 = 1e-12, 1e-5


def wrt_all(program: Program) -> list[str]:
    return [v.name for v in program.inputs] + [w.name for w in program.weights]


def _adjoint_tables_program() -> Program:
    """Tables sharing ranks but not entries: coupling(2, 1, 1) and the transpose of
    1 x 1 -> 2 (ranks 2, 1 -> 1), and coupling(2, 2, 0) and pairing(2) (ranks 2, 2 -> 0)."""
    a2, b1 = Value("a2", 2, NODE), Value("b1", 1, NODE)
    t1, t2 = coupling(2, 1, 1), transpose(coupling(1, 1, 2), "left")
    s1, s2 = coupling(2, 2, 0), pairing(2)
    assert (t1.l1, t1.l2, t1.l3) == (t2.l1, t2.l2, t2.l3) and t1.entries != t2.entries
    assert (s1.l1, s1.l2, s1.l3) == (s2.l1, s2.l2, s2.l3) and s1.entries != s2.entries
    assert isinstance(t2, AdjointTable) and isinstance(s2, AdjointTable)
    outs = (Value("u1", 1, NODE), Value("u2", 1, NODE), Value("v1", 0, NODE), Value("v2", 0, NODE))
    ops = (Couple(outs[0], a2, b1, t1), Couple(outs[1], a2, b1, t2),
           Couple(outs[2], a2, a2, s1), Couple(outs[3], a2, a2, s2))
    return Program("tables", "Tables with equal ranks.", (a2, b1), (), ops, outs).check()


FORWARD = {
    "edge_basis": edge_basis_program(3),
    "interaction_0": interaction_program((0,), 3),
    "interaction_01": interaction_program((0, 1), 3),
    "product_01": product_program(3, 3, (0, 1)),
    "product_0": product_program(3, 3, (0,)),
}
CASES = {key: reverse(p, wrt_all(p), with_forward=True) for key, p in FORWARD.items()}
CASES["tables"] = _adjoint_tables_program()
# T_0 is constant: the gradient of the direction is a Zeros op
CASES["edge_basis_l0"] = reverse(edge_basis_program(0), ["direction"], with_forward=True)
EXPECTED_ZERO = {("edge_basis_l0", "d_direction")}
# float32 on a small program with every reverse op (one extra JIT of a short function)
_SMALL = interaction_program((0, 1), 1)
CASES["small_interaction_01"] = reverse(_SMALL, wrt_all(_SMALL), with_forward=True)
FLOAT32 = "small_interaction_01"


def _kernel_folder(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("tacegen_numba_reverse") if cache is not None else tmp_path_factory.mktemp("numba")


# JIT work split over two processes (numba compiles one function at a time): this process
# compiles MAIN_JIT while a helper process compiles the rest into numba's on-disk cache
# (cache=True, the module file is shared), which this process then loads. If the helper
# fails, this process simply compiles everything itself.
MAIN_JIT = ("product_01", "edge_basis", "tables", "edge_basis_l0")


def _dtype(key):
    return np.float32 if key == FLOAT32 else np.float64


def _source() -> str:
    return render_module(list(CASES.values()), list(CASES), title="reverse test kernels")


def _compile(folder, keys) -> None:
    """Compile the functions ``keys`` (one call each, with the argument types the tests use)."""
    module = load_source(_source(), folder)
    for key in keys:
        inputs, weights, graph = random_case(CASES[key], 0)
        call(getattr(module, key), CASES[key], inputs, weights, graph, _dtype(key))


@pytest.fixture(scope="module")
def kernels(request, tmp_path_factory):
    folder = _kernel_folder(request, tmp_path_factory)
    module = load_source(_source(), folder)  # writes the file before the helper starts
    rest = [key for key in CASES if key not in MAIN_JIT]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = ("import sys; sys.path.insert(0, 'tests'); import test_numba_reverse as t; "
              f"t._compile({str(folder)!r}, {rest!r})")
    helper = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _compile(folder, MAIN_JIT)
    finally:
        helper.wait()
    return {key: getattr(module, key) for key in CASES}


def random_case(program: Program, seed: int, nodes: int = 6, edges: int = 17, channels: int = 3):
    """Random inputs (cotangents included) and a graph sorted by receiver in which the last
    node receives nothing and node 0 sends nothing (empty rows in both CSRs)."""
    rng = np.random.default_rng(seed)
    receivers = np.sort(rng.integers(0, nodes - 1, edges))
    graph = {"senders": rng.integers(1, nodes, edges), "receivers": receivers, "num_nodes": nodes}
    inputs, weights = random_values(program, rng, graph, channels)
    return inputs, weights, graph






def _check(key, fn, dtype, tol, seeds=(0, 1)):
    prog = CASES[key]
    for seed in seeds:
        inputs, weights, graph = random_case(prog, seed)
        got = call(fn, prog, inputs, weights, graph, dtype)
        ref = run(prog, inputs, weights, graph)
        assert isinstance(got, tuple) and len(got) == len(prog.outputs)
        for v, array in zip(prog.outputs, got):
            assert array.dtype == dtype, f"{key}.{v.name}"
            assert array.shape == ref[v.name].shape, f"{key}.{v.name}"
            if (key, v.name) in EXPECTED_ZERO:  # exactly zero, no relative error of zeros
                assert not np.any(ref[v.name]) and not np.any(array), f"{key}.{v.name}"
                continue
            assert np.abs(ref[v.name]).max() > 0, f"{key}.{v.name} is identically zero: a vacuous comparison"
            assert rel_err(array, ref[v.name]) < tol, f"{key}.{v.name}"


# ----------------------------------------------------------------------------- values

@pytest.mark.parametrize("key", [k for k in CASES if k != FLOAT32])
def test_float64_matches_interpreter(kernels, key):
    _check(key, kernels[key], np.float64, TOL64)


def test_float32_matches_interpreter(kernels):
    _check(FLOAT32, kernels[FLOAT32], np.float32, TOL32, seeds=(0,))
    assert {type(op).__name__ for op in CASES[FLOAT32].ops} >= {
        "ChannelSum", "GatherReceivers", "ScatterSenders", "Stack", "Couple", "Scale"}


def test_reverse_programs_use_every_reverse_op():
    """The cases cover every op the reverse pass emits (so every visitor method ran above)."""
    names = {type(op).__name__ for p in CASES.values() for op in p.ops}
    assert {"EdgeICTGrad", "ChannelSum", "GatherReceivers", "ScatterSenders", "Stack", "Zeros"} <= names
    assert any(isinstance(op, ScatterSenders) for op in CASES["interaction_01"].ops)


@pytest.mark.parametrize("key", ["interaction_0", "interaction_01", "product_01"])
def test_results_do_not_depend_on_thread_count(kernels, key):
    """Bitwise identical with 1 and 2 numba threads: every sum by sender or receiver is owned
    by one node and runs in edge order."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with one thread")
    prog = CASES[key]
    inputs, weights, graph = random_case(prog, 5, nodes=40, edges=500, channels=4)
    previous = numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2, 1):
            numba.set_num_threads(threads)
            results.append(call(kernels[key], prog, inputs, weights, graph))
    finally:
        numba.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)
    ref = run(prog, inputs, weights, graph)
    for v, a in zip(prog.outputs, results[0]):
        assert rel_err(a, ref[v.name]) < TOL64


def test_rejects_inconsistent_sender_csr(kernels):
    key = "interaction_0"
    prog = CASES[key]  # float64: no extra JIT
    inputs, weights, graph = random_case(prog, 3)
    args = [inputs[v.name] for v in prog.inputs] + [weights[w.name] for w in prog.weights]
    senders, receivers, offsets, n, order, sender_offsets = graph_arguments(graph, by_sender=True)
    kernels[key](*args, senders, receivers, offsets, n, order, sender_offsets)  # valid
    swapped = order.copy()
    first = int(np.argmax(np.diff(senders[order]) > 0))  # last edge of the first non-empty row
    swapped[first], swapped[first + 1] = swapped[first + 1], swapped[first]
    with pytest.raises(ValueError, match="sort the edges by sender"):
        kernels[key](*args, senders, receivers, offsets, n, swapped, sender_offsets)
    duplicated = order.copy()
    duplicated[1] = duplicated[0]
    with pytest.raises(ValueError, match="sort the edges by sender"):
        kernels[key](*args, senders, receivers, offsets, n, duplicated, sender_offsets)
    with pytest.raises(ValueError, match="sender_offsets"):
        kernels[key](*args, senders, receivers, offsets, n, order, sender_offsets[:-1].copy())


def test_sender_csr():
    senders = np.array([2, 0, 2, 1, 0, 2])
    order, offsets = sender_csr(senders, 4)
    assert order.tolist() == [1, 4, 3, 0, 2, 5]  # stable: equal senders keep edge order
    assert offsets.tolist() == [0, 2, 3, 6, 6]
    assert len(graph_arguments({"senders": senders, "receivers": np.arange(6) // 2, "num_nodes": 4})) == 4
    with pytest.raises(ValueError, match="senders"):
        sender_csr(senders, 2)


# ----------------------------------------------------------------------------- printed source

def _function_body(source: str, name: str) -> list[str]:
    lines = source.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"def {name}(")))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("@numba")), len(lines))
    return lines[start:end]


def test_printed_structure():
    source = render_module(list(CASES.values()), list(CASES))
    for key, prog in CASES.items():
        body = _function_body(source, key)
        text = "\n".join(body)
        # race-free: arrays are assigned whole elements; the only accumulation is a channel
        # sum into its own item's row (out[item, m] += ..., inside the item's channel loop)
        channel_sums = {op.out.name for op in prog.ops if isinstance(op, ChannelSum)}
        for name, index in re.findall(r"(\w+)\[([^\]]*)\]\s*\+=", text):
            assert name in channel_sums and index.split(",")[0].strip() in ("e", "n"), (key, name, index)
        has_senders = any(isinstance(op, ScatterSenders) for op in prog.ops)
        assert ("sender_order, sender_offsets)" in body[0]) == has_senders, key
        if has_senders:
            assert "for k in range(sender_offsets[n], sender_offsets[n + 1]):" in source  # in its kernel
            assert "_check_senders(senders, sender_order, sender_offsets, num_nodes)" in text
    assert "table transpose-left of 1x1->2, ranks 2, 1 -> 1" in source
    assert "table pairing 2, ranks 2, 2 -> 0" in source


def test_printed_source_is_deterministic():
    first = render_module(list(CASES.values()), list(CASES))
    assert first == render_module(list(CASES.values()), list(CASES))
    script = (
        "import sys, hashlib\n"
        "sys.path.insert(0, 'tests')\n"
        "import test_numba_reverse as t\n"
        "from tacegen.backends.numba_printer import render_module\n"
        "print(hashlib.sha256(render_module(list(t.CASES.values()), list(t.CASES)).encode()).hexdigest())\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == hashlib.sha256(first.encode()).hexdigest()
    assert render_program(CASES["interaction_01"])["body"] == render_program(CASES["interaction_01"])["body"]
