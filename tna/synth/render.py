"""Render the C program for one plan shape from fpm_templates/."""

from __future__ import annotations

import jinja2

from tna import TEMPLATE_DIR

HOOKS = ("xdp", "tc")
MODULES = ("router",)  # in chain order; the planner picks a subset

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(hook: str, modules: tuple[str, ...]) -> str:
    """The C source of the program for this hook and module chain."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}")
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise ValueError(f"unknown modules {unknown}")
    ordered = tuple(m for m in MODULES if m in modules)
    return _env.get_template("main.c.j2").render(hook=hook, modules=ordered)
