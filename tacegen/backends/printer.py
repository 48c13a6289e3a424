"""The base of every op printer, and the registry of back ends.

A printer is a visitor in the style of SymPy's printers: the lines of an op come from the
method ``_print_<OpClass>`` of the printer, looked up along the op class's MRO (so a
subclass of an op is printed like its base unless the printer says otherwise). A printer
that has no method for an op raises ``NotImplementedError`` naming both. Each back end
registers its printers by role (:func:`register`), so ``PRINTERS["numba"]["core"]`` is the
class that prints the equivariant core ops for Numba.
"""

from __future__ import annotations

from typing import Callable

#: back end -> role -> printer class ("torch": {"core": TorchPrinter}, "numba": {"core": ..., "dense": ...})
PRINTERS: dict[str, dict[str, type]] = {}


def register(backend: str, role: str) -> Callable[[type], type]:
    """Class decorator: record the printer as ``PRINTERS[backend][role]``."""
    def decorate(cls: type) -> type:
        PRINTERS.setdefault(backend, {})[role] = cls
        cls.backend, cls.role = backend, role
        return cls

    return decorate


class Printer:
    """Dispatch of ops to ``_print_<OpClass>`` methods (see the module docstring)."""

    backend = ""
    role = ""

    @classmethod
    def method_name(cls, op_type: type) -> str | None:
        """The name of the method printing ``op_type`` (None when there is none)."""
        for klass in op_type.__mro__:
            name = f"_print_{klass.__name__}"
            if hasattr(cls, name):
                return name
        return None

    @classmethod
    def supports(cls, op) -> bool:
        return cls.method_name(type(op)) is not None

    def unsupported(self, op) -> str:
        """The message for an op this printer cannot print."""
        return f"the {self.backend} {self.role} printer has no method for {type(op).__name__}"

    def print_op(self, op) -> list[str]:
        """The lines of ``op``."""
        name = self.method_name(type(op))
        if name is None:
            raise NotImplementedError(self.unsupported(op))
        return getattr(self, name)(op)
