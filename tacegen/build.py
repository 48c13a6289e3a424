"""``tacegen build``: spec -> paths -> IR -> optimiser -> printers -> a package folder.

Output folder (``generated/<spec.name>/`` by default)::

    __init__.py   re-exports TACE and SPEC
    model.py      the PyTorch model (printed from the IR through templates/torch_model.py.j2)
    numba_model.py  the Numba programs, forward and reverse (templates/numba_model.py.j2),
                  when the spec's backends include "numba"
    spec.json     canonical spec, its hash and the tacegen version
    REPORT.md     paths and costs per layer kind, before and after optimisation

Writes are atomic at folder level: everything goes to a temporary sibling folder that
replaces the target only when complete, so an interrupted build leaves the previous
build intact. A target folder that exists but is not a tacegen build is never touched
without ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import __version__
from .ir.build import LayerPrograms, build_programs, edge_paths
from .ir.cost import DEFAULT_ITEMS, count_ops, program_cost
from .ir.nodes import Program
from .ir.optimise import optimise
from .spec import ModelSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = REPO_ROOT / "templates"
DEFAULT_BUILDS = (ModelSpec(lmax=3, nu=3),)
MARKER = "spec.json"


class BuildError(RuntimeError):
    """A build that cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class Compiled:
    spec: ModelSpec
    naive: LayerPrograms
    optimised: LayerPrograms

    def programs(self, optimised: bool = True) -> list[Program]:
        p = self.optimised if optimised else self.naive
        return [p.edge_basis, *p.interactions, *p.products]


def compile_spec(spec: ModelSpec, items_per_atom: dict | None = None) -> Compiled:
    naive = build_programs(spec)
    opt = LayerPrograms(
        naive.edge_basis,
        tuple(optimise(p, items_per_atom) for p in naive.interactions),
        tuple(optimise(p, items_per_atom) for p in naive.products),
    )
    return Compiled(spec, naive, opt)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=False,
    )


def _call_args(program: Program, mapping) -> str:
    names = [mapping(v.name) for v in program.inputs] + [mapping(w.name) for w in program.weights]
    return ", ".join(names)


def command_line(spec: ModelSpec) -> str:
    parts = ["tacegen build", f"--lmax {spec.lmax}", f"--nu {spec.nu}", f"--hidden-lmax {spec.hidden_lmax}"]
    if spec.backends != ModelSpec().backends:
        parts.append("--backend " + ",".join(spec.backends))
    if spec.long_range != "none":
        parts.append(f"--long-range {spec.long_range}")
    return " ".join(parts)


# ----------------------------------------------------------------------------- long range

#: Stand-ins for the run-time parameters of the long-range programs while they are built
#: and printed (the ops hold floats; the printed functions take the parameters as float
#: arguments, see :func:`_print_with_arguments`). Values no printed literal can collide with.
_SIGMA, _ALPHA, _R_CUT, _K_CUT = 1.2345678901234567, 1.3579246801357924, 9.876543210987654, 7.654321098765432


def long_range_programs(long_range: str, sigma: float = _SIGMA, k_cut: float = _K_CUT, alpha: float = _ALPHA,
                        r_cut: float = _R_CUT) -> dict[str, Program]:
    """The forward IR programs of a long-range block (:mod:`tacegen.ir.long_range` ops), by the
    name of the function they are printed as.

    "les" (latent Ewald summation, math.md section 5):

    * ``lr_les_charges``: raw latent charges (N,), total charge (B,) -> charges (N,)
      constrained per structure (ConstrainCharges);
    * ``lr_les_energy``: positions, charges, cell, pair shifts -> E (B,) = reciprocal sum
      over |k| <= k_cut, gamma = sigma^2/2, self term and neutralising background (periodic
      structures) + erf(r / (sqrt(2) sigma)) / r over the pairs (all pairs of the finite
      structures) + Sum.

    "ewald" (classic Ewald of given charges):

    * ``lr_ewald_energy``: real space erfc(alpha r)/r over the pairs (periodic neighbour
      list within r_cut) + reciprocal within k_cut, self and neutralising background;
    * ``lr_coulomb_energy``: bare Coulomb 1/r (the erfc kernel at alpha = 0) over the pairs
      (all pairs of the finite structures).

    Positions and cell come in strained (forces and stress by autograd), so no op reads a
    strain. The parameters default to stand-ins replaced by function arguments when printed.
    """
    from dataclasses import replace

    from .ir import long_range as lr
    from .ir.dense_ops import STRUCTURE, array, vector
    from .ir.nodes import EDGE, NODE, Sum

    pos, cell, shifts = vector("positions", NODE), array("cell", STRUCTURE, (3, 3)), array("shifts", EDGE, (3,))
    charges = array("charges", NODE)
    if long_range == "les":
        raw, total = array("raw_charges", NODE), array("total_charge", STRUCTURE)
        e_k, e_p, energy = (lr.structure_energy(n) for n in ("energy_k", "energy_pairs", "energy"))
        return {
            "lr_les_charges": Program(
                "lr_les_charges", "Latent charges constrained to the total charge of each structure, e.",
                (raw, total), (), (lr.ConstrainCharges(charges, raw, total),), (charges,)).check(),
            "lr_les_energy": Program(
                "lr_les_energy", "LES energy per structure, eV: reciprocal sum (periodic) + erf pair sum (finite).",
                (pos, charges, cell, shifts), (),
                (replace(lr.les_reciprocal(e_k, pos, charges, cell, None, sigma, k_cut), background=True),
                 lr.les_finite(e_p, pos, charges, cell, shifts, None, sigma),
                 Sum(energy, (e_k, e_p))), (energy,)).check(),
        }
    if long_range == "ewald":
        e_r, e_k, energy = (lr.structure_energy(n) for n in ("energy_real", "energy_k", "energy"))
        return {
            "lr_ewald_energy": Program(
                "lr_ewald_energy", "Classic Ewald energy per periodic structure, eV: real + reciprocal + self "
                "+ background.", (pos, charges, cell, shifts), (),
                (lr.ewald_real_space(e_r, pos, charges, cell, shifts, None, alpha=alpha, r_cut=r_cut),
                 lr.ewald_reciprocal(e_k, pos, charges, cell, None, alpha=alpha, k_cut=k_cut, background=True),
                 Sum(energy, (e_r, e_k))), (energy,)).check(),
            "lr_coulomb_energy": Program(
                "lr_coulomb_energy", "Coulomb energy per finite structure over all pairs, eV.",
                (pos, charges, cell, shifts), (),
                (lr.ewald_real_space(energy, pos, charges, cell, shifts, None, alpha=0.0),), (energy,)).check(),
        }
    raise ValueError(f"long_range_programs: no programs for long_range={long_range!r}")


def _print_with_arguments(program: Program, arguments: dict[str, float], derived: dict[str, tuple[str, float]]) -> str:
    """:func:`render_torch_program` of ``program`` with run-time float arguments: the
    function gets the extra arguments ``name: float`` of ``arguments`` (name -> the stand-in
    value the program was built with), computes the ``derived`` locals (name ->
    (expression of the arguments, the value the IR constructor derived from the stand-ins))
    first, and every printed literal equal to a stand-in or derived value reads the name
    instead. Checks that each expression reproduces the constructor's value exactly and that
    no stand-in survives."""
    import math
    import re

    from .backends.long_range_printer import render_torch_program

    values = dict(arguments)
    for name, (expression, value) in derived.items():
        computed = eval(expression, {"math": math}, dict(arguments))  # noqa: S307 (our own strings)
        if computed != value:
            raise AssertionError(f"{program.name}: {name} = {expression} gives {computed!r}, the IR has {value!r}")
        values[name] = value
    if len({repr(v) for v in values.values()}) != len(values):
        raise AssertionError(f"{program.name}: two parameters print alike: {values}")
    lines = render_torch_program(program).rstrip("\n").split("\n")
    tail = ") -> List[Tensor]:"
    if not lines[0].endswith(tail):
        raise AssertionError(f"{program.name}: unexpected function head {lines[0]!r}")
    lines[0] = lines[0][:-len(tail)] + "".join(f", {a}: float" for a in arguments) + tail
    doc_end = 1 + program.doc.count("\n") + 1
    body = "\n".join(lines[doc_end:])
    for name, value in values.items():
        body, count = re.subn(r"(?<![\w.])" + re.escape(repr(value)) + r"(?![\w.])", name, body)
        used = count > 0 or (name in arguments and any(re.search(rf"\b{name}\b", e) for e, _ in derived.values()))
        if not used:
            raise AssertionError(f"{program.name}: {name} is not read by the printed program")
    for name, value in values.items():
        if repr(value) in body:
            raise AssertionError(f"{program.name}: stand-in of {name} left in the printed program")
    setup = [f"    {name} = {expression}" for name, (expression, _) in derived.items()]
    return "\n".join(lines[:doc_end] + setup + [body]) + "\n"


def render_torch_long_range_block(long_range: str) -> str:
    """Module-level source of a generated model's long-range block: the torch kernels
    (``render_torch_long_range``) and its programs (:func:`long_range_programs`) printed as
    TorchScript-typed functions whose run-time parameters are float arguments:

    * les: ``lr_les_charges(raw_charges, total_charge, batch, num_structures)`` and
      ``lr_les_energy(positions, charges, cell, shifts, senders, receivers, batch,
      num_structures, sigma, k_cut)``;
    * ewald: ``lr_ewald_energy(positions, charges, cell, shifts, senders, receivers, batch,
      num_structures, alpha, r_cut, k_cut)`` and ``lr_coulomb_energy(positions, charges,
      cell, shifts, senders, receivers, batch, num_structures)``.

    Each returns the list of its program's outputs."""
    import math

    from .backends.long_range_printer import render_torch_long_range, render_torch_program

    programs = long_range_programs(long_range)
    parts = [render_torch_long_range()]
    if long_range == "les":
        sigma, k_cut = _SIGMA, _K_CUT
        parts.append(render_torch_program(programs["lr_les_charges"]))
        parts.append(_print_with_arguments(programs["lr_les_energy"], {"sigma": sigma, "k_cut": k_cut}, {
            "gamma": ("0.5 * sigma * sigma", 0.5 * sigma * sigma),
            "self_coefficient": ("1.0 / (sigma * math.sqrt(2.0 * math.pi))",
                                 1.0 / (sigma * math.sqrt(2.0 * math.pi))),
            "alpha": ("1.0 / (math.sqrt(2.0) * sigma)", 1.0 / (math.sqrt(2.0) * sigma)),
        }))
    else:
        alpha = _ALPHA
        parts.append(_print_with_arguments(programs["lr_ewald_energy"],
                                           {"alpha": alpha, "r_cut": _R_CUT, "k_cut": _K_CUT}, {
            "gamma": ("1.0 / (4.0 * alpha * alpha)", 1.0 / (4.0 * alpha * alpha)),
            "self_coefficient": ("alpha / math.sqrt(math.pi)", alpha / math.sqrt(math.pi)),
        }))
        parts.append(render_torch_program(programs["lr_coulomb_energy"]))
    return "\n\n".join(part.rstrip("\n") + "\n" for part in parts)


def render_torch(compiled: Compiled, optimised: bool = True) -> str:
    from .backends.torch_printer import render_program

    spec = compiled.spec
    progs = compiled.optimised if optimised else compiled.naive
    rendered = {p.name: render_program(p) for p in compiled.programs(optimised)}
    hidden = list(spec.hidden_ranks)
    inter_first, inter_rest = progs.interactions[0], progs.interactions[-1]
    prod_inner, prod_last = progs.products[0], progs.products[-1]
    layer_classes: dict[str, dict] = {}
    choices = []
    for first in (True, False):
        for last in (True, False):
            inter = inter_first if first else inter_rest
            prod = prod_last if last else prod_inner
            in_ranks = [0] if first else hidden
            out_ranks = [0] if last else hidden
            cls = f"Layer_{inter.name.split('_')[1]}_{prod.name.split('_')[1]}"
            if cls not in layer_classes:
                layer_classes[cls] = {
                    "class_name": cls,
                    "in_ranks": in_ranks,
                    "out_ranks": out_ranks,
                    "skip_ranks": [k for k in out_ranks if k in in_ranks and not first],
                    "interaction": rendered[inter.name],
                    "product": rendered[prod.name],
                    "interaction_args": _call_args(inter, lambda n, r=in_ranks: (
                        f"up[{r.index(int(n[1:]))}]" if n.startswith("h") else
                        f"Y[{n[1:]}]" if n.startswith("Y") else "R")),
                }
            choices.append({"first": first, "last": last, "class_name": cls})
    env = _environment()
    return env.get_template("torch_model.py.j2").render(
        version=__version__,
        spec=spec,
        spec_hash=spec.hash,
        spec_json=json.dumps(spec.to_dict(), sort_keys=True),
        command=command_line(spec),
        hidden_ranks=hidden,
        programs=[rendered[p.name] for p in compiled.programs(optimised)],
        products=[rendered[p.name] for p in progs.products],
        edge_basis=rendered[progs.edge_basis.name],
        layers=list(layer_classes.values()),
        # every product block reads A_0..A_lmax and its weights, in this order
        product_args=_call_args(prod_inner, lambda n: f"A[{n[1:]}]" if n.startswith("A") else "W"),
        layer_choices=choices,
        long_range=spec.long_range,
        long_range_block=render_torch_long_range_block(spec.long_range) if spec.long_range != "none" else "",
    )


def report(compiled: Compiled, items_per_atom: dict | None = None, channels: int = 64) -> str:
    """Markdown report: paths and cost per program kind, before and after optimisation."""
    items = items_per_atom or DEFAULT_ITEMS
    spec = compiled.spec
    lines = [
        f"# tacegen build report: lmax={spec.lmax}, nu={spec.nu}, hidden ranks {list(spec.hidden_ranks)}",
        "",
        f"tacegen {__version__}, spec hash `{spec.hash}`. Costs are multiply-add FLOPs (x2) per atom for "
        f"{channels} channels, edge ops weighted by {items['edge']:g} neighbours per atom; "
        "memory is the floats stored per atom (what autograd keeps), in KiB at float64.",
        "",
        "| program | ops before | ops after | MFLOP before | MFLOP after | speed-up | dense-matmul MFLOP after | "
        "memory KiB before | memory KiB after | 3^l dense storage MFLOP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for naive, opt in zip(compiled.programs(False), compiled.programs(True)):
        cb, ca = program_cost(naive, items), program_cost(opt, items)
        dense = program_cost(opt, items, storage="dense")
        speed = cb.flops / ca.flops if ca.flops else 1.0
        lines.append(
            f"| {naive.name} | {sum(count_ops(naive).values())} | {sum(count_ops(opt).values())} | "
            f"{cb.flops * channels / 1e6:.3f} | {ca.flops * channels / 1e6:.3f} | {speed:.2f}x | "
            f"{ca.dense_flops * channels / 1e6:.3f} | {cb.floats * channels * 8 / 1024:.1f} | "
            f"{ca.floats * channels * 8 / 1024:.1f} | {dense.flops * channels / 1e6:.3f} |")
    lines += ["", "## Edge coupling paths", ""]
    for prog in compiled.optimised.interactions:
        in_ranks = sorted({v.rank for v in prog.inputs if v.name.startswith("h")})
        paths = edge_paths(in_ranks, spec.lmax)
        lines.append(f"- `{prog.name}` (node ranks {in_ranks}): {len(paths)} paths: "
                     + ", ".join(p.label for p in paths))
    lines += ["", "## Product-basis trees (independent and complete)", ""]
    for prog in compiled.optimised.products:
        w = prog.weights[0]
        lines.append(f"- `{prog.name}`: {w.count} trees")
        lines += [f"  - {label}" for label in w.labels]
    return "\n".join(lines) + "\n"


def _package_files(compiled: Compiled, optimised: bool = True) -> dict[str, str]:
    spec = compiled.spec
    spec_record = {"spec": spec.to_dict(), "hash": spec.hash, "tacegen": __version__,
                   "optimised": optimised, "command": command_line(spec)}
    files = {
        "__init__.py": (f'"""TACE model generated by tacegen {__version__} (spec {spec.hash})."""\n\n'
                        "from .model import SPEC, TACE\n\n__all__ = [\"SPEC\", \"TACE\"]\n"),
        "spec.json": json.dumps(spec_record, indent=2, sort_keys=True) + "\n",
        "REPORT.md": report(compiled),
    }
    if "torch" in spec.backends:
        files["model.py"] = render_torch(compiled, optimised)
    if "numba" in spec.backends:
        from .backends.numba_model import render_numba_model

        files["numba_model.py"] = render_numba_model(compiled, optimised)
    return files


def is_tacegen_build(folder: Path) -> bool:
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "spec" in record and "hash" in record


def write_build(spec: ModelSpec, out_dir: Path | str | None = None, force: bool = False,
                optimised: bool = True, compiled: Compiled | None = None) -> Path:
    """Build ``spec`` into ``out_dir`` atomically; returns the folder."""
    target = Path(out_dir) if out_dir is not None else REPO_ROOT / "generated" / spec.name
    if target.exists() and not force:
        if not target.is_dir() or (any(target.iterdir()) and not is_tacegen_build(target)):
            raise BuildError(f"{target} exists and is not a tacegen build; refusing to overwrite it "
                             "(pass --force to replace it)")
    compiled = compiled or compile_spec(spec)
    files = _package_files(compiled, optimised)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    old = None
    try:
        for name, text in files.items():
            previous = target / name
            if previous.is_file() and previous.read_text(encoding="utf-8") == text:
                # unchanged: keep the file with its time stamp, so caches keyed on it (numba's
                # compiled kernels in __pycache__) stay valid across rebuilds
                shutil.copy2(previous, staging / name)
            else:
                (staging / name).write_text(text, encoding="utf-8")
        if (target / "__pycache__").is_dir():
            shutil.copytree(target / "__pycache__", staging / "__pycache__")
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)  # the new build did not land: put the previous one back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def check_builds(root: Path | None = None) -> list[str]:
    """Regenerate the default builds in memory and list the files that differ from ``root``."""
    root = root or REPO_ROOT / "generated"
    diffs = []
    for spec in DEFAULT_BUILDS:
        folder = root / spec.name
        for name, text in _package_files(compile_spec(spec)).items():
            path = folder / name
            if not path.exists():
                diffs.append(f"{path}: missing")
            elif path.read_text(encoding="utf-8") != text:
                diffs.append(f"{path}: differs from a fresh build")
    return diffs
