"""Property tests of the router module through BPF_PROG_RUN.

1. Random packets against a reference model of what Linux does with them:
   the fast path must either forward exactly as Linux (same bytes) or hand
   the packet, untouched, to the kernel for the reason the model names.
2. The TTL decrement's incremental checksum against a full recomputation,
   over random headers (random ids and checksums reach the 0x0000/0xffff
   corner where an RFC 1624 update and the kernel can differ).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import RouterLab
from tests.harness import RouterHarness
from tests.test_router_prog import forwarded

pytestmark = pytest.mark.root

# destination -> what the lab's FIB says about it (see RouterLab, EXTRA_ROUTES)
DST4 = {
    "198.51.100.2": "FORWARDED", "192.0.2.1": "NOT_FWDED", "198.51.100.255": "NOT_FWDED",
    "203.0.113.1": "BLACKHOLE", "203.0.113.65": "UNREACHABLE", "203.0.113.129": "PROHIBIT",
    "203.0.113.200": "NOT_FWDED", "198.51.100.77": "NO_NEIGH", "192.0.2.2": "SAME_IFACE", "224.0.0.5": "MARTIAN",
}
SRC4 = ["192.0.2.2", "192.0.2.50", "203.0.113.9", "127.0.0.1", "0.0.0.0", "198.51.100.1"]
DST6 = {
    "2001:db8:2::2": "FORWARDED", "2001:db8:2::1": "NOT_FWDED", "2001:db8:b1::1": "BLACKHOLE",
    "2001:db8:b2::1": "UNREACHABLE", "2001:db8:b3::1": "PROHIBIT", "2001:db8:99::1": "NOT_FWDED",
    "2001:db8:2::77": "NO_NEIGH", "2001:db8:1::2": "SAME_IFACE", "ff0e::1": "MARTIAN", "fe80::5": "MARTIAN",
}
SRC6 = ["2001:db8:1::2", "2001:db8:1::50", "::1", "fe80::1"]


@st.composite
def packets4(draw: st.DrawFn, lab: RouterLab) -> tuple[bytes, str]:
    """(frame, reason the reference model expects)."""
    ours = draw(st.booleans()) or draw(st.booleans())
    dst, src = draw(st.sampled_from(sorted(DST4))), draw(st.sampled_from(SRC4))
    ttl = draw(st.integers(0, 255))
    frag = draw(st.sampled_from(["none"] * 6 + ["mf", "offset"]))
    options, bad_csum = draw(st.integers(0, 9)) == 0, draw(st.integers(0, 9)) == 0
    proto = draw(st.sampled_from(["udp", "tcp", "icmp", "gre"]))
    icmp_type = draw(st.integers(0, 20))
    ip = IP(src=src, dst=dst, ttl=ttl, tos=draw(st.integers(0, 255)), id=draw(st.integers(0, 0xFFFF)),
            flags=(1 if frag == "mf" else 0) | (2 if draw(st.booleans()) and frag != "mf" else 0),
            frag=10 if frag == "offset" else 0, options=[IPOption_RR()] if options else [])
    l4 = {"udp": UDP(sport=draw(st.integers(1, 65535)), dport=53), "tcp": TCP(sport=1000, dport=80, flags="A"),
          "icmp": ICMP(type=icmp_type), "gre": Raw(b"\0\0\x08\0")}[proto]
    if proto == "gre":
        ip.proto = 47
    pkt = Ether(src="02:00:00:00:01:01", dst=lab.r_h1_mac if ours else "02:00:00:00:99:99") / ip / l4 \
        / Raw(draw(st.binary(max_size=64)))
    frame = bytearray(bytes(pkt))
    if bad_csum:
        frame[24] ^= 0x5A  # IPv4 header checksum, high byte
    # the reference model: Linux's order of checks, as the kernel applies them
    if not ours:
        reason = "OTHERHOST"
    elif options:
        reason = "IP_OPTIONS"
    elif bad_csum:
        reason = "IP_INVALID"
    elif frag != "none":
        reason = "FRAGMENT"
    elif src in ("127.0.0.1", "0.0.0.0") or DST4[dst] == "MARTIAN":
        reason = "MARTIAN"
    elif src == "198.51.100.1":  # the router's own address
        reason = "LOCAL_SOURCE"
    elif ttl <= 1:
        reason = "TTL"
    elif proto == "icmp" and icmp_type in (3, 4, 5, 11, 12):
        reason = "ICMP_SPECIAL"
    else:
        reason = DST4[dst]
    return bytes(frame), reason


@st.composite
def packets6(draw: st.DrawFn, lab: RouterLab) -> tuple[bytes, str]:
    ours = draw(st.booleans()) or draw(st.booleans())
    dst, src = draw(st.sampled_from(sorted(DST6))), draw(st.sampled_from(SRC6))
    hlim = draw(st.integers(0, 255))
    kind = draw(st.sampled_from(["udp", "tcp", "icmp6", "hbh", "frag"]))
    icmp_type = draw(st.integers(0, 255))
    ip = IPv6(src=src, dst=dst, hlim=hlim, fl=draw(st.integers(0, 0xFFFFF)), tc=draw(st.integers(0, 255)))
    if kind == "icmp6":
        ip.nh = 58
    l4 = {"udp": UDP(sport=draw(st.integers(1, 65535)), dport=53), "tcp": TCP(sport=7, dport=80),
          "icmp6": Raw(bytes([icmp_type, 0, 0, 0, 0, 0, 0, 0])),  # the router reads only the type
          "hbh": IPv6ExtHdrHopByHop() / UDP(), "frag": IPv6ExtHdrFragment() / UDP()}[kind]
    pkt = Ether(src="02:00:00:00:01:01", dst=lab.r_h1_mac if ours else "02:00:00:00:99:99") / ip / l4 \
        / Raw(draw(st.binary(max_size=64)))
    special = src in ("::1", "fe80::1") or DST6[dst] == "MARTIAN"
    if not ours:
        reason = "OTHERHOST"
    elif special:
        reason = "MARTIAN"
    elif kind == "frag":
        reason = "FRAGMENT"
    elif kind == "hbh":
        reason = "IP_OPTIONS"
    elif hlim <= 1:
        reason = "TTL"
    elif kind == "icmp6" and (icmp_type < 128 or 133 <= icmp_type <= 137):
        reason = "ICMP_SPECIAL"
    else:
        reason = DST6[dst]
    return bytes(pkt), reason


def _check(harness: RouterHarness, frame: bytes, reason: str) -> None:
    verdict, got, out = harness.run(frame)
    assert got == reason
    if reason == "FORWARDED":
        assert verdict == "REDIRECT"
        assert out == forwarded(harness.lab, Ether(frame))
    else:
        assert (verdict, out) == ("PASS", frame)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ipv4_matches_reference_model(harness: RouterHarness, data: st.DataObject) -> None:
    _check(harness, *data.draw(packets4(harness.lab)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ipv6_matches_reference_model(harness: RouterHarness, data: st.DataObject) -> None:
    _check(harness, *data.draw(packets6(harness.lab)))


def _full_checksum(header: bytes) -> int:
    s = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ttl=st.integers(2, 255), ident=st.integers(0, 0xFFFF), tos=st.integers(0, 255), df=st.booleans(),
       src_host=st.integers(1, 254), payload=st.binary(max_size=32))
def test_ttl_decrement_checksum_equals_full_recomputation(harness: RouterHarness, ttl, ident, tos, df,
                                                          src_host, payload) -> None:
    lab = harness.lab
    pkt = Ether(dst=lab.r_h1_mac) / IP(src=f"203.0.113.{src_host}", dst=lab.h2.ip4, ttl=ttl, id=ident, tos=tos,
                                       flags=2 if df else 0) / UDP(sport=9, dport=9) / Raw(payload)
    verdict, reason, out = harness.run(bytes(pkt))
    assert (verdict, reason) == ("REDIRECT", "FORWARDED")
    header = out[14:34]
    assert header[8] == ttl - 1
    zeroed = header[:10] + b"\0\0" + header[12:]
    assert int.from_bytes(header[10:12], "big") == _full_checksum(zeroed)
