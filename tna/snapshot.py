"""What the daemon reads of a namespace's configuration, shared by `tna run`
and `tna check` (which must see exactly what the daemon would see).

netlink dump -> Model; then the polled inputs: sysctls, rp_filter and the
netfilter rule sets (the FORWARD and INPUT chains to compile in, or why
nothing may be accelerated).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tna.model.config import Model, TcFilters, XdpXmit
from tna.model.firewall import Firewall
from tna.model.hooks import firewall_plan
from tna.model.ipset import IpSet, resolve, used_sets
from tna.model.iptables import Table
from tna.netlink import netfilter
from tna.netlink.decode import NlMsg, decoded
from tna.netlink.ipset import IpsetReader
from tna.netlink.sysctls import read_rp_filter, read_sysctls
from tna.netlink.watch import Watcher, tcx_facts
from tna.synth.fwgen import unfit


def model_from(msgs: Iterable[NlMsg | XdpXmit | TcFilters]) -> Model:
    """A model built from a dump (Watcher.snapshot())."""
    model = Model()
    for msg in msgs:
        for fact in decoded(msg):
            model.apply(fact)
    return model


@dataclass
class Filtering:
    """What the rule sets say: the chains to compile in (fw) or why nothing
    may be accelerated (why); the tables and the sets they match on
    (ipsets and native nftables sets, which nft_sets names), for
    re-planning when only the sets change."""

    fw: Firewall | None
    why: str | None
    tables: dict[int, dict[str, Table]] = field(default_factory=dict)
    ipsets: dict[str, IpSet] = field(default_factory=dict)
    nft_sets: dict[str, IpSet] = field(default_factory=dict)
    genid: int | None = None  # Rulesets.genid


def read_firewall(ipsets: IpsetReader | None = None) -> Filtering:
    """The rule sets and the ipsets they use (read with ipsets, which
    remembers what it decoded), with the native tables' sets (read with
    their rules)."""
    try:
        rs = netfilter.read_rulesets()
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return Filtering(None, f"netfilter rule sets cannot be read ({e}), so they cannot be ruled out")
    if rs.foreign:
        return Filtering(None, "; ".join(rs.foreign))
    reader = ipsets or IpsetReader()
    try:
        sets = {**reader.read(used_sets(rs.tables) - rs.sets.keys()), **rs.sets}
    finally:
        if ipsets is None:
            reader.close()
    return Filtering(*plan_filtering(rs.tables, sets), rs.tables, sets, rs.sets, rs.genid)


def plan_filtering(tables: dict[int, dict[str, Table]], sets: Mapping[str, IpSet],
                   unwritable: Mapping[str, str] | None = None) -> tuple[Firewall | None, str | None]:
    """The chains to compile in for tables and those ipsets (not mirroring
    the unwritable ones), or why nothing may be accelerated."""
    resolved, shapes = resolve(tables, sets, unwritable)
    fw, why = firewall_plan(resolved)
    if fw is not None:
        fw = replace(fw, ipsets=shapes)
        if why := unfit(fw):
            return None, why
    return fw, why


def poll_sysctls(model: Model) -> bool:
    """Read the sysctls and rp_filter into model (polled, and when the
    kernel announces a write: tna/netlink/netconf.py): whether it changed.
    Those only nft's `fib saddr . iif` check needs, only while a rule uses
    it."""
    changed = model.set_sysctls(read_sysctls(model.firewall is not None and model.firewall.checks_rpf))
    for index, mode in read_rp_filter({i: link.name for i, link in model.links.items()}).items():
        changed |= model.set_rp_filter(index, mode)
    return changed


def poll_tcx(model: Model) -> bool:
    """Others' tcx programs on each device, read anew (attaching or
    detaching one announces nothing): whether the model changed."""
    changed = False
    for index in list(model.links):
        changed |= model.apply(tcx_facts(index))
    return changed


class BridgePromiscuity:
    """The bridges' promiscuity (BR_PROMISC), read anew at each poll: an
    upper's address (a macvlan brought up on a bridge, which filters no
    unicast addresses) makes a bridge promiscuous in __dev_set_rx_mode(),
    which sends no link message; a capture's and `promisc on` are announced."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None

    def poll(self, model: Model) -> bool:
        """Whether the model changed."""
        bridges = [link for link in model.links.values() if link.bridge is not None]
        if not bridges:
            return False
        if self._ipr is None:
            self._ipr = IPRoute()
        changed = False
        for link in bridges:
            try:
                (msg,) = self._ipr.get_links(link.index)
            except NetlinkError:  # gone: its removal is announced
                continue
            promiscuity = msg.get("IFLA_PROMISCUITY") or 0
            if promiscuity != link.promiscuity:
                changed |= model.apply(replace(link, promiscuity=promiscuity))
        return changed

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


def poll(model: Model) -> tuple[bool, str | None]:
    """poll_sysctls() and the rule sets (read whole) into model: (whether
    the model changed, why the fast path must stay disabled or None)."""
    changed = poll_sysctls(model)
    f = read_firewall()
    changed |= model.set_firewall(f.fw)
    changed |= model.set_ipsets(f.ipsets)
    return changed, f.why


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
