"""The Numba printer: printed kernels equal the IR interpreter, are deterministic and race-free.

All programs are printed into ONE module (compiled lazily, one JIT per function and
dtype), so the suite pays numba's compile time once per distinct function; programs whose
printed body is identical (for example naive and optimised edge_basis) share a function.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from dataclasses import replace

import numba
import numpy as np
import pytest

from tacegen.algebra.coupling import coupling
from tacegen.backends.numba_channels import table_constant
from tacegen.backends.numba_printer import (
    NumbaPrinter,
    coupling_helper,
    graph_arguments,
    load_source,
    receiver_offsets,
    render_module,
    render_program,
)
from tacegen.ir.build import build_programs
from tacegen.ir.interpret import run
from model_helpers import rel_err
from numba_helpers import call, random_values
from tacegen.ir.nodes import EDGE, NODE, Couple, EdgeICT, Gather, Program, Scale, Scatter, Sum, Value, WeightSpec
from tacegen.ir.optimise import optimise
from tacegen.spec import ModelSpec

TOL64, TOL32 = 1e-12, 1e-5
SPECS = {"l3nu3": ModelSpec(lmax=3, nu=3, hidden_lmax=1), "l1nu2": ModelSpec(lmax=1, nu=2, hidden_lmax=1)}


def _mixed_program() -> Program:
    """Every scheduling case in one program: a Gather of a value computed in the program
    (second phase), a channel-free EdgeICT feeding a per-channel kernel, a Scatter of an
    input, an edge-domain output stored from inside the fused node loop, a node output
    computed from a neighbour sum, and a channel-free Couple."""
    h1 = Value("h1", 1, NODE)
    direction = Value("direction", 1, EDGE, channels=False)
    m1 = Value("m1", 1, EDGE)
    node_w = WeightSpec("node_w", NODE, 2)
    radial = WeightSpec("radial", EDGE, 2)
    v = {name: Value(name, rank, dom, ch) for name, rank, dom, ch in [
        ("Y1", 1, EDGE, False), ("Y2", 2, EDGE, False), ("YY", 0, EDGE, False), ("s", 1, NODE, True),
        ("g", 1, EDGE, True), ("msg", 2, EDGE, True), ("r", 2, EDGE, True), ("agg", 2, NODE, True),
        ("m_in", 1, NODE, True), ("back", 1, NODE, True), ("out", 1, NODE, True)]}
    ops = (
        EdgeICT(v["Y1"], direction),
        EdgeICT(v["Y2"], direction),
        Couple(v["YY"], v["Y2"], v["Y2"], coupling(2, 2, 0), "Y2 . Y2"),
        Scale(v["s"], h1, "node_w", 0),
        Gather(v["g"], v["s"]),
        Couple(v["msg"], v["g"], v["Y1"], coupling(1, 1, 2), "g x Y1 -> 2"),
        Scale(v["r"], v["msg"], "radial", 1, "R"),
        Scatter(v["agg"], v["r"]),
        Scatter(v["m_in"], m1),
        Couple(v["back"], v["agg"], v["s"], coupling(2, 1, 1), "agg x s -> 1"),
        Sum(v["out"], (v["back"], v["m_in"], v["s"])),
    )
    return Program("mixed", "Scheduling cases.", (h1, direction, m1), (node_w, radial), ops,
                   (v["out"], v["msg"], v["YY"], v["agg"])).check()


def _cases() -> dict:
    out = {}
    for tag, spec in SPECS.items():
        p = build_programs(spec)
        for prog in (p.edge_basis, *p.interactions, *p.products):
            out[f"{tag}_{prog.name}_naive"] = prog
            out[f"{tag}_{prog.name}_opt"] = optimise(prog)
    out["mixed"] = _mixed_program()
    return out


CASES = _cases()
FLOAT32 = sorted(k for k in CASES if k.startswith("l1nu2") or k == "l3nu3_edge_basis_naive")


def _function_name(key: str) -> str:
    return re.sub(r"\W", "_", key)


def _kernel_folder(request, tmp_path_factory):
    """pytest's cache folder when available: the module file is named by its source hash and
    rewritten only when the source changes, so numba's on-disk cache (cache=True) makes
    reruns skip the JIT; a fresh temporary folder otherwise."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("tacegen_numba") if cache is not None else tmp_path_factory.mktemp("numba")


@pytest.fixture(scope="module")
def kernels(request, tmp_path_factory):
    """key -> jitted function; programs with the same printed body share one function."""
    by_body: dict[str, str] = {}
    alias: dict[str, str] = {}
    programs, names = [], []
    for key, prog in CASES.items():
        body = "\n".join(render_program(prog, "f")["body"])
        if body not in by_body:
            by_body[body] = _function_name(key)
            programs.append(prog)
            names.append(by_body[body])
        alias[key] = by_body[body]
    source = render_module(programs, names, title="test kernels")
    module = load_source(source, _kernel_folder(request, tmp_path_factory))
    return {key: getattr(module, name) for key, name in alias.items()}


def random_graph(rng: np.random.Generator, nodes: int, edges: int, isolated: int = 1) -> dict:
    """Edges sorted by receiver; the last ``isolated`` nodes receive no edge (empty CSR rows)."""
    receivers = np.sort(rng.integers(0, nodes - isolated, edges))
    return {"senders": rng.integers(0, nodes, edges), "receivers": receivers, "num_nodes": nodes}


def random_case(program: Program, seed: int, nodes: int = 7, edges: int = 23, channels: int = 3):
    rng = np.random.default_rng(seed)
    graph = random_graph(rng, nodes, edges)
    inputs, weights = random_values(program, rng, graph, channels)
    return inputs, weights, graph






def _check(key, fn, dtype, tol):
    prog = CASES[key]
    for seed in (0, 1):
        inputs, weights, graph = random_case(prog, seed)
        got = call(fn, prog, inputs, weights, graph, dtype)
        ref = run(prog, inputs, weights, graph)
        assert isinstance(got, tuple) and len(got) == len(prog.outputs)
        for v, array in zip(prog.outputs, got):
            assert array.dtype == dtype, f"{key}.{v.name}"
            assert array.shape == ref[v.name].shape, f"{key}.{v.name}"
            assert np.abs(ref[v.name]).max() > 0, f"{key}.{v.name} is identically zero: a vacuous comparison"
            assert rel_err(array, ref[v.name]) < tol, f"{key}.{v.name}"


# ----------------------------------------------------------------------------- values

@pytest.mark.parametrize("key", list(CASES))
def test_float64_matches_interpreter(kernels, key):
    _check(key, kernels[key], np.float64, TOL64)


@pytest.mark.parametrize("key", FLOAT32)
def test_float32_matches_interpreter(kernels, key):
    _check(key, kernels[key], np.float32, TOL32)


@pytest.mark.parametrize("key", ["l3nu3_interaction_01_naive", "l3nu3_interaction_01_opt", "l3nu3_product_01_opt",
                                 "mixed"])
def test_results_do_not_depend_on_thread_count(kernels, key):
    """Bitwise identical over repeated runs with 1 and 2 numba threads: no races, and every
    neighbour sum runs in edge order whatever the schedule."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with one thread")
    prog = CASES[key]
    inputs, weights, graph = random_case(prog, 5, nodes=64, edges=900, channels=4)
    previous = numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2, 1, 2):
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


def test_rejects_unsorted_or_inconsistent_graphs(kernels):
    key = "l1nu2_interaction_0_opt"
    prog = CASES[key]
    inputs, weights, graph = random_case(prog, 3)
    args = [inputs[v.name] for v in prog.inputs] + [weights[w.name] for w in prog.weights]
    senders, receivers, offsets, n = graph_arguments(graph)
    kernels[key](*args, senders, receivers, offsets, n)  # valid
    with pytest.raises(ValueError, match="sorted by receiver"):
        kernels[key](*args, senders, receivers[::-1].copy(), offsets, n)
    bad_senders = senders.copy()
    bad_senders[0] = n
    with pytest.raises(ValueError, match="sorted by receiver"):
        kernels[key](*args, bad_senders, receivers, offsets, n)
    with pytest.raises(ValueError, match="receiver_offsets"):
        kernels[key](*args, senders, receivers, offsets[:-1].copy(), n)
    with pytest.raises(ValueError, match="radial must have shape"):
        kernels[key](*args[:-1], args[-1][:, :, :1].copy(), senders, receivers, offsets, n)
    with pytest.raises(ValueError, match="receivers must be sorted"):
        receiver_offsets(receivers[::-1], n)


# ----------------------------------------------------------------------------- printed source

def _module_source(keys) -> str:
    return render_module([CASES[k] for k in keys], [_function_name(k) for k in keys])


def test_printed_source_is_deterministic():
    keys = [k for k in CASES if k.startswith("l3nu3")]
    first = _module_source(keys)
    assert first == _module_source(keys)
    # a fresh interpreter with another hash seed prints the same bytes
    script = ("import sys; sys.path.insert(0, 'tests'); import hashlib, test_numba_printer as t; "
              f"print(hashlib.sha256(t._module_source({keys!r}).encode()).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    other = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                           check=True).stdout.split()[-1]
    assert other == hashlib.sha256(first.encode()).hexdigest()


def _function_body(source: str, name: str) -> list[str]:
    lines = source.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"def {name}(")))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("@numba.njit")), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("rows", [False, True], ids=["scalar", "row_kernels"])
@pytest.mark.parametrize("key", [k for k in CASES if k.startswith("l3nu3")] + ["mixed"])
def test_printed_structure(key, rows, monkeypatch):
    """No += into arrays but the kernel's own scratch rows (race-free by construction),
    allocation only outside the item loops (one scratch array per block of items), every
    coupling printed with exactly its nonzeros: in a per-channel kernel a call of a rows
    kernel with the table, a module-level constant printed once; in a channel-free kernel
    unrolled in place or a module-level function per table. One comment per coupling path."""
    monkeypatch.setattr(NumbaPrinter, "ROW_KERNELS", rows)
    prog = CASES[key]
    source = render_module([prog])
    body = _function_body(source, prog.name)
    for line in body:
        for name in re.findall(r"(\w+)\[[^\]]*\]\s*\+=", line):
            assert name == "t", f"accumulation into an array: {line}"
        if "np.empty" in line or "np.zeros" in line:
            scratch = line.strip().startswith("t = np.empty(")
            assert line.startswith("    ") and (scratch or not line.startswith("     ")), \
                f"allocation inside a loop: {line}"
    assert sum(line.startswith(f"def {prog.name}(") for line in source.splitlines()) == 1
    text = "\n".join(body)
    printer = NumbaPrinter(prog)
    couples = [op for op in prog.ops if isinstance(op, Couple)]
    channel_couples = [op for op in couples if op.out.channels and rows]
    for op in couples:  # in the function, or in the kernel function its parallel loop calls
        c = op.coupling
        assert f"# {op.comment}: {c.l1} x {c.l2} -> {c.l3}" in source
    for op in channel_couples:  # a rows kernel called with the table's constant
        c = op.coupling
        name = table_constant(c)["name"]
        assert re.search(rf"_couple\w*\(.*, {name}\)", source), name
        rows = _table_rows(source, name)
        assert len(rows) == c.nnz and all(w != 0.0 for *_, w in rows), name  # no structural zero
        assert {(m1, m2, m3) for m1, m2, m3, _ in rows} == {(m1, m2, m3) for m1, m2, m3, v in c.entries if v}
    scalar = [op for op in couples if op not in channel_couples]
    blocks = _coupling_blocks(body)
    assert len(blocks) == len([op for op in scalar if NumbaPrinter.unrolled(op.coupling)])
    unrolled = iter(blocks)
    for op in scalar:
        c = op.coupling
        if NumbaPrinter.unrolled(c):
            header, rows = next(unrolled)
        else:  # one call per use; the table's function printed once, before the kernels
            name = coupling_helper(c)["name"]
            assert sum(line.startswith(f"def {name}(") for line in source.splitlines()) == 1
            header, rows = f"{name}: {c.nnz} nonzeros", _helper_rows(source, name)
        assert header.endswith(f"{c.nnz} nonzeros") and len(rows) == 2 * c.l3 + 1
        # one printed term per stored nonzero: structural zeros never appear
        assert sum(_terms(row.split(" = ", 1)[-1]) for row in rows) == c.nnz, header
    assert " 0.0 *" not in source and "* 0.0" not in source
    if prog.name.startswith("interaction"):
        assert len(printer.kernels) == 1, "the interaction is one fused loop over nodes and their edges"
        assert printer.signature().endswith("senders, receivers, receiver_offsets, num_nodes")
        assert "prange(" in text and "for e in range(receiver_offsets[n]" in source
    if prog.name.startswith("product"):
        assert len(printer.kernels) == 1 and not printer.graph
        assert printer.stored == {v.name for v in prog.outputs}


def _table_rows(source: str, name: str) -> list[tuple]:
    """(m1, m2, m3, coefficient) rows of a module-level coupling table."""
    line = next(line for line in source.splitlines() if line.startswith(f"{name} = np.array(")).split("  #")[0]
    return [tuple(float(x) for x in row.split(",")) for row in re.findall(r"\(([^()]*)\)", line.split("(", 1)[1])]


def _coupling_blocks(body):
    """(comment, logical assignment lines) for each printed coupling."""
    lines = [line.strip() for line in body]
    blocks = []
    for i, line in enumerate(lines):
        m = re.match(r"# .*: (\d+) x (\d+) -> (\d+), .* path, \d+ nonzeros$", line)
        if not m:
            continue
        rows, k = [], i + 1
        while len(rows) < 2 * int(m.group(3)) + 1:
            row = lines[k]
            while lines[k + 1].startswith(("+ ", "- ")):
                k += 1
                row += " " + lines[k]
            rows.append(row)
            k += 1
        blocks.append((line, rows))
    return blocks


def _helper_rows(source: str, name: str) -> list[str]:
    """The returned components of a coupling table's function, one expression each."""
    lines = source.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"def {name}(")))
    body = []
    for line in lines[start + 2:]:  # after the def and its one-line docstring
        if not line.startswith("    "):
            break
        body.append(line.strip())
    text = " ".join(body)
    assert text.startswith("return ")
    text = text[len("return "):]
    if text.startswith("(") and text.endswith(")"):
        return [row.strip() for row in text[1:-1].split(",") if row.strip()]
    return [text]


def _terms(expr: str) -> int:
    """Products of two scalar operands (identifiers, never float literals)."""
    return len(re.findall(r"(?<![\w.])[A-Za-z_]\w* \* [A-Za-z_]\w*", expr))


def test_mixed_program_schedule():
    printer = NumbaPrinter(CASES["mixed"])
    kinds = [(k.phase, k.channels, sorted({op.out.name for op in k.ops})) for k in printer.kernels]
    assert kinds == [(0, False, ["Y1", "Y2", "YY"]), (0, True, ["m_in", "s"]),
                     (1, True, ["agg", "back", "g", "msg", "out", "r"])]
    # stored: outputs, values read by a later kernel (Y1, s), the Gather source (s), not Y2
    assert printer.stored == {"out", "msg", "YY", "agg", "Y1", "s", "m_in"}


def test_names_that_would_clash_are_rejected():
    prog = CASES["l1nu2_product_0_naive"]
    bad = replace(prog, inputs=tuple(replace(v, name="n") if v.name == "A0" else v for v in prog.inputs))
    with pytest.raises(ValueError, match="cannot be a name"):
        NumbaPrinter(bad)


def test_load_source_reuses_the_file(tmp_path):
    source = "X = 1\n"
    a = load_source(source, tmp_path)
    stamp = os.stat(a.__file__).st_mtime_ns
    time.sleep(0.01)
    b = load_source(source, tmp_path)
    assert b.X == 1 and a.__file__ == b.__file__ and os.stat(b.__file__).st_mtime_ns == stamp
