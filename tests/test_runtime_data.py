"""batch_atoms and edge_vectors: layout, index conventions, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import given, settings
from hypothesis import strategies as st

from tacegen.runtime.data import batch_atoms, edge_vectors
from test_runtime_support import ELEMENTS, random_structure

R_CUT = 3.0


def mixed_structures():
    water = molecule("H2O")
    diamond = bulk("C", "diamond", a=3.57)  # 2 atoms, cell smaller than r_cut images
    slab = Atoms("CO", positions=[[0, 0, 5], [0.5, 0.5, 6.2]], cell=[2.6, 2.6, 0], pbc=[True, True, False])
    return [water, diamond, slab]


def edges_of(batch):
    """Sorted (receiver, sender, rounded edge vector) triples."""
    keys = ("positions", "cell", "batch", "edge_index", "edge_shift")
    vec = edge_vectors(*(batch[key] for key in keys))
    s, r = batch["edge_index"].tolist()
    return sorted(zip(r, s, np.round(vec.numpy(), 7).tolist()))


def test_layout_shapes_and_dtypes():
    structures = mixed_structures()
    b = batch_atoms(structures, ELEMENTS, R_CUT, dtype=torch.float32)
    n = sum(len(a) for a in structures)
    e = b["edge_index"].shape[1]
    assert b["positions"].shape == (n, 3) and b["positions"].dtype == torch.float32
    assert b["species"].dtype == torch.int64 and b["species"].shape == (n,)
    assert b["batch"].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert b["num_atoms"].tolist() == [3, 2, 2]
    assert b["cell"].shape == (3, 3, 3) and b["cell"].dtype == torch.float32
    assert b["pbc"].dtype == torch.bool and b["pbc"].tolist()[2] == [True, True, False]
    assert b["edge_shift"].shape == (e, 3) and b["edge_shift"].dtype == torch.float32
    assert torch.all(b["edge_shift"] == b["edge_shift"].round())
    assert [ELEMENTS[k] for k in b["species"].tolist()] == ["O", "H", "H", "C", "C", "C", "O"]
    np.testing.assert_array_equal(b["cell"][1].numpy(), structures[1].cell[:].astype(np.float32))
    assert torch.all(b["cell"][0] == 0)  # molecule


def test_edges_are_sorted_by_receiver_and_stay_inside_their_structure():
    b = batch_atoms(mixed_structures(), ELEMENTS, R_CUT)
    sender, receiver = b["edge_index"]
    assert torch.all(receiver[1:] >= receiver[:-1])
    assert torch.equal(b["batch"][sender], b["batch"][receiver])
    vec = edge_vectors(b["positions"], b["cell"], b["batch"], b["edge_index"], b["edge_shift"])
    r = vec.norm(dim=1)
    assert torch.all(r > 0.1) and torch.all(r < R_CUT)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, False)])
def test_edges_match_ase_neighbour_list(pbc):
    rng = np.random.default_rng(1)
    atoms = random_structure(rng, pbc=pbc, n_atoms=5, cell_size=2.2)  # r_cut > cell
    b = batch_atoms(atoms, ELEMENTS, R_CUT)
    i, j, vec = ase_neighbor_list("ijD", atoms, R_CUT)
    expected = sorted(zip(i.tolist(), j.tolist(), np.round(vec, 7).tolist()))
    assert edges_of(b) == expected


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_batch_is_concatenation_of_single_structures(seed):
    rng = np.random.default_rng(seed)
    pbcs = [(True,) * 3, (False,) * 3, (True, True, False)]
    structures = [random_structure(rng, pbc=pbcs[k % 3]) for k in range(int(rng.integers(2, 5)))]
    b = batch_atoms(structures, ELEMENTS, R_CUT)
    offset, edge_offset = 0, 0
    for k, atoms in enumerate(structures):
        single = batch_atoms(atoms, ELEMENTS, R_CUT)
        n, e = len(atoms), single["edge_index"].shape[1]
        assert torch.equal(b["positions"][offset : offset + n], single["positions"])
        assert torch.equal(b["species"][offset : offset + n], single["species"])
        assert torch.equal(b["edge_index"][:, edge_offset : edge_offset + e], single["edge_index"] + offset)
        assert torch.equal(b["edge_shift"][edge_offset : edge_offset + e], single["edge_shift"])
        assert torch.equal(b["cell"][k], single["cell"][0])
        offset, edge_offset = offset + n, edge_offset + e
    assert edge_offset == b["edge_index"].shape[1]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_wrapping_does_not_change_edge_vectors(seed):
    rng = np.random.default_rng(seed)
    atoms = random_structure(rng, pbc=(True, True, False))
    wrapped = atoms.copy()
    wrapped.wrap()
    assert edges_of(batch_atoms(atoms, ELEMENTS, R_CUT)) == edges_of(batch_atoms(wrapped, ELEMENTS, R_CUT))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script in torch >= 2.10
def test_edge_vectors_is_scriptable_and_differentiable():
    b = batch_atoms(mixed_structures(), ELEMENTS, R_CUT)
    scripted = torch.jit.script(edge_vectors)
    pos = b["positions"].clone().requires_grad_(True)
    cell = b["cell"].clone().requires_grad_(True)
    args = (b["batch"], b["edge_index"], b["edge_shift"])
    torch.testing.assert_close(scripted(pos, cell, *args), edge_vectors(pos, cell, *args))
    assert torch.autograd.gradcheck(lambda p, c: edge_vectors(p, c, *args), (pos, cell))


# ----------------------------------------------------------------------------- errors


def test_unknown_element_names_symbol_atom_and_allowed_list():
    atoms = Atoms("HHN", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError) as info:
        batch_atoms([molecule("H2O"), atoms], ELEMENTS, R_CUT)
    message = str(info.value)
    assert "structure 1" in message and "atom 2" in message and "'N'" in message
    assert str(ELEMENTS) in message


def test_close_atoms_name_the_pair_and_distance():
    atoms = Atoms("HHO", positions=[[0, 0, 0], [1.0, 0, 0], [1.05, 0, 0]])
    with pytest.raises(ValueError, match=r"atoms 1 and 2 .* 0\.05 Å apart.*0\.1 Å"):
        batch_atoms(atoms, ELEMENTS, R_CUT)


def test_close_periodic_image_in_sliver_cell_is_caught_quickly():
    # plane spacing 0.05 Å: the full list within 3 Å would hold ~10^5 images
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=[3.0, 3.0, 0.05], pbc=True)
    with pytest.raises(ValueError, match=r"atoms 0 and 0 \(lattice shift \[0, 0, -1\]\) are 0\.05 Å"):
        batch_atoms(atoms, ELEMENTS, R_CUT)


@pytest.mark.parametrize(
    "atoms, pattern",
    [
        (Atoms("H", positions=[[0, 0, 0]], pbc=True), r"degenerate periodic cell.*volume of 0"),
        (Atoms("H", cell=[[1, 0, 0], [2, 0, 0], [0, 0, 0]], pbc=[True, True, False]), r"area of 0"),
        (Atoms(), r"structure has no atoms"),
    ],
)
def test_bad_structures(atoms, pattern):
    with pytest.raises(ValueError, match=pattern):
        batch_atoms(atoms, ELEMENTS, R_CUT)


def test_bad_arguments_are_named():
    water = molecule("H2O")
    with pytest.raises(TypeError, match=r"float32 or torch.float64, got torch.int32"):
        batch_atoms(water, ELEMENTS, R_CUT, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"r_cut must be a finite number > 0 Å, got 0.0"):
        batch_atoms(water, ELEMENTS, 0.0)
    with pytest.raises(ValueError, match=r"got -2.0"):
        batch_atoms(water, ELEMENTS, -2)
    with pytest.raises(TypeError, match=r"got ndarray"):
        batch_atoms(np.zeros((3, 3)), ELEMENTS, R_CUT)
    with pytest.raises(TypeError, match=r"structures\[1\] must be an ase.Atoms, got str"):
        batch_atoms([water, "H2O"], ELEMENTS, R_CUT)
    with pytest.raises(ValueError, match="empty sequence"):
        batch_atoms([], ELEMENTS, R_CUT)
    with pytest.raises(ValueError, match=r"lists 'H' twice"):
        batch_atoms(water, ["H", "O", "H"], R_CUT)
