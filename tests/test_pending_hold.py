"""While the main loop is busy, the reader thread holds the datapath
(PENDING) for a batch that can make a map or a guard wrong - and not for a
burst of plain routes, which bpf_fib_lookup() follows by itself (a full
table loading must not send all traffic to the kernel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from tests.test_reconcile_order import recording_daemon
from tna.bpf import abi
from tna.model.config import NUD_STALE, Removed, Route, XdpXmit
from tna.netlink import netconf
from tna.netlink.decode import (
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    decoded,
    moves_no_map,
    route_from_msg,
)
from tna.netlink.factmsg import FactMsg
from tna.netlink.nexthop import Marshal
from tna.netlink.routemsg import decode_routes_fast

DATA = Path(__file__).parent / "data"
NUD_REACHABLE, NUD_DELAY = 0x02, 0x08


def _marshal(compact: bool = True) -> Marshal:
    """A marshal that parses as the reader's does (compact: route events as facts)."""
    marshal = Marshal()
    if compact:
        decode_routes_fast(marshal)
    return marshal


def _recorded() -> list[Any]:
    marshal = _marshal()
    return [msg for line in (DATA / "router_lab.nl").read_text().splitlines()
            if line.strip() and not line.startswith("# ") for msg in marshal.parse(bytes.fromhex(line))]


def _route_bytes(kind: int = RTM_NEWROUTE, **attrs: Any) -> bytes:
    """An IPv4 route notification as the kernel would send it."""
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["type"] = 2, 16, 254, 1
    msg["header"]["type"] = kind
    msg["attrs"] = [("RTA_DST", "10.1.0.0"), ("RTA_OIF", 2), *attrs.items()]
    msg.encode()
    return msg.data


def _route(**attrs: Any) -> Any:
    return next(iter(_marshal().parse(_route_bytes(**attrs))))


def _netconf(kind: int = netconf.RTM_NEWNETCONF, **values: int) -> Any:
    """A netconf notification as the kernel sends it (ifindex -1: "all"),
    parsed as the reader's socket does."""
    msg = netconf.netconf_msg()
    msg["family"], msg["header"]["type"] = 2, kind
    msg["attrs"] = [("NETCONFA_IFINDEX", -1), *((f"NETCONFA_{k}", v) for k, v in values.items())]
    msg.encode()
    marshal = Marshal()
    marshal.msg_map = {**marshal.msg_map, **netconf.POLICY}
    return next(iter(marshal.parse(msg.data)))


def _neigh(kind: int, family: int, state: int) -> Any:
    """A neighbour (AF_BRIDGE: FDB entry) notification, parsed as the reader's socket does."""
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"], msg["header"]["type"] = family, 2, state, kind
    dst = {2: "192.0.2.2", 10: "2001:db8::2"}
    msg["attrs"] = [*([("NDA_DST", dst[family])] if family in dst else []), ("NDA_LLADDR", "02:00:00:00:00:02")]
    msg.encode()
    return next(iter(_marshal().parse(msg.data)))


def test_only_a_neighbour_turning_stale_moves_a_map() -> None:
    """bpf_fib_lookup() reads the kernel's neighbours itself; tna_stale
    sends a STALE one's packets to the kernel, which re-validates it."""
    assert moves_no_map(_neigh(RTM_NEWNEIGH, 2, NUD_REACHABLE)) and moves_no_map(_neigh(RTM_NEWNEIGH, 10, NUD_DELAY))
    assert moves_no_map(_neigh(RTM_DELNEIGH, 10, NUD_STALE))  # a map entry left over only sends more to the kernel
    assert not any(moves_no_map(_neigh(RTM_NEWNEIGH, family, NUD_STALE)) for family in (2, 10))
    # a bridge's FDB entry (a host moved to another port) is a map entry
    assert not moves_no_map(_neigh(RTM_NEWNEIGH, 7, NUD_REACHABLE)) and not moves_no_map(_neigh(RTM_DELNEIGH, 7, 0))


WRITTEN = _netconf(FORWARDING=0)  # echo 0 > /proc/sys/net/ipv4/ip_forward
DEVICE = _netconf(FORWARDING=1, RP_FILTER=0, MC_FORWARDING=0, PROXY_NEIGH=0, IGNORE_ROUTES_WITH_LINKDOWN=0)
GONE_DEVICE = _netconf(netconf.RTM_DELNETCONF)


def test_a_sysctl_written_is_told_from_a_device_announced() -> None:
    assert netconf.written(WRITTEN)
    assert not netconf.written(DEVICE) and not netconf.written(GONE_DEVICE)
    # either makes the daemon read /proc/sys; a device gone says nothing new
    assert list(decoded(WRITTEN)) == list(decoded(DEVICE)) == [netconf.SYSCTLS_ANNOUNCED]
    assert list(decoded(GONE_DEVICE)) == []


RECORDED = _recorded()
ROUTES = [m for m in RECORDED if m["header"]["type"] == RTM_NEWROUTE]
NOTABLE = [m for m in ROUTES if m.fact.notable]
PLAIN = [m for m in ROUTES if m not in NOTABLE]
GONE = [m for m in RECORDED if m["header"]["type"] == RTM_DELROUTE]
LINKS = [m for m in RECORDED if m["header"]["type"] == RTM_NEWLINK]


def test_plain_and_deleted_routes_move_no_map() -> None:
    assert PLAIN and NOTABLE and GONE and LINKS
    assert all(moves_no_map(m) for m in PLAIN + GONE)
    assert not any(moves_no_map(m) for m in NOTABLE)  # `ip route add ... mtu 1400 nexthop ... nexthop ...`
    assert moves_no_map(_route())
    assert not moves_no_map(_route(RTA_METRICS={"attrs": [("RTAX_MTU", 1400)]}))  # the route MTU guard
    assert not any(moves_no_map(m) for m in LINKS)


def test_route_events_are_kept_as_their_facts() -> None:
    """The reader's marshal turns a route event into its fact at once:
    pyroute2's message (KiBs) is not what a burst of 200,000 sits in the
    queue as.  The fact is the one pyroute2's message states."""
    for kind, attrs in ((RTM_NEWROUTE, {}), (RTM_DELROUTE, {}), (RTM_NEWROUTE, {"RTA_PRIORITY": 7})):
        data = _route_bytes(kind, **attrs)
        full = next(iter(_marshal(compact=False).parse(data)))
        kept = list(_marshal().parse(data))
        assert len(kept) == 1 and isinstance(kept[0], FactMsg) and kept[0]["header"]["type"] == kind
        fact = route_from_msg(full)
        assert isinstance(fact, Route) and kept[0].fact == (fact if kind == RTM_NEWROUTE else Removed(fact))
    assert all(isinstance(m, FactMsg) for m in ROUTES + GONE)


@pytest.mark.parametrize(("busy", "batch", "held"), [
    (True, PLAIN, False), (True, PLAIN + LINKS[:1], True), (False, LINKS, False),
    (False, [WRITTEN], True), (False, [DEVICE], False), (True, [DEVICE], True),
    # an egress whose peer's XDP program went: the kernel drops what is redirected to it
    (False, [XdpXmit(5, False)], True), (False, [XdpXmit(5, True)], False), (True, [XdpXmit(5, True)], True)])
def test_a_busy_loop_holds_for_what_can_move_a_map(monkeypatch: pytest.MonkeyPatch, busy: bool,
                                                   batch: list[Any], held: bool) -> None:
    d = recording_daemon(monkeypatch)
    if not busy:
        d.holds.idle()  # the main loop waits for events
    d.holds.events_queued(batch)
    assert (("hold", abi.REASON["PENDING"]) in d.dp.calls) == held  # type: ignore[attr-defined]


def test_a_batch_taken_by_an_idle_loop_ends_its_hold_at_the_next_publication() -> None:
    """The loop waits (idle), a sysctl write's batch arrives and holds, the
    loop takes it and has read /proc/sys: the reconcile that follows may end
    the hold (not one more wake of the loop later: all traffic was the
    kernel's for another 0.5 s)."""
    from tna.holds import Holds

    held: list[int] = []
    h = Holds(held.append)
    h.idle()
    h.events_queued([WRITTEN])  # the reader thread: queued, then counted
    assert held == [abi.REASON["PENDING"]]
    with h.lock:
        assert h.reason() == abi.REASON["PENDING"]
    assert h.busy(lambda: True)  # the loop took it: the queue is empty
    with h.lock:
        assert h.reason() == 0
    h.events_queued([DEVICE])  # busy: a batch it has not taken holds again
    assert not h.busy(lambda: False)
    with h.lock:
        assert h.reason() == abi.REASON["PENDING"]
