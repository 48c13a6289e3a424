"""External inputs and tensor outputs of generated models (run time of :mod:`tacegen.ir.embeddings`).

The compiler prints an *IO plan* (``IO_PLAN`` in ``model.py``): plain data with exact
coefficients as "p/q" strings. This module reads input values from ASE structures into a
batch, embeds them into the first layer's node features (:class:`InputEmbedding`), reads
the declared tensor outputs from the node features (:class:`TensorReadout`) and computes
field responses by autograd (:func:`field_response`).

Batch keys: ``input_<name>``: per structure (B,) or (B, 3), per atom (N,) or (N, 3), in the
batch's float dtype; a category input is (B,) int64. Rank-1 values are Cartesian
components (x, y, z), which are also the reduced coordinates of rank 1.

Units are the user's: the model is trained on what it is given.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

DEFAULT_CATEGORIES = 8


def _key(name: str) -> str:
    return f"input_{name}"


def _as_specs(specs) -> List[dict]:
    out = []
    for s in specs or ():
        out.append(dict(s) if isinstance(s, dict) else s.to_dict())
    return out


def input_specs_of(model) -> List[dict]:
    """The input descriptors a model reads (``model.input_specs``), or [] for a model without inputs."""
    return _as_specs(getattr(model, "input_specs", None) or ())


def read_inputs(structures, specs, dtype: torch.dtype, device) -> Dict[str, Tensor]:
    """``input_<name>`` tensors of a batch from ``atoms.info[name]`` (per structure) and
    ``atoms.arrays[name]`` (per atom), or the attached calculator's results under that name
    (where ASE's extxyz reader puts columns named like calculator properties). ValueError naming the structure, the key and the
    expected shape for a missing, non-numeric, non-finite or wrongly shaped value."""
    out: Dict[str, Tensor] = {}
    for spec in _as_specs(specs):
        name, per, rank, kind = spec["name"], spec["per"], int(spec["rank"]), spec.get("kind", "float")
        where = "atoms.info" if per == "structure" else "atoms.arrays"
        rows = []
        for b, atoms in enumerate(structures):
            source = atoms.info if per == "structure" else atoms.arrays
            shape = (3,) * rank if per == "structure" else (len(atoms),) + (3,) * rank
            expected = "one integer category >= 0" if kind == "category" else f"shape {shape}"
            calc_results = getattr(getattr(atoms, "calc", None), "results", None) or {}
            if name not in source and name in calc_results:
                # extxyz hands per-atom columns named like calculator properties (magmom, charges)
                # to a SinglePointCalculator on reading: take them from there
                source = {name: calc_results[name]}
            if name not in source:
                raise ValueError(f"structure {b}: {where}[{name!r}] is missing; input {name!r} needs {expected} "
                                 f"({spec['rank']}{spec['parity']} {spec['time']}, per {per})")
            value = source[name]
            if kind == "category":
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
                    raise ValueError(f"structure {b}: {where}[{name!r}] = {value!r}; input {name!r} needs {expected}")
                rows.append(int(value))
                continue
            try:
                array = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"structure {b}: {where}[{name!r}] = {value!r} is not numeric; input {name!r} "
                                 f"needs {expected}") from None
            if isinstance(value, (bool, np.bool_)) or array.shape != shape:
                raise ValueError(f"structure {b}: {where}[{name!r}] has shape {array.shape}; input {name!r} needs "
                                 f"{expected}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"structure {b}: {where}[{name!r}] holds NaN or infinite values")
            rows.append(array)
        if kind == "category":
            out[_key(name)] = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)
        else:
            joined = np.stack(rows) if per == "structure" else np.concatenate(rows)
            out[_key(name)] = torch.as_tensor(joined, dtype=dtype, device=device)
    return out


def _dense(entries, shape, dtype) -> Tensor:
    table = torch.zeros(shape, dtype=torch.float64)
    for *index, value in entries:
        table[tuple(index)] = float(Fraction(value))
    return table.to(dtype)


def _per_atom(value: Tensor, spec: dict, batch: Dict[str, Tensor]) -> Tensor:
    """(N, 2r+1) values of one float input at every atom."""
    if spec["per"] == "structure":
        value = value.index_select(0, batch["batch"])
    return value.reshape(value.shape[0], -1)


class InputEmbedding(torch.nn.Module):
    """First-layer node features and edge features from the inputs (see :mod:`tacegen.ir.embeddings`).

    Node rank l of the first layer gets ``sum_f x_f W_l[f]`` over its features f (a learned
    vector of channels per feature); rank 0 also the element embedding and, per category
    input, a learned embedding of the category, and each category has its own per-element
    reference energies (``energy_tables``, zero at construction; :meth:`energy_offsets`) and
    scale of the learned energy (``scale_tables``, one at construction; :meth:`energy_scales`).
    Edge features s_ij multiply copies of the radial basis (``edge_multiplier`` = 1 + their
    number)."""

    def __init__(self, plan: dict, channels: int, dtype: torch.dtype, categories: Optional[dict] = None,
                 num_elements: int = 1):
        super().__init__()
        self.specs: List[dict] = [dict(s) for s in plan["inputs"]]
        self.first_ranks: List[int] = list(plan["first_ranks"])
        self.node_plan = list(plan["node_features"])
        self.edge_plan = list(plan["edge_features"])
        self.edge_multiplier = 1 + len(self.edge_plan)
        names = [s["name"] for s in self.specs if s.get("kind") == "category"]
        categories = dict(categories or {})
        unknown = sorted(set(categories) - set(names))
        if unknown:
            raise ValueError(f"input_categories names {unknown}, which are not category inputs of this model "
                             f"(category inputs: {names})")
        self.weights = torch.nn.ParameterList()
        for rank in self.first_ranks:
            count = sum(1 for f in self.node_plan if f["rank"] == rank)
            self.weights.append(torch.nn.Parameter(torch.randn(count, channels, dtype=dtype) / math.sqrt(max(count, 1))))
        self.category_names = names
        self.category_tables = torch.nn.ParameterList()
        for name in names:
            k = categories.get(name, DEFAULT_CATEGORIES)
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"input_categories[{name!r}] must be an integer >= 1, got {k!r}")
            self.category_tables.append(torch.nn.Parameter(torch.randn(k, channels, dtype=dtype)))
        # per-category reference energies (eV per atom of each element; zero at construction):
        # a fidelity or level-of-theory label shifts the energy scale it is trained on
        self.energy_tables = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(table.shape[0], num_elements, dtype=dtype)) for table in self.category_tables])
        # and its own scale of the learned energy (one at construction)
        self.scale_tables = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.ones(table.shape[0], dtype=dtype)) for table in self.category_tables])
        for k, f in enumerate(self.node_plan):
            if f["table"] is not None:
                a, b = self.specs[f["a"]]["rank"], self.specs[f["b"]]["rank"]
                self.register_buffer(f"node_table{k}", _dense(f["table"], (2 * a + 1, 2 * b + 1, 2 * f["rank"] + 1), dtype))
        for k, f in enumerate(self.edge_plan):
            r = self.specs[f["a"]]["rank"]
            self.register_buffer(f"edge_table{k}", _dense(f["table"], (2 * r + 1, 2 * r + 1, 1), dtype))

    def values(self, batch: Dict[str, Tensor]) -> Dict[int, Tensor]:
        """Float input k -> its values at every atom, (N, 2 rank + 1)."""
        out = {}
        for k, spec in enumerate(self.specs):
            if spec.get("kind") == "category":
                continue
            key = _key(spec["name"])
            if key not in batch:
                raise KeyError(f"the batch lacks {key!r} (input {spec['name']!r}); build it with "
                               f"batch_atoms(..., inputs=model.input_specs)")
            out[k] = _per_atom(batch[key], spec, batch)
        return out

    def node_features(self, h0: Tensor, batch: Dict[str, Tensor]) -> List[Tensor]:
        """[h_rank (N, channels, 2 rank + 1) for rank in first_ranks]; ``h0`` (N, channels) the element
        embedding."""
        x = self.values(batch)
        for name, table in zip(self.category_names, self.category_tables):
            index = batch[_key(name)]
            if bool((index >= table.shape[0]).any()):
                b = int(torch.nonzero(index >= table.shape[0])[0, 0])
                raise ValueError(f"structure {b}: input {name!r} = {int(index[b])} is outside 0..{table.shape[0] - 1} "
                                 f"(the model's input_categories[{name!r}] = {table.shape[0]})")
            h0 = h0 + table.index_select(0, index).index_select(0, batch["batch"])
        out: List[Tensor] = []
        for position, rank in enumerate(self.first_ranks):
            feats = []
            for k, f in enumerate(self.node_plan):
                if f["rank"] != rank:
                    continue
                if f["b"] is None:
                    feats.append(x[f["a"]])
                else:
                    feats.append(torch.einsum("na,nb,abc->nc", x[f["a"]], x[f["b"]], getattr(self, f"node_table{k}")))
            h = h0.unsqueeze(-1) if rank == 0 else None
            if feats:
                term = torch.einsum("nfd,fc->ncd", torch.stack(feats, dim=1), self.weights[position])
                h = term if h is None else h + term
            out.append(h)
        return out

    def energy_offsets(self, species: Tensor, batch: Dict[str, Tensor]) -> Tensor:
        """(N,) per-atom reference energy of each atom's element at its structure's category, eV."""
        total = torch.zeros(species.shape[0], dtype=batch["positions"].dtype, device=species.device)
        for name, table in zip(self.category_names, self.energy_tables):
            category = batch[_key(name)].index_select(0, batch["batch"])
            total = total + table[category, species]
        return total

    def energy_scales(self, batch: Dict[str, Tensor]) -> Tensor:
        """(N,) factor of the learned node energy: the product of each category input's scale."""
        total = torch.ones(batch["batch"].shape[0], dtype=batch["positions"].dtype, device=batch["batch"].device)
        for name, table in zip(self.category_names, self.scale_tables):
            total = total * table.index_select(0, batch[_key(name)]).index_select(0, batch["batch"])
        return total

    def edge_features(self, radial: Tensor, batch: Dict[str, Tensor], senders: Tensor, receivers: Tensor) -> Tensor:
        """(E, num_radial * edge_multiplier): the radial basis and its copies scaled by each edge feature."""
        if not self.edge_plan:
            return radial
        x = self.values(batch)
        parts = [radial]
        for k, f in enumerate(self.edge_plan):
            a = x[f["a"]].index_select(0, receivers)
            b = x[f["b"]].index_select(0, senders)
            s = torch.einsum("ea,eb,abc->ec", a, b, getattr(self, f"edge_table{k}"))
            parts.append(radial * s)
        return torch.cat(parts, dim=-1)


class TensorReadout(torch.nn.Module):
    """Declared tensor outputs from the node features of the layers before the last.

    Per output and part of weight j: a natural part is ``sum_c w[c] h_j[:, c, :]``; a pseudo
    part is ``sum_c w[c] couple(h_1 U, h_j V)[:, c, :]`` through the odd path 1 x j -> j;
    each is embedded exactly (the plan's matrix) and the parts are summed, per atom, then
    per structure for structure outputs."""

    def __init__(self, plan: dict, channels: int, layers: int, dtype: torch.dtype):
        super().__init__()
        self.outputs = [dict(o) for o in plan["outputs"]]
        if self.outputs and layers < 1:
            names = [o["name"] for o in self.outputs]
            raise ValueError(f"outputs {names} are read from every layer but the last: the model needs layers >= 2")
        self.params = torch.nn.ParameterDict()
        for o in self.outputs:
            n = int(o["rank"])
            for p, part in enumerate(o["parts"]):
                j = int(part["weight"])
                tag = f"{o['name']}_{p}"
                self.register_buffer(f"matrix_{tag}", _dense(part["matrix"], (3**n, 2 * j + 1), dtype))
                self.params[f"w_{tag}"] = torch.nn.Parameter(torch.randn(layers, channels, dtype=dtype) / math.sqrt(channels))
                for t, term in enumerate(part.get("odd_terms") or []):  # time-odd output: x_a (x) h_k -> j
                    self.register_buffer(f"odd_{tag}_{t}", _dense(term["table"], (2 * term["rank"] + 1, 2 * term["k"] + 1,
                                                                                  2 * j + 1), dtype))
                    self.params[f"w_{tag}_{t}"] = torch.nn.Parameter(
                        torch.randn(layers, channels, dtype=dtype) / math.sqrt(channels))
                if not part["natural"] and o["time"] != "odd":
                    self.register_buffer(f"coupling_{tag}", _dense(part["coupling"], (3, 2 * j + 1, 2 * j + 1), dtype))
                    for side in ("u", "v"):
                        self.params[f"{side}_{tag}"] = torch.nn.Parameter(
                            torch.randn(layers, channels, channels, dtype=dtype) / math.sqrt(channels))

    def accumulate(self, values: Dict[str, Tensor], h: List[Tensor], layer: int,
                   inputs: Optional[Dict[int, Tensor]] = None) -> Dict[str, Tensor]:
        """``values`` plus this layer's per-atom contributions (N, 3^rank) of every output;
        ``inputs``: the float inputs at every atom (:meth:`InputEmbedding.values`), needed by
        time-odd outputs."""
        for o in self.outputs:
            total: Optional[Tensor] = None
            for p, part in enumerate(o["parts"]):
                j = int(part["weight"])
                tag = f"{o['name']}_{p}"
                w = self.params[f"w_{tag}"][layer]
                if o["time"] == "odd":
                    x = None
                    for t, term in enumerate(part["odd_terms"]):
                        c = torch.einsum("na,nkb,abd,k->nd", inputs[term["a"]], h[term["k"]],
                                         getattr(self, f"odd_{tag}_{t}"), self.params[f"w_{tag}_{t}"][layer])
                        x = c if x is None else x + c
                elif part["natural"]:
                    x = torch.einsum("ncd,c->nd", h[j], w)
                else:
                    u = torch.einsum("ncd,ck->nkd", h[1], self.params[f"u_{tag}"][layer])
                    v = torch.einsum("ncd,ck->nkd", h[j], self.params[f"v_{tag}"][layer])
                    x = torch.einsum("nka,nkb,abd,k->nd", u, v, getattr(self, f"coupling_{tag}"), w)
                term = x @ getattr(self, f"matrix_{tag}").T
                total = term if total is None else total + term
            values[o["name"]] = total if o["name"] not in values else values[o["name"]] + total
        return values

    def finish(self, values: Dict[str, Tensor], batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Outputs by name: per atom (N, 3, ...), per structure (B, 3, ...) summed over its atoms."""
        out: Dict[str, Tensor] = {}
        num_structures = batch["num_atoms"].shape[0]
        for o in self.outputs:
            v = values[o["name"]]
            if o["per"] == "structure":
                v = torch.zeros((num_structures, v.shape[1]), dtype=v.dtype, device=v.device).index_add(
                    0, batch["batch"], v)
            out[o["name"]] = v.reshape((v.shape[0],) + (3,) * int(o["rank"]))
        return out


def field_response(model, batch: Dict[str, Tensor], name: str, order: int = 1) -> Tensor:
    """Response of the energy to an input by autograd: order 1 gives -dE/dF in the shape of the
    input (the dipole (B, 3) for an electric field; per-atom -dE/dm_i (N, 3), the magnetic
    torque-like force, for magnetic moments), order 2 (per-structure inputs) gives -d2E/dF2
    ((B, 3, 3) for a vector field: the polarizability). ``batch`` from
    ``batch_atoms(..., inputs=...)``."""
    specs = {s["name"]: s for s in input_specs_of(model)}
    if name not in specs:
        raise ValueError(f"model has no input {name!r}; its inputs: {sorted(specs)}")
    spec = specs[name]
    if spec.get("kind", "float") != "float":
        raise ValueError(f"field_response needs a float input; {name!r} is a category")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if order == 2 and spec["per"] != "structure":
        raise ValueError(f"second-order responses are implemented for per-structure inputs; {name!r} is per atom")
    batch = dict(batch)
    field = batch[_key(name)].detach().clone().requires_grad_(True)
    batch[_key(name)] = field
    with torch.enable_grad():
        node_energy = model.node_energies(batch["positions"], batch["cell"], batch)
        energy = torch.zeros(batch["num_atoms"].shape[0], dtype=node_energy.dtype,
                             device=node_energy.device).index_add(0, batch["batch"], node_energy)
        (grad,) = torch.autograd.grad(energy.sum(), field, create_graph=order > 1)
        if order == 1:
            return -grad.detach()
        flat = grad.reshape(grad.shape[0], -1)
        rows = []
        for a in range(flat.shape[1]):
            (row,) = torch.autograd.grad(flat[:, a].sum(), field, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(field) if row is None else row)
        return -torch.stack(rows, dim=1).detach()
