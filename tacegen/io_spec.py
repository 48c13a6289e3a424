"""Descriptors of a model's external inputs and tensorial outputs (the spec's ``inputs`` and
``outputs`` fields), their named presets and the command-line form.

Labels (every descriptor carries all of them, so nothing is guessed later):

* ``per``: ``"structure"`` (one value per structure, from ``atoms.info[key]``) or ``"atom"``
  (one value per atom, from ``atoms.arrays[key]``);
* ``rank``: Cartesian rank (inputs 0..1, outputs 1..4);
* ``parity``: the inversion eigenvalue of the whole tensor, ``"e"`` (+1) or ``"o"`` (-1):
  a polar vector (electric field, dipole) is ``1o``, an axial vector (magnetic field,
  magnetic moment) ``1e``; a true rank-n tensor has (-1)^n, a pseudo-tensor the opposite;
* ``time``: the time-reversal eigenvalue, ``"even"`` (+1) or ``"odd"`` (-1): magnetic
  fields and moments are odd, charges and electric fields even;
* inputs: ``kind`` ``"float"`` or ``"category"`` (an integer label such as a fidelity or
  level-of-theory index, rank 0 and time-even);
* outputs: ``symmetry`` of the index permutations: ``general``, ``symmetric``,
  ``symmetric_traceless``, ``antisymmetric`` (rank 2), ``piezo`` (rank 3, symmetric in
  the last two indices), ``elastic`` (rank 4, minor and major symmetries).

The energy is always computed and is never declared here. This module is plain data
(no algebra, no torch); the irreducible parts an output uses are derived by
:mod:`tacegen.algebra.tensor_parts`, the embeddings of the inputs by
:mod:`tacegen.ir.embeddings`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

PER = ("structure", "atom")
PARITIES = {"e": 1, "o": -1}
TIMES = {"even": 1, "odd": -1}
KINDS = ("float", "category")
SYMMETRIES = {  # symmetry -> ranks it applies to
    "general": (1, 2, 3, 4),
    "symmetric": (2, 3, 4),
    "symmetric_traceless": (2, 3, 4),
    "antisymmetric": (2,),
    "piezo": (3,),
    "elastic": (4,),
}
#: what a long-range model returns besides the energy (its dipole and Born charges come from its
#: charges): no declared output of a long-range build may take these names
LONG_RANGE_OUTPUTS = ("dipole", "born_charges")
INPUT_RANKS = (0, 1)
OUTPUT_RANKS = (1, 2, 3, 4)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: names an output may not take: the model's own outputs and the keys of a batch (training puts a
#: target's labels in the batch under the output's name; inputs live under ``input_<name>``)
RESERVED = ("energy", "forces", "stress", "virial", "node_energy", "long_range_energy", "charges",
            "positions", "species", "batch", "num_atoms", "cell", "pbc", "edge_index", "edge_shift",
            "total_charge", "weight")


class IODescriptorError(ValueError):
    """A bad input or output descriptor; the message names the field, value and allowed values."""


def _check_name(name, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise IODescriptorError(f"{what} name must be an identifier (letters, digits, _), got {name!r}")
    if what == "output" and name in RESERVED:
        raise IODescriptorError(f"{what} name {name!r} is reserved; reserved output names: {', '.join(RESERVED)}")


def _check_choice(what: str, field: str, value, allowed) -> None:
    if value not in allowed:
        raise IODescriptorError(f"{what}: {field}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class InputSpec:
    """One external input (see the module docstring for the labels)."""

    name: str
    per: str = "structure"
    rank: int = 0
    parity: str = "e"
    time: str = "even"
    kind: str = "float"

    def __post_init__(self):
        _check_name(self.name, "input")
        what = f"input {self.name!r}"
        _check_choice(what, "per", self.per, PER)
        _check_choice(what, "rank", self.rank, INPUT_RANKS)
        _check_choice(what, "parity", self.parity, tuple(PARITIES))
        _check_choice(what, "time", self.time, tuple(TIMES))
        _check_choice(what, "kind", self.kind, KINDS)
        if self.kind == "category" and (self.rank, self.parity, self.time) != (0, "e", "even"):
            raise IODescriptorError(f"{what}: a category input is a time-even scalar (rank 0, parity e, time "
                                    f"even), got rank {self.rank}, parity {self.parity}, time {self.time}")

    @property
    def key(self) -> str:
        """Where its values live: ``atoms.info[key]`` or ``atoms.arrays[key]``."""
        return self.name

    @property
    def label(self) -> str:
        """e.g. ``1o even, per structure``."""
        kind = ", category" if self.kind == "category" else ""
        return f"{self.rank}{self.parity} {self.time}, per {self.per}{kind}"

    @property
    def shape(self) -> tuple:
        """Shape of one value (per structure or per atom)."""
        return (3,) * self.rank

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OutputSpec:
    """One tensorial output (see the module docstring for the labels)."""

    name: str
    per: str = "structure"
    rank: int = 1
    symmetry: str = "general"
    parity: str = "o"
    time: str = "even"

    def __post_init__(self):
        _check_name(self.name, "output")
        what = f"output {self.name!r}"
        _check_choice(what, "per", self.per, PER)
        _check_choice(what, "rank", self.rank, OUTPUT_RANKS)
        _check_choice(what, "symmetry", self.symmetry, tuple(SYMMETRIES))
        if self.rank not in SYMMETRIES[self.symmetry]:
            raise IODescriptorError(f"{what}: symmetry {self.symmetry!r} needs rank in "
                                    f"{SYMMETRIES[self.symmetry]}, got rank {self.rank}")
        _check_choice(what, "parity", self.parity, tuple(PARITIES))
        _check_choice(what, "time", self.time, tuple(TIMES))

    @property
    def label(self) -> str:
        return f"rank {self.rank} {self.symmetry}, parity {self.parity}, time {self.time}, per {self.per}"

    @property
    def shape(self) -> tuple:
        return (3,) * self.rank

    def to_dict(self) -> dict:
        return asdict(self)


INPUT_PRESETS = {
    "total_charge": InputSpec("total_charge", "structure", 0, "e", "even"),
    "spin": InputSpec("spin", "structure", 0, "e", "even"),
    "fidelity": InputSpec("fidelity", "structure", 0, "e", "even", "category"),
    "temperature": InputSpec("temperature", "structure", 0, "e", "even"),
    "electric_field": InputSpec("electric_field", "structure", 1, "o", "even"),
    "magnetic_field": InputSpec("magnetic_field", "structure", 1, "e", "odd"),
    "initial_charges": InputSpec("initial_charges", "atom", 0, "e", "even"),
    "magmom": InputSpec("magmom", "atom", 0, "e", "odd"),
    "magmom_vector": InputSpec("magmom_vector", "atom", 1, "e", "odd"),
}

OUTPUT_PRESETS = {
    "dipole": OutputSpec("dipole", "structure", 1, "general", "o", "even"),
    "polarizability": OutputSpec("polarizability", "structure", 2, "symmetric", "e", "even"),
    "quadrupole": OutputSpec("quadrupole", "structure", 2, "symmetric_traceless", "e", "even"),
    "born_charges": OutputSpec("born_charges", "atom", 2, "general", "e", "even"),
    "chemical_shielding": OutputSpec("chemical_shielding", "atom", 2, "general", "e", "even"),
    "efg": OutputSpec("efg", "atom", 2, "symmetric_traceless", "e", "even"),
    "atomic_dipole": OutputSpec("atomic_dipole", "atom", 1, "general", "o", "even"),
    "piezoelectric": OutputSpec("piezoelectric", "structure", 3, "piezo", "o", "even"),
    "hyperpolarizability": OutputSpec("hyperpolarizability", "structure", 3, "symmetric", "o", "even"),
    "elastic": OutputSpec("elastic", "structure", 4, "elastic", "e", "even"),
}

INPUT_FORM = "NAME:PER:RANK:PARITY:TIME[:KIND]"
OUTPUT_FORM = "NAME:PER:RANK:SYMMETRY:PARITY:TIME"


def _as_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise IODescriptorError(f"{what}: rank must be an integer, got {text!r}") from None


def parse_input(text: str) -> InputSpec:
    """A preset name (``electric_field``) or the custom form ``NAME:PER:RANK:PARITY:TIME[:KIND]``
    (``efield2:structure:1:o:even``)."""
    if ":" not in text:
        if text not in INPUT_PRESETS:
            raise IODescriptorError(f"unknown input {text!r}; presets: {', '.join(INPUT_PRESETS)}; or the custom "
                                    f"form {INPUT_FORM}")
        return INPUT_PRESETS[text]
    parts = text.split(":")
    if len(parts) not in (5, 6):
        raise IODescriptorError(f"input {text!r}: expected {INPUT_FORM}, got {len(parts)} fields")
    name, per, rank, parity, time = parts[:5]
    kind = parts[5] if len(parts) == 6 else "float"
    return InputSpec(name, per, _as_int(rank, f"input {text!r}"), parity, time, kind)


def parse_output(text: str) -> OutputSpec:
    """A preset name (``polarizability``) or the custom form ``NAME:PER:RANK:SYMMETRY:PARITY:TIME``
    (``shielding:atom:2:general:e:even``)."""
    if ":" not in text:
        if text not in OUTPUT_PRESETS:
            raise IODescriptorError(f"unknown output {text!r}; presets: {', '.join(OUTPUT_PRESETS)}; or the custom "
                                    f"form {OUTPUT_FORM}")
        return OUTPUT_PRESETS[text]
    parts = text.split(":")
    if len(parts) != 6:
        raise IODescriptorError(f"output {text!r}: expected {OUTPUT_FORM}, got {len(parts)} fields")
    name, per, rank, symmetry, parity, time = parts
    return OutputSpec(name, per, _as_int(rank, f"output {text!r}"), symmetry, parity, time)


def _coerce(item, cls, parse, what: str):
    if isinstance(item, cls):
        return item
    if isinstance(item, str):
        return parse(item)
    if isinstance(item, dict):
        try:
            return cls(**item)
        except TypeError as error:
            raise IODescriptorError(f"{what} {item!r}: {error}") from None
    raise IODescriptorError(f"{what} must be a name, a {cls.__name__} or a dict, got {item!r}")


def coerce_inputs(items) -> tuple:
    """``items`` (names, custom strings, dicts or InputSpec) as a tuple of InputSpec, checked for
    duplicate names."""
    out = tuple(_coerce(item, InputSpec, parse_input, "input") for item in (items or ()))
    _no_duplicates(out, "input")
    return out


def coerce_outputs(items) -> tuple:
    out = tuple(_coerce(item, OutputSpec, parse_output, "output") for item in (items or ()))
    _no_duplicates(out, "output")
    return out


def _no_duplicates(items, what: str) -> None:
    seen = set()
    for item in items:
        if item.name in seen:
            raise IODescriptorError(f"{what} {item.name!r} is declared twice")
        seen.add(item.name)


def presets_help() -> str:
    """One line per preset with its labels (for ``tacegen build --help``)."""
    lines = ["Inputs (--input NAME, or the custom form " + INPUT_FORM + "):"]
    lines += [f"  {name:<16} {spec.label}" for name, spec in INPUT_PRESETS.items()]
    lines += ["Outputs (--output NAME, or the custom form " + OUTPUT_FORM + "):"]
    lines += [f"  {name:<20} {spec.label}" for name, spec in OUTPUT_PRESETS.items()]
    return "\n".join(lines)


def command_form(item) -> str:
    """The ``--input``/``--output`` argument that gives ``item``: its preset name, or the custom form."""
    presets = INPUT_PRESETS if isinstance(item, InputSpec) else OUTPUT_PRESETS
    if presets.get(item.name) == item:
        return item.name
    if isinstance(item, InputSpec):
        return ":".join([item.name, item.per, str(item.rank), item.parity, item.time]
                        + ([item.kind] if item.kind != "float" else []))
    return ":".join([item.name, item.per, str(item.rank), item.symmetry, item.parity, item.time])


def part_weights(rank: int, symmetry: str) -> tuple:
    """Weights of the irreducible parts of a rank-``rank`` tensor of ``symmetry``, with multiplicity
    (e.g. general rank 2: (0, 1, 2); symmetric rank 2: (0, 2)). Checked against the exact
    projectors by the tests (:func:`tacegen.algebra.tensor_parts.output_parts`)."""
    table = {
        ("general", 1): (1,), ("general", 2): (0, 1, 2), ("general", 3): (0, 1, 1, 1, 2, 2, 3),
        ("general", 4): (0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 4),
        ("symmetric", 2): (0, 2), ("symmetric", 3): (1, 3), ("symmetric", 4): (0, 2, 4),
        ("symmetric_traceless", 2): (2,), ("symmetric_traceless", 3): (3,), ("symmetric_traceless", 4): (4,),
        ("antisymmetric", 2): (1,), ("piezo", 3): (1, 1, 2, 3), ("elastic", 4): (0, 0, 2, 2, 4),
    }
    return table[(symmetry, rank)]


def check_model_io(inputs, outputs, hidden_lmax: int, long_range: str) -> None:
    """Cross-field checks of a spec's inputs and outputs (IODescriptorError naming what is wrong).

    An output part of weight j with natural parity ((-1)^j) is read from the node features of
    rank j, so j <= hidden_lmax; a pseudo part (j >= 1) is the odd coupling of rank-1 and
    rank-j features, so also hidden_lmax >= 1; a pseudo-scalar part (0o, 0e of an odd
    tensor) is not supported. Time-odd outputs need time-odd features, which the model does
    not carry (time-odd inputs enter through their time-even products): refused.
    ``long_range`` ("none", "les", "ewald") combines with any inputs and outputs (PyTorch
    back end): a declared ``total_charge`` input (the preset: per structure, 0e even) is the
    total an LES model's latent charges are constrained to (an Ewald model checks it against
    its charges), and outputs may not take the names of what the long-range model returns
    itself (``LONG_RANGE_OUTPUTS``).
    """
    if long_range != "none":
        for item in outputs:
            if item.name in LONG_RANGE_OUTPUTS:
                raise IODescriptorError(
                    f"output {item.name!r}: a long-range model returns its own {item.name!r} (from its charges); "
                    f"give the declared output another name (custom form {OUTPUT_FORM})")
        for item in inputs:
            if item.name == "total_charge" and item != INPUT_PRESETS["total_charge"]:
                raise IODescriptorError(
                    f"input 'total_charge' ({item.label}): with long_range={long_range!r} it is the total the "
                    f"charges follow, so it must be the preset ({INPUT_PRESETS['total_charge'].label})")
    names = {item.name for item in inputs}
    odd_inputs = [i for i in inputs if i.kind == "float" and i.time == "odd"]
    for item in outputs:
        if item.name in names:
            raise IODescriptorError(f"output {item.name!r} has the name of an input")
        p = PARITIES[item.parity]
        for j in sorted(set(part_weights(item.rank, item.symmetry))):
            if item.time == "odd":
                # x_a (time-odd input, rank r, parity p_a) coupled with node features of rank k <= hidden_lmax
                if not any(abs(i.rank - k) <= j <= i.rank + k and PARITIES[i.parity] * (-1) ** k == p
                           for i in odd_inputs for k in range(hidden_lmax + 1)):
                    raise IODescriptorError(
                        f"output {item.name!r} is time-odd: its part of weight {j} parity {item.parity} needs a "
                        f"time-odd input x with a coupling x (x) h_k -> {j} of that parity, k <= hidden_lmax="
                        f"{hidden_lmax}; time-odd inputs: {[i.name for i in odd_inputs] or 'none'}")
                continue
            natural = p == (-1) ** j
            if not natural and j == 0:
                raise IODescriptorError(f"output {item.name!r} has a pseudo-scalar part (weight 0, parity "
                                        f"{item.parity}), which is not supported")
            need = j if natural else max(1, j)
            if hidden_lmax < need:
                raise IODescriptorError(
                    f"output {item.name!r} ({item.label}) has a part of weight {j} parity {item.parity}, read from "
                    f"node features of rank {need}: hidden_lmax must be >= {need}, got {hidden_lmax}")
