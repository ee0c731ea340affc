"""The daemon's side of the commit guard (tna/helpers/commit_guard.h): the
nftables reader's socket filtered by tna_nft_seen, so that every program
holds from an nftables commit's own notifications until the reader has
taken them."""

from __future__ import annotations

import functools

from tna.bpf import abi
from tna.deploy.datapath import Datapath
from tna.holds import Holds
from tna.netlink import netfilter
from tna.netlink.watch import Watcher

NOT_READ = object()  # guard_commits(): the rules are read after it


def guard_commits(w: Watcher | None, dp: Datapath, holds: Holds, rules_genid: object) -> None:
    """Filter w's nftables socket, once the datapath has the filter (its
    first load: before any program is attached), once per watcher.
    rules_genid: the generation of the rules in hand, read without the
    filter (the first attach): a commit since then holds until they are
    read again.  NOT_READ: they are read next (a new watcher's snapshot,
    under RESYNC), so what a closed watcher's filter stored needs no
    reader to end its guard."""
    prog, lease = dp.nft_seen_filter, dp.lease
    if w is None or prog is None or w.nft_guarded:
        return
    w.guard_nft(prog.fd, lease.nft_seen, functools.partial(holds.nft_heard, holds.watcher_gen))
    if rules_genid is NOT_READ:
        with holds.lock:
            lease.set_nft_heard(lease.nft_seen())
    elif (now := netfilter.nft_generation()) is not None and now != rules_genid:
        holds.rules_stale()
        lease.hold(abi.REASON["FW_CHANGED"])
