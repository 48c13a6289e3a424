"""Deliberate faults for the fault-injection check (tests/test_fault_injection.py).

Each :class:`Mutation` breaks one thing the suite claims to test, and names the few
tests that must then fail. Two kinds of target:

* ``runtime``: a text edit of one file of the ``tacegen`` package (e.g.
  ``tacegen/runtime/autograd.py``). The check applies it to a temporary copy of the
  repository and runs the named tests there, so the edited file is what every import (and
  TorchScript, which reads source files) sees.
* ``generated``: a text edit of every generated ``model.py`` the tests build. With the
  environment variable ``TACEGEN_TEST_MUTATION=<name>`` set, ``tests/conftest.py`` calls
  :func:`install_generated_mutation`, which wraps ``tacegen.build.write_build`` so each
  freshly written ``model.py`` is edited before it is imported. Builds the edit does not
  apply to (e.g. a spec without that coupling) are left alone; every edited build is
  logged to ``TACEGEN_MUTATION_LOG`` so the check can tell "no test failed" from "the
  mutation never happened".

An edit that does not find its target raises :class:`MutationNotApplied` (a mutation
that silently does nothing would be reported as killed or survived for the wrong reason).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Tuple

ENV_NAME = "TACEGEN_TEST_MUTATION"
ENV_LOG = "TACEGEN_MUTATION_LOG"


class MutationNotApplied(RuntimeError):
    """The text a mutation edits was not found where expected."""


@dataclass(frozen=True)
class Mutation:
    """One fault: ``edit(text) -> text`` applied to ``target``; ``tests`` must catch it.

    ``target``: a path relative to the repository root (kind ``runtime``) or
    ``"model.py"`` (kind ``generated``: every generated PyTorch model). ``edit`` raises
    :class:`MutationNotApplied` when its target text is absent.
    """

    name: str
    kind: str  # "runtime" | "generated"
    target: str
    edit: Callable[[str], str]
    tests: Tuple[str, ...]
    description: str


def replace_once(old: str, new: str) -> Callable[[str], str]:
    """An edit replacing the single occurrence of ``old`` by ``new``."""

    def edit(text: str) -> str:
        count = text.count(old)
        if count != 1:
            raise MutationNotApplied(f"expected exactly one occurrence of {old!r}, found {count}")
        return text.replace(old, new)

    return edit


def replace_regex(pattern: str, new: str) -> Callable[[str], str]:
    """An edit replacing the first match of ``pattern`` (re.MULTILINE) by ``new``."""

    def edit(text: str) -> str:
        out, n = re.subn(pattern, new, text, count=1, flags=re.MULTILINE)
        if n == 0:
            raise MutationNotApplied(f"pattern {pattern!r} not found")
        return out

    return edit


def swap_first_index_in_table(table: str, a: int, b: int) -> Callable[[str], str]:
    """An edit swapping the values ``a`` and ``b`` of the first (Cartesian, reduced) index of
    the entries of one coupling table ``T_...`` (every occurrence of its definition line)."""
    line_re = re.compile(r'^.*register_buffer\("' + re.escape(table) + r'", coupling_table\(.*$', re.MULTILINE)
    entry_re = re.compile(r"\((\d+), (\d+), (\d+), (\"[^\"]+\")\)")

    def swap(match: re.Match) -> str:
        m1 = int(match.group(1))
        m1 = b if m1 == a else a if m1 == b else m1
        return f"({m1}, {match.group(2)}, {match.group(3)}, {match.group(4)})"

    def edit(text: str) -> str:
        out, n = line_re.subn(lambda m: entry_re.sub(swap, m.group(0)), text)
        if n == 0:
            raise MutationNotApplied(f"coupling table {table} not found")
        return out

    return edit


AUTOGRAD = "tacegen/runtime/autograd.py"
TABLES = "tacegen/runtime/tables.py"
ELECTROSTATICS = "tacegen/runtime/electrostatics.py"

MUTATIONS: Tuple[Mutation, ...] = (
    Mutation(
        "force_sign_flipped", "runtime", AUTOGRAD,
        replace_once('out["forces"] = -g if g is not None', 'out["forces"] = g if g is not None'),
        ("tests/test_runtime_autograd.py::test_forces_equal_central_finite_differences",),
        "forces = +dE/dr instead of -dE/dr (runtime autograd)",
    ),
    Mutation(
        "stress_doubled", "runtime", AUTOGRAD,
        replace_once("stress = de_deps / safe_volume", "stress = 2.0 * de_deps / safe_volume"),
        ("tests/test_runtime_autograd.py::test_stress_equals_finite_differences_under_strain",),
        "stress scaled by 2 (runtime autograd)",
    ),
    Mutation(
        "coupling_path_dropped", "generated", "model.py",
        replace_regex(r"^(\s*A1_edges = s_0_1_1 \+ s_1_0_1) \+ s_1_2_1$", r"\1"),
        ("tests/test_ir.py::test_generated_torch_blocks_match_interpreter",),
        "the path h1 x Y2 -> A1 left out of the atomic basis A1 (generated interaction)",
    ),
    Mutation(
        "coupling_table_indices_swapped", "generated", "model.py",
        swap_first_index_in_table("T_1_2_1", 0, 1),
        ("tests/test_model_physics.py::test_invariance_and_equivariance_float64",),
        "Cartesian components x and y of the rank-1 input swapped in coupling table T_1_2_1 (generated)",
    ),
    Mutation(
        "long_range_forces_zeroed", "generated", "model.py",
        replace_once("energy = energy + long_range_energy\n", "energy = energy + long_range_energy.detach()\n"),
        ("tests/test_long_range_model.py::test_forces_and_stress_match_finite_differences",),
        "the long-range energy cut from the autograd graph: zero long-range forces and stress (generated)",
    ),
    Mutation(
        "ewald_background_dropped", "runtime", ELECTROSTATICS,
        replace_once("e_bg = -K_E * math.pi * q.sum() ** 2 / (2.0 * vol * al * al)", "e_bg = positions.new_zeros(())"),
        ("tests/test_electrostatics.py::test_non_neutral_requires_background",),
        "no neutralising-background energy in the reference Ewald sum of a charged cell (runtime)",
    ),
    Mutation(
        "generated_background_dropped", "generated", "model.py",
        replace_regex(r"^(\s*)if background:\n\s*e = e - .*$", r"\1pass"),
        ("tests/test_long_range_model.py::test_les_non_neutral_periodic_has_background",),
        "no neutralising-background term in the generated reciprocal energy (LES and Ewald modes)",
    ),
    Mutation(
        "float32_coefficients_in_float64", "runtime", TABLES,
        replace_once("return table.to(dtype)", "return table.to(torch.float32).to(dtype)"),
        ("tests/test_model_physics.py::test_invariance_and_equivariance_float64",),
        "a float64 model uses coupling coefficients rounded to float32 (runtime tables)",
    ),
)

BY_NAME = {m.name: m for m in MUTATIONS}


def install_generated_mutation(name: str) -> None:
    """Wrap ``tacegen.build.write_build`` so every written ``model.py`` gets mutation
    ``name`` (kind ``generated``); runtime mutations need no hook (see module docstring)."""
    mutation = BY_NAME.get(name)
    if mutation is None:
        raise KeyError(f"{ENV_NAME}={name!r} is not a known mutation; known: {sorted(BY_NAME)}")
    if mutation.kind != "generated":
        return
    import tacegen.build as build

    original = build.write_build
    log = os.environ.get(ENV_LOG)

    def write_build(*args, **kwargs):
        folder = Path(original(*args, **kwargs))
        path = folder / mutation.target
        text = path.read_text()
        try:
            mutated = mutation.edit(text)
        except MutationNotApplied:
            return folder  # this build lacks the target (another spec); others must have it
        path.write_text(mutated)
        if log:
            with open(log, "a") as f:
                f.write(f"{name} {path}\n")
        return folder

    build.write_build = write_build
