"""BPF_PROG_RUN table of the corners of ip_set_getport.c a random test
rarely meets: an SCTP header cut short (no port: no match), ICMPv6 in an
IPv4 packet (type/code still), IPv4 protocol 0 (no port at all).  Each row
is checked against evaluate() too."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import replace

import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import RouterLab
from tests.harness import FirewallHarness
from tests.test_firewall_prog import check, fw_packet, table, verdict_of
from tna.model.firewall import evaluate
from tna.model.ipset import IpSet, Member, resolve
from tna.model.iptables import parse_save

pytestmark = pytest.mark.root

DST = "198.51.100.2"
RULES = table("ACCEPT", "-A FORWARD -m set --match-set ipp dst,dst -j DROP\n")
SETS = {"ipp": IpSet("ipp", "hash:ip,port", 4, 65536, members=frozenset(
    Member(ipaddress.ip_network(f"{DST}/32"), proto, port) for proto, port in ((132, 80), (58, 128 << 8), (0, 0))))}


def frame(lab: RouterLab, proto: int, l4: bytes) -> bytes:
    return bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / IP(src="192.0.2.2", dst=DST, proto=proto) / Raw(l4))


CASES = {  # name: (proto, L4 bytes, dropped by the set)
    "sctp-whole-header": (132, (40000).to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(8), True),
    "sctp-11-bytes": (132, (40000).to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(7), False),
    "icmpv6-in-ipv4": (58, bytes([128, 0]) + bytes(6), True),
    "ipv4-protocol-0": (0, bytes(8), False),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_port_corners(fwlab: RouterLab, hook: str, case: str) -> None:
    proto, l4, dropped = CASES[case]
    f = frame(fwlab, proto, l4)
    resolved = resolve({4: parse_save(RULES)}, SETS)[0][4]["filter"]
    trace: list[tuple[str, int]] = []
    decision = evaluate(resolved, "FORWARD", replace(fw_packet(f), l4len=len(l4)), trace, sets=SETS)
    assert (decision == "DROP") == dropped
    h = FirewallHarness(fwlab, hook, RULES, ipsets=SETS)
    try:
        check(h, f, *verdict_of(decision), Counter((4, c, i) for c, i in trace))
    finally:
        h.close()
