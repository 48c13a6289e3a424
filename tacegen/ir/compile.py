"""A spec compiled to IR: the core programs of each layer kind, as built and as optimised."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import ModelSpec
from .build import LayerPrograms, build_programs
from .nodes import Program
from .optimise import optimise


@dataclass(frozen=True)
class Compiled:
    """The edge basis, interaction and product programs of ``spec``: ``naive`` as built from
    the coupling paths, ``optimised`` after :func:`tacegen.ir.optimise.optimise`."""

    spec: ModelSpec
    naive: LayerPrograms
    optimised: LayerPrograms

    def programs(self, optimised: bool = True) -> list[Program]:
        p = self.optimised if optimised else self.naive
        return [p.edge_basis, *p.interactions, *p.products]


def compile_spec(spec: ModelSpec, items_per_atom: dict | None = None) -> Compiled:
    """Build and optimise the core programs of ``spec`` (``items_per_atom``: the cost model's
    edges and nodes per atom, :data:`tacegen.ir.cost.DEFAULT_ITEMS` by default)."""
    naive = build_programs(spec)
    opt = LayerPrograms(
        naive.edge_basis,
        tuple(optimise(p, items_per_atom) for p in naive.interactions),
        tuple(optimise(p, items_per_atom) for p in naive.products),
    )
    return Compiled(spec, naive, opt)
