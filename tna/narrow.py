"""A narrowed hold: what a rule change keeps on the kernel path while the
programs built for the new rules load.

A change of code holds every program (FW_CHANGED) until each interface
runs a program for the new rules: on two CPUs one verifier round (~0.2-0.4
s) per two interfaces, seconds on a host with many containers.  Where the
rules differ only in rules inserted or deleted (tna/model/fwdiff.py), the
running programs may go on deciding every packet none of those rules
could match, provided everything else they read is what the new rules'
programs will read: the same interface patterns and families (the masks
are written first), and the same members in the mirrored sets (the old
rule set's set maps are no longer written once the new one's are made).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path

from tna.deploy.datapath import Datapath, keeps
from tna.holds import Holds
from tna.model.config import Neigh
from tna.model.firewall import Firewall
from tna.model.fwdiff import HeldFlow, held_traffic
from tna.netlink import netfilter
from tna.synth.planner import Plan

log = logging.getLogger(__name__)


def narrowed_hold(dp: Datapath, p: Plan, ipsets: dict[str, dict[bytes, bytes]], polled: Collection[str],
                  holds: Holds) -> tuple[HeldFlow, ...] | None:
    """The flows to hold while p's programs load (ipsets: what p's rule
    set's set maps must hold); None: every packet.  Only if the rules are
    all that changes (every planned interface runs a program that differs
    in its rules only; holds: no other hold to end) and any change to come
    is heard at once: not while the rules match polled ipsets (polled:
    their names) or iptables-legacy has tables (a member added or a rule
    inserted meanwhile would wait for the loads, seconds, not the next
    poll)."""
    if polled or netfilter.legacy_in_use() or not holds.narrowable() or any(
            i not in dp.attached or replace(dp.attached[i].plan, firewall=ip.firewall) != ip
            for i, ip in p.ifaces.items()):
        return None
    running, members = dp.rule_set()
    changing = [(a.plan.firewall, p.ifaces[i].firewall) for i, a in dp.attached.items()
                if i in p.ifaces and a.plan.firewall != p.ifaces[i].firewall]
    olds: set[Firewall | None] = {old for old, _ in changing}
    news = {new for _, new in changing}
    if olds != {running} or len(news) != 1 or any(
            ipsets[name] != held for name, held in members.items() if name in ipsets):
        return None
    return held_traffic(running, news.pop())


def narrow_to(dp: Datapath, p: Plan, stale: set[Neigh], held: tuple[HeldFlow, ...], masks: dict[int, int],
              publish: Callable[..., None]) -> None:
    """Narrow the hold in place to held (publish(held=held): the guards that
    end it with those flows), the maps the running programs read written
    first: the interface masks (the same patterns: read as the new programs
    will read them), the egress and STALE neighbour maps (p's, whose
    programs run already but for the rules)."""
    dp.sync_firewall(masks)
    dp.sync(p.xdp_egress, p.tc_egress, stale)
    if dp.fw_masks() == masks:
        dp.lease.narrow(held)
        publish(held=held)
        log.debug("rules changed: %d flows held while their programs load", len(held))


class Narrowing:
    """When a reconcile narrows its hold (narrow(), None: it does not): as
    soon as the new sources are rendered if no running program can be kept
    for them (so clang runs under the narrowed hold; the keep is then not
    tried), else once the keep kept none (a kept program's set maps get the
    new rules in place, which only the whole hold covers)."""

    def __init__(self, dp: Datapath, p: Plan, narrow: Callable[[], None] | None) -> None:
        self.dp, self.p, self.narrow = dp, p, narrow
        self.done = False
        self.running = dp.rule_set()[0]

    def rendered(self, sources: dict[int, Path]) -> None:
        """build_all()'s news: each plan's source, before clang runs."""
        if self.narrow and not any(keeps(self.dp.attached.get(i), self.p.ifaces[i], source, self.running)
                                   for i, source in sources.items()):
            self.narrow()
            self.done = True

    def kept(self, kept: set[int]) -> None:
        """After the keep: none kept, and the set maps not rewritten for the
        new rules either (that happens before a program's counters are
        found too small for them)."""
        if self.narrow and not self.done and not kept and self.dp.rule_set()[0] == self.running:
            self.narrow()
