"""The build report (``REPORT.md``): paths and costs per program kind, before and after
optimisation."""

from __future__ import annotations

from .. import __version__
from .build import edge_paths
from .cost import DEFAULT_ITEMS, count_ops, program_cost
from .embeddings import report_lines


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
    ]
    if spec.basis != "ict":
        lines += _basis_lines(compiled), ""
    lines += [
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
    lines += ["", "## Product-basis trees (independent and complete)" if spec.basis == "ict" else
              "## Product-basis moment trees (independent; complete from order 2)", ""]
    for prog in compiled.optimised.products:
        w = prog.weights[0]
        lines.append(f"- `{prog.name}`: {w.count} trees")
        lines += [f"  - {label}" for label in w.labels]
    lines += report_lines(spec)
    return "\n".join(lines) + "\n"


def _basis_lines(compiled) -> str:
    """One paragraph on the storage of a non-default basis (the TACE report stays as it was)."""
    A = compiled.optimised.products[0].inputs
    stored = sum(v.size for v in A)
    ict = sum(2 * v.rank + 1 for v in A)
    return (f"Basis: moment (TMP). The atomic basis A_0..A_{len(A) - 1} holds moment tensors (symmetric, not "
            f"traceless) in symmetric storage, (l+1)(l+2)/2 components: {stored} floats per atom and channel "
            f"(ICT storage of the same ranks: {ict}); products are exact moment-tensor contraction tables, the last "
            "step of each tree ending in the ICT of the output rank. Costs below use the stored sizes.")
