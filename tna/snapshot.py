"""What the daemon reads of a namespace's configuration, shared by `tna run`
and `tna check` (which must see exactly what the daemon would see).

netlink dump -> Model; then the polled inputs: sysctls, rp_filter and the
netfilter rule sets (the FORWARD and INPUT chains to compile in, or why
nothing may be accelerated).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

from tna.model.config import Model, TcFilters, XdpXmit
from tna.model.firewall import Firewall
from tna.model.hooks import firewall_plan
from tna.netlink import netfilter
from tna.netlink.decode import NlMsg, decoded
from tna.netlink.watch import Watcher, read_rp_filter, read_sysctls
from tna.synth.fwgen import unfit


def model_from(msgs: Iterable[NlMsg | XdpXmit | TcFilters]) -> Model:
    """A model built from a dump (Watcher.snapshot())."""
    model = Model()
    for msg in msgs:
        for fact in decoded(msg):
            model.apply(fact)
    return model


def read_firewall() -> tuple[Firewall | None, str | None]:
    """The FORWARD and INPUT chains to compile in, or why nothing may be
    accelerated."""
    try:
        rs = netfilter.read_rulesets()
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return None, f"netfilter rule sets cannot be read ({e}), so they cannot be ruled out"
    if rs.foreign:
        return None, "; ".join(rs.foreign)
    fw, why = firewall_plan(rs.tables)
    if fw is not None and (why := unfit(fw)):
        return None, why
    return fw, why


def poll_sysctls(model: Model) -> bool:
    """Read the sysctls and rp_filter (they announce nothing) into model:
    whether it changed."""
    changed = model.set_sysctls(read_sysctls())
    for index, mode in read_rp_filter({i: link.name for i, link in model.links.items()}).items():
        changed |= model.set_rp_filter(index, mode)
    return changed


def poll(model: Model) -> tuple[bool, str | None]:
    """poll_sysctls() and the rule sets (read whole) into model: (whether
    the model changed, why the fast path must stay disabled or None)."""
    changed = poll_sysctls(model)
    fw, why = read_firewall()
    changed |= model.set_firewall(fw)
    return changed, why


def take() -> tuple[Model, str | None]:
    """One snapshot of this namespace, as a starting daemon takes it (raises
    ResyncNeeded if the dump keeps being interrupted)."""
    watcher = Watcher()
    try:
        model = model_from(watcher.snapshot())
    finally:
        watcher.close()
    _, why = poll(model)
    return model, why
