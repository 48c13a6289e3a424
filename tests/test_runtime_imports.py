"""The runtime's import rules: never the compiler or SymPy; lazy package exports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tacegen.runtime

RUNTIME = Path(tacegen.runtime.__file__).parent
FORBIDDEN = ("tacegen.algebra", "tacegen.paths", "tacegen.ir", "tacegen.backends", "sympy")
OWN_MODULES = ["__init__", "data", "neighbours", "autograd", "radial", "calculator", "loader"]


def imported_names(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


@pytest.mark.parametrize("name", OWN_MODULES)
def test_runtime_never_imports_the_compiler_or_sympy(name):
    names = list(imported_names(RUNTIME / f"{name}.py"))
    bad = [n for n in names if n.startswith(FORBIDDEN)]
    assert not bad, f"tacegen/runtime/{name}.py imports {bad}"


def test_radial_alone_does_not_pull_in_ase_vesin_or_the_compiler():
    code = (
        "import sys, tacegen.runtime.radial, tacegen.runtime.autograd; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ase', 'vesin', 'sympy') or m.startswith(('tacegen.algebra', 'tacegen.ir'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_lazy_exports_resolve():
    from tacegen.runtime.radial import BesselBasis

    assert tacegen.runtime.BesselBasis is BesselBasis
    for name in tacegen.runtime.__all__:
        assert getattr(tacegen.runtime, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tacegen.runtime.nope  # noqa: B018
