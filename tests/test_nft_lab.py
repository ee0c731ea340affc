"""Native nftables rule sets on real traffic (`tna run`, both hooks).

- Debian's stock /etc/nftables.conf (an inet filter table whose input,
  forward and output base chains accept all; nftables(8) and Debian's
  nftables package, /usr/share/doc/nftables/examples): the fast path
  stays on and carries established TCP and UDP, IPv4 and IPv6.
- A stateful forward chain written from nftables' wiki ("Simple ruleset
  for a home router", "Sets"): named sets of blocked sources and closed
  ports dropped first, established and related accepted, one allowed port, policy drop.
  Crafted UDP frames of an established flow arrive at h2 exactly as with
  Linux alone, carried by the fast path and counted per rule next to the
  kernel's counters; `nft add element` / `delete element` take effect on
  the next packets with the same program (a set's members are a map).
"""

from __future__ import annotations

import json
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import RouterLab, py, tcp_transfer, udp_echo, wait_for
from netns_labs.tna_proc import Tna, tna_running
from tests.test_firewall_lab import MARK, arrivals

pytestmark = pytest.mark.root

STOCK = """flush ruleset
table inet filter {
	chain input {
		type filter hook input priority filter;
	}
	chain forward {
		type filter hook forward priority filter;
	}
	chain output {
		type filter hook output priority filter;
	}
}
"""
STATEFUL = """flush ruleset
table inet filter {
	set blocked {
		type ipv4_addr
	}
	set closed {
		type inet_service
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ip saddr @blocked counter drop
		udp dport @closed counter drop
		ct state established,related counter accept
		udp dport 5202 accept
		tcp dport 5201 accept
	}
}
"""
MB = 1_000_000


def transfers(lab: RouterLab) -> dict[str, object]:
    """Per IP version: whether a TCP transfer to h2 arrived whole, how many UDP echoes came back."""
    h1, h2 = lab.h1, lab.h2
    out: dict[str, object] = {}
    for v, addr in (("4", h2.ip4), ("6", h2.ip6)):
        sent, got = tcp_transfer(lab, h1.ns, h2.ns, addr, 50 * MB)
        out[f"tcp{v}"], out[f"udp{v}"] = sent == got, udp_echo(lab, h1.ns, h2.ns, addr, 50)
    return out


def load(lab: RouterLab, hook: str, ruleset: str) -> None:
    """The rule set in r; under XDP the hosts send whole checksums (a veth's
    CHECKSUM_PARTIAL frames are the kernel's: docs/datapath.md)."""
    lab.run(lab.r, ["nft", "-f", "-"], input=ruleset)
    if hook == "xdp":
        for h in (lab.h1, lab.h2):
            lab.run(h.ns, ["ethtool", "-K", h.dev, "tx", "off"])


def carried(c: dict[str, int]) -> bool:
    """Most of the traffic went through the fast path."""
    kernel = sum(n for r, n in c.items() if r != "FORWARDED")
    return c.get("FORWARDED", 0) > 10 * kernel


def test_debian_stock_ruleset_keeps_the_fast_path(router_lab: RouterLab, hook: str) -> None:
    lab = router_lab
    load(lab, hook, STOCK)
    linux = transfers(lab)
    assert linux == {"tcp4": True, "udp4": 50, "tcp6": True, "udp6": 50}
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        st = tna.status()
        assert st is not None and not st["disabled"], st
        assert transfers(lab) == linux
        c = tna.counters()
    assert carried(c), c


def udp(lab: RouterLab, src: str, sport: int, n: int, reply: bool = False) -> bytes:
    if reply:  # from h2 back to the flow's source
        return bytes(Ether(src=lab.h2.mac, dst=lab.r_h2_mac) / IP(src=lab.h2.ip4, dst=src, ttl=64)
                     / UDP(sport=5202, dport=sport) / Raw(b"reply"))
    return bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / IP(src=src, dst=lab.h2.ip4, ttl=64)
                 / UDP(sport=sport, dport=5202) / Raw(MARK + b"%04d" % n))


def established(lab: RouterLab, sport: int) -> list[bytes]:
    """A UDP flow h1 -> h2:5202 that conntrack calls established and has
    assured, as a real exchange makes it (a first datagram, h2's answer, a
    datagram 2 s later: until then the kernel still moves the entry on, so
    the fast path leaves the flow to it), and frames of it to send."""
    first, answer = udp(lab, lab.h1.ip4, sport, 0), udp(lab, lab.h1.ip4, sport, 0, reply=True)

    def send(frame: bytes, ns: str, dev: str) -> None:
        lab.run(ns, py("netns_labs.xfer", "raw-send", dev, frame.hex(), "1"), cwd=lab.repo)

    def assured() -> bool:
        return "ASSURED" in lab.run(lab.r, ["conntrack", "-L", "-p", "udp", "--sport", str(sport)]).stdout
    if not assured():
        send(first, lab.h1.ns, lab.h1.dev)
        send(answer, lab.h2.ns, lab.h2.dev)
        time.sleep(2.2)  # nf_conntrack_udp_packet(): a stream once a packet comes 2 s after the first
        send(first, lab.h1.ns, lab.h1.dev)
        assert wait_for(assured, 10, 0.1), lab.run(lab.r, ["conntrack", "-L"]).stdout
    return [udp(lab, lab.h1.ip4, sport, n) for n in range(1, 9)]


def rules(lab: RouterLab) -> dict[str, dict]:
    """`tna stats --rules`: per rule text, the kernel's and the fast path's counts."""
    rows = json.loads(lab.run(lab.r, py("tna", "stats", "--rules", "--json"), cwd=lab.repo).stdout)
    return {r["text"]: r for r in rows if r["family"] == 4}


class Stateful:
    """STATEFUL in r, a flow h1 -> h2:5202 established, and `tna run`."""

    def __init__(self, lab: RouterLab, tna: Tna) -> None:
        self.lab, self.tna = lab, tna
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2), tna.output()
        st = tna.status()
        assert not st["disabled"] and st["firewall"]["conntrack"] == ["ipv4", "ipv6"], st
        self.prog = st["ifaces"]["r-h1"]["prog_id"]
        self.frames = established(lab, 40100)

    def carried_again(self) -> int:
        """One frame at a time until the fast path carries one (a change's
        hold over); how many reached h2 meanwhile, by either path."""
        arrived = 0

        def carried() -> bool:
            nonlocal arrived
            got, moved = self.sent(1, 1)
            arrived += len(got)
            return moved == {"FORWARDED": 1}
        assert wait_for(carried, 30, 0.2), self.tna.output()
        return arrived

    def sent(self, n: int, wait: float) -> tuple[list[bytes], dict[str, int]]:
        """What reached h2 of the first n frames, and the r-h1 reasons of
        probes they moved (not OTHERHOST: h1's own multicast, sent meanwhile)."""
        before = self.tna.counters("r-h1")
        got = arrivals(self.lab, self.frames[:n], wait)
        return got, {r: c - before.get(r, 0) for r, c in self.tna.counters("r-h1").items()
                     if c != before.get(r, 0) and r != "OTHERHOST"}


def stateful_lab(lab: RouterLab, hook: str) -> list[bytes]:
    """STATEFUL in r; what reaches h2 of an established flow's 8 frames with Linux alone."""
    load(lab, hook, STATEFUL)
    # h2 answers nothing by itself (no port unreachable): every frame at h2 is a probe
    lab.run(lab.h2.ns, ["iptables", "-P", "OUTPUT", "DROP"])
    linux = arrivals(lab, established(lab, 40100), 2)
    assert len(linux) == 8
    return linux


def test_stateful_chain_with_a_set_is_linux_byte_for_byte(router_lab: RouterLab, hook: str) -> None:
    lab = router_lab
    linux = stateful_lab(lab, hook)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        s = Stateful(lab, tna)
        got, moved = s.sent(8, 2)
        assert got == linux  # the same bytes: TTL, checksum, MACs
        assert moved == {"FORWARDED": 8}, moved
        counted = rules(lab)
        accept = next(r for t, r in counted.items() if "established" in t)
        assert accept["fast_path"]["packets"] >= 8 and accept["kernel"]["packets"] >= 8, counted


@pytest.mark.parametrize("set_name", ["blocked", "closed"])
def test_set_members_follow_nft_with_the_same_program(router_lab: RouterLab, hook: str, set_name: str) -> None:
    """An address set and a port set: each member change is a map update."""
    lab = router_lab
    stateful_lab(lab, hook)
    member = lab.h1.ip4 if set_name == "blocked" else "5202"
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        s = Stateful(lab, tna)
        for cmd, reason, want in (("add", "FW_DROP", 0), ("delete", "FORWARDED", 8)):
            lab.run(lab.r, ["nft", cmd, "element", "inet", "filter", set_name, "{", member, "}"])
            # once the commit's hold ends, the fast path decides with the new members
            assert wait_for(lambda reason=reason: reason in s.sent(1, 0.5)[1], 30, 0.1), (cmd, tna.output())
            got, moved = s.sent(8, 1 if want == 0 else 2)
            assert len(got) == want and moved == {reason: 8}, (cmd, moved)
            assert tna.status()["ifaces"]["r-h1"]["prog_id"] == s.prog, cmd


def established_total(lab: RouterLab) -> int:
    """`tna stats --rules`: what the `ct state established` rule matched, kernel and fast path."""
    accept = next(r for t, r in rules(lab).items() if "established" in t)
    return accept["kernel"]["packets"] + accept["fast_path"]["packets"]


def test_a_rules_total_stays_linuxs_when_its_table_is_made_again(router_lab: RouterLab, hook: str) -> None:
    """`nft -f` of the same file (flush ruleset, the table anew): the rules
    equal, the program stays; the kernel's counters restart, and so does
    the fast path's count of each rule, also the running program's."""
    lab = router_lab
    stateful_lab(lab, hook)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        s = Stateful(lab, tna)
        assert s.sent(8, 2)[1] == {"FORWARDED": 8}
        lab.run(lab.r, ["nft", "-f", "-"], input=STATEFUL)
        arrived = s.carried_again()
        got, moved = s.sent(8, 2)
        assert moved == {"FORWARDED": 8} and tna.status()["ifaces"]["r-h1"]["prog_id"] == s.prog
        assert established_total(lab) == arrived + len(got), tna.output()


def test_a_rules_total_goes_on_through_a_restart_of_tna(router_lab: RouterLab, hook: str) -> None:
    """tna stopped and started again with no commit between: each rule's
    total keeps what the first one's programs counted."""
    lab = router_lab
    stateful_lab(lab, hook)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert Stateful(lab, tna).sent(8, 2)[1] == {"FORWARDED": 8}
        before = established_total(lab)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], []) as tna:  # the hosts' XDP programs stay
        arrived = Stateful(lab, tna).carried_again()
        assert established_total(lab) == before + arrived, tna.output()


@pytest.mark.parametrize("drops", ["rule", "policy"])
def test_a_table_that_goes_with_its_owner_decides_nothing_it_could_outlive(router_lab: RouterLab, hook: str,
                                                                           drops: str) -> None:
    """`flags owner` (without persist) ties a table to its creator's
    netlink socket: when that closes, the kernel deletes the table and says
    nothing (no notification, the same generation).  What such a table
    drops - by a rule or by its policy - stays on the kernel path, so no
    program drops what Linux forwards once the owner is gone."""
    import subprocess
    from ipaddress import ip_address

    from tests.test_firewall_lab import send_probes, setup
    from tna.model.firewall import Packet

    lab = router_lab
    setup(lab, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
    pkts = [Packet(ip_address(lab.h1.ip4), ip_address(lab.h2.ip4), "r-h1", "r-h2", 17, 1000, 2000 + i)
            for i in range(4)]
    chain = ("add chain inet owned gate { type filter hook forward priority filter + 10; policy accept; }\n"
             "add rule inet owned gate udp dport 2000-2003 drop\n" if drops == "rule" else
             "add chain inet owned gate { type filter hook forward priority filter + 10; policy drop; }\n"
             "add rule inet owned gate udp dport != 2000-2003 accept\n")
    owner = lab.popen(lab.r, ["nft", "-i"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert owner.stdin is not None
    owner.stdin.write("add table inet owned { flags owner; }\n" + chain)
    owner.stdin.flush()

    def owned() -> bool:
        return "owned" in lab.run(lab.r, ["nft", "list", "tables"]).stdout
    assert wait_for(owned, 10, 0.05)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 10, 0.2), tna.output()
        prog = tna.status()["ifaces"]["r-h1"]["prog_id"]
        assert send_probes(lab, pkts) == set()  # dropped (by the kernel) while the owner lives
        owner.kill()
        owner.wait()
        assert wait_for(lambda: not owned(), 10, 0.05)
        assert send_probes(lab, pkts) == {0, 1, 2, 3}, tna.output()  # gone: Linux forwards them
        assert tna.status()["ifaces"]["r-h1"]["prog_id"] == prog  # nothing told the daemon
        assert tna.counters("r-h1").get("FW_KERNEL", 0) >= 2 * len(pkts)
