"""The Numba back end end to end: the whole model as IR programs, printed for Numba.

* the lowering: the program chain evaluated by the IR interpreter == the PyTorch model;
* the printed module == the PyTorch model to 1e-10 (float64) on random molecules and
  triclinic cells, with identical weights (hypothesis);
* forces and stress of the Numba path alone == finite differences of its own energy;
* invariance / equivariance on the Numba path (tolerances of the PyTorch tests);
* float32, thread-count independence, the ASE calculator, bad input.

Models are SMALL (model_helpers) and share one build per spec, so numba compiles each
kernel once per dtype (cache=True keeps the machine code next to the build).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
from ase.build import bulk
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import SEEDS, haar_orthogonal
from model_helpers import (build_module, evaluate, make_model, numeric_forces, random_crystal, random_molecule,
                           rel_err, transformed)
from tacegen.backends.numba_model import spec_programs
from tacegen.backends.numba_segments import CORE, DENSE, split
from tacegen.build import compile_spec
from tacegen.runtime.calculator import Calculator
from tacegen.ir.interpret import program_runner
from tacegen.runtime.chain import ModelChain
from tacegen.runtime.data import batch_atoms
from tacegen.runtime.numba_driver import graph_arrays
from tacegen.runtime.numba_weights import convert_state
from tacegen.spec import ModelSpec

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")]

SPEC = ModelSpec(lmax=2, nu=2, hidden_lmax=1)
TORCH_ONLY = ModelSpec(lmax=1, nu=1, hidden_lmax=0, backends=("torch",))


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    return build_module(SPEC, tmp_path_factory.mktemp("numba_model") / "build")


@pytest.fixture(scope="module")
def model(module):
    # two layers: the first and the last layer kind (each kind costs ~30-50 s of cold JIT);
    # the inner kind of deeper models is checked on the interpreter below
    return make_model(module, elements=("Cu", "O"), seed=4, layers=2)


@pytest.fixture(scope="module")
def fast(model):
    return model.numba_backend()


def numba_eval(fast, model, atoms, dtype=None):
    batch = batch_atoms(atoms, model.elements, model.r_cut, dtype=dtype or model.dtype)
    out = fast(batch)
    return {k: v.detach().to(torch.float64).numpy() for k, v in out.items()}


def _structure(rng, periodic):
    symbols = ("Cu", "O")
    return random_crystal(rng, symbols=symbols) if periodic else random_molecule(rng, symbols=symbols)


# ----------------------------------------------------------------------------- lowering


@pytest.mark.parametrize("layers", [1, 3])
def test_program_chain_on_the_interpreter_matches_pytorch(module, layers):
    """The IR chain (every program, forward and reverse, on the numpy interpreter) gives the
    PyTorch model's energy, forces and virial: the lowering and the reverse derivation, for
    every layer kind (1 layer: first and last at once; 3 layers: first, inner, last)."""
    model = make_model(module, elements=("Cu", "O"), seed=4, layers=layers)
    programs, kinds = spec_programs(compile_spec(SPEC))
    kinds = {k.name: k for k in kinds}
    weights = convert_state(model, kinds)
    chain = ModelChain(kinds, weights, program_runner(programs))
    for periodic in (False, True):
        atoms = _structure(np.random.default_rng(3 + periodic), periodic)
        batch = batch_atoms(atoms, model.elements, model.r_cut)
        ref = evaluate(model, atoms)
        graph = graph_arrays(batch)
        out = chain.evaluate({"positions": batch["positions"].numpy(), "cell": batch["cell"].numpy(),
                              "shifts": batch["edge_shift"].numpy(), "species": batch["species"].numpy()}, graph)
        for key in ("energy", "node_energy", "forces", "virial"):
            assert rel_err(out[key], ref[key]) < 1e-12, key
        assert np.abs(ref["forces"]).max() > 1e-3


def test_segments_partition_each_program():
    """Every program splits into segments of one printer each, covering every op once, and
    each segment reads only program inputs and earlier segments' outputs."""
    programs, _ = spec_programs(compile_spec(SPEC))
    for program in programs.values():
        segments = split(program)
        ops = [op for s in segments for op in s.program.ops]
        assert sorted(map(id, ops)) == sorted(map(id, program.ops))
        available = {v.name for v in program.inputs}
        for s in segments:
            assert s.kind in (CORE, DENSE)
            assert {v.name for v in s.program.inputs} <= available, (program.name, s.program.name)
            available |= {v.name for v in s.program.outputs}
        assert {v.name for v in program.outputs} <= available
    # a layer's reverse mixes both printers; few segments (greedy grouping)
    layer = next(p for name, p in programs.items() if name.startswith("layer") and name.endswith("reverse"))
    kinds = [s.kind for s in split(layer)]
    assert CORE in kinds and DENSE in kinds and len(kinds) <= 12


# ----------------------------------------------------------------------------- Numba == PyTorch


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "crystal"])
@settings(max_examples=6, deadline=None)
@given(seed=SEEDS)
def test_numba_matches_pytorch_float64(model, fast, periodic, seed):
    atoms = _structure(np.random.default_rng(seed), periodic)
    ref = evaluate(model, atoms)
    out = numba_eval(fast, model, atoms)
    for key in ("energy", "node_energy", "forces"):
        assert rel_err(out[key], ref[key]) < 1e-10, key
    if periodic:
        assert rel_err(out["stress"], ref["stress"]) < 1e-10
        assert rel_err(out["virial"], ref["virial"]) < 1e-10
    else:
        assert np.isnan(out["stress"]).all()


def test_numba_matches_pytorch_on_a_batch(model, fast):
    rng = np.random.default_rng(8)
    structures = [random_molecule(rng, symbols=("Cu", "O")), random_crystal(rng, symbols=("Cu", "O")),
                  random_crystal(rng, symbols=("Cu", "O"))]
    ref = evaluate(model, structures)
    out = numba_eval(fast, model, structures)
    for key in ("energy", "node_energy", "forces"):
        assert rel_err(out[key], ref[key]) < 1e-10, key
    assert rel_err(out["stress"][1:], ref["stress"][1:]) < 1e-10


def test_comparison_can_fail(model, module):
    """A model with other weights differs: the agreement above is not vacuous."""
    other = make_model(module, elements=("Cu", "O"), seed=5, layers=2)
    atoms = random_crystal(np.random.default_rng(2), symbols=("Cu", "O"))
    out = numba_eval(other.numba_backend(), other, atoms)
    ref = evaluate(model, atoms)
    assert rel_err(out["energy"], ref["energy"]) > 1e-3
    assert rel_err(out["forces"], ref["forces"]) > 1e-3


# ----------------------------------------------------------------------------- derivatives


def _energy(fast, model, atoms) -> float:
    batch = batch_atoms(atoms, model.elements, model.r_cut, dtype=model.dtype)
    return float(fast(batch, compute_forces=False, compute_stress=False)["energy"][0])


def test_numba_forces_match_finite_differences(model, fast):
    atoms = random_crystal(np.random.default_rng(12), 3, symbols=("Cu", "O"))
    forces = numba_eval(fast, model, atoms)["forces"]
    numeric = numeric_forces(lambda a: _energy(fast, model, a), atoms)
    assert np.abs(forces).max() > 1e-2
    assert rel_err(forces, numeric) < 1e-7


def test_numba_stress_matches_strain_finite_differences(model, fast):
    atoms = random_crystal(np.random.default_rng(5), 4, symbols=("Cu", "O"))
    out = numba_eval(fast, model, atoms)
    volume = atoms.get_volume()
    h = 1e-5
    numeric = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            e = np.zeros((3, 3))
            e[i, j] += 0.5
            e[j, i] += 0.5

            def strained(s):
                new = atoms.copy()
                deform = np.eye(3) + s * e
                new.set_cell(np.asarray(atoms.cell[:]) @ deform, scale_atoms=False)
                new.positions = atoms.positions @ deform
                return _energy(fast, model, new)

            numeric[i, j] = numeric[j, i] = (strained(h) - strained(-h)) / (2 * h * volume)
    stress = out["stress"][0]
    assert np.abs(stress).max() > 1e-4
    assert rel_err(stress, stress.T) < 1e-14
    assert rel_err(stress, numeric) < 1e-7


# ----------------------------------------------------------------------------- symmetry


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "crystal"])
@settings(max_examples=6, deadline=None)
@given(seed=SEEDS, proper=st.booleans())
def test_numba_invariance_and_equivariance(model, fast, periodic, seed, proper):
    rng = np.random.default_rng(seed)
    atoms = _structure(rng, periodic)
    q = haar_orthogonal(rng, proper)
    t = rng.normal(scale=3.0, size=3)
    perm = rng.permutation(len(atoms))
    ref = numba_eval(fast, model, atoms)
    assume(np.abs(ref["forces"]).max() > 1e-3 and np.abs(ref["node_energy"]).max() > 1e-4)
    new = numba_eval(fast, model, transformed(atoms, q, t, perm))
    scale = max(abs(ref["energy"][0]), np.abs(ref["node_energy"]).sum())
    assert abs(new["energy"][0] - ref["energy"][0]) < 1e-12 * scale
    assert rel_err(new["node_energy"], ref["node_energy"][perm]) < 1e-12
    assert rel_err(new["forces"], (ref["forces"] @ q.T)[perm]) < 1e-12
    if periodic:
        assert rel_err(new["stress"][0], q @ ref["stress"][0] @ q.T) < 1e-12


# ----------------------------------------------------------------------------- float32, threads


@pytest.fixture(scope="module")
def model32(module, model):
    m = make_model(module, elements=("Cu", "O"), seed=4, layers=2, dtype=torch.float32)
    m.load_state_dict({k: v.to(torch.float32) for k, v in model.state_dict().items()})
    return m


def test_numba_float32_matches_float64(model, fast, model32):
    fast32 = model32.numba_backend()
    atoms = random_crystal(np.random.default_rng(21), symbols=("Cu", "O"))
    ref = numba_eval(fast, model, atoms)
    out = numba_eval(fast32, model32, atoms)
    batch = batch_atoms(atoms, model32.elements, model32.r_cut, dtype=torch.float32)
    assert fast32(batch)["forces"].dtype == torch.float32
    assert rel_err(out["forces"], ref["forces"]) < 1e-4
    assert rel_err(out["stress"], ref["stress"]) < 1e-4
    assert abs(out["energy"][0] - ref["energy"][0]) < 1e-5 * np.abs(ref["node_energy"]).sum()


def test_changed_weights_are_noticed(module, model):
    """A bound model whose weights change afterwards (load_state_dict, an in-place optimiser
    step, a new scale) is evaluated with the new weights, copied once per change."""
    changing = make_model(module, elements=("Cu", "O"), seed=4, layers=2)
    bound = changing.numba_backend()  # the module's kernels are compiled already: no JIT
    atoms = _structure(np.random.default_rng(11), True)
    before = numba_eval(bound, changing, atoms)
    assert rel_err(before["energy"], evaluate(changing, atoms)["energy"]) < 1e-10
    assert not bound.refresh()
    changing.load_state_dict(make_model(module, elements=("Cu", "O"), seed=9, layers=2).state_dict())
    after = numba_eval(bound, changing, atoms)
    ref = evaluate(changing, atoms)
    assert abs(float(after["energy"][0] - before["energy"][0])) > 1e-6  # the weights did change
    for key in ("energy", "forces"):
        assert rel_err(after[key], ref[key]) < 1e-10, key
    with torch.no_grad():
        linear = next(m for m in changing.blocks[0].radial.modules() if isinstance(m, torch.nn.Linear))
        linear.weight.mul_(1.5)  # an optimiser-style in-place step
    changing.scale = 0.5
    ref = evaluate(changing, atoms)
    out = numba_eval(bound, changing, atoms)
    assert rel_err(out["energy"], ref["energy"]) < 1e-10 and rel_err(out["forces"], ref["forces"]) < 1e-10
    assert not bound.refresh()


def test_dtype_mismatch_is_refused_clearly(model, fast):
    atoms = random_molecule(np.random.default_rng(1), symbols=("Cu", "O"))
    batch = batch_atoms(atoms, model.elements, model.r_cut, dtype=torch.float32)
    with pytest.raises(TypeError, match="float32.*float64"):
        fast(batch)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                    reason="numba was started with one thread (NUMBA_NUM_THREADS=1): nothing to compare")
def test_results_do_not_depend_on_the_thread_count(model, fast):
    """Reference: the one-thread run; the parallel run uses every thread numba started with
    (forced: left to itself, the back end runs a system this small on one thread)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=3)
    atoms.numbers[::5] = 8
    threads = numba.config.NUMBA_NUM_THREADS
    try:
        fast.threads = 1
        one = numba_eval(fast, model, atoms)
        fast.threads = threads
        many = numba_eval(fast, model, atoms)
    finally:
        fast.threads = None
    assert np.abs(one["forces"]).max() > 1e-3  # not vacuous
    for key in ("energy", "forces", "stress"):
        assert np.array_equal(one[key], many[key]), key


def test_small_systems_run_on_one_thread_large_ones_in_parallel():
    """The automatic strategy: serial below the work threshold, at most torch's threads."""
    import torch

    from tacegen.runtime.numba_driver import WORK_PER_THREAD, parallel_threads

    assert parallel_threads(100, 8) == 1
    limit = min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())
    assert parallel_threads(10 * WORK_PER_THREAD, 64) == limit
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert parallel_threads(10 * WORK_PER_THREAD, 64) == 1  # never more than torch's threads
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- calculator, errors


def test_calculator_numba_backend_matches_pytorch(model):
    atoms = bulk("Cu", "fcc", a=3.7) * (2, 2, 1)
    atoms.numbers[0] = 8
    atoms.rattle(0.05, seed=7)
    a, b = atoms.copy(), atoms.copy()
    a.calc = Calculator(model, backend="numba")
    b.calc = Calculator(model)
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), rel=1e-10)
    assert rel_err(a.get_forces(), b.get_forces()) < 1e-10
    assert rel_err(a.get_stress(), b.get_stress()) < 1e-10


def test_torch_only_build_says_how_to_get_numba(tmp_path):
    module = build_module(TORCH_ONLY, tmp_path / "torch_only")
    model = make_model(module)
    with pytest.raises(NotImplementedError, match="--backend torch,numba"):
        model.numba_backend()
    with pytest.raises(NotImplementedError, match="numba"):
        Calculator(model, backend="numba")
