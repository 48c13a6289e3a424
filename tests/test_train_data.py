"""Training data: labels, preprocessing cache, batching, normalisation, bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from train_helpers import emt_cells, write

from tacegen.runtime.data import batch_atoms
from tacegen.train.dataset import AtomsDataset, batches, shard, species_map
from tacegen.train.labels import DataError, LabelKeys
from tacegen.train.normalise import compute


def test_collated_batch_equals_batch_atoms_and_labels(tmp_path):
    """The memory-mapped cache gives back exactly what batch_atoms computes from the structures."""
    import ase.io

    path = write(tmp_path / "d.xyz", emt_cells(5, seed=1))
    cells = ase.io.read(path, ":")  # the labels as stored in the file (extxyz rounds them)
    ds = AtomsDataset.from_file(path, 4.0)
    again = AtomsDataset.from_file(path, 4.0)  # from the cache
    assert isinstance(again.arrays["positions"], np.memmap)
    picked = [3, 0, 4]
    got = again.collate(picked, species_map(["Cu"]), torch.float64)
    ref = batch_atoms([cells[k] for k in picked], ["Cu"], 4.0)
    for key in ref:
        assert torch.equal(got[key], ref[key]) or torch.allclose(got[key], ref[key], equal_nan=True), key
    assert ref["edge_index"].shape[1] > 0
    np.testing.assert_array_equal(got["energy"].numpy(), [cells[k].info["REF_energy"] for k in picked])
    np.testing.assert_array_equal(got["forces"].numpy(), np.concatenate([cells[k].arrays["REF_forces"] for k in picked]))
    s = cells[3].info["REF_stress"]  # Voigt xx yy zz yz xz xy
    np.testing.assert_array_equal(got["stress"][0].numpy(), [[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])
    assert len(ds) == 5


def test_cache_is_keyed_by_content_and_cutoff(tmp_path):
    path = tmp_path / "d.xyz"
    write(path, emt_cells(3, seed=2))
    a = AtomsDataset.from_file(str(path), 4.0)
    b = AtomsDataset.from_file(str(path), 3.0)
    assert a.arrays["edges"].shape[0] > b.arrays["edges"].shape[0] > 0
    write(path, emt_cells(3, seed=3))
    c = AtomsDataset.from_file(str(path), 4.0)
    assert not np.array_equal(np.asarray(a.arrays["positions"]), np.asarray(c.arrays["positions"]))


def test_virials_and_calculator_fallback(tmp_path):
    import ase.io
    from ase.calculators.emt import EMT

    cells = emt_cells(2, seed=4)
    for atoms in cells:
        volume = atoms.get_volume()
        s = atoms.info.pop("REF_stress")
        full = np.array([[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])
        atoms.info["REF_virials"] = (-full * volume).ravel()
    path = write(tmp_path / "v.xyz", cells)
    ds = AtomsDataset.from_file(path, 4.0, cache=False)
    s = cells[0].info["REF_virials"].reshape(3, 3) / -cells[0].get_volume()
    np.testing.assert_allclose(np.asarray(ds.arrays["stress"][0]), s, rtol=1e-12)
    # plain extxyz energy/forces (read back as a calculator) are used for the default keys
    plain = emt_cells(2, seed=5)
    for atoms in plain:
        atoms.info.pop("REF_energy"), atoms.info.pop("REF_stress"), atoms.arrays.pop("REF_forces")
        atoms.calc = EMT()
        atoms.get_forces()
    ase.io.write(tmp_path / "plain.xyz", plain)
    ds = AtomsDataset.from_file(str(tmp_path / "plain.xyz"), 4.0, cache=False)
    assert np.asarray(ds.arrays["energy"])[1] == pytest.approx(plain[1].get_potential_energy(), abs=1e-8)


def test_batches_respect_structure_and_atom_caps():
    sizes = np.array([4, 8, 2, 9, 1, 3])
    got = batches(range(6), sizes, batch_size=3, max_atoms=10)
    assert got == [[0], [1, 2], [3, 4], [5]]
    assert sum(got, []) == list(range(6))
    assert batches(range(6), sizes, batch_size=4) == [[0, 1, 2, 3], [4, 5]]
    assert [shard([5, 6, 7], r, 2) for r in range(2)] == [[5, 6], [7]] or \
        sum([shard([5, 6, 7], r, 2) for r in range(2)], []) == [5, 6, 7]


def test_least_squares_e0s_recover_exact_reference_energies(tmp_path):
    """Energies that are exactly a sum of per-element constants give back those constants and zero shift."""
    cells = emt_cells(6, seed=6, symbols=("Cu", "Ni"))
    truth = {"Cu": -1.25, "Ni": -3.5}
    rng = np.random.default_rng(0)
    for atoms in cells:
        atoms.symbols[:int(rng.integers(1, 4))] = "Ni"
        atoms.info["REF_energy"] = sum(truth[s] for s in atoms.get_chemical_symbols())
    import ase.io

    path = write(tmp_path / "e.xyz", cells)
    cells = ase.io.read(path, ":")  # labels as stored (extxyz rounds forces)
    ds = AtomsDataset.from_file(path, 4.0)
    norm = compute(ds, ["Cu", "Ni"])
    np.testing.assert_allclose(norm.atomic_energies, [truth["Cu"], truth["Ni"]], atol=1e-10)
    assert abs(norm.shift) < 1e-10
    forces = np.concatenate([a.arrays["REF_forces"] for a in cells])
    assert norm.scale == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    edges = sum(len(batch_atoms(a, ["Cu", "Ni"], 4.0)["edge_index"][0]) for a in cells)
    assert norm.avg_num_neighbors == pytest.approx(edges / sum(len(a) for a in cells), rel=1e-12)
    (tmp_path / "e0.json").write_text(json.dumps({"Cu": 1.0, "28": 2.0}))
    assert compute(ds, ["Cu", "Ni"], str(tmp_path / "e0.json")).atomic_energies == [1.0, 2.0]


# ------------------------------------------------------------------------------- bad input

def _expect(tmp_path, cells, match, **keys):
    path = write(tmp_path / "bad.xyz", cells)
    with pytest.raises(DataError, match=match):
        AtomsDataset.from_file(path, 4.0, LabelKeys(**keys), cache=False)


def test_missing_label_key_names_file_structure_and_key(tmp_path):
    cells = emt_cells(3, seed=7)
    del cells[1].arrays["REF_forces"]
    _expect(tmp_path, cells, r"bad\.xyz: structure 1 lacks label 'REF_forces'")
    _expect(tmp_path, emt_cells(2, seed=7), r"no structure has an energy label 'E_dft'", energy="E_dft")


def test_nan_and_wrong_shape_labels(tmp_path):
    cells = emt_cells(3, seed=8)
    cells[2].info["REF_energy"] = float("nan")
    _expect(tmp_path, cells, r"structure 2: label 'REF_energy' holds NaN")
    cells = emt_cells(3, seed=8)
    cells[1].info["REF_stress"] = np.ones(4)
    _expect(tmp_path, cells, r"structure 1: label 'REF_stress' has shape \(4,\)")
    cells = emt_cells(2, seed=8)
    cells[0].arrays["REF_forces"][0, 1] = np.inf
    _expect(tmp_path, cells, r"structure 0: label 'REF_forces' holds NaN or infinite")


def test_empty_and_unreadable_files(tmp_path):
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(DataError, match="empty.xyz"):
        AtomsDataset.from_file(str(tmp_path / "empty.xyz"), 4.0, cache=False)
    with pytest.raises(DataError, match="does not exist"):
        AtomsDataset.from_file(str(tmp_path / "nope.xyz"), 4.0)


def test_stress_on_a_molecule_is_dropped_with_a_warning(tmp_path):
    from ase import Atoms

    cells = []
    for k in range(2):
        mol = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.4 + 0.1 * k, 0]])
        mol.info.update(REF_energy=-1.0 - k, REF_stress=np.zeros(6))
        mol.arrays["REF_forces"] = np.zeros((3, 3))
        cells.append(mol)
    path = write(tmp_path / "mol.xyz", cells)
    with pytest.warns(UserWarning, match="stress labels of 2 structure"):
        ds = AtomsDataset.from_file(path, 4.0, cache=False)
    assert np.isnan(np.asarray(ds.arrays["stress"])).all()
    assert not ds.has("stress") and ds.has("forces")


def test_element_not_in_the_model(tmp_path):
    from tacegen.train.evaluate import check_elements

    cells = emt_cells(3, seed=9)
    cells[2].symbols[3] = "Zn"
    ds = AtomsDataset.from_file(write(tmp_path / "zn.xyz", cells), 4.0)
    with pytest.raises(DataError, match=r"zn\.xyz: structure 2 atom 3 is 'Zn', which is not one of the model's elements \['Cu'\]"):
        check_elements(ds, ["Cu"])
    with pytest.raises(DataError, match=r"structure 2 atom 3 is 'Zn'"):
        ds.collate([2], species_map(["Cu"]), torch.float64)
