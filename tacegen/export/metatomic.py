"""Export a trained TACE model as a metatomic ``AtomisticModel`` (TorchScript file).

The exported module follows metatomic's model interface: its ``forward`` (arguments
``systems``, ``outputs``, ``selected_atoms``) returns the ``energy`` output, per system
(sample kind "system") or per atom (sample kind "atom"), as metatensor tensor maps; forces and stress are
computed by the engine by differentiating the energy with respect to the positions and a
strain of positions and cell (metatomic's convention), which the model supports since
its edge vectors are formed from positions and cell.

Neighbours: ``requested_neighbor_lists()`` asks for one full, strict list with the
model's cut-off (Å). A metatomic pair (first i, second j, cell shift S) is the edge
from centre i to neighbour j, r_ij = x_j - x_i + S cell (tacegen's convention, see
:mod:`tacegen.runtime.data`). ``selected_atoms`` is honoured: only the selected atoms'
energies are summed or returned, so domain-decomposed engines count each atom once;
unselected atoms still act as neighbours.

Capabilities: atomic types of the model's elements, units eV and Å, interaction range
layers x r_cut (the receptive field of message passing), devices ``cpu`` (and ``cuda``
when available), dtype of the export.

Long-range builds (LES, Ewald)
------------------------------
The long-range energy (LES reciprocal sum or finite erf sum; Ewald real + reciprocal
space or the bare Coulomb sum) is a property of the *whole* system, not a sum of
atomic terms over a cut-off neighbourhood, so the rule is:

* the engine must hand the model every atom of the system, once, with its cell and pbc:
  ``selected_atoms`` must be None or select every atom of every system exactly once;
  anything else (MPI domain decomposition, ghost atoms, e.g. LAMMPS ``pair_style
  metatomic``) is refused with a ValueError rather than returning a wrong energy. ASE
  (metatomic-ase) and i-PI pass whole systems;
* the interaction range is declared infinite (``math.inf``, metatomic's convention for
  explicit long range), and the energy is declared per system only (sample kind
  "system"): the long-range energy is not split over atoms;
* the short-range part still reads the engine's neighbour list (cut-off r_cut); the
  long-range part computes all pairs of a finite system itself; for Ewald in a periodic
  cell it asks the engine for a second full list with the mesh path's real-space cutoff
  (``tacegen.runtime.mesh.MESH_REAL_CUTOFF``, 8 Å), which serves every structure on the
  mesh and any other whose Ewald split needs no more; a larger cutoff (small cells, direct
  sum) falls back to a brute-force search
  (:func:`tacegen.runtime.long_range.long_range_pairs`);
* inputs (``requested_inputs``): Ewald models read the atoms' charges (metatomic's
  per-atom "charge", in ASE ``atoms.get_initial_charges()``); LES models that constrain
  their latent charges read each system's total charge (per-system "charge", in ASE
  ``atoms.info["charge"]``, 0 when absent).

Forces and stress follow from differentiating the returned energy with respect to the
positions and the (strained) cell, as for short-range models.

Declared outputs and external inputs (issue 14 builds)
------------------------------------------------------
See :mod:`tacegen.export.metatomic_io`: declared tensor outputs of a short-range build are
exported as ``tacegen::<name>``; builds with external inputs are refused.
"""

# no `from __future__ import annotations`: metatomic and TorchScript read the real annotations
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from tacegen.runtime.mesh import MESH_REAL_CUTOFF

try:  # optional extra: pip install 'tacegen[metatomic]'
    from metatensor.torch import Labels, TensorBlock, TensorMap
    from metatomic.torch import (AtomisticModel, ModelCapabilities, ModelMetadata, ModelOutput,
                                 NeighborListOptions, System)
except ImportError as _error:  # pragma: no cover - exercised when the extra is missing
    _IMPORT_ERROR: Optional[ImportError] = _error
else:
    _IMPORT_ERROR = None


def _require() -> None:
    if _IMPORT_ERROR is not None:
        raise RuntimeError("tacegen export needs metatomic-torch: pip install 'tacegen[metatomic]' "
                           f"({_IMPORT_ERROR})")


if _IMPORT_ERROR is None:

    class MetatomicTACE(torch.nn.Module):
        """A TACE module behind metatomic's model interface (see the module docstring)."""

        def __init__(self, model: torch.nn.Module):
            super().__init__()
            from ase.data import atomic_numbers

            self.model = model
            self.r_cut = float(model.r_cut)
            table = torch.full((119,), -1, dtype=torch.int64)
            for k, symbol in enumerate(model.elements):
                table[atomic_numbers[symbol]] = k
            self.register_buffer("species_of", table)
            self.neighbors = NeighborListOptions(cutoff=self.r_cut, full_list=True, strict=True)
            self.per_atom = getattr(model, "long_range", "none") == "none"

        def requested_neighbor_lists(self) -> List[NeighborListOptions]:
            return [self.neighbors]

        def batch(self, systems: List[System]) -> Dict[str, Tensor]:
            """tacegen's batch dict (:mod:`tacegen.runtime.data`) of ``systems``: positions, cell
            (all zero for a non-periodic system), pbc, num_atoms, batch, species and the edges of
            the engine's neighbour list, sorted by receiver."""
            device = systems[0].positions.device
            positions: List[Tensor] = []
            cells: List[Tensor] = []
            pbcs: List[Tensor] = []
            counts: List[int] = []
            species: List[Tensor] = []
            batch: List[Tensor] = []
            senders: List[Tensor] = []
            receivers: List[Tensor] = []
            shifts: List[Tensor] = []
            offset = 0
            for s, system in enumerate(systems):
                n = system.positions.shape[0]
                codes = self.species_of.index_select(0, system.types.to(torch.int64))
                if bool((codes < 0).any()):
                    raise ValueError("the system holds an atomic type that is not one of the model's elements")
                pairs = system.get_neighbor_list(self.neighbors).samples.values.to(torch.int64)
                periodic = system.pbc.any()
                positions.append(system.positions)
                cells.append(torch.where(periodic, system.cell, torch.zeros_like(system.cell)).unsqueeze(0))
                pbcs.append(system.pbc.unsqueeze(0))
                counts.append(n)
                species.append(codes)
                batch.append(torch.full((n,), s, dtype=torch.int64, device=device))
                receivers.append(pairs[:, 0] + offset)
                senders.append(pairs[:, 1] + offset)
                shifts.append(pairs[:, 2:5])
                offset += n
            receiver = torch.cat(receivers)
            order = torch.argsort(receiver, stable=True)  # the runtime's edge order: sorted by receiver
            all_positions = torch.cat(positions)
            return {
                "positions": all_positions,
                "cell": torch.cat(cells),
                "pbc": torch.cat(pbcs),
                "num_atoms": torch.tensor(counts, dtype=torch.int64, device=device),
                "species": torch.cat(species),
                "batch": torch.cat(batch),
                "edge_index": torch.stack([torch.cat(senders)[order], receiver[order]]),
                "edge_shift": torch.cat(shifts)[order].to(all_positions.dtype),
            }

        def energies(self, systems: List[System], inputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
            """(atom energies (N,), energies not split over atoms (systems,)): zero for a
            short-range model."""
            node = self.model.node_energies(inputs["positions"], inputs["cell"], inputs)
            return node, torch.zeros(len(systems), dtype=node.dtype, device=node.device)

        def check_selection(self, selected_atoms: Optional[Labels], inputs: Dict[str, Tensor]) -> None:
            """Any selection is allowed: each atom's energy depends on its neighbourhood only."""
            pass

        def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                    selected_atoms: Optional[Labels] = None) -> Dict[str, TensorMap]:
            results: Dict[str, TensorMap] = {}
            if "energy" not in outputs:
                return results
            if outputs["energy"].sample_kind == "atom" and not self.per_atom:
                raise ValueError("this tacegen model has a long-range block: its energy is per system only "
                                 "(sample_kind='system'), the long-range part is not split over atoms")
            device = systems[0].positions.device
            inputs = self.batch(systems)
            self.check_selection(selected_atoms, inputs)
            node, whole = self.energies(systems, inputs)
            atom_system = inputs["batch"]
            counts = inputs["num_atoms"]
            start = torch.cumsum(counts, 0) - counts
            atom_index = torch.arange(node.shape[0], device=device) - start.index_select(0, atom_system)
            keep = torch.ones_like(node, dtype=torch.bool)
            if selected_atoms is not None:
                chosen = selected_atoms.values.to(torch.int64)
                keep = torch.zeros_like(node, dtype=torch.bool)
                keep[start.index_select(0, chosen[:, 0]) + chosen[:, 1]] = True
            properties = Labels(["energy"], torch.tensor([[0]], device=device))
            if outputs["energy"].sample_kind == "atom":
                samples = torch.stack([atom_system, atom_index], dim=1)[keep].to(torch.int32)
                block = TensorBlock(values=node[keep].unsqueeze(-1), samples=Labels(["system", "atom"], samples),
                                    components=torch.jit.annotate(List[Labels], []), properties=properties)
            else:
                energy = whole.index_add(0, atom_system, torch.where(keep, node, torch.zeros_like(node)))
                samples = torch.arange(len(systems), device=device, dtype=torch.int32).unsqueeze(-1)
                block = TensorBlock(values=energy.unsqueeze(-1), samples=Labels(["system"], samples),
                                    components=torch.jit.annotate(List[Labels], []), properties=properties)
            results["energy"] = TensorMap(Labels(["_"], torch.tensor([[0]], device=device)), [block])
            return results

    class MetatomicLongRangeTACE(MetatomicTACE):
        """A TACE with a long-range block (LES or Ewald) behind metatomic's interface: the
        energy of each system is its atoms' short-range energies plus the long-range energy
        of the whole system (see the module docstring for the rule on ``selected_atoms``)."""

        def __init__(self, model: torch.nn.Module):
            super().__init__(model)
            self.ewald = model.long_range == "ewald"
            # Ewald: the engine's full list within the mesh path's real-space cutoff serves the
            # real-space sum (always for structures on the mesh; otherwise when their split's
            # cutoff is within it); larger cutoffs fall back to a brute-force search
            self.ewald_neighbors = NeighborListOptions(cutoff=MESH_REAL_CUTOFF, full_list=True, strict=True)
            # LES reads each system's total charge when the model constrains it; Ewald the atoms' charges
            self.reads_total_charge = model.long_range == "les" and model.total_charge is not None

        def requested_neighbor_lists(self) -> List[NeighborListOptions]:
            if self.ewald:
                return [self.neighbors, self.ewald_neighbors]
            return [self.neighbors]

        def requested_inputs(self) -> Dict[str, ModelOutput]:
            if self.ewald:
                return {"charge": ModelOutput(unit="e", sample_kind="atom")}
            if self.reads_total_charge:
                return {"charge": ModelOutput(unit="e", sample_kind="system")}
            return {}

        def check_selection(self, selected_atoms: Optional[Labels], inputs: Dict[str, Tensor]) -> None:
            """The long-range energy is a property of the whole system: refuse a selection that
            is not every atom of every system exactly once (domain decomposition, ghost atoms)."""
            if selected_atoms is None:
                return
            chosen = selected_atoms.values.to(torch.int64)
            counts = inputs["num_atoms"]
            start = torch.cumsum(counts, 0) - counts
            hits = torch.zeros(inputs["positions"].shape[0], dtype=torch.int64, device=counts.device)
            hits = hits.index_add(0, start.index_select(0, chosen[:, 0]) + chosen[:, 1], torch.ones_like(chosen[:, 0]))
            if not bool((hits == 1).all()):
                raise ValueError(
                    "this tacegen model has a long-range block (" + self.model.long_range + "): its energy needs "
                    "the whole system, so selected_atoms must select every atom of every system once; engines "
                    "that split the system (MPI domain decomposition, ghost atoms, e.g. LAMMPS pair_style "
                    "metatomic) cannot run it")

        def energies(self, systems: List[System], inputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
            dtype = inputs["positions"].dtype
            if self.ewald:
                charges: List[Tensor] = []
                for system in systems:
                    if "charge" not in system.known_data():
                        raise ValueError("this tacegen model (Ewald) needs the atoms' charges: the engine must "
                                         "provide the per-atom 'charge' input (requested_inputs); in ASE set "
                                         "atoms.set_initial_charges and use MetatomicCalculator.calculate")
                    charges.append(system.get_data("charge").block().values.reshape(-1))
                inputs["charges"] = torch.cat(charges).to(dtype)
                senders: List[Tensor] = []
                receivers: List[Tensor] = []
                shifts: List[Tensor] = []
                offset = 0
                for system in systems:
                    pairs = system.get_neighbor_list(self.ewald_neighbors).samples.values.to(torch.int64)
                    receivers.append(pairs[:, 0] + offset)
                    senders.append(pairs[:, 1] + offset)
                    shifts.append(pairs[:, 2:5])
                    offset += system.positions.shape[0]
                inputs["long_range_edge_index"] = torch.stack([torch.cat(senders), torch.cat(receivers)])
                inputs["long_range_edge_shift"] = torch.cat(shifts).to(dtype)
                inputs["long_range_cutoff"] = torch.tensor(self.ewald_neighbors.cutoff, dtype=dtype)
            elif self.reads_total_charge:
                # a system without the input gets the model's default total charge (NaN: not given)
                totals: List[Tensor] = []
                for system in systems:
                    if "charge" in system.known_data():
                        totals.append(system.get_data("charge").block().values.reshape(-1).to(dtype))
                    else:
                        totals.append(torch.full((1,), float("nan"), dtype=dtype, device=system.positions.device))
                inputs["total_charge"] = torch.cat(totals)
            node, features = self.model.node_energies_and_features(inputs["positions"], inputs["cell"], inputs)
            long_range, charges = self.model.long_range_energy(inputs["positions"], inputs["cell"], features, inputs)
            return node, long_range


def atomistic_model(model: torch.nn.Module, spec: Optional[dict] = None, name: str = "tacegen TACE"):
    """Wrap a trained (eval-mode) TACE module as a metatomic ``AtomisticModel``."""
    _require()
    import math

    from ase.data import atomic_numbers

    long_range = getattr(model, "long_range", "none")
    if spec is not None and spec.get("long_range", "none") != long_range:
        raise ValueError(f"the spec says long_range={spec.get('long_range', 'none')!r} but the model's block is "
                         f"{long_range!r}")

    from tacegen.export import metatomic_io

    metatomic_io.check_exportable(model)  # external inputs: NotImplementedError naming them
    dtype = next(model.parameters()).dtype
    model = model.eval()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    # short range: per atom or, summed, per system; long range: per system (the long-range
    # energy is not split over atoms) and an infinite interaction range
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(unit="eV", sample_kind="system" if long_range != "none" else "atom"),
                 **metatomic_io.output_capabilities(model)},  # declared tensor outputs: tacegen::<name>
        atomic_types=sorted(atomic_numbers[s] for s in model.elements),
        interaction_range=math.inf if long_range != "none" else float(model.num_layers) * float(model.r_cut),
        length_unit="angstrom", supported_devices=devices,
        dtype="float64" if dtype == torch.float64 else "float32")
    metadata = ModelMetadata(name=name, description=(
        f"TACE potential compiled by tacegen (spec {spec}); elements {list(model.elements)}, "
        f"r_cut {model.r_cut} Å, {model.num_layers} layers"))
    wrapper = MetatomicTACE(model) if long_range == "none" else MetatomicLongRangeTACE(model)
    if metatomic_io.declared_outputs(model):
        wrapper = metatomic_io.MetatomicOutputsTACE(model)
    return AtomisticModel(wrapper.eval(), metadata, capabilities)


def export_checkpoint(checkpoint: Union[str, Path], out: Union[str, Path], dtype: Optional[str] = None,
                      use_ema: bool = True) -> Path:
    """Write the model of a ``tacegen train`` checkpoint as a metatomic file (atomically)."""
    _require()
    import os
    import tempfile

    from tacegen.train.checkpoint import model_from_payload, read

    payload = read(checkpoint)
    model = model_from_payload(payload, checkpoint, use_ema=use_ema)
    if dtype is not None:
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")
        model = model.to(torch.float64 if dtype == "float64" else torch.float32)
    exported = atomistic_model(model, payload["spec"], name=f"tacegen {Path(checkpoint).name}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        exported.save(tmp)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out
