"""Watch links, addresses, nexthop objects, routes, neighbours, bridge FDBs, xdp-features and
nftables commits; feed the model.

Bind first, then dump into the same socket, so no event between the dump
and the subscription is lost; the dump's messages and later events come
through one queue and are applied in order.  Routes come last, streamed
from a socket of their own (tna/netlink/routedump.py) after the rest is
handed over, so the daemon attaches before a full table is read.  The event
socket's receive buffer has room for a bulk change (sockbuf.py).  On overrun
(ENOBUFS), an interrupted dump or a reader that died, the caller is told at
once, in that reader's thread (on_lost: the daemon holds the datapath), then
drops the model and resyncs from a new dump.
"""

from __future__ import annotations

import errno
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_DUMP_INTR
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    RTMGRP_TC,
)

from tna.bpf import abi, attach
from tna.model.config import AF_INET, AF_INET6, TcFilters, XdpXmit, XfrmPolicies
from tna.model.routes import Dumped, RouteDump
from tna.netlink.decode import NlMsg
from tna.netlink.factmsg import FactMsg, parse_events
from tna.netlink.fdb import decode_fdb_fast, dump_fdb
from tna.netlink.netconf import RTMGRP_NETCONF, follow_netconf
from tna.netlink.netdev import XdpFeatureEvents, xdp_xmit_capable
from tna.netlink.netfilter import NetfilterChanged, NftEvents
from tna.netlink.nexthop import RTMGRP_NEXTHOP, follow_nexthops, get_nexthops
from tna.netlink.nftmsg import NftCommit
from tna.netlink.routedump import dump_routes
from tna.netlink.routemsg import decode_routes_fast
from tna.netlink.sockbuf import grow_rcvbuf
from tna.netlink.xfrm import XfrmEvents, read_policies, unfollowable

log = logging.getLogger(__name__)
# the select()-based readers look at the closed flag this often (a closed
# watcher's thread ends within it); events wake them at once
READER_WAKE_S = 1.0
# the route dump waits while this many items are queued: a full table read
# faster than the model takes it would otherwise sit in the queue whole
ROUTES_QUEUED_MAX = 20000
EVENTS_BUDGET_S = 0.25   # events() returns after this long (the main loop shows life)

GROUPS = (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
          | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_NEXTHOP | RTMGRP_TC | RTMGRP_NETCONF)
RECV_SIZE = 65536          # an event is a datagram of its own, well under this
RECV_BATCH = 4096          # datagrams read before the batch is handed on
RTM_NEWQDISC, RTM_DELQDISC = 36, 37
RTM_NEWTFILTER, RTM_DELTFILTER = 44, 45
TC_H_CLSACT_INGRESS = 0xFFFFFFF2
TC_H_CLSACT_EGRESS = 0xFFFFFFF3


def tc_filters(ipr: IPRoute, ifindex: int, parent: int) -> list[tuple[int, int]]:
    """(priority, handle) of the classifier filters on a clsact hook."""
    try:
        msgs = ipr.get_filters(index=ifindex, parent=parent)
    except Exception:  # no clsact qdisc, or the device is gone
        return []
    # the per-priority chain headers carry no handle
    return [(m["info"] >> 16, m["handle"]) for m in msgs if m.get("TCA_KIND") is not None and m["handle"]]


def tcx_in_use(ifindex: int, attach_type: int) -> bool:
    """Others' tcx programs on the hook (they announce nothing: read at a
    dump, at any tc event of the device, and polled)."""
    try:
        return bool(attach.foreign_tcx(ifindex, attach_type))
    except OSError as e:
        # a gone device reads as no programs (ENODEV); any other failure
        # leaves unknown what runs there, so the device stays on the kernel
        # path until a later read tells
        log.warning("ifindex %d: tcx programs unreadable (%s): kernel path", ifindex, e)
        return True


def tcx_facts(ifindex: int) -> TcFilters:
    return TcFilters(ifindex, tcx_in_use(ifindex, attach.BPF_TCX_EGRESS), tcx_in_use(ifindex, attach.BPF_TCX_INGRESS),
                     tcx=True)


def tc_facts(ipr: IPRoute, ifindex: int) -> list[TcFilters]:
    """Others' clsact filters and tcx programs on the device."""
    ingress = [f for f in tc_filters(ipr, ifindex, TC_H_CLSACT_INGRESS) if f != abi.TC_FILTER]
    egress = bool(tc_filters(ipr, ifindex, TC_H_CLSACT_EGRESS))
    return [TcFilters(ifindex, egress, bool(ingress)), tcx_facts(ifindex)]


Fact = NlMsg | XdpXmit | TcFilters | NetfilterChanged | RouteDump | Dumped | XfrmPolicies


class ResyncNeeded(Exception):
    """Events were lost: rebuild the model from a fresh dump."""


class DumpStopped(Exception):
    """The daemon is stopping: it waits for no dump (a million FDB entries
    take the kernel minutes to dump)."""


_DUMP_DONE = object()


class _Batch(list):
    """Messages the reader read in one go, queued as one item (a queue
    operation per message costs more than decoding it)."""


class Watcher:
    """One reader thread owns the subscribed socket: bind, dump, then read
    events (_events(): what pyroute2 buffered during the dump, then the
    socket itself), putting everything into one queue in order.
    A second thread follows xdp-features (generic netlink) into the same
    queue; re-queries after tc events use a third socket in the caller's
    thread."""

    def __init__(self, on_nft_begin: Callable[[], None] | None = None,
                 on_nft_end: Callable[[int, bool], int] | None = None,
                 on_lost: Callable[[bool], None] | None = None,
                 on_events: Callable[[list[Any]], None] | None = None,
                 on_xfrm_begin: Callable[[], None] | None = None,
                 on_xfrm_end: Callable[[Callable[[], bool]], None] | None = None) -> None:
        """on_nft_begin: called in the nftables reader thread when a commit's
        first messages arrive, before they are decoded (the daemon holds the
        datapath at once, even while its main loop is busy).  on_nft_end(n,
        open): likewise when n commits have ended (open: another one has
        begun), before they are queued; it numbers them (returns the last
        one's number).  on_lost(overrun): in the thread that lost events
        (overrun: ENOBUFS), before ResyncNeeded is queued.  on_events(batch):
        called in the reader thread after it queued a batch of rtnetlink
        events (or of xfrm policies, or an xdp-features change).  on_xfrm_begin: in the xfrm reader
        thread as soon as a change is there, before it is read (the kernel
        applies a policy at once); on_xfrm_end(pending): after the read is
        queued (pending: whether another change came meanwhile)."""
        self._on_nft_begin = on_nft_begin or (lambda: None)
        self._on_nft_end = on_nft_end or (lambda n, still_open: 0)
        self._on_events = on_events
        self._on_lost = on_lost
        self._on_xfrm_begin = on_xfrm_begin or (lambda: None)
        self._on_xfrm_end = on_xfrm_end or (lambda pending: None)
        self._q: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._ipr: IPRoute | None = None
        self.query = IPRoute()
        self._no_xfrm = XfrmPolicies()  # what the snapshot states without the socket
        try:  # subscribed before the snapshot reads the policies
            self._xfrm: XfrmEvents | None = XfrmEvents()
        except OSError as e:
            self._xfrm = None
            if e.errno == errno.EPROTONOSUPPORT:  # a kernel without xfrm_user
                self._no_xfrm = unfollowable()
            else:  # until a later watcher can follow them
                log.warning("xfrm netlink unavailable (%s): IPv4 and IPv6 forwarding on the kernel path", e)
                self._no_xfrm = XfrmPolicies(frozenset((AF_INET, AF_INET6)), ("unknown",), sas=True)
        self._thread = threading.Thread(target=self._read, name="tna-netlink", daemon=True)
        self._thread.start()
        # subscribe before dumping, like the rtnetlink socket
        try:
            self._xdp: XdpFeatureEvents | None = XdpFeatureEvents()
        except Exception as e:  # kernel < 6.3: no netdev family, so no XDP egress at all
            log.warning("netdev xdp-features unavailable (%r): XDP will not redirect", e)
            self._xdp = None
        else:
            threading.Thread(target=self._read_xdp, name="tna-netdev", daemon=True).start()
        self._nft = NftEvents()
        # (seen, heard) once guard_nft() filters the socket
        self._nft_guard: tuple[Callable[[], int], Callable[[int], None]] | None = None
        self.nft_guarded = False
        threading.Thread(target=self._read_nft, name="tna-nftables", daemon=True).start()
        if self._xfrm is not None:
            threading.Thread(target=self._read_xfrm, name="tna-xfrm", daemon=True).start()

    def guard_nft(self, prog_fd: int, seen: Callable[[], int], heard: Callable[[int], None]) -> None:
        """Filter the nftables socket with tna_nft_seen (commit_guard.h), so
        that the programs hold from the commit itself; the reader then tells
        heard(s) of each nft_seen s it has taken every notification up to."""
        self.nft_guarded = True  # tried: once per watcher
        self._nft_guard = (seen, heard)  # before the filter: its first store is told of
        try:
            self._nft.filter(prog_fd)
        except OSError as e:
            self._nft_guard = None
            log.warning("nftables socket filter refused (%s): a commit holds once the reader hears of it", e)

    def close(self) -> None:
        self._closed.set()
        # at once: a later watcher's filter is then the only one storing nft_seen
        self._nft.unfilter()
        self.query.close()
        ipr = self._ipr
        if ipr is not None:
            try:  # wakes the reader out of get(); it then ends quietly
                ipr.close()
            except Exception as e:  # already broken: nothing left to release
                log.debug("closing the netlink reader socket: %r", e)

    def _lost(self, why: str, e: BaseException | None = None) -> ResyncNeeded:
        """Events were (or may have been) lost: the daemon is told at once, in
        this thread; the caller queues or raises the resync returned."""
        if self._on_lost is not None:
            self._on_lost(isinstance(e, OSError) and e.errno == errno.ENOBUFS)
        return ResyncNeeded(why)

    def _read(self) -> None:
        try:
            ipr = self._ipr = IPRoute()
            grow_rcvbuf(ipr.fileno())
            decode_fdb_fast(ipr.asyncore.marshal)  # dumped and events alike
            decode_routes_fast(ipr.asyncore.marshal)  # a burst queues facts, not messages
            follow_nexthops(ipr)
            follow_netconf(ipr)
            ipr.bind(groups=GROUPS)
            self._q.put(_Batch(self._dump(ipr)))
            self._q.put(_DUMP_DONE)
            threading.Thread(target=self._read_routes, name="tna-routes", daemon=True).start()
            for batch in _events(ipr, self._closed):
                self._q.put(batch)
                if self._on_events is not None:
                    self._on_events(batch)
        except Exception as e:  # overrun (ENOBUFS), dump trouble, socket gone
            if not self._closed.is_set():
                self._q.put(self._lost(f"netlink reader stopped: {e!r}", e))

    def _read_routes(self) -> None:
        """The route dump (subscribed already: events since are queued and
        the model holds them until the family's dump is done)."""
        try:
            for family in (AF_INET, AF_INET6):
                for _ in range(5):
                    try:
                        for route in dump_routes(family):
                            while self._q.qsize() > ROUTES_QUEUED_MAX and not self._closed.is_set():
                                time.sleep(0.01)
                            if self._closed.is_set():
                                return
                            self._q.put(Dumped(route))
                        break
                    except NetlinkDumpInterrupted:
                        log.info("route dump interrupted by a change; dumping again")
                        self._q.put(RouteDump(family, done=False))  # forget what it stated
                else:
                    raise ResyncNeeded("route dumps keep being interrupted")
                self._q.put(RouteDump(family, done=True))
        except Exception as e:
            if not self._closed.is_set():
                self._q.put(self._lost(f"route dump stopped: {e!r}", e))

    def _read_xdp(self) -> None:
        assert self._xdp is not None
        try:
            while not self._closed.is_set():
                for event in self._xdp.read(timeout=READER_WAKE_S):
                    self._q.put(event)
                    if self._on_events is not None:
                        self._on_events([event])
        except Exception as e:  # lost xdp-features changes: the egress maps may be wrong
            if not self._closed.is_set():
                self._q.put(self._lost(f"netdev reader stopped: {e!r}", e))
        finally:
            self._xdp.close()

    def _read_xfrm(self) -> None:
        assert self._xfrm is not None
        try:
            while not self._closed.is_set():
                if self._xfrm.wait(READER_WAKE_S, self._on_xfrm_begin):
                    fact = read_policies()
                    while self._xfrm.wait(0, lambda: None):  # changed during the read: read again
                        fact = read_policies()
                    batch = _Batch([fact])
                    self._q.put(batch)
                    if self._on_events is not None:
                        self._on_events(batch)
                    self._on_xfrm_end(self._xfrm.pending)
        except Exception as e:  # lost policy changes: the guards may be wrong
            if not self._closed.is_set():
                self._q.put(self._lost(f"xfrm reader stopped: {e!r}", e))
        finally:
            self._xfrm.close()

    def _read_nft(self) -> None:
        def ended(commits: list[NftCommit], still_open: bool) -> None:
            last = self._on_nft_end(len(commits), still_open)
            for i, c in enumerate(commits, start=last - len(commits) + 1):
                self._q.put(NetfilterChanged(i, c.elements, c.deleted))
        try:
            while not self._closed.is_set():
                commits = self._nft.read(READER_WAKE_S, self._on_nft_begin)
                # read before the commits are queued: a commit whose store it
                # sees is in any rules read for them
                guard = self._nft_guard if self._nft.took else None
                seen = guard[0]() if guard is not None else 0
                if commits:
                    ended(commits, self._nft.partial)
                if guard is not None and self._nft.covers(seen, abi.NFT_SEEN):
                    guard[1](seen)  # each notification taken held as it was
        except Exception as e:  # the socket is gone (an overrun is a commit: NftEvents.read)
            if not self._closed.is_set():
                self._on_nft_begin()
                ended([NftCommit(None)], False)
                self._q.put(self._lost(f"nftables reader stopped: {e!r}", e))
        finally:
            self._nft.close()

    @staticmethod
    def _dump(ipr: IPRoute) -> list[NlMsg | TcFilters]:
        """Everything the model needs but routes, in dependency order (links first)."""
        for _ in range(5):
            try:
                links = list(ipr.get_links())
                msgs: list[NlMsg | TcFilters] = list(links)
                msgs += [f for m in links for f in tc_facts(ipr, m["index"])]
                msgs += get_nexthops(ipr)  # before the routes that use them
                for family in (AF_INET, AF_INET6):
                    msgs += ipr.get_addr(family=family)
                    msgs += ipr.get_neighbours(family=family)
                msgs += dump_fdb(ipr)  # bridge FDBs
                msgs += ipr.get_ntables()  # how many neighbours the kernel keeps: tna_stale's room
                # the kernel flags a dump that a change ran into; pyroute2 says nothing of it
                if any(not isinstance(m, TcFilters) and m["header"]["flags"] & NLM_F_DUMP_INTR for m in msgs):
                    raise NetlinkDumpInterrupted()
                return msgs
            except NetlinkDumpInterrupted:
                log.info("netlink dump interrupted by a change; dumping again")
        raise ResyncNeeded("netlink dumps keep being interrupted")

    def snapshot(self, stop: threading.Event | None = None) -> list[NlMsg | XdpXmit | TcFilters | RouteDump
                                                                  | XfrmPolicies]:
        """The initial dump but routes (call once, before events(), which
        brings the routes).  It takes as long as the reader needs; a reader
        that died without a word is a resync; stop set: DumpStopped (within
        a second)."""
        msgs: list[NlMsg | XdpXmit | TcFilters | RouteDump | XfrmPolicies] = [
            RouteDump(f, done=False) for f in (AF_INET, AF_INET6)]
        msgs += [XdpXmit(i, c) for i, c in xdp_xmit_capable().items()]
        msgs.append(read_policies() if self._xfrm is not None else self._no_xfrm)
        while True:
            try:
                item = self._q.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive():
                    raise self._lost("netlink reader ended during the dump") from None
                if stop is not None and stop.is_set():
                    raise DumpStopped() from None
                continue
            if item is _DUMP_DONE:
                return msgs
            if isinstance(item, ResyncNeeded):
                raise item
            if isinstance(item, _Batch):
                msgs.extend(item)
            else:
                msgs.append(item)

    def drained(self) -> bool:
        """Nothing queued (every batch queued so far has been taken)."""
        return self._q.empty()

    def events(self, timeout: float, budget: float = EVENTS_BUDGET_S) -> Iterator[Fact]:
        """Messages that arrive within timeout: all queued, then stop (or
        after budget seconds: a route dump or a burst keeps it busy)."""
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return
        until = time.monotonic() + budget
        while True:
            if isinstance(item, ResyncNeeded):
                raise item
            for msg in item if isinstance(item, _Batch) else (item,):
                yield from self._expand(msg)
            if time.monotonic() > until:  # a batch is taken whole
                return
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return

    def _expand(self, msg: Fact) -> Iterator[Fact]:
        if type(msg) is FactMsg or isinstance(msg, (XdpXmit, NetfilterChanged, RouteDump, Dumped, XfrmPolicies)):
            yield msg
        elif msg["header"]["type"] in (RTM_NEWQDISC, RTM_DELQDISC, RTM_NEWTFILTER, RTM_DELTFILTER):
            # tc events do not say what the device ends up with: re-read its
            # root qdisc (in the link) and whose clsact filters it has
            try:
                yield from self.query.get_links(msg["index"])
            except Exception:  # the link went away meanwhile; its DELLINK follows
                return
            yield from tc_facts(self.query, msg["index"])
        elif msg.get("header", {}).get("error") is None:
            yield msg


def _events(ipr: IPRoute, closed: threading.Event) -> Iterator[_Batch]:
    """The subscribed socket's events, parsed by its marshal (with the fast
    FDB decoder), until closed, in batches of what was there to read.  pyroute2's get() runs its event loop once
    per datagram, and every event is a datagram of its own: ~100 us each,
    so a 100,000-entry flush took 12 s to read.  Here a datagram costs a
    recv(); what pyroute2 had already read off the socket (events during
    the dump) comes first.  An overrun raises ENOBUFS from recv()."""
    marshal, sock = ipr.asyncore.marshal, ipr.asyncore.socket
    pending = ipr.asyncore.msg_queue.queues.get(0)
    batch = _Batch()
    while pending is not None and not pending.empty():
        batch += _parsed(marshal, pending.get_nowait())
    while not closed.is_set():
        if batch:
            yield batch
            batch = _Batch()
        if not select.select([sock], [], [], READER_WAKE_S)[0]:
            continue
        for _ in range(RECV_BATCH):
            try:
                data, _, flags, _ = sock.recvmsg(RECV_SIZE)
            except BlockingIOError:  # drained: back to select()
                break
            if flags & socket.MSG_TRUNC:  # the rest of the datagram is gone: events lost
                raise OSError(errno.EMSGSIZE, f"a netlink datagram larger than {RECV_SIZE} bytes")
            batch += _parsed(marshal, data)


def _parsed(marshal: Any, data: bytes) -> Iterator[NlMsg]:
    for msg in parse_events(marshal, data):
        if type(msg) is not FactMsg:  # a decoded fact is no error
            err = msg["header"].get("error")
            if isinstance(err, OSError) and err.errno == errno.ENOBUFS:  # an overrun pyroute2 saw
                raise err
        yield msg
