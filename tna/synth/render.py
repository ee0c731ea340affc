"""Render the C program for one plan shape from tna/fpm_templates/."""

from __future__ import annotations

import functools

import jinja2

from tna import TEMPLATE_DIR
from tna.model.firewall import Firewall
from tna.synth.fwgen import render_data

HOOKS = ("xdp", "tc")
# In include order; the planner picks a subset.  "fdb" (a bridge's
# forwarding decision) and "firewall" (the FORWARD chain, called by the
# router) are libraries; the rest form the chain.
MODULES = ("fdb", "bridge", "firewall", "router")
CHAIN = ("bridge", "router")

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


@functools.lru_cache(maxsize=16)
def render(hook: str, modules: tuple[str, ...], dev_bound: bool = False, firewall: Firewall | None = None) -> str:
    """The C source of the program for this hook and module chain (cached:
    the interfaces of one shape share it, ~50 ms behind a large rule set).
    dev_bound: an XDP program bound to its device (may ask the driver for
    out-of-band VLAN tags; BPF_PROG_RUN refuses such programs)."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}")
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise ValueError(f"unknown modules {unknown}")
    ordered = tuple(m for m in MODULES if m in modules)
    if dev_bound and hook != "xdp":
        raise ValueError("only XDP programs are bound to a device")
    if "bridge" in ordered and "fdb" not in ordered:
        raise ValueError("the bridge module needs the fdb module")
    if ("firewall" in ordered) != (firewall is not None):
        raise ValueError("the firewall module and a firewall go together")
    return _env.get_template("main.c.j2").render(
        hook=hook, modules=ordered, chain=[m for m in ordered if m in CHAIN], dev_bound=dev_bound,
        fw=render_data(firewall))
