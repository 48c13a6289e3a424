"""The jinja2 templates of the printers, loaded from inside the package (``tacegen/templates``,
shipped in the wheel as package data) with :mod:`importlib.resources`, so printing works
from an installed package as from a source checkout."""

from __future__ import annotations

import functools
from importlib import resources

import jinja2

PACKAGE = "tacegen"
FOLDER = "templates"


def _load(name: str):
    path = resources.files(PACKAGE).joinpath(FOLDER, *name.split("/"))
    if not path.is_file():
        return None  # jinja2 raises TemplateNotFound naming the template
    return path.read_text(encoding="utf-8"), None, lambda: True


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The printers' jinja2 environment: undefined names are errors, trailing newlines kept."""
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=False,
    )


def render(template: str, **context) -> str:
    """``template`` (a file name in ``tacegen/templates``) rendered with ``context``."""
    return environment().get_template(template).render(**context)
