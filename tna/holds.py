"""Why the datapath holds while the daemon catches up with the kernel.

The reader threads hear of a change before the main loop can act on it (it
may be compiling for seconds); what they heard may make the maps or
programs wrong, so they raise a hold at once (every program passes all to
the kernel with the reason), and only the main loop's publication of the
guards ends it, once nothing it has not written could have changed:

- FW_CHANGED: an nftables commit began (its messages are still being
  decoded) or ended after the rule sets in hand were read (and, before the
  reader hears of a commit at all, the datapath's commit guard:
  commit_guard.h);
- PENDING: an rtnetlink batch that can move a map came while the main
  loop was busy (or a sysctl was written, or IPsec policies changed, busy
  or not), and the loop has not taken it in yet;
- RESYNC: a watcher lost events, and no later watcher's dump is in every
  map yet.

One lock orders a hold against a publication: a hold raised after a
publication computed its reason is never ended by it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

from tna.bpf import abi
from tna.model.config import Neigh, XdpXmit, XfrmPolicies
from tna.model.ipset import IpSet
from tna.model.nftsets import apply_commits
from tna.netlink import netconf
from tna.netlink.decode import announced_stale, moves_no_map
from tna.netlink.netfilter import NetfilterChanged


class Holds:
    def __init__(self, hold: Callable[[int], None], heard: Callable[[int], None] = lambda seen: None,
                 stale: Callable[[list[Neigh], int], bool] = lambda neighs, batch: False) -> None:
        """hold(reason): make every program pass all to the kernel now;
        heard(seen): the programs' commit guard may end (commit_guard.h);
        stale(neighs, batch): put neighbours batch announced STALE into
        tna_stale now, until the loop has taken it (StaleMap.mark(); False:
        not done)."""
        self.lock = threading.Lock()
        self._hold = hold
        self._heard = heard
        self._stale = stale
        # nftables commits ended (the reader thread counts them), and how
        # many had when the rule sets in hand were read or followed; exact:
        # no commit was under way at that read
        self.commits = 0
        self.rules_gen = 0
        self.rules_exact = False
        self._reread = False
        self._nft_open = False
        self._xfrm_open = False  # policies changed, not yet read and queued
        # rtnetlink batches queued, how many the main loop had queued when it
        # last emptied the queue, and the count at which one found it busy
        self._queued = self._taken = self._pending_at = 0
        self._ending = False  # the loop took a batch that held (PENDING): until the next release
        self._busy = True
        # each Watcher has a generation; what one lost is repaired by a later
        # one's dump, once every map is written from it
        self._generations = itertools.count(1)
        self.watcher_gen = 0
        self._lost_gen = 0    # newest watcher that lost events, 0: none
        self._mapped_gen = 0  # the watcher whose model every map was last written from

    # --- reader threads -----------------------------------------------------

    def nft_begin(self, gen: int = 0) -> None:
        """A commit's first messages (heard by watcher gen; 0: the current
        one): the programs may carry the old rules or set members."""
        with self.lock:
            if gen and gen < self.watcher_gen:
                return  # closed: the current watcher reads the rules after the commit
            self._nft_open = True
            self._hold(abi.REASON["FW_CHANGED"])

    def nft_end(self, n: int, still_open: bool, gen: int = 0) -> int:
        """n commits ended (heard by watcher gen; 0: the current one); the
        last one's number.  A closed watcher's are not counted: their news
        goes to a queue no one reads, and no read would wait for it."""
        with self.lock:
            if gen and gen < self.watcher_gen:
                return self.commits
            self.commits += n
            self._nft_open = still_open
            return self.commits

    def nft_heard(self, gen: int, seen: int) -> None:
        """Watcher gen's nftables reader took every notification up to seen
        (tna_state.nft_seen), each after nft_begin() held for its commit: the
        commit guard, which held from the commits themselves, may pass the
        hold on to FW_CHANGED.  A closed watcher's: its filter stores
        nothing any more, and its reader's news goes nowhere."""
        with self.lock:
            if gen == self.watcher_gen:
                self._heard(seen)

    def xfrm_begin(self, gen: int) -> None:
        """Watcher gen heard of an IPsec change (the kernel applied it
        already); its reader reads the policies next."""
        with self.lock:
            if gen < self.watcher_gen:
                return  # closed: the current watcher's snapshot read them after it
            self._xfrm_open = True
            self._hold(abi.REASON["PENDING"])

    def xfrm_end(self, gen: int, pending: Callable[[], bool]) -> None:
        """Watcher gen queued what it read; unless another change is already
        there (pending(), asked under the lock), the queued read covers
        every change heard (the hold stays until the loop has taken it)."""
        with self.lock:
            if gen == self.watcher_gen and not pending():
                self._xfrm_open = False

    def events_queued(self, batch: list[Any]) -> None:
        """After a batch was queued: while the main loop is busy it may have
        moved a host to a port the maps still send it to (a burst of plain
        routes holds nothing); a sysctl written (ip_forward, rp_filter, ...)
        holds even while it is idle: the kernel applied it at the write, and
        the loop reads /proc/sys and re-plans before it can act on it; so
        does a device that stopped taking redirected XDP frames (its peer's
        program detached): the kernel drops what the programs still send it
        until the loop has taken it out of the egress maps."""
        with self.lock:
            self._queued += 1
            applied = any(isinstance(m, XfrmPolicies) or (isinstance(m, XdpXmit) and not m.capable)
                          or netconf.written(m) for m in batch)
            moving = [m for m in batch if not moves_no_map(m)]
            stale = [n for m in moving if (n := announced_stale(m)) is not None]
            if stale and self._stale(stale, self._queued):  # in tna_stale already: nothing to wait for
                moving = [m for m in moving if announced_stale(m) is None]
            if (self._busy and moving) or applied:
                self._pending_at = self._queued
                self._hold(abi.REASON["PENDING"])

    def events_lost(self, gen: int) -> None:
        """Watcher gen lost events: the maps may hold what they undid."""
        with self.lock:
            if gen < self.watcher_gen:
                return  # closed before the current watcher bound: its dump has what this one lost
            self._lost_gen = gen
            self._hold(abi.REASON["RESYNC"])

    # --- the main loop --------------------------------------------------------

    @property
    def taken(self) -> int:
        """The batches the model has applied (read without the lock: only the main loop moves it)."""
        return self._taken

    def idle(self) -> None:
        """The loop waits for events."""
        with self.lock:
            self._busy = False

    def busy(self, drained: Callable[[], bool]) -> bool:
        """The loop has taken and applied what it found queued; if drained()
        (the queue is empty: asked under the lock), every batch counted so
        far was taken (the reader counts a batch after queuing it), so a
        batch queued after this finds the loop busy and holds.  True if a
        PENDING hold can end at the next publication."""
        with self.lock:
            self._busy = True
            if self._taken >= self._queued or not drained():
                return False
            ended = self._pending_at > self._taken
            self._taken = self._queued
            self._ending |= ended
            return ended

    def rules_read(self) -> None:
        """Before the rule sets are read: a commit after it holds again."""
        with self.lock:
            self.rules_gen, self.rules_exact = self.commits, not self._nft_open

    def rules_stale(self) -> None:
        """A commit may have come after the rules in hand were read, with
        no reader to hold for it yet: hold until they are read again (the
        main loop reads them at once: reread_due())."""
        with self.lock:
            self.rules_gen, self.rules_exact, self._reread = -1, False, True

    def reread_due(self) -> bool:
        """Whether rules_stale() asked for the rules to be read (once)."""
        with self.lock:
            due, self._reread = self._reread, False
            return due

    def follow(self, commits: list[NetfilterChanged], sets: dict[str, IpSet]) -> dict[str, IpSet] | None:
        """The native sets as commits of set elements only leave them, on
        top of the rules in hand (their generation is the commits' then);
        None: a commit of anything else, or one the rules in hand may not
        have seen the one before of - the rules are read again."""
        commits = [c for c in commits if c.gen > self.rules_gen]  # the others are in the rules in hand
        if not self.rules_exact or any(c.elements is None for c in commits) or (
                commits and commits[0].gen != self.rules_gen + 1):
            return None
        updated = apply_commits((e for c in commits for e in c.elements or ()), sets)
        if updated is not None and commits:
            self.rules_gen = commits[-1].gen
        return updated

    def new_watcher(self) -> int:
        # the new watcher's snapshot reads the policies and the rules anew
        self._xfrm_open = self._nft_open = False
        self.watcher_gen = next(self._generations)
        return self.watcher_gen

    def mapped(self) -> None:
        """Every map is written from the current watcher's model."""
        self._mapped_gen = self.watcher_gen

    def narrowable(self) -> bool:
        """Whether a rule change's hold may narrow before its reconcile ends:
        no other hold is in place, and none the reconcile is to end (a
        PENDING batch it took: its maps and programs are not written yet)."""
        with self.lock:
            return not self._ending and self.reason() == 0

    def reason(self, release: bool = False) -> int:
        """The hold a publication keeps (0: none); release: the publication
        that ends a reconcile (a PENDING hold it took is over).  Call with
        the lock held."""
        if release:
            self._ending = False
        if self._lost_gen != 0 and self._lost_gen >= self._mapped_gen:
            return abi.REASON["RESYNC"]
        if self.commits != self.rules_gen or self._nft_open:
            return abi.REASON["FW_CHANGED"]
        return abi.REASON["PENDING"] if self._pending_at > self._taken or self._xfrm_open else 0
