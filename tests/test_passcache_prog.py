"""BPF_PROG_RUN cases of the pass cache (passcache.c.j2), both hooks: a flow
the firewall passed after its lookups goes straight to the kernel for
pass_cache_jiffies with the same reason, then is looked up again; it is only
ever a pass, never remembered for a packet's own bytes, and exact to the
packet fields a verdict reads."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import RouterLab, wait_for
from tests.harness import FirewallHarness
from tests.test_firewall_prog import CT, CT_LOG, V4, F, check, table
from tna.bpf import abi

pytestmark = pytest.mark.root

LIFETIME_S = 2
# established TCP to port 80 logged (a rule TNA cannot apply), then accepted
TCP_LOG = table("DROP", "-A FORWARD -p tcp -m tcp --dport 80 -m conntrack --ctstate ESTABLISHED -j LOG\n"
                "-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT\n")


@pytest.fixture(autouse=True)
def one_cpu() -> Iterator[None]:
    """The cache is per CPU and a test run executes on the caller's CPU: a
    migration between two runs would read the other CPU's table."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    yield
    os.sched_setaffinity(0, cpus)


@pytest.fixture(scope="module", params=["xdp", "tc"])
def harnesses(request: pytest.FixtureRequest, fwlab: RouterLab) -> Iterator[dict[str, FirewallHarness]]:
    made = {name: FirewallHarness(fwlab, request.param, rules)
            for name, rules in (("ct", CT), ("log", CT_LOG), ("tcplog", TCP_LOG))}
    yield made
    for h in made.values():
        h.close()


def frame(lab: RouterLab, sport: int, dport: int = 4000) -> bytes:
    return bytes(V4(lab, dst="198.51.100.7") / UDP(sport=sport, dport=dport) / Raw(b"x"))


def entry(lab: RouterLab, sport: int, status: str) -> list[str]:
    """A fresh conntrack entry h1:sport -> 198.51.100.7:4000 with status; its match."""
    match = ["-p", "udp", "-s", lab.h1.ip4, "-d", "198.51.100.7", "--sport", str(sport), "--dport", "4000"]
    lab.run(lab.r, ["conntrack", "-D", *match], check=False)
    lab.run(lab.r, ["conntrack", "-I", *match, "--timeout", "60", "--status", status])
    return match


@pytest.mark.parametrize("cache_s", [LIFETIME_S, 0], ids=["cache", "no-cache"])
def test_a_passed_flow_stays_passed_for_the_lifetime(harnesses: dict[str, FirewallHarness], fwlab: RouterLab,
                                                     cache_s: float) -> None:
    """A not yet assured entry: CT_STATE, remembered.  Assured meanwhile,
    the flow is still passed (the lookups that would carry it skipped)
    until the lifetime ends, then carried; without the cache at once."""
    h, lab = harnesses["ct"], fwlab
    h.set_state(pass_cache_s=cache_s)
    try:
        match = entry(lab, 4011, "SEEN_REPLY")
        check(h, frame(lab, 4011), "PASS", "CT_STATE", Counter())
        entry(lab, 4011, "SEEN_REPLY,ASSURED")
        seen: list[str] = []

        def carried() -> bool:
            _, reason, _, _ = h.run_fw(frame(lab, 4011))
            seen.append(reason)
            return reason == "FORWARDED"
        assert wait_for(carried, 30, 0.1), seen
        assert set(seen[:-1]) <= {"CT_STATE"}, seen  # a pass, with the remembered reason, until carried
        if cache_s:
            assert seen[0] == "CT_STATE", seen
        else:
            assert seen == ["FORWARDED"], seen
    finally:
        h.set_state()
        lab.run(lab.r, ["conntrack", "-D", *match], check=False)


def test_a_handshake_is_not_remembered(harnesses: dict[str, FirewallHarness], fwlab: RouterLab) -> None:
    """A TCP segment of an entry still in its handshake (SYN_RECV, not
    assured) is the kernel's, but the next segment moves the entry on:
    remembered, a bulk transfer's first pass_cache_jiffies of segments
    (same flags) would be passed.  Once established, the next is looked up."""
    h, lab = harnesses["ct"], fwlab
    h.set_state(pass_cache_s=3600)
    match = ["-p", "tcp", "-s", lab.h1.ip4, "-d", "198.51.100.7", "--sport", "4015", "--dport", "80"]
    ack = bytes(V4(lab, dst="198.51.100.7") / TCP(sport=4015, dport=80, flags="A", seq=1001, ack=2001))
    try:
        lab.run(lab.r, ["conntrack", "-D", *match], check=False)
        lab.run(lab.r, ["conntrack", "-I", *match, "--state", "SYN_RECV", "--timeout", "60",
                        "--status", "SEEN_REPLY"])
        check(h, ack, "PASS", "CT_STATE", Counter())
        lab.run(lab.r, ["conntrack", "-U", *match, "--state", "ESTABLISHED", "--status", "SEEN_REPLY,ASSURED"])
        _, reason, _, _ = h.run_fw(ack)
        # looked up, and carried: an entry made through ctnetlink is window-liberal
        assert reason == "FORWARDED", reason
    finally:
        h.set_state()
        lab.run(lab.r, ["conntrack", "-D", *match], check=False)


def test_an_invalid_packet_is_not_remembered(harnesses: dict[str, FirewallHarness], fwlab: RouterLab) -> None:
    """A bad checksum on an assured flow is INVALID to conntrack: that
    packet goes to the kernel, the next good one is carried at once."""
    h, lab = harnesses["ct"], fwlab
    h.set_state(pass_cache_s=3600, ct_flags=abi.TNA_CT_CSUM)
    match = entry(lab, 4012, "SEEN_REPLY,ASSURED")
    try:
        bad = Ether(frame(lab, 4012))
        bad[UDP].chksum ^= 0x0101
        check(h, bytes(bad), "PASS", "CT_STATE", Counter())
        check(h, frame(lab, 4012), "REDIRECT", "FORWARDED", Counter({(4, F, 2): 1}))
    finally:
        h.set_state()
        lab.run(lab.r, ["conntrack", "-D", *match], check=False)


def test_the_key_is_the_flow(harnesses: dict[str, FirewallHarness], fwlab: RouterLab) -> None:
    """A LOG rule sends port 53 to the kernel (remembered, passed again);
    another port of the same hosts is decided by the chain: the policy
    drops it."""
    h, lab = harnesses["log"], fwlab
    h.set_state(pass_cache_s=3600)
    try:
        for _ in range(2):
            check(h, frame(lab, 4013, 53), "PASS", "FW_KERNEL", Counter())
        check(h, frame(lab, 4013, 54), "DROP", "FW_DROP", Counter({(4, F, 0): 1}))
    finally:
        h.set_state()


def test_a_hit_needs_no_route_lookup(harnesses: dict[str, FirewallHarness], fwlab: RouterLab) -> None:
    """A hit is answered before the router prepares its FIB lookup (the
    per-CPU scratch it zeroes and fills): what the kernel will do in full
    is not done first.  The flow the chain decides does prepare it."""
    h, lab = harnesses["log"], fwlab
    scratch = h.obj.map("tna_router_scratch")
    marker = b"\xa5" * scratch.value_size
    h.set_state(pass_cache_s=3600)
    try:
        check(h, frame(lab, 4014, 53), "PASS", "FW_KERNEL", Counter())  # remembered
        scratch.update(b"\0\0\0\0", marker)
        check(h, frame(lab, 4014, 53), "PASS", "FW_KERNEL", Counter())  # a hit, the same verdict and reason
        assert scratch.lookup(b"\0\0\0\0")[os.sched_getaffinity(0).pop()] == marker
        check(h, frame(lab, 4014, 54), "DROP", "FW_DROP", Counter({(4, F, 0): 1}))
        assert scratch.lookup(b"\0\0\0\0")[os.sched_getaffinity(0).pop()] != marker
    finally:
        h.set_state()


def test_a_hit_comes_before_the_routers_checks(harnesses: dict[str, FirewallHarness], fwlab: RouterLab) -> None:
    """The flow's key is read from the headers first: a remembered flow's
    packet meets the cache before the router looks at its destination MAC
    or its header checksum (what the kernel then does with it, drop it
    here, is Linux's).  Without an entry, those checks decide."""
    h, lab = harnesses["log"], fwlab
    h.set_state(pass_cache_s=3600)
    try:
        bad = Ether(frame(lab, 4016, 53))
        bad[IP].chksum ^= 0x0101
        other = Ether(frame(lab, 4016, 53))
        other.dst = "02:00:00:00:00:99"
        check(h, bytes(bad), "PASS", "IP_INVALID", Counter())
        check(h, bytes(other), "PASS", "OTHERHOST", Counter())
        check(h, frame(lab, 4016, 53), "PASS", "FW_KERNEL", Counter())  # remembered
        check(h, bytes(bad), "PASS", "FW_KERNEL", Counter())
        check(h, bytes(other), "PASS", "FW_KERNEL", Counter())
    finally:
        h.set_state()


NAT_TABLE = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
             "-A PREROUTING -d 203.0.113.80 -p udp -m udp --dport 8080 -j DNAT --to-destination 198.51.100.7:4000\n"
             "COMMIT\n")
# the LOG rule reads the translated destination port: a pass for the kernel
NAT_LOG = table("DROP", "-A FORWARD -p udp -m udp --dport 4000 -j LOG\n"
                "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n") + NAT_TABLE
NAT_PLAIN = table("DROP", "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n") + NAT_TABLE


@dataclass(frozen=True)
class Natted:
    """A connection whose packets arriving on r-h1 have their destination
    translated: its conntrack entry's original tuple and NAT option, the
    packet as received, its destination once translated."""
    orig: tuple[str, str, int, int]  # src, dst, sport, dport
    nat: tuple[str, str]
    sport: int
    dst: str
    dport: int
    to: str
    to_port: int

    def match(self) -> list[str]:
        src, dst, sport, dport = self.orig
        return ["-p", "udp", "-s", src, "-d", dst, "--sport", str(sport), "--dport", str(dport)]


NATTED = {
    # h1 -> 203.0.113.80:8080, DNAT'd to 198.51.100.7:4000
    "dnat": Natted(("192.0.2.2", "203.0.113.80", 4021, 8080), ("--dst-nat", "198.51.100.7:4000"),
                   4021, "203.0.113.80", 8080, "198.51.100.7", 4000),
    # the reply to h2:4000 -> h1:5000 SNAT'd to r's 192.0.2.1: its dst manip undoes the SNAT
    "snat-reply": Natted(("198.51.100.2", "192.0.2.2", 4000, 5000), ("--src-nat", "192.0.2.1"),
                         5000, "192.0.2.1", 4000, "198.51.100.2", 4000),
}


def natted_entry(lab: RouterLab, n: Natted, nat: tuple[str, str] | None = None) -> list[str]:
    """n's entry, assured (nat: another NAT option than n's); its match."""
    lab.run(lab.r, ["iptables", "-t", "nat", "-S"])  # loads the kernel's NAT: conntrack -I sets bindings with it
    lab.run(lab.r, ["conntrack", "-D", *n.match()], check=False)
    lab.run(lab.r, ["conntrack", "-I", *n.match(), *(nat or n.nat), "--timeout", "60",
                    "--status", "SEEN_REPLY,ASSURED"])
    return n.match()


def natted_frame(lab: RouterLab, n: Natted, translated: bool = False) -> bytes:
    """n's packet as received (translated: one sent to its translated destination)."""
    dst, dport = (n.to, n.to_port) if translated else (n.dst, n.dport)
    return bytes(V4(lab, dst=dst) / UDP(sport=n.sport, dport=dport) / Raw(b"x"))


@pytest.fixture(scope="module", params=["xdp", "tc"])
def nat_harnesses(request: pytest.FixtureRequest, fwlab: RouterLab) -> Iterator[dict[str, FirewallHarness]]:
    made = {name: FirewallHarness(fwlab, request.param, rules) for name, rules in
            (("log", NAT_LOG), ("plain", NAT_PLAIN))}
    yield made
    for h in made.values():
        h.close()


@pytest.mark.parametrize("kind", NATTED)
def test_a_translated_flow_passed_is_remembered_by_what_arrives(nat_harnesses: dict[str, FirewallHarness],
                                                                 fwlab: RouterLab, kind: str) -> None:
    """A flow whose destination the entry translates, passed by a rule on
    the translated destination: its next packet hits the cache (its entry
    deleted meanwhile, the received destination's route would decide: not
    forwarded, unreachable), a packet sent straight to
    the translated destination does not (no entry: CT_NEW); another rule set
    is another program, whose cache knows nothing of it."""
    h, n, lab = nat_harnesses["log"], NATTED[kind], fwlab
    h.set_state(pass_cache_s=3600)
    try:
        match = natted_entry(lab, n)
        check(h, natted_frame(lab, n), "PASS", "FW_KERNEL", Counter())
        lab.run(lab.r, ["conntrack", "-D", *match])
        check(h, natted_frame(lab, n), "PASS", "FW_KERNEL", Counter())
        check(h, natted_frame(lab, n, translated=True), "PASS", "CT_NEW", Counter())
        natted_entry(lab, n)
        plain = nat_harnesses["plain"]
        plain.set_state(pass_cache_s=3600)
        assert plain.run_fw(natted_frame(lab, n))[:2] == ("REDIRECT", "FORWARDED")
    finally:
        h.set_state()
        nat_harnesses["plain"].set_state()
        lab.run(lab.r, ["conntrack", "-D", *n.match()], check=False)


def test_a_translated_flow_whose_binding_changes_is_decided_again(nat_harnesses: dict[str, FirewallHarness],
                                                                  fwlab: RouterLab) -> None:
    """DNAT'd to the port the LOG rule reads: passed and remembered; its
    entry replaced by one translating to another port (which FORWARD
    accepts), it is passed only until the lifetime ends, then carried."""
    h, lab = nat_harnesses["log"], fwlab
    n = replace(NATTED["dnat"], orig=("192.0.2.2", "203.0.113.80", 4022, 8080), sport=4022)  # a flow of its own
    h.set_state(pass_cache_s=LIFETIME_S)
    try:
        natted_entry(lab, n)
        check(h, natted_frame(lab, n), "PASS", "FW_KERNEL", Counter())
        natted_entry(lab, n, ("--dst-nat", "198.51.100.7:4001"))
        seen: list[str] = []

        def carried() -> bool:
            _, reason, _, _ = h.run_fw(natted_frame(lab, n))
            seen.append(reason)
            return reason == "FORWARDED"
        assert wait_for(carried, 30, 0.1), seen
        assert seen[0] == "FW_KERNEL" and set(seen[:-1]) <= {"FW_KERNEL"}, seen
    finally:
        h.set_state()
        lab.run(lab.r, ["conntrack", "-D", *n.match()], check=False)


def test_an_established_tcp_connection_the_rules_pass_is_remembered(harnesses: dict[str, FirewallHarness],
                                                                     fwlab: RouterLab) -> None:
    """A rule TNA cannot apply passes every segment of an established TCP
    connection the fast path never took over (not window-liberal):
    remembered, the next is passed at once, its entry deleted meanwhile
    (looked up, an ACK without an entry is INVALID: the policy drops it)."""
    from pyroute2 import NFCTSocket
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    from netns_labs.lab import in_netns
    from tna.netlink.conntrack import IP_CT_TCP_FLAG_BE_LIBERAL

    h, lab = harnesses["tcplog"], fwlab
    match = ["-p", "tcp", "-s", lab.h1.ip4, "-d", "198.51.100.7", "--sport", "4016", "--dport", "80"]
    ack = bytes(V4(lab, dst="198.51.100.7") / TCP(sport=4016, dport=80, flags="A", seq=1001, ack=2001))
    try:
        for cache_s, after in ((3600, ("PASS", "FW_KERNEL")), (0, ("DROP", "FW_DROP"))):
            h.set_state(pass_cache_s=cache_s)
            lab.run(lab.r, ["conntrack", "-I", *match, "--state", "ESTABLISHED", "--timeout", "60",
                            "--status", "SEEN_REPLY,ASSURED"])
            unset = {"value": (0, IP_CT_TCP_FLAG_BE_LIBERAL)}  # ctnetlink makes its entries liberal
            with in_netns(lab.r), NFCTSocket() as s:
                s.entry("set", tuple_orig=NFCTAttrTuple(saddr=lab.h1.ip4, daddr="198.51.100.7", proto=6, sport=4016,
                                                        dport=80), protoinfo={"attrs": [["CTA_PROTOINFO_TCP", {
                                                            "attrs": [["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", unset],
                                                                      ["CTA_PROTOINFO_TCP_FLAGS_REPLY", unset]]}]]})
            check(h, ack, "PASS", "FW_KERNEL", Counter())
            lab.run(lab.r, ["conntrack", "-D", *match])
            verdict, reason, _, _ = h.run_fw(ack)
            assert (verdict, reason) == after, cache_s
    finally:
        h.set_state()
        lab.run(lab.r, ["conntrack", "-D", *match], check=False)
