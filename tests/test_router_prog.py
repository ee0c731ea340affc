"""BPF_PROG_RUN table tests of the router module, for both hooks: input
frame, expected verdict, reason and output bytes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from netns_labs.lab import RouterLab, in_netns
from tests.harness import RouterHarness, pseudo_fold
from tna.bpf import abi

pytestmark = pytest.mark.root

H1_MAC = "02:00:00:00:01:01"  # senders' MACs do not matter to a router


def eth(lab: RouterLab, dst: str | None = None) -> Ether:
    return Ether(src=H1_MAC, dst=dst or lab.r_h1_mac)


def forwarded(lab: RouterLab, pkt: Packet) -> bytes:
    """What Linux puts on r-h2 for pkt: MACs rewritten, TTL/hop limit - 1,
    IPv4 checksum recomputed from scratch."""
    out = pkt.copy()
    out[Ether].dst, out[Ether].src = lab.h2.mac, lab.r_h2_mac
    if IP in out:
        out[IP].ttl -= 1
        del out[IP].chksum
    else:
        out[IPv6].hlim -= 1
    return bytes(Ether(bytes(out)))


@dataclass
class Case:
    name: str
    build: Callable[[RouterLab], Packet | bytes]
    reason: str

    @property
    def verdict(self) -> str:
        return "REDIRECT" if self.reason == "FORWARDED" else "PASS"


V4 = lambda lab, **kw: eth(lab) / IP(src=lab.h1.ip4, dst=lab.h2.ip4, **kw)  # noqa: E731
V6 = lambda lab, **kw: eth(lab) / IPv6(src=lab.h1.ip6, dst=lab.h2.ip6, **kw)  # noqa: E731

CASES = [
    Case("udp4", lambda lab: V4(lab) / UDP(sport=1234, dport=53) / Raw(b"x" * 32), "FORWARDED"),
    Case("tcp4", lambda lab: V4(lab, tos=0x10) / TCP(sport=1234, dport=80, flags="A") / Raw(b"y" * 100), "FORWARDED"),
    Case("icmp4-echo", lambda lab: V4(lab) / ICMP() / Raw(b"ping"), "FORWARDED"),
    Case("gre4", lambda lab: V4(lab, proto=47) / Raw(b"\0" * 24), "FORWARDED"),
    Case("udp6", lambda lab: V6(lab) / UDP(sport=1234, dport=53) / Raw(b"x" * 32), "FORWARDED"),
    Case("tcp6-flowlabel", lambda lab: V6(lab, fl=0x12345, tc=0x20) / TCP(sport=9, dport=80) / Raw(b"z"), "FORWARDED"),
    Case("icmp6-echo", lambda lab: V6(lab) / ICMPv6EchoRequest(), "FORWARDED"),
    Case("ttl1", lambda lab: V4(lab, ttl=1) / UDP() / Raw(b"x"), "TTL"),
    Case("ttl0", lambda lab: V4(lab, ttl=0) / UDP() / Raw(b"x"), "TTL"),
    Case("hlim1", lambda lab: V6(lab, hlim=1) / UDP() / Raw(b"x"), "TTL"),
    Case("other-mac", lambda lab: eth(lab, "02:00:00:00:99:99") / IP(src=lab.h1.ip4, dst=lab.h2.ip4) / UDP(),
         "OTHERHOST"),
    Case("broadcast-mac", lambda lab: eth(lab, "ff:ff:ff:ff:ff:ff") / IP(src=lab.h1.ip4, dst=lab.h2.ip4) / UDP(),
         "OTHERHOST"),
    Case("arp", lambda lab: eth(lab) / ARP(pdst=lab.h2.ip4), "NOT_IP"),
    Case("vlan", lambda lab: eth(lab) / Dot1Q(vlan=5) / IP(src=lab.h1.ip4, dst=lab.h2.ip4) / UDP(), "NOT_IP"),
    Case("ipv4-options", lambda lab: V4(lab, options=[IPOption_RR()]) / UDP() / Raw(b"x"), "IP_OPTIONS"),
    Case("bad-checksum", lambda lab: V4(lab, chksum=0x1234) / UDP() / Raw(b"x"), "IP_INVALID"),
    Case("tot-len-too-long", lambda lab: V4(lab, len=200) / UDP() / Raw(b"x"), "IP_INVALID"),
    Case("more-fragments", lambda lab: V4(lab, flags="MF") / UDP() / Raw(b"x" * 16), "FRAGMENT"),
    Case("fragment-offset", lambda lab: V4(lab, frag=10) / Raw(b"x" * 16), "FRAGMENT"),
    Case("ipv6-fragment", lambda lab: V6(lab) / IPv6ExtHdrFragment() / UDP() / Raw(b"x"), "FRAGMENT"),
    Case("ipv6-hop-by-hop", lambda lab: V6(lab) / IPv6ExtHdrHopByHop() / UDP() / Raw(b"x"), "IP_OPTIONS"),
    Case("ipv6-jumbo-len0", lambda lab: V6(lab, plen=0) / UDP() / Raw(b"x"), "IP_INVALID"),
    Case("multicast-dst", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="239.1.1.1") / UDP(), "MARTIAN"),
    Case("loopback-src", lambda lab: eth(lab) / IP(src="127.0.0.1", dst=lab.h2.ip4) / UDP(), "MARTIAN"),
    Case("zero-src", lambda lab: eth(lab) / IP(src="0.0.0.0", dst=lab.h2.ip4) / UDP(), "MARTIAN"),
    Case("limited-broadcast", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="255.255.255.255") / UDP(), "MARTIAN"),
    Case("link-local6-dst", lambda lab: eth(lab) / IPv6(src=lab.h1.ip6, dst="fe80::1") / UDP(), "MARTIAN"),
    Case("multicast6-dst", lambda lab: eth(lab) / IPv6(src=lab.h1.ip6, dst="ff02::1") / UDP(), "MARTIAN"),
    Case("v4mapped6-src", lambda lab: eth(lab) / IPv6(src="::ffff:192.0.2.2", dst=lab.h2.ip6) / UDP(), "MARTIAN"),
    Case("icmp4-error", lambda lab: V4(lab) / ICMP(type=3, code=1) / IP(src=lab.h2.ip4, dst="192.0.2.9") / UDP(),
         "ICMP_SPECIAL"),
    Case("icmp6-error", lambda lab: V6(lab) / ICMPv6DestUnreach() / IPv6(src=lab.h2.ip6, dst=lab.h1.ip6),
         "ICMP_SPECIAL"),
    Case("icmp6-ns", lambda lab: V6(lab) / ICMPv6ND_NS(tgt=lab.h2.ip6), "ICMP_SPECIAL"),
    Case("for-the-router", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="192.0.2.1") / UDP(), "NOT_FWDED"),
    Case("for-the-router6", lambda lab: eth(lab) / IPv6(src=lab.h1.ip6, dst="2001:db8:2::1") / UDP(), "NOT_FWDED"),
    Case("subnet-broadcast", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="198.51.100.255") / UDP(), "NOT_FWDED"),
    Case("no-route", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="203.0.113.200") / UDP(), "NOT_FWDED"),
    Case("blackhole", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="203.0.113.1") / UDP(), "BLACKHOLE"),
    Case("unreachable", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="203.0.113.65") / UDP(), "UNREACHABLE"),
    Case("prohibit", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="203.0.113.129") / UDP(), "PROHIBIT"),
    Case("blackhole6", lambda lab: eth(lab) / IPv6(src=lab.h1.ip6, dst="2001:db8:b1::1") / UDP(), "BLACKHOLE"),
    Case("unreachable6", lambda lab: eth(lab) / IPv6(src=lab.h1.ip6, dst="2001:db8:b2::1") / UDP(), "UNREACHABLE"),
    Case("prohibit6", lambda lab: eth(lab) / IPv6(src=lab.h1.ip6, dst="2001:db8:b3::1") / UDP(), "PROHIBIT"),
    Case("no-neighbour", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="198.51.100.77") / UDP(), "NO_NEIGH"),
    Case("too-big", lambda lab: eth(lab) / IP(src=lab.h1.ip4, dst="198.51.100.200", flags="DF") / UDP()
         / Raw(b"x" * 1400), "ROUTE_MTU"),
    Case("too-big6", lambda lab: eth(lab) / IPv6(src=lab.h1.ip6, dst="2001:db8:3::1") / UDP() / Raw(b"x" * 1400),
         "ROUTE_MTU"),
    Case("own-source", lambda lab: eth(lab) / IP(src="198.51.100.1", dst=lab.h2.ip4) / UDP(), "LOCAL_SOURCE"),
    Case("same-interface", lambda lab: eth(lab) / IP(src="192.0.2.3", dst=lab.h1.ip4) / UDP(), "SAME_IFACE"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_router_table(harness: RouterHarness, case: Case) -> None:
    lab = harness.lab
    pkt = case.build(lab)
    frame = bytes(pkt)
    verdict, reason, out = harness.run(frame)
    assert (verdict, reason) == (case.verdict, case.reason)
    if reason == "FORWARDED":
        assert out == forwarded(lab, Ether(frame))
    else:
        assert out == frame, "a packet handed to the kernel must be untouched"


def test_truncated_ipv4_header(harness: RouterHarness) -> None:
    if harness.hook == "tc":
        pytest.skip("BPF_PROG_RUN refuses to build an skb this short")
    frame = bytes(V4(harness.lab) / UDP())[:30]
    assert harness.run(frame) == ("PASS", "IP_INVALID", frame)


def test_device_mtu_is_checked_by_the_fib(harness: RouterHarness) -> None:
    """No route MTU anywhere: the FIB's own MTU check (device MTU) decides."""
    lab = harness.lab
    frame = bytes(eth(lab) / IP(src=lab.h1.ip4, dst="198.51.100.200", flags="DF") / UDP() / Raw(b"x" * 1400))
    try:
        harness.set_state(route_mtu=(0, 0))
        # the locked IPv4 route MTU is one bpf_fib_lookup() honours itself
        assert harness.run(frame) == ("PASS", "FRAG_NEEDED", frame)
    finally:
        harness.set_state()


def test_ethernet_padding_is_trimmed(harness: RouterHarness) -> None:
    lab = harness.lab
    pkt = V4(lab) / UDP(sport=1, dport=2)  # 42 bytes, padded to the 60-byte minimum
    frame = bytes(pkt) + b"\0" * 18
    verdict, reason, out = harness.run(frame)
    assert (verdict, reason) == ("REDIRECT", "FORWARDED")
    assert out == forwarded(lab, Ether(bytes(pkt)))


def test_lease_expired_and_disabled_pass_everything(harness: RouterHarness) -> None:
    frame = bytes(V4(harness.lab) / UDP() / Raw(b"x"))
    try:
        harness.set_state(lease_s=0.05)
        assert harness.run(frame)[1] == "FORWARDED"
        time.sleep(0.2)  # no renewal: the lease timer fires
        assert harness.run(frame) == ("PASS", "LEASE_EXPIRED", frame)
        harness.set_state(pass_reason=abi.REASON["DISABLED"])
        assert harness.run(frame) == ("PASS", "DISABLED", frame)
    finally:
        harness.set_state()


def test_ipsec_guards_pass_their_family_and_only_decrypted_packets(harness: RouterHarness) -> None:
    """tna_config.xfrm_families: a family IPsec policies may cover goes to
    the kernel, the other is carried; with SAs in the namespace only a
    packet with a secpath would be passed (a test run's has none: at TC
    bpf_skb_get_xfrm_state() answers so, XDP never sees decrypted ones)."""
    lab = harness.lab
    v4 = bytes(V4(lab) / UDP() / Raw(b"x"))
    v6 = bytes(eth(lab) / IPv6(src=lab.h1.ip6, dst=lab.h2.ip6) / UDP() / Raw(b"x"))
    try:
        harness.set_state(xfrm=abi.TNA_FW_V4)
        assert harness.run(v4) == ("PASS", "XFRM", v4)
        assert harness.run(v6)[1] == "FORWARDED"
        harness.set_state(xfrm=abi.TNA_FW_V6 | abi.TNA_XFRM_SA)
        assert harness.run(v4)[1] == "FORWARDED"
        assert harness.run(v6) == ("PASS", "XFRM", v6)
    finally:
        harness.set_state()


def test_stale_neighbour_passes_one_packet(harness: RouterHarness) -> None:
    lab = harness.lab
    frame = bytes(V4(lab) / UDP() / Raw(b"x"))
    try:
        harness.mark_stale(lab.h2.ip4)
        assert harness.run(frame)[:2] == ("PASS", "NEIGH_STALE")
        assert harness.stale_entries() == 0  # the kernel has it now; the datapath forgot it
        assert harness.run(frame)[:2] == ("REDIRECT", "FORWARDED")
    finally:
        harness.set_state()


def test_multipath_guard(harness: RouterHarness) -> None:
    frame = bytes(V4(harness.lab) / UDP() / Raw(b"x"))
    try:
        harness.set_state(mp_guard=abi.TNA_MP_GUARD_V4)
        # XDP cannot see whether the kernel would find a hash; a TC test
        # run's skb carries none, so the kernel would dissect it like we do
        expect = "MULTIPATH_HASH" if harness.hook == "xdp" else "FORWARDED"
        assert harness.run(frame)[1] == expect
        harness.set_state(mp_guard=abi.TNA_MP_GUARD_V6)
        assert harness.run(frame)[1] == "FORWARDED"
    finally:
        harness.set_state()


MP_FRAMES = {
    "udp4": lambda lab: V4(lab) / UDP() / Raw(b"x"),
    "ipip4": lambda lab: V4(lab, proto=4) / IP(src="192.0.2.9", dst="203.0.113.9") / UDP() / Raw(b"x"),
    "gre4": lambda lab: V4(lab, proto=47) / Raw(b"\0" * 24),
    "udp6": lambda lab: V6(lab) / UDP() / Raw(b"x"),
    "label6": lambda lab: V6(lab, fl=1) / UDP() / Raw(b"x"),
    "ip6ip6": lambda lab: V6(lab, nh=41) / IPv6(src="2001:db8:1::9", dst="2001:db8:f::9") / UDP() / Raw(b"x"),
    "icmp6-label": lambda lab: V6(lab, fl=1) / ICMPv6EchoRequest(),
    "icmp6": lambda lab: V6(lab) / ICMPv6EchoRequest(),
}


@pytest.mark.parametrize(("bits", "passed"), [
    (abi.TNA_MP_INNER_V4, {"ipip4", "gre4"}),
    (abi.TNA_MP_INNER_V6, {"label6", "ip6ip6", "icmp6-label"}),
    (abi.TNA_MP_ALL_V4, {"udp4", "ipip4", "gre4"}),
    (abi.TNA_MP_ALL_V6, set(MP_FRAMES) - {"udp4", "ipip4", "gre4"}),
    (abi.TNA_MP_ICMP6_LABEL, {"icmp6-label"}),
])
def test_multipath_policy_passes(harness: RouterHarness, bits: int, passed: set[str]) -> None:
    """What hash policies 2 and 3 (and IPv6 policy 0's ICMPv6 under fib rules)
    would hash differently from bpf_fib_lookup() goes to the kernel; the rest
    is forwarded."""
    try:
        harness.set_state(mp_guard=bits)
        got = {name for name, make in MP_FRAMES.items() if harness.run(bytes(make(harness.lab)))[1] != "FORWARDED"}
        assert got == passed
        assert {harness.run(bytes(MP_FRAMES[n](harness.lab)))[1] for n in passed} <= {"MULTIPATH_POLICY"}
    finally:
        harness.set_state()


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_checksum_partial_frames_go_to_the_kernel(lab: RouterLab, hook: str) -> None:
    """With the veth-under-XDP flag, a TCP/UDP checksum holding only the
    pseudo-header sum (CHECKSUM_PARTIAL) is not redirected."""
    h = RouterHarness(lab, hook, flags=abi.TNA_IF_CHECK_CSUM_PARTIAL)
    try:
        for l4 in (TCP(sport=5, dport=6, flags="A") / Raw(b"d" * 64), UDP(sport=5, dport=6) / Raw(b"d" * 64)):
            for pkt in (V4(lab) / l4, V6(lab) / l4):
                full = bytes(pkt)
                assert h.run(full)[1] == "FORWARDED"
                partial = Ether(full)
                partial[l4.__class__].chksum = pseudo_fold(partial)
                assert h.run(bytes(partial)) == ("PASS", "CSUM_PARTIAL", bytes(partial))
    finally:
        h.close()


def test_too_many_local_addresses_to_list(harness: RouterHarness) -> None:
    frame = bytes(V4(harness.lab) / UDP() / Raw(b"x"))
    try:
        harness.set_state(local4=tuple(f"203.0.113.{i}" for i in range(1, 40)))
        assert harness.run(frame)[1] == "LOCAL_SOURCE"  # cannot check them all: the kernel does
    finally:
        harness.set_state()


@pytest.mark.parametrize(("flags", "src", "reason"), [
    (abi.TNA_IF_RP_STRICT, "192.0.2.50", "FORWARDED"),        # back via r-h1, the ingress
    (abi.TNA_IF_RP_STRICT, "198.51.100.50", "RP_FILTER"),     # back via r-h2: spoofed for strict
    (abi.TNA_IF_RP_STRICT, "203.0.113.200", "RP_FILTER"),     # no route back
    (abi.TNA_IF_RP_LOOSE, "198.51.100.50", "FORWARDED"),      # loose: any unicast route back
    (abi.TNA_IF_RP_LOOSE, "203.0.113.200", "RP_FILTER"),
    (abi.TNA_IF_RP_LOOSE, "203.0.113.1", "RP_FILTER"),        # the way back is a blackhole
])
def test_rp_filter(lab: RouterLab, flags: int, src: str, reason: str) -> None:
    h = RouterHarness(lab, "xdp", flags=flags)
    try:
        frame = bytes(eth(lab) / IP(src=src, dst=lab.h2.ip4) / UDP() / Raw(b"x"))
        assert h.run(frame)[1] == reason
    finally:
        h.close()


def test_egress_without_xdp_support_is_passed(lab: RouterLab) -> None:
    h = RouterHarness(lab, "xdp")
    try:
        with in_netns(lab.r):
            h.obj.map(abi.MAP_DEVMAP).delete(h.egress.to_bytes(4, "little"))
        frame = bytes(V4(lab) / UDP() / Raw(b"x"))
        assert h.run(frame) == ("PASS", "EGRESS_UNSUPPORTED", frame)
    finally:
        h.close()
