"""ModelSpec: everything that changes the generated code, and nothing else.

Sizes that do not change the code (elements, channels, number of radial functions,
r_cut, number of layers, MLP widths) are constructor arguments of the generated model.
A spec is frozen and validated on construction; its canonical JSON and content hash name
the build (``generated/<name>/spec.json``) and key the caches.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from . import __version__
from .cache import canonical_json, content_hash
from .io_spec import IODescriptorError, check_model_io, coerce_inputs, command_form, coerce_outputs

LMAX_RANGE = (0, 6)
NU_RANGE = (1, 4)
BACKENDS = ("torch", "numba")
LONG_RANGE = ("none", "les", "ewald")
BASES = ("ict", "moment")


class SpecError(ValueError):
    """A spec that cannot be built; the message names the field, value and allowed values."""


def _int_in(name: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(f"{name}={value} is outside the allowed range {lo}..{hi}")


@dataclass(frozen=True)
class ModelSpec:
    """What to compile.

    Attributes:
        lmax: largest rank of the edge ICTs T_l(r_ij) and of the atomic basis A (natural
            parity); MACE's ``max_ell``.
        nu: largest correlation order of the product basis B (all orders 1..nu are used);
            MACE's ``correlation``.
        hidden_lmax: largest rank of the node features passed between layers (natural
            parity); MACE's ``max_L``: 1 matches MACE's ``64x0e + 64x1o``.
        backends: printers to run: "torch" (the PyTorch module: holds the weights, trains,
            autograd forces) and "numba" (compiled loops for inference with forces and stress
            from the IR reverse pass; it evaluates the weights of the PyTorch module, so asking
            for "numba" alone also prints "torch").
        long_range: long-range electrostatics block of the generated model: "none", "les"
            (latent Ewald summation: a readout of the last layer's invariant features gives
            latent charges, Cheng et al.; docs/math.md section 5) or "ewald" (classic Ewald /
            Coulomb energy of the charges given with the structures). Its parameters (sigma,
            k_cut, total charge, Ewald accuracy) are constructor arguments of the model.
        basis: the atomic/product basis: "ict" (TACE: irreducible Cartesian tensors and
            their couplings) or "moment" (TMP: symmetric moment tensors r^(x)l and their
            contractions, :mod:`tacegen.moment_paths`). Left out of the spec's JSON and hash
            when "ict", so the TACE builds keep their names and hashes.
        version: the tacegen version that compiles the spec (part of the spec hash).
        inputs: external inputs the model is conditioned on (:class:`tacegen.io_spec.InputSpec`,
            or preset names such as "total_charge", "electric_field"); empty by default.
        outputs: tensorial outputs besides the energy (:class:`tacegen.io_spec.OutputSpec`, or
            preset names such as "dipole", "polarizability"); empty by default. Both are left
            out of the canonical JSON when empty, so specs without them keep their hash.
    """

    lmax: int = 3
    nu: int = 3
    hidden_lmax: int = 1
    backends: tuple = ("torch", "numba")
    long_range: str = "none"
    basis: str = "ict"
    version: str = field(default=__version__, compare=True)
    inputs: tuple = ()
    outputs: tuple = ()

    def __post_init__(self):
        _int_in("lmax", self.lmax, *LMAX_RANGE)
        _int_in("nu", self.nu, *NU_RANGE)
        _int_in("hidden_lmax", self.hidden_lmax, 0, self.lmax)
        backends = self.backends
        if isinstance(backends, str):
            backends = tuple(b.strip() for b in backends.split(",") if b.strip())
        for b in backends:
            if b not in BACKENDS:
                raise SpecError(f"backend {b!r} is not available; allowed: {', '.join(BACKENDS)}")
        if "numba" in backends:
            backends = tuple(backends) + ("torch",)  # the Numba model binds the PyTorch module's weights
        backends = tuple(sorted(set(backends), key=BACKENDS.index))
        if not backends:
            raise SpecError(f"backends is empty; allowed: {', '.join(BACKENDS)}")
        object.__setattr__(self, "backends", backends)
        if self.long_range not in LONG_RANGE:
            raise SpecError(f"long_range={self.long_range!r} is not available; allowed: {', '.join(LONG_RANGE)}")
        if self.basis not in BASES:
            raise SpecError(f"basis={self.basis!r} is not available; allowed: {', '.join(BASES)}")
        if self.basis == "moment" and self.nu == 1 and self.hidden_lmax > 1:
            raise SpecError(f"basis='moment' with nu=1 has no rank-{self.hidden_lmax} features (a lone moment "
                            "tensor is irreducible only for rank <= 1): use nu >= 2 or hidden_lmax <= 1")
        try:
            object.__setattr__(self, "inputs", coerce_inputs(self.inputs))
            object.__setattr__(self, "outputs", coerce_outputs(self.outputs))
            check_model_io(self.inputs, self.outputs, self.hidden_lmax, self.long_range)
        except IODescriptorError as error:
            raise SpecError(str(error)) from None

    @property
    def name(self) -> str:
        """Default build folder name, e.g. ``tace_l3_nu3`` (``tace_l3_nu3_les`` with a long-range block;
        ``tmp_l3_nu3`` for the moment basis)."""
        suffix = "" if self.long_range == "none" else f"_{self.long_range}"
        if self.inputs or self.outputs:  # distinct builds for distinct inputs/outputs
            io = {k: v for k, v in self.to_dict().items() if k in ("inputs", "outputs")}
            suffix += f"_io{content_hash(io)[:6]}"
        model = "tmp" if self.basis == "moment" else "tace"
        return f"{model}_l{self.lmax}_nu{self.nu}{suffix}"

    @property
    def hidden_ranks(self) -> tuple[int, ...]:
        return tuple(range(self.hidden_lmax + 1))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backends"] = list(self.backends)
        if self.basis == "ict":
            del d["basis"]  # the default: absent, so existing spec files and hashes are unchanged
        for key in ("inputs", "outputs"):  # absent when empty: older specs keep their JSON and hash
            if getattr(self, key):
                d[key] = [item.to_dict() for item in getattr(self, key)]
            else:
                del d[key]
        return d

    def canonical_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def hash(self) -> str:
        return content_hash(self.to_dict())[:16]

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"unknown spec field(s) {sorted(unknown)}; allowed: {sorted(known)}")
        data = dict(data)
        if "backends" in data:
            data["backends"] = tuple(data["backends"])
        for key in ("inputs", "outputs"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))


def command_line(spec: ModelSpec) -> str:
    """The ``tacegen build`` command that builds ``spec`` (printed into generated files)."""
    parts = ["tacegen build", f"--lmax {spec.lmax}", f"--nu {spec.nu}", f"--hidden-lmax {spec.hidden_lmax}"]
    if spec.backends != ModelSpec().backends:
        parts.append("--backend " + ",".join(spec.backends))
    if spec.long_range != "none":
        parts.append(f"--long-range {spec.long_range}")
    if spec.basis != "ict":
        parts.append(f"--basis {spec.basis}")
    parts += [f"--input {command_form(item)}" for item in spec.inputs]
    parts += [f"--output {command_form(item)}" for item in spec.outputs]
    return " ".join(parts)
