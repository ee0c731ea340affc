"""The resync hold, pinned without root on the recording datapath of
test_reconcile_order: events lost (an overrun) hold the datapath at once,
from the reader's thread, and only the reconcile that has written every map
from a later watcher's dump ends the hold."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from pyroute2.netlink import NLM_F_DUMP_INTR, NLM_F_MULTI

from tests.test_reconcile_order import MAP_SYNCS, reconcile, recording_daemon
from tna import daemon as daemon_mod
from tna.bpf import abi
from tna.model.config import XfrmPolicies
from tna.netlink import netfilter, watch
from tna.netlink.netfilter import NftEvents
from tna.netlink.nftmsg import CommitReader, NftCommit

RESYNC = abi.REASON["RESYNC"]


class FakeWatcher:
    """A Watcher whose dump is instant; its readers are the test."""

    made: list[FakeWatcher] = []

    def __init__(self, on_nft_begin: Any = None, on_nft_end: Any = None, on_lost: Any = None,
                 on_events: Any = None, on_xfrm_begin: Any = None, on_xfrm_end: Any = None) -> None:
        self.on_lost, self.closed = on_lost, False
        FakeWatcher.made.append(self)

    def snapshot(self, stop: Any = None) -> list[Any]:
        return []

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> daemon_mod.Daemon:
    d = recording_daemon(monkeypatch)
    model = d.model
    FakeWatcher.made = []
    monkeypatch.setattr(daemon_mod, "Watcher", FakeWatcher)
    monkeypatch.setattr(daemon_mod, "model_from", lambda msgs: model)  # the same links, "dumped" anew
    monkeypatch.setattr(d, "_poll", lambda rules=True: False)
    d._resync()
    reconcile(d)
    return d


def test_a_loss_holds_at_once_and_until_every_map_is_written_from_a_new_dump(daemon: daemon_mod.Daemon) -> None:
    calls = daemon.dp.calls  # type: ignore[attr-defined]
    calls.clear()
    FakeWatcher.made[-1].on_lost(True)  # in the reader thread, before the main loop hears of it
    assert calls == [("hold", RESYNC)]
    assert daemon.metrics.registry.get_sample_value("tna_netlink_overruns_total") == 1
    # a reconcile before the new dump keeps holding: the maps still hold the old model
    assert ("release", 0) not in reconcile(daemon)
    daemon._resync()
    assert FakeWatcher.made[0].closed and len(FakeWatcher.made) == 2
    calls = reconcile(daemon)
    assert calls[-1] == ("release", 0), calls
    held = calls[:-1]
    assert ("release", 0) not in held and {c[0] for c in held} >= set(MAP_SYNCS), calls
    assert all(c == ("guards", RESYNC) for c in held if c[0] == "guards"), calls


def test_a_closed_watchers_late_report_does_not_hold(daemon: daemon_mod.Daemon) -> None:
    old = FakeWatcher.made[-1]
    daemon._resync()
    reconcile(daemon)
    daemon.dp.calls.clear()  # type: ignore[attr-defined]
    old.on_lost(False)  # the newer watcher bound after it closed: its dump has what was lost
    assert daemon.dp.calls == []  # type: ignore[attr-defined]


def test_a_loss_in_the_new_watcher_during_the_reconcile_keeps_the_hold(daemon: daemon_mod.Daemon) -> None:
    FakeWatcher.made[-1].on_lost(True)
    daemon._resync()
    current = FakeWatcher.made[-1]
    sync = daemon.dp.sync_bridges
    daemon.dp.sync_bridges = lambda *a: (current.on_lost(True), sync(*a))  # type: ignore[method-assign]
    assert ("release", 0) not in reconcile(daemon)


class ReaderFails(Exception):
    pass


def test_the_watcher_tells_the_daemon_before_it_queues_the_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    """_lost() is what every reader calls: the callback learns whether it
    was an overrun; the returned ResyncNeeded is what the readers queue."""
    w = watch.Watcher.__new__(watch.Watcher)
    seen: list[bool] = []
    w._on_lost = seen.append
    assert isinstance(w._lost("x", OSError(errno.ENOBUFS, "No buffer space")), watch.ResyncNeeded)
    w._lost("y", ReaderFails())
    assert seen == [True, False]


def test_an_nftables_overrun_is_a_commit_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit of thousands of rules can overrun the socket: the rule sets
    are read whole, so that is news of a commit, and the reader goes on."""
    reads: list[OSError | bytes] = [OSError(errno.ENOBUFS, "No buffer space"), b"NEWGEN"]

    class Raw:
        def recv(self, n: int) -> bytes:
            r = reads.pop(0)
            if isinstance(r, OSError):
                raise r
            return r

    monkeypatch.setattr(netfilter.select, "select", lambda r, w, x, t: (r if reads else [], [], []))
    ev = NftEvents.__new__(NftEvents)
    ev._raw = Raw()  # type: ignore[assignment]
    ev._commits = CommitReader()
    begun: list[None] = []
    assert ev.read(0.1, lambda: begun.append(None)) == [NftCommit(None)] and reads == [] and begun


def test_a_datagram_larger_than_the_read_is_a_loss() -> None:
    """recv() would cut a datagram larger than its buffer and say nothing:
    the events in the cut-off part are lost, so the reader must raise (its
    thread then queues the resync)."""
    import socket
    import threading
    from types import SimpleNamespace

    from tna.netlink.nexthop import Marshal

    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        ours.setblocking(False)
        ipr = SimpleNamespace(asyncore=SimpleNamespace(marshal=Marshal(), socket=ours,
                                                       msg_queue=SimpleNamespace(queues={})))
        kernel.send(bytes(watch.RECV_SIZE + 4096))
        closed = threading.Event()
        stop = threading.Timer(10, closed.set)  # a reader that says nothing ends, and the test fails
        stop.start()
        try:
            with pytest.raises(OSError) as e:
                next(watch._events(ipr, closed))  # type: ignore[arg-type]
        finally:
            stop.cancel()
        assert e.value.errno == errno.EMSGSIZE


def test_a_stop_does_not_wait_for_the_dump() -> None:
    """A million FDB entries take the kernel minutes to dump: SIGTERM
    (the daemon's stop event) ends the wait for it within a second."""
    import queue
    import threading
    import time

    w = watch.Watcher.__new__(watch.Watcher)
    w._q, w._on_lost, w._xfrm, w._no_xfrm = queue.Queue(), None, None, XfrmPolicies()
    reading = threading.Event()
    w._thread = threading.Thread(target=reading.wait, args=(30,), daemon=True)  # a reader still dumping
    w._thread.start()
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(watch.DumpStopped):
            w.snapshot(stop)
        assert time.monotonic() - t0 < 20  # a generous bound: the wait itself is 1 s
    finally:
        reading.set()


def test_a_closed_watchers_commit_neither_holds_nor_counts() -> None:
    """The old watcher's reader runs on for up to a second after a resync
    closed it: a commit it hears then is the new watcher's to hear (or
    the new snapshot's to read); counted, it would hold FW_CHANGED until the
    next commit, and no read would ever have its news."""
    from tna.holds import Holds

    held: list[int] = []
    h = Holds(held.append)
    old = h.new_watcher()
    h.nft_begin(old)  # a commit under way as the watcher is closed
    new = h.new_watcher()
    h.rules_read()  # the new snapshot's read
    h.nft_begin(old)
    assert h.nft_end(1, False, gen=old) == 0
    with h.lock:
        assert h.reason() == 0 and h.rules_exact
    h.nft_begin(new)
    assert h.nft_end(1, False, gen=new) == 1
    with h.lock:
        assert h.reason() == abi.REASON["FW_CHANGED"]


def test_only_the_current_watchers_reader_ends_the_commit_guard() -> None:
    """A closed watcher's filter is detached and its news goes nowhere: its
    reader's word that it heard up to some generation must not end the
    guard the current watcher's filter raised (commit_guard.h)."""
    from tna.holds import Holds

    heard: list[int] = []
    h = Holds(lambda reason: None, heard.append)
    old = h.new_watcher()
    h.nft_heard(old, 0x10005)
    new = h.new_watcher()
    h.nft_heard(old, 0x10006)
    h.nft_heard(new, 0x10007)
    assert heard == [0x10005, 0x10007]


def test_the_reader_ends_the_guard_only_for_a_store_it_took(monkeypatch: pytest.MonkeyPatch) -> None:
    """The filter stores nft_seen before the kernel queues the datagram: a
    socket found empty does not say the store's datagram was taken, its
    generation being the last one taken does.  After an overrun, an empty
    socket does (the lost commit has the rules read whole after it)."""
    mark = abi.NFT_SEEN
    ev = NftEvents.__new__(NftEvents)
    ev.took, ev.overran, ev.last_gen = True, False, 7
    assert ev.covers(mark | 7, mark)
    assert not ev.covers(mark | 8, mark)  # a later commit's datagram, still on its way
    ev.overran, ev._raw = True, object()  # type: ignore[assignment]
    monkeypatch.setattr(netfilter.select, "select", lambda r, w, x, t: ([], [], []))
    assert ev.covers(mark | 8, mark)
    monkeypatch.setattr(netfilter.select, "select", lambda r, w, x, t: (r, [], []))
    assert not ev.covers(mark | 8, mark)  # more to take first


class GuardedWatcher:
    def __init__(self) -> None:
        self.nft_guarded = False

    def guard_nft(self, *_: Any) -> None:
        self.nft_guarded = True


class GuardLease:
    def __init__(self, seen: int) -> None:
        self.seen, self.heard, self.held = seen, None, []

    def nft_seen(self) -> int:
        return self.seen

    def set_nft_heard(self, seen: int) -> None:
        self.heard = seen

    def hold(self, reason: int) -> None:
        self.held.append(reason)


@pytest.mark.parametrize("when", ["new watcher", "first attach", "first attach after a commit"])
def test_a_guard_attached_starts_from_what_the_rules_read_has(monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """A new watcher's snapshot reads the rules after its filter is on
    (under RESYNC): what a closed watcher's filter stored ends its guard at
    once, or it would hold until the next commit.  The first attach comes
    after the rules were read without any filter: a commit since then (the
    generation moved) holds until they are read again - which the main loop
    does at once (an element commit it followed without a read moves the
    generation too, and nothing else would come)."""
    from types import SimpleNamespace

    from tna import commitguard
    from tna.holds import Holds

    committed = when.endswith("commit")
    monkeypatch.setattr(commitguard.netfilter, "nft_generation", lambda: 12 if committed else 11)
    lease = GuardLease(abi.NFT_SEEN | 9)
    dp = SimpleNamespace(nft_seen_filter=SimpleNamespace(fd=3), lease=lease)
    h = Holds(lease.hold)
    h.new_watcher()
    h.rules_read()
    w = GuardedWatcher()
    commitguard.guard_commits(w, dp, h, commitguard.NOT_READ if when == "new watcher" else 11)  # type: ignore[arg-type]
    assert w.nft_guarded
    assert lease.heard == (abi.NFT_SEEN | 9 if when == "new watcher" else None)
    with h.lock:
        assert h.reason() == (abi.REASON["FW_CHANGED"] if committed else 0)
    assert lease.held == ([abi.REASON["FW_CHANGED"]] if committed else [])
    # and the main loop reads them again at once: no commit may be coming to make it
    assert (h.reread_due(), h.reread_due()) == (committed, False)


def test_a_dump_the_kernel_flags_interrupted_is_done_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change during the dump makes the kernel set NLM_F_DUMP_INTR on
    what it sends after (an address list missing one, say); pyroute2 does
    not raise for it, so the watcher looks: dumped again, and after five
    in a row a resync."""
    class Ipr:
        def __init__(self, interrupted: int) -> None:
            self.dumps, self.interrupted = 0, interrupted

        def get_links(self) -> list[dict[str, Any]]:
            self.dumps += 1
            flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if self.dumps <= self.interrupted else 0)
            return [{"index": 1, "header": {"flags": flags}}]

        def get_addr(self, family: int) -> list[Any]:
            return []

        get_neighbours = get_addr

        def get_ntables(self) -> list[Any]:
            return []

    for name in ("tc_facts", "get_nexthops", "dump_fdb"):
        monkeypatch.setattr(watch, name, lambda *args: [])
    ipr = Ipr(interrupted=2)
    assert [m["index"] for m in watch.Watcher._dump(ipr)] == [1]  # type: ignore[arg-type]
    assert ipr.dumps == 3
    with pytest.raises(watch.ResyncNeeded, match="interrupted"):
        watch.Watcher._dump(Ipr(interrupted=5))  # type: ignore[arg-type]
