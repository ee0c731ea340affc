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
from pathlib import Path

from tna.deploy.datapath import Datapath, keeps
from tna.model.firewall import Firewall
from tna.model.fwdiff import HELD_MAX, HeldFlow, held_traffic
from tna.synth.planner import Plan

log = logging.getLogger(__name__)


def narrowed_hold(dp: Datapath, p: Plan, ipsets: dict[str, dict[bytes, bytes]],
                  polled: Collection[str]) -> tuple[HeldFlow, ...] | None:
    """The flows to hold while p's programs load (ipsets: what p's rule
    set's set maps must hold); None: every packet.  Not while the rules
    match polled ipsets (polled: their names): a member added meanwhile
    would wait for the loads (seconds), not the next poll."""
    if polled:
        return None
    running, members = dp.rule_set()
    changing = [(a.plan.firewall, p.ifaces[i].firewall) for i, a in dp.attached.items()
                if i in p.ifaces and a.plan.firewall != p.ifaces[i].firewall]
    olds: set[Firewall | None] = {old for old, _ in changing}
    news = {new for _, new in changing}
    if olds != {running} or len(news) != 1 or any(
            ipsets[name] != held for name, held in members.items() if name in ipsets):
        return None
    held = held_traffic(running, news.pop())
    return held if held is not None and len(held) <= HELD_MAX else None


def narrow_to(dp: Datapath, held: tuple[HeldFlow, ...], masks: dict[int, int],
              publish: Callable[[tuple[HeldFlow, ...]], None]) -> None:
    """Narrow the hold in place to held (publish(held): the guards that end
    it with those flows), the interface masks written first."""
    dp.sync_firewall(masks)  # the same patterns: the running programs read them as the new ones will
    if dp.fw_masks() == masks:
        dp.lease.narrow(held)
        publish(held)
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

    def rendered(self, sources: dict[int, Path]) -> None:
        """build_all()'s news: each plan's source, before clang runs."""
        running = self.dp.rule_set()[0]
        if self.narrow and not any(keeps(self.dp.attached.get(i), self.p.ifaces[i], source, running)
                                   for i, source in sources.items()):
            self.narrow()
            self.done = True

    def kept(self, kept: set[int]) -> None:
        if self.narrow and not self.done and not kept:
            self.narrow()
