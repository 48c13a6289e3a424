"""How a spec's external inputs enter the model and how its tensor outputs are read out: the
*IO plan*, plain data with exact coefficients, printed into ``model.py`` (``IO_PLAN``) and
executed by :mod:`tacegen.runtime.inputs`.

Inputs are pieces labelled (rank, parity, time) (:class:`tacegen.io_spec.InputSpec`). The
energy is invariant under rotations, inversion and time reversal, and the model's node
features carry natural parity ((-1)^l) and are time-even, so only couplings of the inputs
with those labels are generated:

* *direct* pieces (float, time-even, natural parity: total charge, spin, electric field
  1o, initial charges) are node features of their rank as they are;
* every other piece (time-odd: magnetic field 1e, magnetic moments 0e/1e; or of unnatural
  parity) enters only through exact couplings ``a x b -> l`` of two pieces whose product is
  time-even with natural parity (-1)^l, l <= lmax (for example |B|^2 (0e), the traceless
  B B (2e), B . m_i, m_i^2); identically zero couplings (a x a through an odd path) are
  dropped. Couplings with an odd number of time-odd factors, or of unnatural parity, are
  never generated, so time reversal and improper rotations are exact symmetries;
* pairs of such per-atom pieces coupled to a scalar across an edge (m_i . m_j) multiply
  the radial basis (extra radial channels), so sign correlations between atoms enter
  the messages;
* category inputs (fidelity) select a learned embedding added to the scalar features and
  per-element reference energies.

The first layer's node ranks are 0 plus the ranks of the features (its interaction block
is printed for those ranks).

Outputs: each declared output (:class:`tacegen.io_spec.OutputSpec`) is the sum of its
irreducible parts (:func:`tacegen.algebra.tensor_parts.output_parts`), each read from the
node features after every layer but the last (natural parts: a channel contraction of the
rank-j features; pseudo parts: the odd coupling h_1 x h_j -> j) and embedded exactly. A
time-odd output (a magnetisation) must be odd in the time-odd inputs: its parts are
``sum_a sum_k couple(x_a, h_k) -> j`` over the time-odd inputs x_a and the time-even
feature ranks k whose labels give the part's parity (x times a time-even equivariant;
the features already hold every even function of the inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ..algebra.coupling import allowed_outputs, coupling, is_odd_path
from ..algebra.tensor_parts import output_parts
from ..io_spec import PARITIES, TIMES, InputSpec


def _exact(v: Fraction) -> str:
    return str(Fraction(v))


def _table(l1: int, l2: int, l3: int) -> list:
    return [[m1, m2, m3, _exact(c)] for m1, m2, m3, c in coupling(l1, l2, l3).entries]


@dataclass(frozen=True)
class Feature:
    """A first-layer node feature (``b`` None: input ``a`` as it is) or an edge scalar."""

    rank: int
    a: int
    b: int | None
    label: str


def _direct(item: InputSpec) -> bool:
    return (item.kind == "float" and TIMES[item.time] == 1
            and PARITIES[item.parity] == (-1) ** item.rank)


def node_features(inputs, lmax: int) -> list[Feature]:
    """Direct pieces, then the allowed time-even, natural-parity couplings of pairs with at
    least one non-direct piece (see the module docstring)."""
    floats = [k for k, item in enumerate(inputs) if item.kind == "float"]
    out = [Feature(inputs[k].rank, k, None, f"{inputs[k].name} ({inputs[k].rank}{inputs[k].parity})")
           for k in floats if _direct(inputs[k]) and inputs[k].rank <= lmax]
    for i, a in enumerate(floats):
        for b in floats[i:]:
            A, B = inputs[a], inputs[b]
            if _direct(A) and _direct(B):
                continue
            if TIMES[A.time] * TIMES[B.time] != 1:
                continue
            parity = PARITIES[A.parity] * PARITIES[B.parity]
            for l in allowed_outputs(A.rank, B.rank):
                if l > lmax or parity != (-1) ** l or (a == b and is_odd_path(A.rank, B.rank, l)):
                    continue
                out.append(Feature(l, a, b, f"({A.name} x {B.name})->{l}{'e' if parity == 1 else 'o'}"))
    return out


def edge_features(inputs) -> list[Feature]:
    """Scalar couplings x_a(receiver i) . x_b(sender j) of per-atom non-direct pieces with a
    time-even, parity-even product (m_i m_j, m_i . m_j)."""
    atoms = [k for k, item in enumerate(inputs) if item.kind == "float" and item.per == "atom"
             and not _direct(item)]
    out = []
    for a in atoms:
        for b in atoms:
            A, B = inputs[a], inputs[b]
            if A.rank != B.rank or TIMES[A.time] * TIMES[B.time] != 1:
                continue
            if PARITIES[A.parity] * PARITIES[B.parity] != 1:
                continue
            out.append(Feature(0, a, b, f"{A.name}_i . {B.name}_j"))
    return out


def first_layer_ranks(spec) -> tuple:
    """Node ranks into the first layer: 0 and the ranks of the input features."""
    return tuple(sorted({0} | {f.rank for f in node_features(spec.inputs, spec.lmax)}))


def io_plan(spec) -> dict:
    """The IO plan of ``spec`` (JSON-able; exact coefficients as "p/q" strings)."""
    inputs = spec.inputs
    nodes = node_features(inputs, spec.lmax)
    edges = edge_features(inputs)
    plan = {
        "inputs": [item.to_dict() for item in inputs],
        "first_ranks": list(first_layer_ranks(spec)),
        "node_features": [{"rank": f.rank, "a": f.a, "b": f.b, "label": f.label,
                           "table": None if f.b is None else _table(inputs[f.a].rank, inputs[f.b].rank, f.rank)}
                          for f in nodes],
        "edge_features": [{"a": f.a, "b": f.b, "label": f.label,
                           "table": _table(inputs[f.a].rank, inputs[f.b].rank, 0)} for f in edges],
        "outputs": [],
    }
    for item in spec.outputs:
        parts = []
        for part in output_parts(item.rank, item.symmetry, PARITIES[item.parity]):
            entries = [[r, c, _exact(v)] for (r, c), v in _nonzero(part.matrix)]
            row = {"weight": part.weight, "natural": part.natural, "label": part.label, "matrix": entries,
                   "coupling": None if part.natural or item.time == "odd" else _table(1, part.weight, part.weight),
                   "odd_terms": []}
            if item.time == "odd":  # x_a (time-odd input) coupled with time-even features h_k -> weight j
                j = part.weight
                for a, x in enumerate(inputs):
                    if x.kind != "float" or x.time != "odd":
                        continue
                    for k in range(spec.hidden_lmax + 1):
                        if abs(x.rank - k) <= j <= x.rank + k and PARITIES[x.parity] * (-1) ** k == part.parity:
                            row["odd_terms"].append({"a": a, "rank": x.rank, "k": k, "label": f"{x.name} x h{k} -> {part.label}",
                                                     "table": _table(x.rank, k, j)})
            parts.append(row)
        plan["outputs"].append({**item.to_dict(), "parts": parts})
    return plan


def _nonzero(matrix):
    rows, cols = matrix.shape
    return [((r, c), matrix[r, c]) for r in range(rows) for c in range(cols) if matrix[r, c] != 0]


def report_lines(spec) -> list[str]:
    """The build report's section on inputs and outputs."""
    if not (spec.inputs or spec.outputs):
        return []
    plan = io_plan(spec)
    lines = ["", "## Inputs and outputs", ""]
    for item in spec.inputs:
        lines.append(f"- input `{item.name}`: {item.label}; values from "
                     + (f"`atoms.info[{item.key!r}]`" if item.per == "structure" else f"`atoms.arrays[{item.key!r}]`"))
    if spec.long_range != "none" and any(item.name == "total_charge" for item in spec.inputs):
        lines.append("- `total_charge` is also the total the long-range block's charges follow ("
                     + ("LES: the latent charges are constrained to it)" if spec.long_range == "les"
                        else "Ewald: checked against the sum of the given charges)"))
    lines.append(f"- first-layer node ranks: {plan['first_ranks']}")
    for f in plan["node_features"]:
        lines.append(f"  - node feature rank {f['rank']}: {f['label']}")
    for f in plan["edge_features"]:
        lines.append(f"  - edge feature (multiplies the radial basis): {f['label']}")
    for out in plan["outputs"]:
        labels = " + ".join(p["label"] for p in out["parts"])
        if out["time"] == "odd":
            terms = "; ".join(t["label"] for p in out["parts"] for t in p["odd_terms"])
            labels += f" (time-odd: {terms})"
        lines.append(f"- output `{out['name']}`: rank {out['rank']} {out['symmetry']}, parity {out['parity']}, "
                     f"time {out['time']}, per {out['per']}; irreducible parts {labels} (natural parts read from the "
                     "node features of their rank, pseudo parts from the odd coupling h_1 x h_j -> j)")
    lines.append("- the Numba back end does not support inputs/outputs yet: `numba_backend()` of this build "
                 "raises NotImplementedError")
    return lines


def check_plan(spec) -> None:
    """Every declared float input must enter through at least one feature (else ValueError)."""
    plan = io_plan(spec)
    used = {f["a"] for f in plan["node_features"] + plan["edge_features"]}
    used |= {f["b"] for f in plan["node_features"] + plan["edge_features"] if f["b"] is not None}
    for k, item in enumerate(spec.inputs):
        if item.kind == "float" and k not in used:
            raise ValueError(f"input {item.name!r} ({item.label}) has no allowed coupling at lmax={spec.lmax} "
                             "(time-odd or unnatural-parity pieces need a partner of the same time and parity "
                             "labels and a rank <= lmax); it would be silently ignored, so the build refuses it")
