"""While the main loop is busy, the reader thread holds the datapath
(PENDING) for a batch that can make a map or a guard wrong - and not for a
burst of plain routes, which bpf_fib_lookup() follows by itself (a full
table loading must not send all traffic to the kernel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from tests.test_reconcile_order import recording_daemon
from tna.bpf import abi
from tna.netlink.decode import RTM_DELROUTE, RTM_NEWLINK, RTM_NEWROUTE, moves_no_map
from tna.netlink.nexthop import Marshal

DATA = Path(__file__).parent / "data"


def _recorded() -> list[Any]:
    marshal = Marshal()
    return [msg for line in (DATA / "router_lab.nl").read_text().splitlines()
            if line.strip() and not line.startswith("# ") for msg in marshal.parse(bytes.fromhex(line))]


def _route(**attrs: Any) -> Any:
    """An IPv4 route notification as the kernel would send it, parsed back."""
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["type"] = 2, 16, 254, 1
    msg["header"]["type"] = RTM_NEWROUTE
    msg["attrs"] = [("RTA_DST", "10.1.0.0"), ("RTA_OIF", 2), *attrs.items()]
    msg.encode()
    return next(iter(Marshal().parse(msg.data)))


RECORDED = _recorded()
ROUTES = [m for m in RECORDED if m["header"]["type"] == RTM_NEWROUTE]
NOTABLE = [m for m in ROUTES if m.get_attr("RTA_MULTIPATH") or m.get_attr("RTA_METRICS")]
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


@pytest.mark.parametrize(("busy", "batch", "held"), [
    (True, PLAIN, False), (True, PLAIN + LINKS[:1], True), (False, LINKS, False)])
def test_a_busy_loop_holds_for_what_can_move_a_map(monkeypatch: pytest.MonkeyPatch, busy: bool,
                                                   batch: list[Any], held: bool) -> None:
    d = recording_daemon(monkeypatch)
    d._busy = busy
    d._events_queued(batch)
    assert (("hold", abi.REASON["PENDING"]) in d.dp.calls) == held  # type: ignore[attr-defined]
