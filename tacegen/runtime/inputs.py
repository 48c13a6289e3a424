"""External inputs and tensor outputs of generated models (run time of :mod:`tacegen.ir.embeddings`).

The compiler prints an *IO plan* (``IO_PLAN`` in ``model.py``): plain data with exact
coefficients as "p/q" strings. This module reads input values from ASE structures into a
batch, embeds them into the first layer's node features (:class:`InputEmbedding`), reads
the declared tensor outputs from the node features (:class:`TensorReadout`) and computes
field responses by autograd (:func:`field_response`; of the whole energy, long-range part
included, :func:`energies_and_values`).

Batch keys: ``input_<name>``: per structure (B,) or (B, 3), per atom (N,) or (N, 3), in the
batch's float dtype; a category input is (B,) int64. Rank-1 values are Cartesian
components (x, y, z), which are also the reduced coordinates of rank 1.

Units are the user's: the model is trained on what it is given.
"""

import json
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
    """The input descriptors a model reads (``model.input_specs``; for a TorchScript module, which
    keeps no Python lists of dicts, ``model.inputs.specs_json``), or [] for a model without inputs."""
    specs = getattr(model, "input_specs", None)
    if not specs:
        text = getattr(getattr(model, "inputs", None), "specs_json", None)
        specs = json.loads(text) if isinstance(text, str) else ()
    return _as_specs(specs)


def output_specs_of(model) -> List[dict]:
    """The declared tensor outputs of a model (``model.outputs.outputs``: dicts with name, per,
    rank, ...; for a TorchScript module ``model.outputs.outputs_json``), or []."""
    readout = getattr(model, "outputs", None)
    outputs = getattr(readout, "outputs", None)
    if not isinstance(outputs, list):
        text = getattr(readout, "outputs_json", None)
        outputs = json.loads(text) if isinstance(text, str) else []
    return [dict(o) for o in outputs]


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


class _Renames:
    """A load_state_dict pre-hook reading the parameter and buffer names of the first io release
    (``params.w_<output>_<part>``, ``node_table<k>``, ...) under their present module paths, and
    giving a state dict saved before the per-category energy heads (``zeros``: name -> shape;
    :meth:`InputEmbedding.category_energies`) their zero tables, so such checkpoints load and
    predict what they predicted."""

    def __init__(self, renames: Dict[str, str], zeros: Optional[Dict[str, tuple]] = None,
                 dtype: torch.dtype = torch.float64):
        self.renames = dict(renames)
        self.zeros, self.dtype = dict(zeros or {}), dtype

    def __call__(self, state_dict, prefix, *args) -> None:
        for old, new in self.renames.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        if self.zeros and any(key.startswith(prefix) for key in state_dict):  # this module's state, saved before
            for name, shape in self.zeros.items():
                if prefix + name not in state_dict:
                    state_dict[prefix + name] = torch.zeros(shape, dtype=self.dtype)


def category_head(scalars: List[Tensor], category: Tensor, table: Tensor) -> Tensor:
    """The per-category energy head of one category input: (N,) with

        head_i = sum_t sum_c  table[k_i, t, c] * scalars[t][i, c]

    ``scalars``: the scalar (l = 0) node features after each layer t, [(N, channels)] * layers;
    ``category``: (N,) int64, the category k_i of each atom (its structure's); ``table``:
    (categories, layers, channels), a learned weight vector per category and layer (zero at
    construction). A pure function of (per-layer scalar features, category), so other back ends
    can mirror it."""
    weights = table.index_select(0, category)  # (N, layers, channels)
    total = torch.zeros(category.shape[0], dtype=table.dtype, device=table.device)
    for t, h in enumerate(scalars):
        total = total + (h * weights[:, t]).sum(dim=-1)
    return total


class _NodeTerm(torch.nn.Module):
    """One first-layer node feature: float input ``a`` as it is (``b`` < 0), or the exact coupling
    (x_a x x_b) -> rank through ``table`` (2a+1, 2b+1, 2 rank + 1)."""

    rank: int
    a: int
    b: int

    def __init__(self, rank: int, a: int, b: int, table: Optional[Tensor], dtype: torch.dtype):
        super().__init__()
        self.rank, self.a, self.b = rank, a, b
        self.register_buffer("table", torch.zeros(0, dtype=dtype) if table is None else table,
                             persistent=table is not None)

    def forward(self, x: Dict[int, Tensor]) -> Tensor:
        if self.b < 0:
            return x[self.a]
        return torch.einsum("na,nb,abc->nc", x[self.a], x[self.b], self.table)


class _EdgeTerm(torch.nn.Module):
    """One edge feature s_ij: x_a at the receiver i coupled to x_b at the sender j -> scalar (``table``)."""

    a: int
    b: int

    def __init__(self, a: int, b: int, table: Tensor):
        super().__init__()
        self.a, self.b = a, b
        self.register_buffer("table", table)

    def forward(self, x: Dict[int, Tensor], senders: Tensor, receivers: Tensor) -> Tensor:
        return torch.einsum("ea,eb,abc->ec", x[self.a].index_select(0, receivers),
                            x[self.b].index_select(0, senders), self.table)


class InputEmbedding(torch.nn.Module):
    """First-layer node features and edge features from the inputs (see :mod:`tacegen.ir.embeddings`).

    Node rank l of the first layer gets ``sum_f x_f W_l[f]`` over its features f (a learned
    vector of channels per feature); rank 0 also the element embedding and, per category
    input, a learned embedding of the category, and each category has its own per-element
    reference energies (``energy_tables``, zero at construction; :meth:`energy_offsets`) and
    scale of the learned energy (``scale_tables``, one at construction; :meth:`energy_scales`) and
    energy head on the scalar node features of every layer (``head_tables``, zero at
    construction; :meth:`category_energies`, :func:`category_head`).
    Edge features s_ij multiply copies of the radial basis (``edge_multiplier`` = 1 + their
    number). The plan is read here, in the constructor (typed lists, exact tables as buffers),
    so the forward methods are TorchScript compatible."""

    __jit_ignored_attributes__ = ["specs", "node_plan", "edge_plan"]
    first_ranks: List[int]
    input_names: List[str]
    input_keys: List[str]
    float_inputs: List[int]
    per_structure: List[bool]
    category_names: List[str]
    category_keys: List[str]
    edge_multiplier: int
    specs_json: str

    def __init__(self, plan: dict, channels: int, dtype: torch.dtype, categories: Optional[dict] = None,
                 num_elements: int = 1, layers: int = 0):
        super().__init__()
        self.specs: List[dict] = [dict(s) for s in plan["inputs"]]
        self.first_ranks = [int(r) for r in plan["first_ranks"]]
        self.node_plan = list(plan["node_features"])
        self.edge_plan = list(plan["edge_features"])
        self.edge_multiplier = 1 + len(self.edge_plan)
        self.input_names = [str(s["name"]) for s in self.specs]
        self.input_keys = [_key(name) for name in self.input_names]
        self.float_inputs = [k for k, s in enumerate(self.specs) if s.get("kind") != "category"]
        self.per_structure = [s["per"] == "structure" for s in self.specs]
        self.specs_json = json.dumps(self.specs)  # kept by TorchScript (see input_specs_of)
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
        self.category_keys = [_key(name) for name in names]
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
        # and its own energy head on the scalar node features of every layer (zero at construction, so a
        # fresh model is unchanged; :meth:`category_energies`). ``layers`` = 0 (builds printed before the
        # head) gives no head tables.
        self.head_tables = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(table.shape[0], int(layers), channels, dtype=dtype))
             for table in self.category_tables] if layers > 0 else [])
        renames: Dict[str, str] = {}
        node_terms = []
        for k, f in enumerate(self.node_plan):
            table = None
            if f["table"] is not None:
                a, b = self.specs[f["a"]]["rank"], self.specs[f["b"]]["rank"]
                table = _dense(f["table"], (2 * a + 1, 2 * b + 1, 2 * f["rank"] + 1), dtype)
                renames[f"node_table{k}"] = f"node_terms.{k}.table"
            node_terms.append(_NodeTerm(int(f["rank"]), int(f["a"]), -1 if f["b"] is None else int(f["b"]), table,
                                        dtype))
        self.node_terms = torch.nn.ModuleList(node_terms)
        edge_terms = []
        for k, f in enumerate(self.edge_plan):
            r = self.specs[f["a"]]["rank"]
            edge_terms.append(_EdgeTerm(int(f["a"]), int(f["b"]), _dense(f["table"], (2 * r + 1, 2 * r + 1, 1), dtype)))
            renames[f"edge_table{k}"] = f"edge_terms.{k}.table"
        self.edge_terms = torch.nn.ModuleList(edge_terms)
        heads = {f"head_tables.{c}": tuple(t.shape) for c, t in enumerate(self.head_tables)}
        self._register_load_state_dict_pre_hook(_Renames(renames, heads, dtype))

    def values(self, batch: Dict[str, Tensor]) -> Dict[int, Tensor]:
        """Float input k -> its values at every atom, (N, 2 rank + 1)."""
        out: Dict[int, Tensor] = {}
        for k in self.float_inputs:
            key = self.input_keys[k]
            if key not in batch:
                raise KeyError(f"the batch lacks '{key}' (input '{self.input_names[k]}'); build it with "
                               f"batch_atoms(..., inputs=model.input_specs)")
            value = batch[key]
            if self.per_structure[k]:
                value = value.index_select(0, batch["batch"])
            out[k] = value.reshape(value.shape[0], -1)
        return out

    def node_features(self, h0: Tensor, batch: Dict[str, Tensor]) -> List[Tensor]:
        """[h_rank (N, channels, 2 rank + 1) for rank in first_ranks]; ``h0`` (N, channels) the element
        embedding."""
        x = self.values(batch)
        for c, table in enumerate(self.category_tables):
            name = self.category_names[c]
            index = batch[self.category_keys[c]]
            if bool((index >= table.shape[0]).any()):
                b = int(torch.nonzero(index >= table.shape[0])[0, 0])
                raise ValueError(f"structure {b}: input '{name}' = {int(index[b])} is outside 0..{table.shape[0] - 1} "
                                 f"(the model's input_categories['{name}'] = {table.shape[0]})")
            h0 = h0 + table.index_select(0, index).index_select(0, batch["batch"])
        out: List[Tensor] = []
        for position, weight in enumerate(self.weights):
            rank = self.first_ranks[position]
            feats: List[Tensor] = []
            for term in self.node_terms:
                if term.rank == rank:
                    feats.append(term(x))
            h = torch.zeros(0)
            if rank == 0:
                h = h0.unsqueeze(-1)
            if len(feats) > 0:
                mixed = torch.einsum("nfd,fc->ncd", torch.stack(feats, dim=1), weight)
                h = h + mixed if rank == 0 else mixed
            out.append(h)
        return out

    def energy_offsets(self, species: Tensor, batch: Dict[str, Tensor]) -> Tensor:
        """(N,) per-atom reference energy of each atom's element at its structure's category, eV."""
        total = torch.zeros(species.shape[0], dtype=batch["positions"].dtype, device=species.device)
        for c, table in enumerate(self.energy_tables):
            category = batch[self.category_keys[c]].index_select(0, batch["batch"])
            total = total + table[category, species]
        return total

    def energy_scales(self, batch: Dict[str, Tensor]) -> Tensor:
        """(N,) factor of the learned node energy: the product of each category input's scale."""
        total = torch.ones(batch["batch"].shape[0], dtype=batch["positions"].dtype, device=batch["batch"].device)
        for c, table in enumerate(self.scale_tables):
            total = total * table.index_select(0, batch[self.category_keys[c]]).index_select(0, batch["batch"])
        return total

    def category_energies(self, scalars: List[Tensor], batch: Dict[str, Tensor]) -> Tensor:
        """(N,) the per-category energy heads: :func:`category_head` of every category input at each
        atom's category (its structure's), summed over the category inputs. ``scalars``: the scalar
        (l = 0) node features after each layer, [(N, channels)] * layers. The model adds it to the
        layer readouts (before its ``scale``); zero at construction, and zero for a model without
        head tables (``layers`` = 0)."""
        total = torch.zeros(batch["batch"].shape[0], dtype=batch["positions"].dtype, device=batch["batch"].device)
        for c, table in enumerate(self.head_tables):
            category = batch[self.category_keys[c]].index_select(0, batch["batch"])
            total = total + category_head(scalars, category, table)
        return total

    def edge_features(self, radial: Tensor, batch: Dict[str, Tensor], senders: Tensor, receivers: Tensor) -> Tensor:
        """(E, num_radial * edge_multiplier): the radial basis and its copies scaled by each edge feature."""
        if self.edge_multiplier == 1:
            return radial
        x = self.values(batch)
        parts = [radial]
        for term in self.edge_terms:
            parts.append(radial * term(x, senders, receivers))
        return torch.cat(parts, dim=-1)


class _NaturalPart(torch.nn.Module):
    """A natural part of weight j: ``sum_c w[layer, c] h_j[:, c, :]``, embedded by ``matrix`` (3^rank, 2j+1)."""

    output: int
    j: int

    def __init__(self, output: int, j: int, matrix: Tensor, layers: int, channels: int, dtype: torch.dtype):
        super().__init__()
        self.output, self.j = output, j
        self.register_buffer("matrix", matrix)
        self.w = torch.nn.Parameter(torch.randn(layers, channels, dtype=dtype) / math.sqrt(channels))

    def forward(self, h: List[Tensor], layer: int, inputs: Dict[int, Tensor]) -> Tensor:
        return torch.einsum("ncd,c->nd", h[self.j], self.w[layer]) @ self.matrix.T


class _PseudoPart(torch.nn.Module):
    """A pseudo part of weight j: ``sum_k w[k] couple(h_1 U, h_j V)[:, k, :]`` through the odd path
    1 x j -> j (``coupling`` (3, 2j+1, 2j+1)), embedded by ``matrix``."""

    output: int
    j: int

    def __init__(self, output: int, j: int, matrix: Tensor, coupling: Tensor, layers: int, channels: int,
                 dtype: torch.dtype):
        super().__init__()
        self.output, self.j = output, j
        self.register_buffer("matrix", matrix)
        self.w = torch.nn.Parameter(torch.randn(layers, channels, dtype=dtype) / math.sqrt(channels))
        self.register_buffer("coupling", coupling)
        self.u = torch.nn.Parameter(torch.randn(layers, channels, channels, dtype=dtype) / math.sqrt(channels))
        self.v = torch.nn.Parameter(torch.randn(layers, channels, channels, dtype=dtype) / math.sqrt(channels))

    def forward(self, h: List[Tensor], layer: int, inputs: Dict[int, Tensor]) -> Tensor:
        u = torch.einsum("ncd,ck->nkd", h[1], self.u[layer])
        v = torch.einsum("ncd,ck->nkd", h[self.j], self.v[layer])
        return torch.einsum("nka,nkb,abd,k->nd", u, v, self.coupling, self.w[layer]) @ self.matrix.T


class _OddTerm(torch.nn.Module):
    """``sum_c w[layer, c] couple(x_a, h_k[:, c, :]) -> j`` (``table`` (2 rank_a + 1, 2k+1, 2j+1))."""

    a: int
    k: int

    def __init__(self, a: int, k: int, table: Tensor, layers: int, channels: int, dtype: torch.dtype):
        super().__init__()
        self.a, self.k = a, k
        self.register_buffer("table", table)
        self.w = torch.nn.Parameter(torch.randn(layers, channels, dtype=dtype) / math.sqrt(channels))

    def forward(self, h: List[Tensor], layer: int, inputs: Dict[int, Tensor]) -> Tensor:
        return torch.einsum("na,nkb,abd,k->nd", inputs[self.a], h[self.k], self.table, self.w[layer])


class _OddPart(torch.nn.Module):
    """A part of a time-odd output: the sum of its :class:`_OddTerm` over the time-odd inputs, embedded by
    ``matrix`` (``w`` is kept, unused, so the parameters match every part's)."""

    output: int

    def __init__(self, output: int, matrix: Tensor, terms: List[_OddTerm], w: torch.nn.Parameter):
        super().__init__()
        self.output = output
        self.register_buffer("matrix", matrix)
        self.w = w
        self.terms = torch.nn.ModuleList(terms)

    def forward(self, h: List[Tensor], layer: int, inputs: Dict[int, Tensor]) -> Tensor:
        x: Optional[Tensor] = None
        for term in self.terms:
            c = term(h, layer, inputs)
            x = c if x is None else x + c
        assert x is not None
        return x @ self.matrix.T


class TensorReadout(torch.nn.Module):
    """Declared tensor outputs from the node features of the layers before the last.

    Per output and part of weight j: a natural part is ``sum_c w[c] h_j[:, c, :]``; a pseudo
    part is ``sum_c w[c] couple(h_1 U, h_j V)[:, c, :]`` through the odd path 1 x j -> j;
    each is embedded exactly (the plan's matrix) and the parts are summed, per atom, then
    per structure for structure outputs. The plan is read in the constructor (one module
    per part, in ``parts``), so the forward methods are TorchScript compatible."""

    __jit_ignored_attributes__ = ["outputs"]
    output_names: List[str]
    output_ranks: List[int]
    output_per_structure: List[bool]
    outputs_json: str

    def __init__(self, plan: dict, channels: int, layers: int, dtype: torch.dtype):
        super().__init__()
        self.outputs = [dict(o) for o in plan["outputs"]]
        if self.outputs and layers < 1:
            names = [o["name"] for o in self.outputs]
            raise ValueError(f"outputs {names} are read from every layer but the last: the model needs layers >= 2")
        self.output_names = [str(o["name"]) for o in self.outputs]
        self.output_ranks = [int(o["rank"]) for o in self.outputs]
        self.output_per_structure = [o["per"] == "structure" for o in self.outputs]
        self.outputs_json = json.dumps(self.outputs)  # kept by TorchScript (see output_specs_of)
        renames: Dict[str, str] = {}
        parts = []
        for index, o in enumerate(self.outputs):
            n = int(o["rank"])
            for p, part in enumerate(o["parts"]):
                j = int(part["weight"])
                tag, at = f"{o['name']}_{p}", f"parts.{len(parts)}"
                matrix = _dense(part["matrix"], (3**n, 2 * j + 1), dtype)
                renames.update({f"matrix_{tag}": f"{at}.matrix", f"params.w_{tag}": f"{at}.w"})
                if o["time"] == "odd":  # time-odd output: x_a (x) h_k -> j
                    w = torch.nn.Parameter(torch.randn(layers, channels, dtype=dtype) / math.sqrt(channels))
                    terms = []
                    for t, term in enumerate(part.get("odd_terms") or []):
                        table = _dense(term["table"], (2 * term["rank"] + 1, 2 * term["k"] + 1, 2 * j + 1), dtype)
                        terms.append(_OddTerm(int(term["a"]), int(term["k"]), table, layers, channels, dtype))
                        renames.update({f"odd_{tag}_{t}": f"{at}.terms.{t}.table",
                                        f"params.w_{tag}_{t}": f"{at}.terms.{t}.w"})
                    module = _OddPart(index, matrix, terms, w)  # w drawn first, as in the first io release
                elif part["natural"]:
                    module = _NaturalPart(index, j, matrix, layers, channels, dtype)
                else:
                    coupling = _dense(part["coupling"], (3, 2 * j + 1, 2 * j + 1), dtype)
                    module = _PseudoPart(index, j, matrix, coupling, layers, channels, dtype)
                    renames.update({f"coupling_{tag}": f"{at}.coupling", f"params.u_{tag}": f"{at}.u",
                                    f"params.v_{tag}": f"{at}.v"})
                parts.append(module)
        self.parts = torch.nn.ModuleList(parts)
        self._register_load_state_dict_pre_hook(_Renames(renames))

    @torch.jit.unused
    def part_matrices(self, name: str) -> List[Tensor]:
        """The exact embeddings (3^rank, 2j+1) of output ``name``'s parts, in the plan's order."""
        index = self.output_names.index(name)
        return [part.matrix for part in self.parts if part.output == index]

    def accumulate(self, values: Dict[str, Tensor], h: List[Tensor], layer: int,
                   inputs: Optional[Dict[int, Tensor]] = None) -> Dict[str, Tensor]:
        """``values`` plus this layer's per-atom contributions (N, 3^rank) of every output;
        ``inputs``: the float inputs at every atom (:meth:`InputEmbedding.values`), needed by
        time-odd outputs."""
        x: Dict[int, Tensor] = {}
        if inputs is not None:
            x = inputs
        totals: List[Optional[Tensor]] = [None for _ in self.output_names]
        for part in self.parts:
            term = part(h, layer, x)
            total = totals[part.output]
            totals[part.output] = term if total is None else total + term
        for index, name in enumerate(self.output_names):
            total = totals[index]
            assert total is not None
            if name in values:
                values[name] = values[name] + total
            else:
                values[name] = total
        return values

    def finish(self, values: Dict[str, Tensor], batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Outputs by name: per atom (N, 3, ...), per structure (B, 3, ...) summed over its atoms."""
        out: Dict[str, Tensor] = {}
        num_structures = batch["num_atoms"].shape[0]
        for index, name in enumerate(self.output_names):
            v = values[name]
            if self.output_per_structure[index]:
                v = torch.zeros((num_structures, v.shape[1]), dtype=v.dtype, device=v.device).index_add(
                    0, batch["batch"], v)
            out[name] = v.reshape([v.shape[0]] + [3] * self.output_ranks[index])
        return out


def energies_and_values(model, batch: Dict[str, Tensor], positions: Tensor):
    """(energy (B,), values) at ``positions`` (and ``batch["cell"]``, unstrained), differentiable:
    the sum of the node energies plus, for a model with a long-range block (``model.long_range``
    "les" or "ewald"), its long-range energy; ``values`` the per-atom contributions to the
    declared outputs (:meth:`node_energies_and_outputs` of generated models; {} without outputs)."""
    cell = batch["cell"]
    features: Optional[Tensor] = None
    if hasattr(model, "node_energies_and_outputs"):
        values = model.node_energies_and_outputs(positions, cell, batch)
        node_energy = values["node_energy"]
        features = values.get("@features")
    elif getattr(model, "long_range", "none") != "none":
        node_energy, features = model.node_energies_and_features(positions, cell, batch)
        values = {}
    else:
        node_energy, values = model.node_energies(positions, cell, batch), {}
    energy = torch.zeros(batch["num_atoms"].shape[0], dtype=node_energy.dtype,
                         device=node_energy.device).index_add(0, batch["batch"], node_energy)
    if getattr(model, "long_range", "none") != "none":
        energy = energy + model.long_range_energy(positions, cell, features, batch)[0]
    return energy, values


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
        energy, _ = energies_and_values(model, batch, batch["positions"])  # with a long-range part, if any
        (grad,) = torch.autograd.grad(energy.sum(), field, create_graph=order > 1)
        if order == 1:
            return -grad.detach()
        flat = grad.reshape(grad.shape[0], -1)
        rows = []
        for a in range(flat.shape[1]):
            (row,) = torch.autograd.grad(flat[:, a].sum(), field, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(field) if row is None else row)
        return -torch.stack(rows, dim=1).detach()
