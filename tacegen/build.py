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
    if spec.backends != ("torch",):
        parts.append("--backend " + ",".join(spec.backends))
    return " ".join(parts)


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
            (staging / name).write_text(text, encoding="utf-8")
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
