"""The route decoder (tna/netlink/routemsg.py) states what pyroute2's
messages do: on recorded kernel messages, and on messages pyroute2 encodes
from drawn routes (both families, metrics, multipath, nexthop objects,
tables above 255, replace and append flags, source prefixes, expiries, RA routes)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from tna.model.config import Removed
from tna.model.routes import Route
from tna.netlink.decode import NLM_F_APPEND, NLM_F_REPLACE, RTM_DELROUTE, RTM_NEWROUTE, route_from_msg
from tna.netlink.factmsg import FactMsg, parse_events
from tna.netlink.nexthop import Marshal
from tna.netlink.routemsg import decode_routes_fast

DATA = Path(__file__).parent / "data"


def _same(raw: bytes) -> int:
    """Checks every message of raw, decoded fast in a dump (pyroute2's
    parse) and as events (parse_events); how many were routes decoded fast."""
    fast = Marshal()
    decode_routes_fast(fast)
    slow = list(Marshal().parse(raw))
    dumped = _same_as(slow, list(fast.parse(raw)))
    assert _same_as(slow, list(parse_events(fast, raw))) == dumped
    return dumped


def _same_as(slow: list[Any], fast: list[Any]) -> int:
    routes = 0
    for msg in slow:
        kind = msg["header"]["type"]
        if kind not in (RTM_NEWROUTE, RTM_DELROUTE):
            assert type(fast[0]) is type(msg)  # everything else stays pyroute2's
            fast.pop(0)
            continue
        want = route_from_msg(msg)
        if want is None:  # a family the model does not follow: skipped
            continue
        fm = fast.pop(0)
        assert isinstance(fm, FactMsg) and fm["header"]["type"] == kind
        assert fm.fact == (want if kind == RTM_NEWROUTE else Removed(want))
        got = fm.fact if kind == RTM_NEWROUTE else fm.fact.fact
        assert vars(got) == vars(want)  # every field, those == leaves out (replace, append, expires) too
        routes += 1
    assert fast == []
    return routes


def test_the_decoder_may_fill_a_route_directly() -> None:
    """routemsg._route() fills a Route's __dict__ without its __init__:
    right only while Route keeps a __dict__ and has nothing to run after
    __init__ (the other tests compare every field)."""
    assert not hasattr(Route, "__slots__") and not hasattr(Route, "__post_init__")


def test_recorded_routes_decode_as_pyroute2s() -> None:
    seen = 0
    for name in ("router_lab.nl", "nexthop_lab.nl", "nexthop_compat_lab.nl"):
        for line in (DATA / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                seen += _same(bytes.fromhex(line))
    assert seen >= 20


V4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
V6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@st.composite
def route_message(draw: st.DrawFn) -> bytes:
    family = draw(st.sampled_from([2, 10]))
    addr = V4 if family == 2 else V6
    msg = rtmsg()
    msg["family"], msg["dst_len"] = family, draw(st.integers(0, 32 if family == 2 else 128))
    msg["src_len"] = draw(st.sampled_from([0, 0, 64]))
    msg["proto"] = draw(st.sampled_from([2, 3, 9]))  # kernel, boot, ra
    msg["tos"], msg["type"] = draw(st.sampled_from([0, 0x10])), draw(st.sampled_from([1, 2, 6, 7]))
    table = draw(st.sampled_from([254, 255, 1000, 0]))
    msg["table"] = min(table, 252) if table > 255 else table  # RT_TABLE_COMPAT for the rest
    msg["header"]["type"] = draw(st.sampled_from([RTM_NEWROUTE, RTM_DELROUTE]))
    msg["header"]["flags"] = draw(st.sampled_from([0, NLM_F_REPLACE, NLM_F_APPEND]))
    attrs: list[tuple[str, Any]] = []
    if table:
        attrs.append(("RTA_TABLE", table))
    if draw(st.booleans()):
        attrs.append(("RTA_DST", draw(addr)))
    if draw(st.booleans()):
        attrs.append(("RTA_OIF", draw(st.integers(1, 2**31 - 1))))
    if draw(st.booleans()):
        attrs.append(("RTA_GATEWAY", draw(addr)))
    if draw(st.booleans()):
        attrs.append(("RTA_SRC", draw(addr)))
    if draw(st.booleans()):
        attrs.append(("RTA_PRIORITY", draw(st.integers(0, 2**32 - 1))))
    if draw(st.booleans()):
        metrics = [("RTAX_MTU", draw(st.integers(0, 65535)))] if draw(st.booleans()) else []
        attrs.append(("RTA_METRICS", {"attrs": [*metrics, ("RTAX_HOPLIMIT", 64)]}))
    if draw(st.booleans()):
        hops = draw(st.lists(st.tuples(st.integers(1, 999), addr), min_size=1, max_size=4))
        attrs.append(("RTA_MULTIPATH", [{"oif": oif, "hops": 0, "attrs": [("RTA_GATEWAY", gw)]}
                                        for oif, gw in hops]))
    if draw(st.booleans()):
        attrs.append(("RTA_NH_ID", draw(st.integers(1, 2**32 - 1))))
    if draw(st.booleans()):  # expires: 0 (a permanent route) or the jiffies left
        attrs.append(("RTA_CACHEINFO", {"rta_clntref": 0, "rta_lastuse": 0, "rta_error": 0, "rta_used": 0,
                                        "rta_id": 0, "rta_ts": 0, "rta_tsage": 0,
                                        "rta_expires": draw(st.sampled_from([0, 29977]))}))
    msg["attrs"] = draw(st.permutations(attrs))
    msg.encode()
    return msg.data


@settings(max_examples=400, deadline=None)
@given(route_message())
def test_drawn_routes_decode_as_pyroute2s(raw: bytes) -> None:
    assert _same(raw) == 1
