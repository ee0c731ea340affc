"""BPF_PROG_RUN tests of a narrowed hold (tna_config.fw_hold,
firewall.c.j2): the flows it names go to the kernel (FW_CHANGED),
uncounted; every other packet is decided as before."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from ipaddress import ip_network

import pytest
from scapy.layers.inet import ICMP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.packet import Raw

from netns_labs.lab import RouterLab
from tests.harness import FirewallHarness
from tests.test_firewall_prog import CT, V4, V6, check, conntrack_entry, table, timeout_of
from tna.model.fwdiff import HeldFlow

pytestmark = pytest.mark.root

RULES4 = table("DROP", "-A FORWARD -p udp -m udp --dport 9 -j ACCEPT\n-A FORWARD -p icmp -j ACCEPT\n")
RULES6 = table("DROP", "-A FORWARD -p udp -m udp --dport 9 -j ACCEPT\n-A FORWARD -p ipv6-icmp -j ACCEPT\n")
INPUT4 = table("ACCEPT", "-A INPUT -p udp -m udp --dport 9999 -j DROP\n", input_="ACCEPT")
HELD = (HeldFlow(4, 17, ip_network("192.0.2.0/25"), ip_network("198.51.100.2/32"), dport=(9, 9)),
        HeldFlow(6, 0, None, ip_network("2001:db8:2::/64"), sport=(1000, 1999)))
F = (4, "FORWARD", 1)


@pytest.fixture(params=["xdp", "tc"])
def h(request: pytest.FixtureRequest, fwlab: RouterLab) -> Iterator[FirewallHarness]:
    harness = FirewallHarness(fwlab, request.param, RULES4, RULES6)
    harness.set_state(held=HELD)
    yield harness
    harness.close()


def test_a_held_flow_goes_to_the_kernel_uncounted(h: FirewallHarness, fwlab: RouterLab) -> None:
    check(h, bytes(V4(fwlab) / UDP(sport=1000, dport=9)), "PASS", "FW_CHANGED", Counter())
    # outside its source prefix, port or destination: decided
    check(h, bytes(V4(fwlab, src="192.0.2.200") / UDP(sport=1000, dport=9)), "REDIRECT", "FORWARDED",
          Counter({F: 1}))
    check(h, bytes(V4(fwlab) / UDP(sport=1000, dport=10)), "DROP", "FW_DROP", Counter({(4, "FORWARD", 0): 1}))
    check(h, bytes(V4(fwlab, dst="198.51.100.7") / UDP(sport=1000, dport=9)), "REDIRECT", "FORWARDED",
          Counter({F: 1}))
    check(h, bytes(V4(fwlab) / ICMP(type=8)), "REDIRECT", "FORWARDED", Counter({(4, "FORWARD", 2): 1}))


def test_ipv6_prefixes_and_a_portless_packet(h: FirewallHarness, fwlab: RouterLab) -> None:
    check(h, bytes(V6(fwlab) / UDP(sport=1500, dport=9)), "PASS", "FW_CHANGED", Counter())
    check(h, bytes(V6(fwlab) / UDP(sport=2000, dport=9)), "REDIRECT", "FORWARDED", Counter({(6, "FORWARD", 1): 1}))
    # ports named, none to compare: held
    check(h, bytes(V6(fwlab) / ICMPv6EchoRequest()), "PASS", "FW_CHANGED", Counter())


def test_no_hold_decides_everything(h: FirewallHarness, fwlab: RouterLab) -> None:
    h.set_state()
    check(h, bytes(V4(fwlab) / UDP(sport=1000, dport=9)), "REDIRECT", "FORWARDED", Counter({F: 1}))
    check(h, bytes(V6(fwlab) / ICMPv6EchoRequest()), "REDIRECT", "FORWARDED", Counter({(6, "FORWARD", 2): 1}))


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_input_early_drop_is_held_too(hook: str, fwlab: RouterLab) -> None:
    harness = FirewallHarness(fwlab, hook, INPUT4)
    try:
        harness.set_state(held=(HeldFlow(4, 17, None, ip_network("192.0.2.1/32"), dport=(9999, 9999)),))
        check(harness, bytes(V4(fwlab, dst="192.0.2.1") / UDP(sport=9, dport=9999)), "PASS", "FW_CHANGED", Counter())
        harness.set_state()
        check(harness, bytes(V4(fwlab, dst="192.0.2.1") / UDP(sport=9, dport=9999)), "DROP", "FW_INPUT_DROP",
              Counter({(4, "INPUT", 1): 1}))
    finally:
        harness.close()


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_a_held_packet_touches_no_conntrack_entry(hook: str, fwlab: RouterLab) -> None:
    """The flow test comes before conntrack: a changed raw rule may drop
    the packet before conntrack sees it, so the fast path must not have
    refreshed its entry (the kernel does, for a packet it keeps)."""
    lab = fwlab
    harness = FirewallHarness(lab, hook, CT)
    entry = conntrack_entry(lab, 4011)
    lab.run(lab.r, ["conntrack", "-I", *entry, "--timeout", "30", "--status", "SEEN_REPLY,ASSURED"])
    frame = bytes(V4(lab, dst="198.51.100.7") / UDP(sport=4011, dport=4000) / Raw(b"x"))
    try:
        harness.set_state(held=(HeldFlow(4, 17, None, ip_network("198.51.100.7/32")),))
        check(harness, frame, "PASS", "FW_CHANGED", Counter())
        assert timeout_of(lab, entry)[0] <= 30  # not refreshed to CT_TIMEOUT_MS
        harness.set_state()
        check(harness, frame, "REDIRECT", "FORWARDED", Counter({(4, "FORWARD", 2): 1}))
        assert timeout_of(lab, entry)[0] > 30
    finally:
        harness.close()
        lab.run(lab.r, ["conntrack", "-D", *entry], check=False)
