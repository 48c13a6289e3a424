"""Sphinx extension: plain-text absolute values in docstrings.

tacegen's docstrings write absolute values and norms as in plain text, ``|r_ij|``,
``|det(cell)|``, ``|l1 - l2|``. reStructuredText reads ``|name|`` as a substitution
reference and fails. This hook escapes ``|`` in prose before autodoc parses a
docstring; it leaves alone inline literals (````...````), literal blocks (after ``::``
or a doctest ``>>>``) and table rules, so those render exactly as written.
"""

from __future__ import annotations

import re

_LITERAL = re.compile(r"(``.+?``)")


def _escape(text: str) -> str:
    parts = _LITERAL.split(text)
    return "".join(p if p.startswith("``") else re.sub(r"(?<!\\)\|", r"\\|", p) for p in parts)


def escape_bars(lines: list[str]) -> list[str]:
    """``lines`` with prose bars escaped (literal blocks and inline literals untouched)."""
    out: list[str] = []
    literal_indent: int | None = None  # indentation of the paragraph that opened a literal block
    opener_indent = 0
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                out.append(line)
                continue
            literal_indent = None
        if stripped.startswith(">>>") or stripped.startswith(("+-", "+=")):
            out.append(line)
            continue
        if stripped:
            opener_indent = indent
        out.append(_escape(line))
        if stripped.endswith("::"):
            literal_indent = opener_indent
    return out


def _process(app, what, name, obj, options, lines):
    lines[:] = escape_bars(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
