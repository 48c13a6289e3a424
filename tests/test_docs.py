"""The documentation: Sphinx builds it with warnings as errors, and every reference to
``math.md`` in the repository points at a file (and a section) that exists."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SCANNED = ("README.md", "CHANGELOG.md", "tacegen", "templates", "tests", "docs", "examples", "benchmarks",
           "generated")
SUFFIXES = {".py", ".j2", ".md", ".rst", ".txt", ".toml"}
REFERENCE = re.compile(r"([\w./-]*math\.md)(?:'s)?(?:,?\s+sections?\s+(\d+))?")


def _docs_tools_missing() -> str | None:
    missing = [name for name in ("sphinx", "sphinx_click", "myst_parser") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"{', '.join(missing)} not installed; the docs build needs the test extra "
                "(pip install -e '.[test]', as `make test` does)")
    return None


@pytest.mark.skipif(_docs_tools_missing() is not None, reason=str(_docs_tools_missing()))
def test_sphinx_build_has_no_warnings(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, f"sphinx failed:\n{result.stderr[-6000:]}"
    for page in ("index", "getting-started", "math", "cli", "api", "changelog"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    cli = (tmp_path / "html" / "cli.html").read_text(encoding="utf-8")
    for anchor in ("tacegen-build", "tacegen-paths", "cmdoption-tacegen-build-hidden-lmax",
                   "cmdoption-tacegen-build-long-range"):
        assert f'id="{anchor}"' in cli, f"CLI reference lacks {anchor!r}"
    maths = (tmp_path / "html" / "math.html").read_text(encoding="utf-8")
    assert maths.count('<div class="math') >= 9, "display formulas of math.md did not render as math"
    assert "$$" not in maths and '$<span class="math' not in maths, "a formula of math.md was left as text"
    api = (tmp_path / "html" / "api.html").read_text(encoding="utf-8")
    for name in ("batch_atoms", "Calculator", "ModelSpec", "coupling_tensor", "write_build"):
        assert name in api, f"API reference lacks {name!r}"


def _math_sections(path: Path) -> set[int]:
    return {int(m) for m in re.findall(r"^## (\d+)\. ", path.read_text(encoding="utf-8"), re.M)}


def _references():
    for entry in SCANNED:
        root = REPO / entry
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES)
        for path in files:
            if "_build" in path.parts or "__pycache__" in path.parts or path == Path(__file__).resolve():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for match in REFERENCE.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                yield path, line, match.group(1), match.group(2)


def _resolve(path: Path, name: str) -> Path | None:
    """A reference resolves relative to its file, then to the repository root; a bare
    ``math.md`` means the project's ``docs/math.md``."""
    candidates = [path.parent / name, REPO / name]
    if "/" not in name:
        candidates.append(DOCS / name)
    return next((c.resolve() for c in candidates if c.is_file()), None)


def test_every_math_md_reference_points_at_an_existing_file_and_section():
    refs = list(_references())
    assert len(refs) >= 10, "expected the code to cite math.md; the scan found almost nothing"
    problems = []
    for path, line, name, section in refs:
        where = f"{path.relative_to(REPO)}:{line}"
        target = _resolve(path, name)
        if target is None:
            problems.append(f"{where}: {name} does not exist")
        elif section is not None and int(section) not in _math_sections(target):
            problems.append(f"{where}: {name} has no section {section} (it has {sorted(_math_sections(target))})")
    assert not problems, "\n".join(problems)


def test_reference_check_can_fail(tmp_path):
    assert _resolve(REPO / "tacegen" / "spec.py", "nowhere/math.md") is None
    assert 9 not in _math_sections(DOCS / "math.md")
    assert _math_sections(DOCS / "math.md") >= {1, 2, 3, 4, 5, 6, 7}


def test_plain_bars_extension_escapes_prose_only():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from plain_bars import escape_bars
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    lines = ["with V = |det(cell)| and ``|x|`` literal", "", "Formula::", "", "    E = |S(k)|^2", "",
             "after |r| text"]
    assert escape_bars(lines) == ["with V = \\|det(cell)\\| and ``|x|`` literal", "", "Formula::", "",
                                  "    E = |S(k)|^2", "", "after \\|r\\| text"]
