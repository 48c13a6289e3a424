"""The package's layering, enforced: every import of every module (absolute and relative,
at any depth of the code) against the allowed order

    algebra -> paths -> spec -> ir -> backends -> build -> applications -> cli

(a module may import its own layer and the layers before it, and the runtime); the runtime
(what generated code and users import at run time) imports only the runtime, never the
compiler, the applications, SymPy or jinja2. And a generated model runs in a process where
the compiler cannot be imported at all."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tacegen
import tacegen.runtime

PACKAGE = Path(tacegen.__file__).parent
REPO = PACKAGE.parent
DEFAULT_BUILD = REPO / "generated" / "tace_l3_nu3"

#: module-name prefix -> layer; the longest matching prefix wins. ``tacegen`` itself (the
#: lazy facade holding ``__version__``) may be imported by everyone; its own imports count
#: as the CLI's.
LAYERS = {
    "tacegen.cache": "base",
    "tacegen.algebra": "algebra",
    "tacegen.paths": "paths",
    "tacegen.moment_paths": "paths",
    "tacegen.spec": "spec",
    "tacegen.io_spec": "spec",
    "tacegen.ir": "ir",
    "tacegen.backends": "backends",
    "tacegen.templates": "backends",
    "tacegen.build": "build",
    "tacegen.train": "applications",
    "tacegen.study": "applications",
    "tacegen.export": "applications",
    "tacegen.api": "applications",
    "tacegen.interfaces": "applications",
    "tacegen.cli": "cli",
    "tacegen.cli_train": "cli",
    "tacegen.cli_export": "cli",
    "tacegen.cli_study": "cli",
    "tacegen.cli_moment": "cli",
    "tacegen.__main__": "cli",
    "tacegen": "cli",
    "tacegen.runtime": "runtime",
}
ORDER = ("base", "algebra", "paths", "spec", "ir", "backends", "build", "applications", "cli")
#: third-party packages only the compiler may use
COMPILER_ONLY = ("sympy", "jinja2")
#: what the no-compiler subprocess blocks (not SymPy: torch's autograd imports it itself;
#: the static check above keeps it out of the runtime)
BLOCKED = ("tacegen.algebra", "tacegen.paths", "tacegen.moment_paths", "tacegen.spec", "tacegen.ir", "tacegen.backends", "tacegen.build",
           "tacegen.cache", "tacegen.train", "tacegen.study", "tacegen.export", "tacegen.interfaces",
           "jinja2")


def layer_of(module: str) -> str | None:
    """The layer of a ``tacegen`` module (None for third-party modules)."""
    if module != "tacegen" and not module.startswith("tacegen."):
        return None
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def module_name(path: Path) -> tuple[str, bool]:
    """(dotted name, is a package __init__) of a file under the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imports(source: str, name: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``source``, relative imports resolved
    against ``name``; ``from package import submodule`` names the submodule when ``known``
    holds it."""
    found = []
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 >= len(base):
                    raise ValueError(f"{name}:{node.lineno}: relative import beyond the top-level package")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            found += [(node.lineno, s) for s in subs] or [(node.lineno, target)]
    return found


def violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """Every import that breaks the layering, as ``module:line imports target (why)``.
    ``modules``: dotted name -> (source, is a package __init__)."""
    known = set(modules) | set(LAYERS)
    bad = []
    for name, (source, is_package) in sorted(modules.items()):
        layer = layer_of(name)
        for line, target in imports(source, name, is_package, known):
            where = f"{name}:{line} imports {target}"
            top = target.split(".")[0]
            target_layer = layer_of(target)
            if layer == "runtime":
                if top in COMPILER_ONLY:
                    bad.append(f"{where} (the runtime never uses the compiler's {top})")
                elif target_layer not in (None, "runtime") and target != "tacegen":
                    bad.append(f"{where} (the runtime imports only the runtime, not the {target_layer} layer)")
            elif target_layer not in (None, "runtime") and target != "tacegen":
                if ORDER.index(target_layer) > ORDER.index(layer):
                    bad.append(f"{where} (the {layer} layer may not import the later {target_layer} layer)")
    return bad


def package_modules() -> dict[str, tuple[str, bool]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, is_package = module_name(path)
        out[name] = (path.read_text(encoding="utf-8"), is_package)
    return out


def test_every_module_keeps_the_layering():
    modules = package_modules()
    assert {"tacegen.runtime.numba_driver", "tacegen.runtime.chain", "tacegen.build", "tacegen.ir.model"} <= set(
        modules)
    unknown = [n for n in modules if layer_of(n) == "cli" and n not in ("tacegen", "tacegen.cli", "tacegen.cli_train",
                                                                       "tacegen.cli_export", "tacegen.cli_study",
                                                                       "tacegen.cli_moment", "tacegen.__main__")]
    assert not unknown, f"modules without a layer (add them to LAYERS): {unknown}"
    assert violations(modules) == []


@pytest.mark.parametrize("name, source, is_package, expected", [
    ("tacegen.runtime.bad", "from ..ir.nodes import Program\n", False, "tacegen.ir.nodes"),
    ("tacegen.runtime.bad", "from ..backends import numba_printer\n", False, "tacegen.backends.numba_printer"),
    ("tacegen.runtime.bad", "def f():\n    import tacegen.build\n", False, "tacegen.build"),
    ("tacegen.runtime.bad", "import sympy\n", False, "sympy"),
    ("tacegen.runtime", "from .. import cache\n", True, "tacegen.cache"),
    ("tacegen.runtime.bad", "from tacegen.train import loop\n", False, "tacegen.train.loop"),
    ("tacegen.ir.bad", "from ..backends.numba_printer import load_source\n", False, "tacegen.backends.numba_printer"),
    ("tacegen.backends.bad", "from .. import build\n", False, "tacegen.build"),
    ("tacegen.algebra.bad", "from ..paths import coupling_trees\n", False, "tacegen.paths"),
    ("tacegen.build.bad", "from ..cli import main\n", False, "tacegen.cli"),
])
def test_a_violation_is_found(name, source, is_package, expected):
    """Synthetic modules that break the rules, with absolute, relative and nested imports."""
    modules = {name: (source, is_package), "tacegen.backends.numba_printer": ("", False),
               "tacegen.train.loop": ("", False)}
    found = violations(modules)
    assert len(found) == 1 and f"imports {expected} " in found[0], found


def test_allowed_imports_pass():
    modules = {
        "tacegen.runtime.ok": ("from .chain import ModelChain\nfrom tacegen.runtime import data\nimport numpy\n",
                               False),
        "tacegen.backends.ok": ("from ..ir.nodes import Program\nfrom ..runtime.csr import sender_csr\n"
                                "from .. import __version__\n", False),
        "tacegen.train.ok": ("from tacegen.build import write_build\nfrom ..runtime import loader\n", False),
    }
    assert violations(modules) == []


def test_relative_imports_resolve():
    known = {"tacegen.runtime.chain", "tacegen.backends.numba_printer"}
    assert imports("from .chain import x\nfrom . import chain\n", "tacegen.runtime.numba_driver", False, known) == [
        (1, "tacegen.runtime.chain"), (2, "tacegen.runtime.chain")]
    assert imports("from ..backends import numba_printer\n", "tacegen.runtime", True, known) == [
        (1, "tacegen.backends.numba_printer")]


# ----------------------------------------------------------------------------- run time

#: a meta path finder that makes the compiler (and jinja2) unimportable, then runs the code
_BLOCKER = textwrap.dedent("""
    import sys

    BLOCKED = {blocked!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{{name}} is blocked: run time must not import the compiler")
            return None

    sys.meta_path.insert(0, Blocker())
""")


def run_without_compiler(code: str, timeout: float = 600) -> str:
    script = _BLOCKER.format(blocked=BLOCKED) + textwrap.dedent(code) + textwrap.dedent("""
        leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
        assert not leaked, leaked
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_blocker_blocks():
    with pytest.raises(AssertionError, match="is blocked"):
        run_without_compiler("import tacegen.ir.nodes\n")


def test_default_build_runs_without_the_compiler():
    """The committed default build, loaded and evaluated (energy, forces, stress) by the
    PyTorch back end with every compiler module unimportable."""
    out = run_without_compiler(f"""
        import torch
        from ase.build import bulk
        from tacegen.runtime.data import batch_atoms
        from tacegen.runtime.loader import load

        torch.manual_seed(0)
        package = load({str(DEFAULT_BUILD)!r})
        model = package.TACE(elements=["Cu"], channels=4, r_cut=3.0, layers=2)
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.05, seed=0)
        out = model(batch_atoms(atoms, ["Cu"], 3.0))
        assert torch.isfinite(out["energy"]).all() and out["forces"].abs().max() > 1e-6
        print("energy", float(out["energy"][0]))
    """)
    assert out.startswith("energy ")


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


def test_numba_build_runs_without_the_compiler(tmp_path):
    """A small build (both back ends) bound to the Numba back end and evaluated (energy,
    forces, stress) with every compiler module unimportable: everything the bound model
    runs was printed at build time. Agrees with the PyTorch back end to 1e-10."""
    from tacegen.build import write_build
    from tacegen.spec import ModelSpec

    folder = write_build(ModelSpec(lmax=1, nu=1, hidden_lmax=0), tmp_path / "build")
    out = run_without_compiler(f"""
        import numpy as np
        import torch
        from ase.build import bulk
        from tacegen.runtime.data import batch_atoms
        from tacegen.runtime.loader import load

        torch.manual_seed(0)
        package = load({str(folder)!r})
        model = package.TACE(elements=["Cu"], channels=4, r_cut=3.0, layers=2, radial_hidden=(8,), num_radial=5)
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.05, seed=0)
        batch = batch_atoms(atoms, ["Cu"], 3.0)
        ref, fast = model(batch), model.numba_backend()(batch)
        for key in ("energy", "forces", "stress"):
            a, b = ref[key].detach().numpy(), fast[key].numpy()
            assert np.abs(a).max() > 1e-8, key
            assert np.abs(a - b).max() <= 1e-10 * max(1.0, np.abs(a).max()), (key, np.abs(a - b).max())
        print("ok")
    """)
    assert out.strip() == "ok"
