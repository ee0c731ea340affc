"""BPF_PROG_RUN tests of a narrowed hold (tna_config.fw_hold, firewall.c.j2) on packets whose conntrack entry
translates their destination, both hooks.  fw_held() tests each held flow against the packet as received (what
raw and PREROUTING up to the DNAT see) and, where nat_route() found a dst manip (FW_DNAT), against the
translated destination address and port together (what FORWARD sees).  The reply of an SNAT connection is such
a packet: its dst manip, at PREROUTING, restores the original source, so FORWARD sees the client.  A held packet
goes to the kernel untouched, uncounted, its entry not refreshed; any other is translated and forwarded as the
old rules decide."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from ipaddress import ip_network

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import RouterLab, wait_for
from tests.harness import FirewallHarness
from tests.test_firewall_prog import V6, check, table, timeout_of
from tests.test_passcache_prog import Natted, natted_entry, natted_frame
from tests.test_router_prog import forwarded
from tna.model.fwdiff import HeldFlow

pytestmark = pytest.mark.root

NAT_HEAD = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
ESTABLISHED = "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
MASQ_RULE = "-s 198.51.100.2/32 -o r-h1 -p udp -m udp --sport 4100 -j MASQUERADE --to-ports 6100"
# The nat rules make each family's entries carry a binding (fw.nat4/nat6); the entries are made by conntrack -I
# with the binding the rule gives a first packet, but for MASQ_RULE's: the kernel makes that one (masquerade()).
RULES4 = table("DROP", ESTABLISHED) + NAT_HEAD + (
    "-A PREROUTING -d 198.51.100.2/32 -p udp -m udp --dport 80 -j DNAT --to-destination 198.51.100.2:8080\n"
    f"-A POSTROUTING {MASQ_RULE}\n"
    "-A POSTROUTING -s 198.51.100.0/24 -o r-h1 -p udp -j SNAT --to-source 192.0.2.1:6000-6999\n"
    "COMMIT\n")
RULES6 = table("DROP", ESTABLISHED) + NAT_HEAD + (
    "-A PREROUTING -d 2001:db8:3::80/128 -p udp -m udp --dport 80 -j DNAT --to-destination [2001:db8:2::2]:8080\n"
    "COMMIT\n")
ENTRY_TIMEOUT_S = 60  # natted_entry()'s; a carried packet refreshes it to CT_TIMEOUT_MS (120 s)

# h1:4031 -> h2:80, DNAT'd to h2:8080: the port alone translated
DNAT_PORT = Natted(("192.0.2.2", "198.51.100.2", 4031, 80), ("--dst-nat", "198.51.100.2:8080"),
                   4031, "198.51.100.2", 80, "198.51.100.2", 8080)
# h2:4000 -> h1:5000, SNAT'd to r's 192.0.2.1:6000; h1's reply arrives for 192.0.2.1:6000 and leaves for h2:4000
SNAT_REPLY = Natted(("198.51.100.2", "192.0.2.2", 4000, 5000), ("--src-nat", "192.0.2.1:6000"),
                    5000, "192.0.2.1", 6000, "198.51.100.2", 4000)
# the same made by MASQ_RULE: h2:4100 -> h1:5100, masqueraded to 192.0.2.1:6100
MASQ_REPLY = Natted(("198.51.100.2", "192.0.2.2", 4100, 5100), (), 5100, "192.0.2.1", 6100, "198.51.100.2", 4100)
# h1:4041 -> [2001:db8:3::80]:80, DNAT'd to h2:8080
DNAT6 = Natted(("2001:db8:1::2", "2001:db8:3::80", 4041, 80), ("--dst-nat", "[2001:db8:2::2]:8080"),
               4041, "2001:db8:3::80", 80, "2001:db8:2::2", 8080)
H2 = ip_network("198.51.100.2/32")
H2_6 = ip_network("2001:db8:2::2/128")


@pytest.fixture(scope="module", params=["xdp", "tc"])
def h(request: pytest.FixtureRequest, fwlab: RouterLab) -> Iterator[FirewallHarness]:
    harness = FirewallHarness(fwlab, request.param, RULES4, RULES6)
    yield harness
    harness.close()


def v6(n: Natted) -> bool:
    return ":" in n.dst


def frame(lab: RouterLab, n: Natted) -> bytes:
    """n's packet as received on r-h1."""
    if v6(n):
        return bytes(V6(lab, dst=n.dst) / UDP(sport=n.sport, dport=n.dport) / Raw(b"x"))
    return natted_frame(lab, n)


def translated(lab: RouterLab, n: Natted, received: bytes) -> bytes:
    """What Linux sends on r-h2 for n's received packet: destination and port translated (checksums
    recomputed from scratch), then routed."""
    pkt = Ether(received)
    pkt[IPv6 if v6(n) else IP].dst = n.to
    pkt[UDP].dport = n.to_port
    del pkt[UDP].chksum
    return forwarded(lab, pkt)


def masqueraded_entry(lab: RouterLab, n: Natted) -> list[str]:
    """n's entry as the kernel makes it with MASQ_RULE (its NAT extension has the masq_index), assured
    (as conntrack would after a reply and a second packet); its match."""
    rule = MASQ_RULE.split()
    lab.run(lab.r, ["conntrack", "-D", *n.match()], check=False)
    lab.run(lab.r, ["iptables", "-t", "nat", "-A", "POSTROUTING", *rule])
    try:
        src, dst, sport, dport = n.orig
        send = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(({src!r}, {sport})); "
                f"s.sendto(b'x', ({dst!r}, {dport}))")
        lab.run(lab.h2.ns, [sys.executable, "-c", send])  # through r's kernel: no program is attached
        reply = f"src={n.orig[1]} dst={n.dst} sport={n.orig[3]} dport={n.dport}"  # masqueraded
        assert wait_for(lambda: reply in lab.run(lab.r, ["conntrack", "-L", *n.match()], check=False).stdout)
    finally:
        lab.run(lab.r, ["iptables", "-t", "nat", "-D", "POSTROUTING", *rule])
    lab.run(lab.r, ["conntrack", "-U", *n.match(), "--timeout", str(ENTRY_TIMEOUT_S), "--status", "SEEN_REPLY,ASSURED"])
    return n.match()


def expect(h: FirewallHarness, lab: RouterLab, n: Natted, held: HeldFlow, is_held: bool,
           make: Callable[[RouterLab, Natted], list[str]] = natted_entry) -> None:
    """Under a hold of `held`, n's packet (of the entry make() makes) is passed to the kernel (is_held) or
    translated and forwarded."""
    lab.run(lab.r, ["ip6tables" if v6(n) else "iptables", "-t", "nat", "-S"])  # the family's kernel NAT loaded
    match = make(lab, n)
    try:
        h.set_state(held=(held,))
        received = frame(lab, n)
        if is_held:
            check(h, received, "PASS", "FW_CHANGED", Counter())
            # tested before conntrack: a changed raw rule may drop it before the kernel refreshes the entry
            assert timeout_of(lab, match)[0] <= ENTRY_TIMEOUT_S
        else:
            verdict, reason, out, path = h.run_fw(received)
            assert (verdict, reason) == ("REDIRECT", "FORWARDED")
            assert out == translated(lab, n, received)
            assert path == Counter({(6 if v6(n) else 4, "FORWARD", 1): 1})  # ESTABLISHED accepts it
            assert timeout_of(lab, match)[0] > ENTRY_TIMEOUT_S
    finally:
        h.set_state()
        lab.run(lab.r, ["conntrack", "-D", *match], check=False)


@pytest.mark.parametrize("held, is_held", [
    pytest.param(HeldFlow(4, 17, None, H2, dport=(8080, 8080)), True, id="translated-port"),
    pytest.param(HeldFlow(4, 17, None, H2, dport=(80, 80)), True, id="received-port"),  # PREROUTING's view
    pytest.param(HeldFlow(4, 17, None, H2, dport=(81, 8079)), False, id="between-the-ports"),
    pytest.param(HeldFlow(4, 17, None, H2, dport=(8081, 65535)), False, id="above-the-translated-port"),
])
def test_a_port_only_dnat_is_held_by_its_translated_port(h: FirewallHarness, fwlab: RouterLab, held: HeldFlow,
                                                         is_held: bool) -> None:
    """The address unchanged, the port translated: still FW_DNAT (nat_route() compares both), so a rule on
    the port FORWARD sees holds the flow; a port neither view has does not."""
    expect(h, fwlab, DNAT_PORT, held, is_held)


def one(port: int) -> tuple[int, int]:
    return port, port


@pytest.mark.parametrize("kind", ["snat", "masquerade"])
@pytest.mark.parametrize("held, is_held", [
    pytest.param(lambda n: HeldFlow(4, 17, None, ip_network(n.to)), True, id="the-original-client"),
    pytest.param(lambda n: HeldFlow(4, 17, None, ip_network(n.to), dport=one(n.to_port)), True,
                 id="the-original-client-and-port"),
    # the client with the port as received: neither view has both
    pytest.param(lambda n: HeldFlow(4, 17, None, ip_network(n.to), dport=one(n.dport)), False,
                 id="the-client-and-the-received-port"),
    pytest.param(lambda n: HeldFlow(4, 17, None, ip_network(n.dst), dport=one(n.dport)), True, id="as-received"),
    # FORWARD sees the reply's source as received (only a DNAT's reply has it translated, at POSTROUTING)
    pytest.param(lambda n: HeldFlow(4, 17, ip_network(n.orig[1]), None, sport=one(n.sport)), True, id="its-source"),
    pytest.param(lambda n: HeldFlow(4, 17, None, ip_network("198.51.100.7/32")), False, id="another-host"),
    pytest.param(lambda n: HeldFlow(4, 6, None, ip_network(n.to)), False, id="another-protocol"),
])
def test_the_reply_of_an_snat_connection_is_held_by_the_original_client(h: FirewallHarness, fwlab: RouterLab,
                                                                         held: Callable[[Natted], HeldFlow],
                                                                         is_held: bool, kind: str) -> None:
    """The reply's dst manip (at PREROUTING) restores the client's address and port: FORWARD's
    `-d <client>` matches the reply, so a changed rule naming the client must hold it.  An entry of
    conntrack -I and one the kernel masqueraded (nat_ext() reads its masq_index, nat_read() drops it for
    a reply) alike."""
    n, make = (SNAT_REPLY, natted_entry) if kind == "snat" else (MASQ_REPLY, masqueraded_entry)
    expect(h, fwlab, n, held(n), is_held, make)


@pytest.mark.parametrize("held, is_held", [
    pytest.param(HeldFlow(6, 17, None, H2_6), True, id="translated-address"),
    pytest.param(HeldFlow(6, 17, None, ip_network("2001:db8:2::/64"), dport=(8080, 8080)), True,
                 id="translated-prefix-and-port"),
    # differs from the translated address in its last 32 bits only
    pytest.param(HeldFlow(6, 17, None, ip_network("2001:db8:2::3/128")), False, id="another-address"),
    pytest.param(HeldFlow(6, 17, None, H2_6, dport=(80, 80)), False, id="translated-address-received-port"),
    pytest.param(HeldFlow(4), False, id="all-of-ipv4"),
])
def test_an_ipv6_dnat_is_held_by_its_translated_destination(h: FirewallHarness, fwlab: RouterLab, held: HeldFlow,
                                                            is_held: bool) -> None:
    """ip6tables DNAT: the whole 128-bit translated address and its port are what a held flow is tested on."""
    expect(h, fwlab, DNAT6, held, is_held)
