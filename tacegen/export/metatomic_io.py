"""Declared tensor outputs of a TACE in its metatomic export (issues 14 and 15).

A build with outputs (``--output dipole`` ...) and no external inputs exports, next to the
energy, each declared output as a non-standard metatomic output ``tacegen::<name>``
(metatomic's ``<domain>::<output>`` convention; unit ""): sample kind "system" (samples
``system``) for a per-structure tensor, "atom" (samples ``system``, ``atom``) for a
per-atom one, with one component axis ``xyz_1`` .. ``xyz_rank`` (0, 1, 2 = x, y, z) per
Cartesian index and one property ``_``, the values of the model's output dict.
``selected_atoms`` is honoured as for the energy: per-atom outputs of the selected atoms,
per-structure outputs summed over them. In ASE: ``MetatomicCalculator(path,
additional_outputs={"tacegen::dipole": ModelOutput(sample_kind="system")})``, then
``calc.additional_outputs["tacegen::dipole"]``.

Builds with external inputs (total charge, fields, fidelity, moments ...) are refused.
metatomic-torch (0.1.19) does let a model ask for extra inputs (``requested_inputs()``, one
``ModelOutput`` per name, handed over as ``System.get_data(name)``), but the metatomic ASE
calculator (metatomic-ase 0.1.4) cannot feed tacegen's: it provides its standard quantities
(per-system "charge" from ``atoms.info["charge"]`` and "spin_multiplicity"; per-atom
"charge", "mass", "velocity", "momentum", ``ase::initial_charges``, ``ase::initial_magmoms``,
``ase::tags``), none of which reads ``atoms.info[name]`` / ``atoms.arrays[name]`` for the
names tacegen declares (``total_charge``, ``electric_field``, ``magmom`` ...), and the
generic requests its docstring advertises, ``ase::info::<key>`` and ``ase::arrays::<key>``,
fail in that version with "The model requested ..., which is not available in `ase`" (its
``_get_ase_input`` falls through to the standard-quantity check); ``ase::info::`` would
also take scalars only (``float(atoms.info[key])``), not a field vector. An export could
therefore not be run against the values the model was trained on; the guard test in
``tests/test_export_metatomic_io.py`` notices when a metatomic-ase release feeds
``ase::info::`` / ``ase::arrays::``. Long-range builds with outputs are refused too (not
exported yet).
"""

# no `from __future__ import annotations`: metatomic and TorchScript read the real annotations
from typing import Dict, List, Optional

import torch
from torch import Tensor

from tacegen.export.metatomic import _IMPORT_ERROR

DOMAIN = "tacegen::"


def declared_outputs(model: torch.nn.Module) -> List[dict]:
    """The model's declared tensor outputs (plan dicts: name, per, rank, ...), [] for none."""
    return [dict(o) for o in getattr(getattr(model, "outputs", None), "outputs", [])]


def check_exportable(model: torch.nn.Module) -> None:
    """NotImplementedError naming what cannot be exported: external inputs, or outputs of a
    long-range build."""
    inputs = [s["name"] for s in getattr(model, "input_specs", None) or []]
    if inputs:
        raise NotImplementedError(
            f"this TACE reads external inputs {inputs}, which its metatomic export does not support: metatomic's "
            "ASE calculator (metatomic-ase 0.1.4) feeds requested inputs only for its standard quantities (charge, "
            "spin_multiplicity, per-atom charges, initial magnetic moments ...), and its generic "
            "'ase::info::<key>' / 'ase::arrays::<key>' requests fail with 'not available in `ase`' (and take "
            "scalars only), so atoms.info/atoms.arrays[name] cannot reach the model; export a build without "
            "--input")
    outputs = [o["name"] for o in declared_outputs(model)]
    if outputs and getattr(model, "long_range", "none") != "none":
        raise NotImplementedError(f"the metatomic export of a long-range TACE with declared outputs {outputs} is "
                                  "not supported yet; export a build without --output")


if _IMPORT_ERROR is None:
    from metatensor.torch import Labels, TensorBlock, TensorMap
    from metatomic.torch import ModelOutput, System

    from tacegen.export.metatomic import MetatomicTACE

    def output_capabilities(model: torch.nn.Module) -> Dict[str, ModelOutput]:
        """``tacegen::<name>`` -> ModelOutput of each declared output (see the module docstring)."""
        return {DOMAIN + o["name"]: ModelOutput(unit="", sample_kind="system" if o["per"] == "structure" else "atom")
                for o in declared_outputs(model)}

    class MetatomicOutputsTACE(torch.nn.Module):
        """A short-range TACE with declared outputs behind metatomic's interface: the energy from
        :class:`tacegen.export.metatomic.MetatomicTACE` (which also asks for the neighbour list),
        the outputs as ``tacegen::<name>`` tensor maps."""

        output_names: List[str]
        output_keys: List[str]
        output_ranks: List[int]
        output_per_structure: List[bool]

        def __init__(self, model: torch.nn.Module):
            super().__init__()
            outputs = declared_outputs(model)
            self.energy = MetatomicTACE(model)
            self.output_names = [str(o["name"]) for o in outputs]
            self.output_keys = [DOMAIN + name for name in self.output_names]
            self.output_ranks = [int(o["rank"]) for o in outputs]
            self.output_per_structure = [o["per"] == "structure" for o in outputs]

        def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                    selected_atoms: Optional[Labels] = None) -> Dict[str, TensorMap]:
            results = self.energy(systems, outputs, selected_atoms)
            wanted = False
            for key in self.output_keys:
                if key in outputs:
                    wanted = True
            if not wanted:
                return results
            inputs = self.energy.batch(systems)
            values = self.energy.model.node_energies_and_outputs(inputs["positions"], inputs["cell"], inputs)
            device = inputs["positions"].device
            atom_system = inputs["batch"]
            counts = inputs["num_atoms"]
            num_atoms = atom_system.shape[0]
            start = torch.cumsum(counts, 0) - counts
            atom_index = torch.arange(num_atoms, device=device) - start.index_select(0, atom_system)
            keep = torch.ones(num_atoms, dtype=torch.bool, device=device)
            if selected_atoms is not None:
                chosen = selected_atoms.values.to(torch.int64)
                keep = torch.zeros(num_atoms, dtype=torch.bool, device=device)
                keep[start.index_select(0, chosen[:, 0]) + chosen[:, 1]] = True
            properties = Labels(["_"], torch.tensor([[0]], device=device))
            for k, name in enumerate(self.output_names):
                key = self.output_keys[k]
                if key not in outputs:
                    continue
                rank = self.output_ranks[k]
                per_atom = values[name]  # (N, 3^rank)
                components: List[Labels] = []
                for axis in range(rank):
                    components.append(Labels(["xyz_" + str(axis + 1)],
                                             torch.arange(3, device=device, dtype=torch.int32).unsqueeze(-1)))
                if self.output_per_structure[k]:
                    summed = torch.zeros((len(systems), per_atom.shape[1]), dtype=per_atom.dtype, device=device)
                    summed = summed.index_add(0, atom_system, per_atom * keep.unsqueeze(-1).to(per_atom.dtype))
                    samples = Labels(["system"], torch.arange(len(systems), device=device,
                                                              dtype=torch.int32).unsqueeze(-1))
                    table = summed
                else:
                    samples = Labels(["system", "atom"],
                                     torch.stack([atom_system, atom_index], dim=1)[keep].to(torch.int32))
                    table = per_atom[keep]
                shape: List[int] = [table.shape[0]] + [3] * rank + [1]
                block = TensorBlock(values=table.reshape(shape), samples=samples, components=components,
                                    properties=properties)
                results[key] = TensorMap(Labels(["_"], torch.tensor([[0]], device=device)), [block])
            return results
