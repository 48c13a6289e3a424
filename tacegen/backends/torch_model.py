"""The PyTorch back end of a whole model: ``model.py`` of a build.

:func:`render_torch` fills ``templates/torch_model.py.j2`` with the printed core blocks
(:mod:`tacegen.backends.torch_printer`) and, with a long range, the block of
:func:`render_torch_long_range_block`: the electrostatics kernels and the long-range IR
programs (:func:`long_range_programs`) printed as TorchScript functions whose run-time
parameters (:class:`~tacegen.ir.nodes.Param`) are float arguments.
"""

from __future__ import annotations

import json
import pprint

from .. import __version__
from ..ir.embeddings import first_layer_ranks, io_plan
from ..ir.dense_ops import STRUCTURE, array, scalar, vector
from ..ir.model import ALPHA, GAMMA, K_CUT, REAL_CUT, SELF_COEFFICIENT
from ..ir.nodes import EDGE, NODE, Program, Sum
from ..spec import command_line
from .long_range_printer import render_torch_long_range, render_torch_program
from .templates import render
from .torch_printer import render_program


def long_range_programs(long_range: str) -> dict[str, Program]:
    """The forward IR programs of a long-range block (:mod:`tacegen.ir.long_range` ops), by the
    name of the function they are printed as. Their run-time scalars come last among the
    function's arguments, in the order the program declares them.

    "les" (latent Ewald summation, math.md section 5):

    * ``lr_les_charges(raw_charges, total_charge, batch, num_structures)``: raw latent
      charges (N,), total charge (B,) -> charges (N,) constrained per structure;
    * ``lr_les_energy(positions, charges, cell, shifts, senders, receivers, batch,
      num_structures, gamma, k_cut, self_coefficient, alpha)``: E (B,) = reciprocal sum over
      |k| <= k_cut, self term and neutralising background (periodic structures) + erf(alpha
      r) / r over the pairs (all pairs of the finite structures); the scalars are
      :func:`tacegen.runtime.long_range.les_kernel_parameters` of sigma and k_cut.

    "ewald" (classic Ewald of given charges):

    * ``lr_ewald_energy(..., num_structures, alpha, r_cut, k_cut, gamma,
      self_coefficient)``: real space erfc(alpha r)/r over the pairs within r_cut +
      reciprocal within k_cut, self and neutralising background (gamma, self_coefficient:
      :func:`tacegen.runtime.long_range.ewald_kernel_parameters`);
    * ``lr_coulomb_energy(..., num_structures)``: bare Coulomb 1/r over the pairs (all pairs
      of the finite structures).

    Positions and cell come in strained (forces and stress by autograd), so no op reads a
    strain."""
    from ..ir import long_range as lr

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
                (pos, charges, cell, shifts), tuple(scalar(p) for p in (GAMMA, K_CUT, SELF_COEFFICIENT, ALPHA)),
                (lr.ReciprocalEnergy(e_k, pos, charges, cell, None, GAMMA, K_CUT, SELF_COEFFICIENT, True),
                 lr.PairEnergy(e_p, pos, charges, cell, shifts, None, ALPHA, "erf", None),
                 Sum(energy, (e_k, e_p))), (energy,)).check(),
        }
    if long_range == "ewald":
        e_r, e_k, energy = (lr.structure_energy(n) for n in ("energy_real", "energy_k", "energy"))
        return {
            "lr_ewald_energy": Program(
                "lr_ewald_energy", "Classic Ewald energy per periodic structure, eV: real + reciprocal + self "
                "+ background.", (pos, charges, cell, shifts),
                tuple(scalar(p) for p in (ALPHA, REAL_CUT, K_CUT, GAMMA, SELF_COEFFICIENT)),
                (lr.PairEnergy(e_r, pos, charges, cell, shifts, None, ALPHA, "erfc", REAL_CUT),
                 lr.ReciprocalEnergy(e_k, pos, charges, cell, None, GAMMA, K_CUT, SELF_COEFFICIENT, True),
                 Sum(energy, (e_r, e_k))), (energy,)).check(),
            "lr_coulomb_energy": Program(
                "lr_coulomb_energy", "Coulomb energy per finite structure over all pairs, eV.",
                (pos, charges, cell, shifts), (),
                (lr.PairEnergy(energy, pos, charges, cell, shifts, None, 0.0, "erfc", None),), (energy,)).check(),
        }
    raise ValueError(f"long_range_programs: no programs for long_range={long_range!r}")


def render_torch_long_range_block(long_range: str) -> str:
    """Module-level source of a generated model's long-range block: the torch kernels and the
    programs of :func:`long_range_programs`, each returning the list of its outputs."""
    parts = [render_torch_long_range()] + [render_torch_program(p) for p in long_range_programs(long_range).values()]
    return "\n\n".join(part.rstrip("\n") + "\n" for part in parts)


def _call_args(program: Program, mapping) -> str:
    names = [mapping(v.name) for v in program.inputs] + [mapping(w.name) for w in program.weights]
    return ", ".join(names)


def render_torch(compiled, optimised: bool = True) -> str:
    """``model.py`` of a build (``compiled``: :class:`tacegen.ir.compile.Compiled`)."""
    spec = compiled.spec
    progs = compiled.optimised if optimised else compiled.naive
    rendered = {p.name: render_program(p) for p in compiled.programs(optimised)}
    hidden = list(spec.hidden_ranks)
    first_ranks = first_layer_ranks(spec)
    inter_first, inter_rest = progs.interactions[0], progs.interactions[-1]
    prod_inner, prod_last = progs.products[0], progs.products[-1]
    layer_classes: dict[str, dict] = {}
    choices = []
    for first in (True, False):
        for last in (True, False):
            inter = inter_first if first else inter_rest
            prod = prod_last if last else prod_inner
            in_ranks = list(first_ranks) if first else hidden
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
    return render(
        "torch_model.py.j2",
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
        io=bool(spec.inputs or spec.outputs),
        io_names=", ".join(item.name for item in spec.inputs + spec.outputs),
        io_inputs=spec.inputs,
        # a declared total_charge input is the total a long-range block's charges follow (io_spec)
        total_charge_input=any(item.name == "total_charge" for item in spec.inputs),
        io_outputs=spec.outputs,
        io_plan=pprint.pformat(io_plan(spec), width=116, sort_dicts=True) if spec.inputs or spec.outputs else "",
    )
