"""Long-range electrostatics as IR ops (tacegen.ir.long_range) and their kernels.

* interpreter == the float64 torch reference (tacegen.runtime.electrostatics): LES periodic,
  LES finite, classic Ewald (neutral and with a neutralising background), to 1e-12;
* the IR reverse pass == torch autograd of the reference and == finite differences
  (positions, charges, total charge, a general non-symmetric strain, at zero and non-zero
  strain);
* the rendered Numba kernels == the interpreter (float64 1e-12, float32), bitwise equal
  for 1 and 2 threads, Madelung constant of NaCl, lattice translations, supercells,
  error checks;
* the rendered torch functions == the reference (energies and autograd forces / stress),
  TorchScript, float32.

All Numba kernels live in ONE rendered module compiled once per dtype (module-scoped
fixture): float64 in this process while a helper process compiles float32 into numba's
on-disk cache in pytest's cache folder (reruns skip the JIT). Cold: about 45-60 s on two
cores, warm: about 15 s.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import numba
import numpy as np
import pytest
import torch

from tacegen.backends import long_range_printer as lp
from tacegen.backends.numba_printer import load_source, receiver_offsets, sender_csr
from tacegen.ir import long_range as lr
from tacegen.ir.dense_ops import STRUCTURE, array, vector
from tacegen.ir.interpret import run
from tacegen.ir.nodes import EDGE, NODE, Program, Sum
from tacegen.ir.reverse import reverse
from tacegen.runtime import electrostatics as el

# one xdist worker for the whole file: the Numba module is compiled once (module fixture)
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning"),
              pytest.mark.xdist_group("long_range")]

F64 = torch.float64
SIGMA, K_CUT = 1.0, math.pi  # LES reference defaults
ALPHA, R_CUT, EWALD_K_CUT = 0.9, 5.0, 5.0  # a (loosely converged) Ewald split for the IR tests
TOL64, TOL32 = 1e-12, 2e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max()
    assert scale > 0, "vacuous comparison: the reference is identically zero"
    return float(np.abs(a - b).max() / scale)


# ----------------------------------------------------------------------------- systems


def random_cell(rng, length: float = 6.0, skew: float = 0.3) -> np.ndarray:
    while True:
        cell = length * (np.eye(3) + skew * rng.uniform(-1, 1, (3, 3)))
        if np.linalg.det(cell) > 0.5 * length**3:
            return cell


def full_list(pos, cell, r_cut):
    """Full periodic neighbour list (vesin), sorted by receiver i: (senders, receivers, shifts)."""
    from vesin import NeighborList

    i, j, s = NeighborList(cutoff=float(r_cut), full_list=True).compute(pos, cell, True, "ijS")
    order = np.argsort(i, kind="stable")
    return j[order].astype(np.int64), i[order].astype(np.int64), s[order].astype(np.float64)


def all_pairs(n):
    """Every directed pair i != j, sorted by receiver i: (senders, receivers, zero shifts)."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = i != j
    return j[keep].astype(np.int64), i[keep].astype(np.int64), np.zeros((int(keep.sum()), 3))


@dataclass
class System:
    """A batch of structures with its edge list (atoms of a structure contiguous)."""

    positions: np.ndarray
    charges: np.ndarray
    cell: np.ndarray  # (B, 3, 3)
    batch: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray

    @property
    def num_structures(self) -> int:
        return self.cell.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.positions.shape[0]

    def graph(self) -> dict:
        return {"senders": self.senders, "receivers": self.receivers, "batch": self.batch,
                "num_structures": self.num_structures, "num_nodes": self.num_nodes}

    def numba_graph(self) -> dict:
        order, offsets = sender_csr(self.senders, self.num_nodes)
        return {"senders": self.senders, "receivers": self.receivers,
                "receiver_offsets": receiver_offsets(self.receivers, self.num_nodes),
                "sender_order": order, "sender_offsets": offsets, "batch": self.batch,
                "num_nodes": self.num_nodes, "num_structures": self.num_structures}

    def slices(self):
        starts = np.searchsorted(self.batch, np.arange(self.num_structures + 1))
        return [slice(starts[b], starts[b + 1]) for b in range(self.num_structures)]


def make_system(structures, r_cut=None) -> System:
    """``structures``: list of (positions, charges, cell or None). Periodic structures get a
    full neighbour list within r_cut (none if r_cut is None), molecules every pair."""
    pos, q, cells, batch, snd, rcv, sh = [], [], [], [], [], [], []
    offset = 0
    for b, (p, c, cell) in enumerate(structures):
        n = len(p)
        if cell is None:
            s, r, shifts = all_pairs(n)
            cell = np.zeros((3, 3))
        elif r_cut is not None:
            s, r, shifts = full_list(p, cell, r_cut)
        else:
            s, r, shifts = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
        pos.append(p)
        q.append(c)
        cells.append(cell)
        batch.append(np.full(n, b, np.int64))
        snd.append(s + offset)
        rcv.append(r + offset)
        sh.append(shifts)
        offset += n
    return System(np.concatenate(pos), np.concatenate(q), np.stack(cells), np.concatenate(batch),
                  np.concatenate(snd), np.concatenate(rcv), np.concatenate(sh))


def random_structure(rng, n, periodic=True, neutral=True, length=6.0, left_handed=False):
    q = rng.normal(size=n)
    if neutral:
        q -= q.mean()
    if not periodic:
        return rng.uniform(0, 4.0, (n, 3)), q, None
    cell = random_cell(rng, length) * (-1.0 if left_handed else 1.0)
    return rng.random((n, 3)) @ cell, q, cell


def les_batch(seed: int) -> System:
    """Two periodic structures (different sizes and cells, one left-handed) and a molecule."""
    rng = np.random.default_rng(seed)
    return make_system([random_structure(rng, 7), random_structure(rng, 5, neutral=False, length=5.0, left_handed=True),
                        random_structure(rng, 6, periodic=False, neutral=False)])


def ewald_batch(seed: int, neutral: bool = True) -> System:
    """Two periodic structures; the neighbour list reaches 1 Å beyond the op's r_cut, so that
    strained geometries keep every pair within r_cut (the op drops the others)."""
    rng = np.random.default_rng(seed)
    return make_system([random_structure(rng, 6, neutral=neutral), random_structure(rng, 4, neutral=neutral)],
                       r_cut=R_CUT + 1.0)


# ----------------------------------------------------------------------------- programs

POS, RAW, TOTAL = vector("positions", NODE), array("raw", NODE), array("total", STRUCTURE)
CELL, STRAIN, SHIFTS = array("cell", STRUCTURE, (3, 3)), array("strain", STRUCTURE, (3, 3)), array("shifts", EDGE, (3,))
INPUTS = (POS, RAW, TOTAL, CELL, STRAIN, SHIFTS)
WRT = ["positions", "raw", "total", "strain"]
Q = array("q", NODE)


def energy_program(name: str, kind: str, strain: bool = True) -> Program:
    """raw charges -> ConstrainCharges(total) -> reciprocal + pair energies -> E (structure)."""
    s = STRAIN if strain else None
    e_k, e_r, e = lr.structure_energy("E_k"), lr.structure_energy("E_r"), lr.structure_energy("E")
    if kind == "les":
        ops = [lr.les_reciprocal(e_k, POS, Q, CELL, s, SIGMA, K_CUT),
               lr.les_finite(e_r, POS, Q, CELL, SHIFTS, s, SIGMA)]
    else:
        ops = [lr.ewald_reciprocal(e_k, POS, Q, CELL, s, alpha=ALPHA, k_cut=EWALD_K_CUT, background=True),
               lr.ewald_real_space(e_r, POS, Q, CELL, SHIFTS, s, alpha=ALPHA, r_cut=R_CUT)]
    ops = [lr.ConstrainCharges(Q, RAW, TOTAL)] + ops + [Sum(e, (e_k, e_r))]
    inputs = INPUTS if strain else tuple(v for v in INPUTS if v is not STRAIN)
    return Program(name, f"{kind} energy", inputs, (), tuple(ops), (e,)).check()


FORWARD = {"les": energy_program("les", "les"), "ewald": energy_program("ewald", "ewald")}
REVERSE = {f"{k}_reverse": reverse(p, WRT, with_forward=True) for k, p in FORWARD.items()}
# without strain input: the kernels get a zero strain (a different line in the printer)
UNSTRAINED = reverse(energy_program("les_unstrained", "les", strain=False), ["positions", "raw"], with_forward=True)
PROGRAMS = {**FORWARD, **REVERSE, "les_unstrained_reverse": UNSTRAINED}


def program_inputs(system: System, rng, strain_scale: float = 0.0) -> dict:
    nb = system.num_structures
    return {"positions": system.positions, "raw": system.charges, "total": rng.normal(size=nb),
            "cell": system.cell, "strain": strain_scale * rng.uniform(-1, 1, (nb, 3, 3)),
            "shifts": system.shifts, "d_E": rng.uniform(0.5, 1.5, nb)}


# ----------------------------------------------------------------------------- torch reference


def t(a):
    return torch.tensor(np.asarray(a), dtype=F64)


def constrained(raw, total, batch, nb):
    sums = torch.zeros(nb, dtype=F64).index_add(0, batch, raw)
    counts = torch.bincount(batch, minlength=nb).to(F64)
    return raw - ((sums - total) / counts)[batch]


def reference_energies(kind: str, system: System, raw, total, positions, strain):
    """Per-structure energies of the torch reference (differentiable in every argument);
    strain deforms positions and cell by (I + strain[b])."""
    q = constrained(raw, total, torch.as_tensor(system.batch), system.num_structures)
    out = []
    for b, sl in enumerate(system.slices()):
        d = torch.eye(3, dtype=F64) + strain[b]
        pos = positions[sl] @ d
        cell = t(system.cell[b]) @ d
        if kind == "les":
            if np.any(system.cell[b]):
                out.append(el.les_energy_periodic(q[sl], pos, cell, SIGMA, K_CUT))
            else:
                out.append(el.les_energy_finite(q[sl], pos, SIGMA))
        else:
            out.append(el.ewald_energy(q[sl], pos, cell, alpha=ALPHA, r_cut=R_CUT, k_cut=EWALD_K_CUT,
                                       neutralising_background=True))
    return torch.stack(out)


def reference_gradients(kind, system, values):
    leaves = {name: t(values[name]).requires_grad_(True) for name in ("positions", "raw", "total", "strain")}
    energies = reference_energies(kind, system, leaves["raw"], leaves["total"], leaves["positions"],
                                  leaves["strain"])
    grads = torch.autograd.grad((energies * t(values["d_E"])).sum(), [leaves[n] for n in WRT])
    return energies.detach().numpy(), {f"d_{n}": g.numpy() for n, g in zip(WRT, grads)}


# ----------------------------------------------------------------------------- interpreter


def test_constants_match_runtime():
    assert lr.K_E == el.K_E and lr.SPHERE_RTOL == el.SPHERE_RTOL
    numba_src, torch_src = lp.render_numba_long_range(), lp.render_torch_long_range()
    assert f"LR_K_E = {el.K_E!r}" in numba_src and f"LR_SPHERE_RTOL = {el.SPHERE_RTOL!r}" in numba_src
    assert f"(4.0 * math.pi * {el.K_E!r})" in torch_src and f"(1.0 + {el.SPHERE_RTOL!r})" in torch_src


def test_kvector_integers_match_reference():
    rng = np.random.default_rng(3)
    for cell in (random_cell(rng), 2.0 * np.eye(3), -random_cell(rng, 9.0)):
        n_ref, _ = el.kvectors_in_sphere(t(cell), math.pi, half=True)
        ours = lr.kvector_integers(cell, math.pi)
        assert len(ours) > 0
        assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, n_ref.tolist()))
    # k = pi in a 2 Å cubic cell lies on the sphere and is included
    assert [1, 0, 0] in lr.kvector_integers(2.0 * np.eye(3), math.pi).tolist()


def _forward(op_or_ops, system: System, charges=None, strain=None):
    ops = op_or_ops if isinstance(op_or_ops, tuple) else (op_or_ops,)
    prog = Program("p", "", (POS, Q, CELL, STRAIN, SHIFTS), (), ops, (ops[-1].out,)).check()
    inputs = {"positions": system.positions, "q": system.charges if charges is None else charges,
              "cell": system.cell, "strain": np.zeros((system.num_structures, 3, 3)) if strain is None else strain,
              "shifts": system.shifts}
    return run(prog, inputs, {}, system.graph())[ops[-1].out.name]


def test_interpreter_les_matches_reference():
    system = les_batch(0)
    e = lr.structure_energy("E")
    periodic = _forward(lr.les_reciprocal(e, POS, Q, CELL, STRAIN, SIGMA, K_CUT), system)
    finite = _forward(lr.les_finite(e, POS, Q, CELL, SHIFTS, STRAIN, SIGMA), system)
    for b, sl in enumerate(system.slices()):
        q, pos = t(system.charges[sl]), t(system.positions[sl])
        if np.any(system.cell[b]):  # periodic: reciprocal term only (no edges there)
            ref = float(el.les_energy_periodic(q, pos, t(system.cell[b]), SIGMA, K_CUT))
            assert rel_err(periodic[b], ref) < TOL64 and finite[b] == 0.0
        else:  # molecule: the all-pairs erf sum; the reciprocal op gives 0
            ref = float(el.les_energy_finite(q, pos, SIGMA))
            assert rel_err(finite[b], ref) < TOL64 and periodic[b] == 0.0


def test_interpreter_les_finite_coincident_and_close_atoms():
    """erf(alpha r)/r at r = 0 (its limit) and below alpha r = 0.1 (the series) == reference."""
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 3, (5, 3))
    pos[1] = pos[0]  # coincident
    pos[3] = pos[2] + np.array([0.01, -0.02, 0.03])  # alpha r ~ 0.03
    q = rng.normal(size=5)
    system = make_system([(pos, q, None)])
    got = _forward(lr.les_finite(lr.structure_energy("E"), POS, Q, CELL, SHIFTS, STRAIN, SIGMA), system)
    assert rel_err(got[0], float(el.les_energy_finite(t(q), t(pos), SIGMA))) < TOL64
    r = np.array([1e-3, 0.05, 0.139, 0.1415, 0.2, 1.0, 3.0])  # around x = 0.1 (r = 0.1414 Å)
    value, slope = lr.pair_kernel(r, 1.0 / math.sqrt(2.0), "erf")
    x = r / math.sqrt(2.0)
    exact = np.array([math.erf(v) for v in x]) / r
    assert rel_err(value, exact) < 1e-15
    h = 1e-6
    alpha = 1 / math.sqrt(2)
    fd = (lr.pair_kernel(r + h, alpha, "erf")[0] - lr.pair_kernel(r - h, alpha, "erf")[0]) / (2 * h)
    assert rel_err(slope, fd) < 1e-8


@pytest.mark.parametrize("neutral", [True, False])
def test_interpreter_ewald_matches_reference(neutral):
    system = ewald_batch(2, neutral=neutral)
    e_k, e_r = lr.structure_energy("E_k"), lr.structure_energy("E_r")
    recip = _forward(lr.ewald_reciprocal(e_k, POS, Q, CELL, STRAIN, alpha=ALPHA, k_cut=EWALD_K_CUT,
                                         background=not neutral), system)
    real = _forward(lr.ewald_real_space(e_r, POS, Q, CELL, SHIFTS, STRAIN, alpha=ALPHA, r_cut=R_CUT), system)
    for b, sl in enumerate(system.slices()):
        _, terms = el.ewald_energy(t(system.charges[sl]), t(system.positions[sl]), t(system.cell[b]), alpha=ALPHA,
                                   r_cut=R_CUT, k_cut=EWALD_K_CUT, neutralising_background=not neutral,
                                   return_terms=True)
        assert rel_err(real[b], float(terms["real"])) < TOL64
        ref = float(terms["recip"] + terms["self"] + terms["background"])
        assert rel_err(recip[b], ref) < TOL64
        assert (float(terms["background"]) == 0.0) == neutral


def test_constrain_charges():
    system = les_batch(4)
    rng = np.random.default_rng(0)
    total = rng.normal(size=system.num_structures)
    prog = Program("c", "", (RAW, TOTAL), (), (lr.ConstrainCharges(Q, RAW, TOTAL),), (Q,)).check()
    q = run(prog, {"raw": system.charges, "total": total}, {}, system.graph())["q"]
    sums = np.bincount(system.batch, weights=q)
    assert np.allclose(sums, total, atol=1e-13) and not np.allclose(q, system.charges)
    again = run(prog, {"raw": q, "total": total}, {}, system.graph())["q"]
    assert np.allclose(again, q, atol=1e-14)  # a projection
    neutral = Program("n", "", (RAW,), (), (lr.ConstrainCharges(Q, RAW, None),), (Q,)).check()
    qn = run(neutral, {"raw": system.charges}, {}, system.graph())["q"]
    assert np.allclose(qn, system.charges - (np.bincount(system.batch, weights=system.charges)
                                             / np.bincount(system.batch))[system.batch], atol=1e-14)


# ----------------------------------------------------------------------------- reverse pass


def test_reverse_programs_use_every_op():
    names = {type(op).__name__ for p in PROGRAMS.values() for op in p.ops}
    assert {"ConstrainCharges", "StructureMean", "ReciprocalEnergy", "ReciprocalEnergyGrad", "PairEnergy",
            "PairEnergyGrad"} <= names
    wrts = {(type(op).__name__, op.wrt) for p in REVERSE.values() for op in p.ops if hasattr(op, "wrt")}
    assert len(wrts) == 4 and "Columns" in names


@pytest.mark.parametrize("kind", ["les", "ewald"])
@pytest.mark.parametrize("strain_scale", [0.0, 0.03])
def test_reverse_matches_torch_autograd(kind, strain_scale):
    """d_positions, d_raw (through ConstrainCharges), d_total and d_strain (general, at zero
    and at a non-zero strain) == torch autograd of the reference energies."""
    system = les_batch(5) if kind == "les" else ewald_batch(5, neutral=False)
    values = program_inputs(system, np.random.default_rng(6), strain_scale)
    got = run(REVERSE[f"{kind}_reverse"], values, {}, system.graph())
    energies, grads = reference_gradients(kind, system, values)
    assert rel_err(got["E"], energies) < TOL64
    for name, ref in grads.items():
        assert rel_err(got[name], ref) < 1e-11, name


def test_reverse_matches_finite_differences():
    """Central differences of the interpreter's own energy, at a non-zero strain."""
    rng = np.random.default_rng(8)
    for kind in ("les", "ewald"):
        system = les_batch(9) if kind == "les" else ewald_batch(9, neutral=False)
        values = program_inputs(system, rng, 0.02)
        got = run(REVERSE[f"{kind}_reverse"], values, {}, system.graph())

        def energy(v):
            return float(np.dot(run(FORWARD[kind], v, {}, system.graph())["E"], values["d_E"]))

        for name, index in (("positions", (3, 1)), ("positions", (8, 2)), ("raw", (2,)), ("total", (1,)),
                            ("strain", (0, 0, 1)), ("strain", (1, 2, 2)), ("strain", (0, 2, 0))):
            h = 1e-5
            plus = {k: np.array(a, copy=True) for k, a in values.items()}
            minus = {k: np.array(a, copy=True) for k, a in values.items()}
            plus[name][index] += h
            minus[name][index] -= h
            fd = (energy(plus) - energy(minus)) / (2 * h)
            assert abs(got[f"d_{name}"][index] - fd) < 1e-6 * max(1.0, abs(fd)), (kind, name, index)


def test_reverse_refuses_cell_and_shifts():
    with pytest.raises(NotImplementedError, match="cell"):
        reverse(FORWARD["les"], ["cell"])
    with pytest.raises(NotImplementedError, match="shifts"):
        reverse(FORWARD["ewald"], ["shifts"])


# ----------------------------------------------------------------------------- numba kernels


def _numba_source() -> str:
    """All programs as plain-Python callers of the kernels, and the Ewald reverse program
    once more as a jitted function (the printer's lines inside numba.njit)."""
    source = lp.numba_module_source(list(PROGRAMS.values()), list(PROGRAMS))
    return source + "\n\n" + lp.render_numba_program(REVERSE["ewald_reverse"], "ewald_reverse_jit", jit=True)


def call_numba(module, key: str, system: System, values: dict, dtype=np.float64, function: str | None = None):
    prog = PROGRAMS[key]
    args = [np.ascontiguousarray(values[v.name], dtype) for v in prog.inputs]
    graph = system.numba_graph()
    args += [graph[name] for name in lp.graph_args(prog)]
    return dict(zip([v.name for v in prog.outputs], getattr(module, function or key)(*args)))


def _warm(folder: str, dtype_name: str) -> None:
    """Compile every kernel for one dtype (one call of each reverse program)."""
    module = load_source(_numba_source(), folder)
    for key, system in (("les_reverse", les_batch(0)), ("ewald_reverse", ewald_batch(0, neutral=False)),
                        ("les_unstrained_reverse", les_batch(0))):
        call_numba(module, key, system, program_inputs(system, np.random.default_rng(0)), np.dtype(dtype_name))


@pytest.fixture(scope="module")
def kernels(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("tacegen_long_range") if cache is not None else tmp_path_factory.mktemp("long_range")
    module = load_source(_numba_source(), folder)  # the file exists before the helper starts
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = ("import sys; sys.path.insert(0, 'tests'); import test_long_range_kernels as t; "
              f"t._warm({str(folder)!r}, 'float32')")
    # a second pytest-xdist worker setting up this fixture waits, then loads the cache
    with open(os.path.join(str(folder), "compile.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        helper = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            _warm(str(folder), "float64")
        finally:
            helper.wait()
        system = ewald_batch(0, neutral=False)  # the jitted caller, after its kernels
        call_numba(module, "ewald_reverse", system, program_inputs(system, np.random.default_rng(0)),
                   function="ewald_reverse_jit")
    return module


@pytest.mark.parametrize("key", list(PROGRAMS))
def test_numba_matches_interpreter(kernels, key):
    system = les_batch(11) if key.startswith("les") else ewald_batch(11, neutral=False)
    values = program_inputs(system, np.random.default_rng(12), 0.02)
    ref = run(PROGRAMS[key], values, {}, system.graph())
    got = call_numba(kernels, key, system, values)
    assert set(got) == set(ref)
    for name, values_out in got.items():
        assert values_out.dtype == np.float64 and values_out.shape == ref[name].shape, name
        assert rel_err(values_out, ref[name]) < TOL64, (key, name)


def test_numba_lines_inside_njit(kernels):
    """The printer's lines also run inside a numba.njit function (float64)."""
    system = ewald_batch(26, neutral=False)
    values = program_inputs(system, np.random.default_rng(27), 0.02)
    ref = call_numba(kernels, "ewald_reverse", system, values)
    got = call_numba(kernels, "ewald_reverse", system, values, function="ewald_reverse_jit")
    for name, values_out in got.items():
        assert np.array_equal(values_out, ref[name]), name


@pytest.mark.parametrize("key", ["les_reverse", "ewald_reverse"])
def test_numba_float32(kernels, key):
    system = les_batch(13) if key.startswith("les") else ewald_batch(13, neutral=False)
    values = program_inputs(system, np.random.default_rng(14), 0.02)
    ref = run(PROGRAMS[key], values, {}, system.graph())
    got = call_numba(kernels, key, system, values, np.float32)
    for name, values_out in got.items():
        assert values_out.dtype == np.float32, name
        assert rel_err(values_out, ref[name]) < TOL32, (key, name)


def _large_system(seed) -> System:
    rng = np.random.default_rng(seed)
    return make_system([random_structure(rng, 60, neutral=False, length=10.0),
                        random_structure(rng, 30, neutral=False, length=8.0),
                        random_structure(rng, 25, periodic=False)], r_cut=R_CUT)


def test_numba_bitwise_independent_of_thread_count(kernels):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with one thread")
    system = _large_system(15)
    values = program_inputs(system, np.random.default_rng(16), 0.01)
    previous = numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2, 1):
            numba.set_num_threads(threads)
            results.append({key: call_numba(kernels, key, system, values) for key in REVERSE})
    finally:
        numba.set_num_threads(previous)
    for other in results[1:]:
        for key in REVERSE:
            for name, values_out in results[0][key].items():
                assert np.array_equal(values_out, other[key][name]), (key, name)
    assert len(system.receivers) > 2000


def _ewald_energy_numba(kernels, system: System, alpha, r_cut, k_cut, background=False):
    g = system.numba_graph()
    zero = np.zeros((system.num_structures, 3, 3))
    recip = kernels.lr_reciprocal_energy(system.positions, system.charges, system.cell, zero, system.batch,
                                         system.num_structures, 1.0 / (4 * alpha * alpha), k_cut,
                                         alpha / math.sqrt(math.pi), background)
    real = kernels.lr_pair_energy(system.positions, system.charges, system.cell, system.shifts, zero,
                                  system.senders, system.receivers, g["receiver_offsets"], system.batch,
                                  system.num_structures, alpha, True, r_cut)
    return recip + real


def test_numba_madelung_nacl(kernels):
    atoms, n_fu, zz, r0 = el.madelung_structure("NaCl")
    cell = atoms.cell.array
    params = el.ewald_parameters(len(atoms), abs(np.linalg.det(cell)), accuracy=1e-12)
    system = make_system([(atoms.positions, atoms.get_initial_charges(), cell)], r_cut=params.r_cut)
    energy = _ewald_energy_numba(kernels, system, params.alpha, params.r_cut, params.k_cut)[0]
    madelung = -energy / n_fu * r0 / (el.K_E * zz)
    assert abs(madelung - el.MADELUNG_REFERENCE["NaCl"]) < 1e-8, madelung


def test_numba_lattice_translation_invariance(kernels):
    rng = np.random.default_rng(17)
    pos, q, cell = random_structure(rng, 8)
    moved = pos.copy()
    moved[3] += cell[0] - 2 * cell[2]
    moved[5] -= cell[1]
    energies = []
    for p in (pos, moved):
        system = make_system([(p, q, cell)], r_cut=R_CUT)
        energies.append(_ewald_energy_numba(kernels, system, ALPHA, R_CUT, EWALD_K_CUT)[0])
        energies.append(kernels.lr_reciprocal_energy(p, q, cell[None], np.zeros((1, 3, 3)), system.batch, 1,
                                                     0.5 * SIGMA**2, K_CUT, 1 / (SIGMA * math.sqrt(2 * math.pi)),
                                                     False)[0])
    assert abs(energies[0] - energies[2]) < 1e-12 * abs(energies[0])
    assert abs(energies[1] - energies[3]) < 1e-12 * abs(energies[1])


def test_numba_les_supercell_is_eight_times(kernels):
    rng = np.random.default_rng(18)
    pos, q, cell = random_structure(rng, 5, length=4.0)
    shifts = np.array([[a, b, c] for a in range(2) for b in range(2) for c in range(2)], dtype=float)
    big_pos = np.concatenate([pos + s @ cell for s in shifts])
    args = (0.5 * SIGMA**2, K_CUT, 1 / (SIGMA * math.sqrt(2 * math.pi)), False)
    small = kernels.lr_reciprocal_energy(pos, q, cell[None], np.zeros((1, 3, 3)), np.zeros(5, np.int64), 1, *args)
    big = kernels.lr_reciprocal_energy(big_pos, np.tile(q, 8), 2 * cell[None], np.zeros((1, 3, 3)),
                                       np.zeros(40, np.int64), 1, *args)
    assert abs(big[0] - 8 * small[0]) < 1e-11 * abs(big[0])


def test_numba_non_neutral_background_matches_reference(kernels):
    rng = np.random.default_rng(19)
    pos, q, cell = random_structure(rng, 7, neutral=False)
    assert abs(q.sum()) > 0.1
    system = make_system([(pos, q, cell)], r_cut=8.0)
    got = _ewald_energy_numba(kernels, system, 0.6, 8.0, 7.0, background=True)[0]
    ref = float(el.ewald_energy(t(q), t(pos), t(cell), alpha=0.6, r_cut=8.0, k_cut=7.0, neutralising_background=True))
    assert rel_err(got, ref) < TOL64
    without = _ewald_energy_numba(kernels, system, 0.6, 8.0, 7.0, background=False)[0]
    assert abs(without - got) > 1e-3  # the background term is really there


def test_numba_rejects_bad_graphs(kernels):
    system = ewald_batch(20)
    values = program_inputs(system, np.random.default_rng(21))
    call_numba(kernels, "ewald_reverse", system, values)  # valid
    bad = System(**{**system.__dict__, "batch": system.batch[::-1].copy()})
    with pytest.raises(ValueError, match="batch must be sorted"):
        call_numba(kernels, "ewald_reverse", bad, values)
    g = system.numba_graph()
    zero = np.zeros((2, 3, 3))
    receivers = g["receivers"].copy()
    receivers[[0, -1]] = receivers[[-1, 0]]
    with pytest.raises(ValueError, match="sorted by receiver"):
        kernels.lr_pair_energy(system.positions, system.charges, system.cell, system.shifts, zero, system.senders,
                               receivers, g["receiver_offsets"], system.batch, 2, ALPHA, True, R_CUT)
    order = g["sender_order"].copy()
    order[1] = order[0]
    with pytest.raises(ValueError, match="sort the edges by sender"):
        kernels.lr_pair_grad(system.positions, system.charges, system.cell, system.shifts, zero, np.ones(2),
                             system.senders, system.receivers, g["receiver_offsets"], order, g["sender_offsets"],
                             system.batch, 2, ALPHA, True, R_CUT)


def test_printed_numba_lines():
    source = _numba_source()
    assert "np.zeros((num_structures, 3, 3), positions.dtype)" in source  # unstrained program
    ewald = lp.render_numba_program(REVERSE["ewald_reverse"])
    # one joint (positions, charges) gradient call per energy, split by Columns
    assert ewald.count("lr_reciprocal_grad(") == 1 and ewald.count("lr_pair_grad(") == 1
    assert ewald.count("np.ascontiguousarray(g_atoms_") == 4
    assert lp.graph_args(PROGRAMS["ewald_reverse"]) == (
        "senders", "receivers", "receiver_offsets", "sender_order", "sender_offsets", "batch", "num_structures")
    assert lp.graph_args(FORWARD["ewald"]) == ("senders", "receivers", "receiver_offsets", "batch", "num_structures")
    for op_type in lp.NUMBA_METHODS:
        assert set(lp.NUMBA_GRAPH_ARGS[op_type]) <= set(lp.GRAPH_ARGS)
    # race-free: inside prange loops arrays are only assigned, never accumulated into
    kernel_source = lp.render_numba_long_range()
    loops, indent = 0, None
    for line in kernel_source.splitlines():
        depth = len(line) - len(line.lstrip())
        if indent is not None and line.strip() and depth <= indent:
            indent = None
        if indent is not None:
            assert not re.search(r"\w\[[^\]]*\]\s*[-+*/]=", line), line
        elif "in prange(" in line:
            indent, loops = depth, loops + 1
    assert loops == 8
    assert lp.render_numba_long_range() == kernel_source  # deterministic


# ----------------------------------------------------------------------------- torch functions


@pytest.fixture(scope="module")
def torch_functions(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long_range_torch")
    source = lp.torch_module_source(list(FORWARD.values()), list(FORWARD))
    module = load_source(source, folder)
    return module, {key: torch.jit.script(getattr(module, key)) for key in FORWARD}


def _torch_args(prog, system: System, values, dtype=F64, requires_grad=()):
    tensors = {}
    for v in prog.inputs:
        x = torch.tensor(np.asarray(values[v.name]), dtype=dtype)
        tensors[v.name] = x.requires_grad_(True) if v.name in requires_grad else x
    graph = {"senders": torch.as_tensor(system.senders), "receivers": torch.as_tensor(system.receivers),
             "batch": torch.as_tensor(system.batch), "num_structures": system.num_structures}
    args = [tensors[v.name] for v in prog.inputs] + [graph[a] for a in lp.graph_args(prog, lp.TORCH_GRAPH_ARGS)]
    return tensors, args


@pytest.mark.parametrize("kind", ["les", "ewald"])
@pytest.mark.parametrize("scripted", [False, True])
def test_torch_matches_reference(torch_functions, kind, scripted):
    module, compiled = torch_functions
    fn = compiled[kind] if scripted else getattr(module, kind)
    system = les_batch(22) if kind == "les" else ewald_batch(22, neutral=False)
    values = program_inputs(system, np.random.default_rng(23), 0.02)
    tensors, args = _torch_args(FORWARD[kind], system, values, requires_grad=WRT)
    (energies,) = fn(*args)
    grads = torch.autograd.grad((energies * t(values["d_E"])).sum(), [tensors[n] for n in WRT])
    ref_energies, ref_grads = reference_gradients(kind, system, values)
    assert rel_err(energies.detach().numpy(), ref_energies) < TOL64
    for name, g in zip(WRT, grads):
        assert rel_err(g.numpy(), ref_grads[f"d_{name}"]) < 1e-11, name


def test_torch_float32_and_direct_calls(torch_functions):
    module, compiled = torch_functions
    system = les_batch(24)
    values = program_inputs(system, np.random.default_rng(25))
    _, args = _torch_args(FORWARD["les"], system, values, dtype=torch.float32)
    (energies,) = compiled["les"](*args)
    assert energies.dtype == torch.float32
    ref = run(FORWARD["les"], values, {}, system.graph())["E"]
    assert rel_err(energies.numpy(), ref) < TOL32
    batch = torch.as_tensor(system.batch)
    neutral = torch.jit.script(module.lr_constrain_charges)(t(system.charges), None, batch, system.num_structures)
    sums = torch.zeros(system.num_structures, dtype=F64).index_add(0, batch, neutral)
    assert float(sums.abs().max()) < 1e-14 and not torch.allclose(neutral, t(system.charges))
    # the snippet functions themselves, as the printer's lines call them
    atoms, n_fu, zz, r0 = el.madelung_structure("NaCl")
    cell = atoms.cell.array
    params = el.ewald_parameters(len(atoms), abs(np.linalg.det(cell)), accuracy=1e-12)
    s = make_system([(atoms.positions, atoms.get_initial_charges(), cell)], r_cut=params.r_cut)
    pos, q, c, b = t(s.positions), t(s.charges), t(s.cell), torch.as_tensor(s.batch)
    energy = module.lr_reciprocal_energy(pos, q, c, None, b, 1, 1 / (4 * params.alpha**2), params.k_cut,
                                         params.alpha / math.sqrt(math.pi), False)
    energy = energy + module.lr_pair_energy(pos, q, c, t(s.shifts), None, torch.as_tensor(s.senders),
                                            torch.as_tensor(s.receivers), b, 1, params.alpha, True, params.r_cut)
    madelung = -float(energy[0]) / n_fu * r0 / (el.K_E * zz)
    assert abs(madelung - el.MADELUNG_REFERENCE["NaCl"]) < 1e-8
