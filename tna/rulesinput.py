"""The netfilter rule sets as the daemon last read them, and the firewall
the model gets from them: read whole (a commit, iptables-legacy's poll),
a commit of set elements applied on top of them, the ipsets they use
polled, and the sets whose map could not be written kept out of the fast
path until they change.  The daemon's main loop owns it (tna/daemon.py)."""

from __future__ import annotations

import logging

from tna.model.config import Model
from tna.model.firewall import Firewall
from tna.model.ipset import IpSet, used_sets
from tna.model.iptables import Table
from tna.netlink.ipset import IpsetReader
from tna.snapshot import plan_filtering, read_firewall

log = logging.getLogger("tna")


class RulesInput:
    def __init__(self) -> None:
        self.ipset_reader = IpsetReader()
        self.tables: dict[int, dict[str, Table]] = {}  # the rules last read (re-planned when a set changes)
        self.set_names: set[str] = set()  # the ipsets they use (polled)
        self.nft_sets: dict[str, IpSet] = {}  # the native nftables sets they use (read with them)
        self.genid: int | None = None  # their nftables generation (Rulesets.genid)
        self.disabled_why: str | None = None  # what keeps the whole fast path off
        # set -> (the listing its map's write failed for, the error): its rules are the kernel's until it changes
        self._unwritable: dict[str, tuple[IpSet, str]] = {}

    def close(self) -> None:
        self.ipset_reader.close()

    def read(self, m: Model) -> bool:
        """The rule sets read whole, into m; True if m changed."""
        f = read_firewall(self.ipset_reader)
        # native nftables sets come with the rules (a commit): not polled
        self.tables, self.nft_sets, self.genid = f.tables, f.nft_sets, f.genid
        self.set_names = used_sets(f.tables) - f.nft_sets.keys()
        changed = m.set_ipsets(f.ipsets)
        return self._set_firewall(m, *self._filtering(f.tables, f.ipsets) if self._unwritable else (f.fw, f.why)) \
            | changed

    def set_elements(self, m: Model, updated: dict[str, IpSet]) -> None:
        """Commits that only added or deleted elements of mirrored nftables
        sets (updated: those sets now, Holds.follow()), applied on top of the
        rules in hand: their maps at the reconcile, no new program."""
        sets = {**m.ipsets, **updated}
        resized = any(s.maxelem != self.nft_sets[n].maxelem for n, s in updated.items())
        self.nft_sets = {**self.nft_sets, **updated}
        m.set_ipsets(sets)
        if resized or self._unwritable:  # a new map size (program), or a map to try again
            self._set_firewall(m, *self._filtering(self.tables, sets))

    def poll_ipsets(self, m: Model) -> bool:
        """The ipsets the rules use; a change of members only is a map
        update (reconcile), of what a set is (type, family, whether it can
        be mirrored) a new rule set for the programs."""
        if not self.set_names:
            return False
        sets = {**self.ipset_reader.read(self.set_names), **self.nft_sets}
        if not m.set_ipsets(sets):
            return False
        self._set_firewall(m, *self._filtering(self.tables, sets))
        return True

    def unwritable(self, m: Model, failed: dict[str, str]) -> None:
        """The sets (name -> why) whose map could not be written for m's
        listing: their rules go to the kernel path until the set changes."""
        for name, why in failed.items():
            log.error("ipset %s: its map could not be written (%s); its rules go to the kernel path", name, why)
            self._unwritable[name] = (m.ipsets[name], why)
        self._set_firewall(m, *self._filtering(self.tables, m.ipsets))

    def _filtering(self, tables: dict[int, dict[str, Table]],
                   sets: dict[str, IpSet]) -> tuple[Firewall | None, str | None]:
        """plan_filtering() without the sets whose map could not be written
        for this very listing (a changed set is tried again)."""
        self._unwritable = {n: f for n, f in self._unwritable.items() if sets.get(n) == f[0]}
        return plan_filtering(tables, sets, {n: why for n, (_, why) in self._unwritable.items()})

    def _set_firewall(self, m: Model, fw: Firewall | None, why: str | None) -> bool:
        changed = m.set_firewall(fw)
        if why != self.disabled_why:
            self.disabled_why = why
            if why:
                log.warning("fast path disabled, all traffic stays on the kernel path: %s", why)
            else:
                log.info("netfilter: %s; fast path enabled",
                         "filter rules compiled into the fast path" if m.firewall else "no rules")
            changed = True
        return changed
