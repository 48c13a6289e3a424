"""The printer base: ``_print_<Op>`` dispatch along the op's MRO and the registry of back ends."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import tacegen.backends.numba_segments  # noqa: F401  (registers the Numba printers)
import tacegen.backends.torch_model  # noqa: F401  (registers the torch printers)
from tacegen.backends.numba_dense import DensePrinter
from tacegen.backends.numba_printer import NumbaPrinter
from tacegen.backends.printer import PRINTERS, Printer
from tacegen.backends.torch_printer import TorchPrinter
from tacegen.ir.nodes import NODE, Program, Sum, Value


def test_registry_holds_every_printer_by_back_end_and_role():
    assert PRINTERS["torch"]["core"] is TorchPrinter
    assert PRINTERS["numba"]["core"] is NumbaPrinter
    assert PRINTERS["numba"]["dense"] is DensePrinter
    assert {"long_range"} <= set(PRINTERS["torch"]) & set(PRINTERS["numba"])
    assert all(issubclass(cls, Printer) for roles in PRINTERS.values() for cls in roles.values())


@dataclass(frozen=True)
class LoudSum(Sum):
    """A subclass of an op no printer knows by name."""


@dataclass(frozen=True)
class Unknown:
    out: Value

    @property
    def inputs(self) -> tuple:
        return ()


def test_dispatch_follows_the_op_class_and_refuses_unknown_ops():
    a, b, out = (Value(n, 0, NODE) for n in ("a", "b", "out"))
    program = Program("p", "", (a, b), (), (Sum(out, (a, b)),), (out,)).check()
    printer = TorchPrinter(program)
    assert printer.print_op(LoudSum(out, (a, b))) == printer.print_op(Sum(out, (a, b))) == ["out = a + b"]
    assert TorchPrinter.method_name(LoudSum) == "_print_Sum"
    with pytest.raises(NotImplementedError, match="torch core printer has no method for Unknown"):
        printer.print_op(Unknown(out))
    long_range = PRINTERS["numba"]["long_range"]()
    with pytest.raises(NotImplementedError, match="long-range numba printer has no method for Unknown"):
        long_range.print_op(Unknown(out))
