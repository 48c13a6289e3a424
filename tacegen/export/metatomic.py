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

Long-range builds (LES, Ewald) are refused: their energy is not a sum of atomic terms
over a cut-off neighbourhood, and their TorchScript path is not ready (see issue 15).
"""

# no `from __future__ import annotations`: metatomic and TorchScript read the real annotations
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import Tensor

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

        def requested_neighbor_lists(self) -> List[NeighborListOptions]:
            return [self.neighbors]

        def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                    selected_atoms: Optional[Labels] = None) -> Dict[str, TensorMap]:
            results: Dict[str, TensorMap] = {}
            if "energy" not in outputs:
                return results
            device = systems[0].positions.device
            positions: List[Tensor] = []
            cells: List[Tensor] = []
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
                positions.append(system.positions)
                cells.append(system.cell.unsqueeze(0))
                species.append(codes)
                batch.append(torch.full((n,), s, dtype=torch.int64, device=device))
                receivers.append(pairs[:, 0] + offset)
                senders.append(pairs[:, 1] + offset)
                shifts.append(pairs[:, 2:5])
                offset += n
            receiver = torch.cat(receivers)
            order = torch.argsort(receiver, stable=True)  # the runtime's edge order: sorted by receiver
            all_positions = torch.cat(positions)
            inputs: Dict[str, Tensor] = {
                "species": torch.cat(species),
                "batch": torch.cat(batch),
                "edge_index": torch.stack([torch.cat(senders)[order], receiver[order]]),
                "edge_shift": torch.cat(shifts)[order].to(all_positions.dtype),
            }
            node = self.model.node_energies(all_positions, torch.cat(cells), inputs)
            atom_system = inputs["batch"]
            atom_index = torch.cat([torch.arange(p.shape[0], device=device) for p in positions])
            keep = torch.ones_like(node, dtype=torch.bool)
            if selected_atoms is not None:
                chosen = selected_atoms.values.to(torch.int64)
                start = torch.cat([torch.zeros(1, dtype=torch.int64, device=device),
                                   torch.cumsum(torch.tensor([p.shape[0] for p in positions], device=device), 0)[:-1]])
                keep = torch.zeros_like(node, dtype=torch.bool)
                keep[start.index_select(0, chosen[:, 0]) + chosen[:, 1]] = True
            properties = Labels(["energy"], torch.tensor([[0]], device=device))
            if outputs["energy"].sample_kind == "atom":
                samples = torch.stack([atom_system, atom_index], dim=1)[keep].to(torch.int32)
                block = TensorBlock(values=node[keep].unsqueeze(-1), samples=Labels(["system", "atom"], samples),
                                    components=torch.jit.annotate(List[Labels], []), properties=properties)
            else:
                energy = torch.zeros(len(systems), dtype=node.dtype, device=device)
                energy = energy.index_add(0, atom_system, torch.where(keep, node, torch.zeros_like(node)))
                samples = torch.arange(len(systems), device=device, dtype=torch.int32).unsqueeze(-1)
                block = TensorBlock(values=energy.unsqueeze(-1), samples=Labels(["system"], samples),
                                    components=torch.jit.annotate(List[Labels], []), properties=properties)
            results["energy"] = TensorMap(Labels(["_"], torch.tensor([[0]], device=device)), [block])
            return results


def atomistic_model(model: torch.nn.Module, spec: Optional[dict] = None, name: str = "tacegen TACE"):
    """Wrap a trained (eval-mode) TACE module as a metatomic ``AtomisticModel``."""
    _require()
    if spec is not None and spec.get("long_range", "none") != "none":
        raise NotImplementedError(f"export of long-range builds (long_range={spec['long_range']!r}) is not "
                                  f"available yet; export a short-range build")
    from ase.data import atomic_numbers

    dtype = next(model.parameters()).dtype
    model = model.eval()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(unit="eV", sample_kind="atom")},  # per atom or, summed, per system
        atomic_types=sorted(atomic_numbers[s] for s in model.elements),
        interaction_range=float(model.num_layers) * float(model.r_cut),
        length_unit="angstrom", supported_devices=devices,
        dtype="float64" if dtype == torch.float64 else "float32")
    metadata = ModelMetadata(name=name, description=(
        f"TACE potential compiled by tacegen (spec {spec}); elements {list(model.elements)}, "
        f"r_cut {model.r_cut} Å, {model.num_layers} layers"))
    return AtomisticModel(MetatomicTACE(model).eval(), metadata, capabilities)


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
