"""BPF_PROG_RUN table tests of the firewall module (with the router), for
both hooks: fixed rule sets x fixed packets -> verdict, reason and the rules
the program counted (tna_fw_rules).  Where the reference semantics can say,
the expectation is checked against evaluate() too, so table, model and
program agree."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from netns_labs.lab import RouterLab, wait_for
from tests.harness import CT_TIMEOUT_MS, CT_UNREPLIED_MS, CtProbe, FirewallHarness
from tests.test_router_prog import forwarded
from tna.bpf import abi
from tna.model.firewall import ACCEPT, DROP, KERNEL, evaluate
from tna.model.firewall import Packet as FwPacket
from tna.model.iptables import parse_save

pytestmark = pytest.mark.root

HEAD = "*filter\n:INPUT {input} [0:0]\n:FORWARD {forward} [0:0]\n:OUTPUT ACCEPT [0:0]\n"
FW_PATH_MAX = 16  # firewall.c.j2: a longer rule path is the kernel's to decide (and count)


def table(forward: str, body: str, input_: str = "ACCEPT", chains: tuple[str, ...] = ()) -> str:
    """iptables-save text of a filter table."""
    return (HEAD.format(input=input_, forward=forward) + "".join(f":{c} - [0:0]\n" for c in chains)
            + body + "COMMIT\n")


@pytest.fixture(scope="module")
def compiled(fwlab: RouterLab) -> Iterator[Callable[[str, str, str], FirewallHarness]]:
    """(hook, rules4, rules6) -> its harness, each rule set compiled and
    loaded once per module."""
    made: dict[tuple[str, str, str], FirewallHarness] = {}

    def get(hook: str, rules4: str, rules6: str = "") -> FirewallHarness:
        key = (hook, rules4, rules6)
        if key not in made:
            made[key] = FirewallHarness(fwlab, hook, rules4, rules6)
        return made[key]
    yield get
    for h in made.values():
        h.close()


# --- frames and what evaluate() sees of them -----------------------------------

def eth(lab: RouterLab) -> Ether:
    return Ether(src=lab.h1.mac, dst=lab.r_h1_mac)


def fw_packet(frame: bytes, iif: str = "r-h1", oif: str | None = "r-h2",
              ctstate: str | None = None) -> FwPacket:
    """What filter rules see of a (complete, unfragmented) frame."""
    pkt = Ether(frame)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    proto = ip.proto if IP in pkt else ip.nh
    l4 = bytes(ip.payload)
    ports = proto in (6, 17, 132, 136)
    return FwPacket(ip_address(ip.src), ip_address(ip.dst), iif, oif, proto,
                    sport=int.from_bytes(l4[0:2], "big") if ports else None,
                    dport=int.from_bytes(l4[2:4], "big") if ports else None,
                    tcp_flags=l4[13] if proto == 6 else None,
                    icmp_type=l4[0] if proto in (1, 58) else None, icmp_code=l4[1] if proto in (1, 58) else None,
                    ctstate=ctstate)


def verdict_of(decision: str, ctstate: str | None = None, entry: bool = False) -> tuple[str, str]:
    """The program's (verdict, reason) for what evaluate() decides of a
    forwarded packet (entry: conntrack has one for it, unreplied UDP)."""
    if decision == KERNEL:
        return "PASS", "FW_KERNEL"
    if decision == DROP:
        return "DROP", "FW_DROP"
    if ctstate == "NEW" and not entry:
        return "PASS", "CT_NEW"  # conntrack must create the entry: the kernel forwards it
    return "REDIRECT", "FORWARDED"


def check(h: FirewallHarness, frame: bytes, verdict: str, reason: str, path: Counter[tuple],
          by_table: bool = False, mark: int = 0) -> None:
    got_verdict, got_reason, out, got_path = h.run_fw(frame, by_table, mark)
    assert (got_verdict, got_reason) == (verdict, reason)
    if reason == "FORWARDED":
        assert out == forwarded(h.lab, Ether(frame))
    elif verdict == "PASS":
        assert out == frame, "a packet handed to the kernel must be untouched"
    decided = reason in ("FORWARDED", "FW_DROP", "FW_INPUT_DROP")
    assert got_path == (path if decided else Counter()), "only what the fast path decides is counted"


@dataclass
class Case:
    name: str
    build: Callable[[RouterLab], Packet | bytes]
    reason: str
    path: tuple[tuple[str, int], ...]   # (chain, index or 0: the policy), in order
    ctstate: str | None = None          # what conntrack says of it (rule sets that track)

    @property
    def verdict(self) -> str:
        return {"FORWARDED": "REDIRECT", "FW_DROP": "DROP", "FW_INPUT_DROP": "DROP"}.get(self.reason, "PASS")


def run_table(h: FirewallHarness, rules: str, case: Case, family: int = 4, chain: str = "FORWARD") -> None:
    lab = h.lab
    built = case.build(lab)
    frame = built if isinstance(built, bytes) else bytes(built)
    path = Counter((family, c, i) for c, i in case.path)
    check(h, frame, case.verdict, case.reason, path)
    if isinstance(built, Packet) and case.reason != "CT_PROTO":  # the reference semantics agree
        trace: list[tuple[str, int]] = []
        oif = None if chain == "INPUT" else "r-h2"
        decision = evaluate(parse_save(rules)["filter"], chain, fw_packet(frame, oif=oif, ctstate=case.ctstate),
                            trace)
        if chain == "INPUT":
            assert (decision == DROP) == (case.reason == "FW_INPUT_DROP")
        else:
            assert verdict_of(decision, case.ctstate)[1] == case.reason
        assert tuple(trace) == case.path or case.reason not in ("FORWARDED", "FW_DROP", "FW_INPUT_DROP")


V4 = lambda lab, src="192.0.2.2", dst="198.51.100.2", **kw: eth(lab) / IP(src=src, dst=dst, **kw)  # noqa: E731
V6 = lambda lab, src="2001:db8:1::2", dst="2001:db8:2::2": eth(lab) / IPv6(src=src, dst=dst)  # noqa: E731


def truncated_udp(lab: RouterLab) -> bytes:
    """The IP length leaves only the ports of a UDP header; the rest of the
    header lies in Ethernet padding (iptables' udp match hotdrops it)."""
    ip = IP(src="192.0.2.2", dst="198.51.100.2", proto=17, len=24) / Raw(b"\x03\xe8\x00\x35")
    return (bytes(eth(lab) / ip) + b"\x00\x08\x00\x00").ljust(60, b"\0")


def short_tcp_offset(lab: RouterLab) -> bytes:
    """A TCP header whose data offset (4 words) is below its own size."""
    frame = bytearray(bytes(V4(lab) / TCP(sport=1000, dport=80, flags="A") / Raw(b"x" * 8)))
    frame[14 + 20 + 12] = 4 << 4
    return bytes(frame)


def truncated_icmp(lab: RouterLab) -> bytes:
    ip = IP(src="192.0.2.2", dst="198.51.100.2", proto=1, len=24) / Raw(b"\x08\x00\x00\x00")
    return (bytes(eth(lab) / ip)).ljust(60, b"\0")


# Code: a user chain, RETURN in it and in FORWARD, negations, an interface
# wildcard, a rule TNA cannot express.
CODE = table("DROP", "".join(f"-A {r}\n" for r in (
    "FORWARD -s 192.0.2.64/26 -j DROP",
    "FORWARD -i r-h+ -p tcp -m tcp --dport 80 -j web",
    "FORWARD -p udp -m udp --dport 53 -j ACCEPT",
    "FORWARD -p udp -m udp --dport 7000 -j RETURN",
    "FORWARD -p icmp -m icmp --icmp-type 8 -j ACCEPT",
    "FORWARD -p tcp -m tcp --dport 25 -j LOG",
    "FORWARD ! -o r-h2 -j DROP",
    "FORWARD -p udp -m udp ! --sport 1000:1999 -j ACCEPT",
    "FORWARD -p udp -m multiport --ports 5000,6000:6010 -j ACCEPT",
    "web -p tcp -m tcp --tcp-flags SYN,RST SYN -j DROP",
    "web -d 198.51.100.7/32 -j RETURN",
    "web -j ACCEPT",
)), chains=("web",))
F, W = "FORWARD", "web"

CODE_CASES = [
    Case("udp-accepted", lambda lab: V4(lab) / UDP(sport=1000, dport=53) / Raw(b"q"), "FORWARDED", ((F, 3),)),
    Case("source-dropped", lambda lab: V4(lab, src="192.0.2.70") / UDP(sport=1000, dport=53), "FW_DROP",
         ((F, 1),)),
    Case("user-chain-drop", lambda lab: V4(lab) / TCP(sport=1000, dport=80, flags="S"), "FW_DROP",
         ((F, 2), (W, 1))),
    Case("user-chain-accept", lambda lab: V4(lab) / TCP(sport=1000, dport=80, flags="A"), "FORWARDED",
         ((F, 2), (W, 3))),
    Case("user-chain-return", lambda lab: V4(lab, dst="198.51.100.7") / TCP(sport=1000, dport=80, flags="A"),
         "FW_DROP", ((F, 2), (W, 2), (F, 0))),
    # review fix: RETURN in a built-in chain applies its policy (DROP), not ACCEPT
    Case("return-in-forward", lambda lab: V4(lab) / UDP(sport=1000, dport=7000), "FW_DROP", ((F, 4), (F, 0))),
    Case("icmp-type", lambda lab: V4(lab) / ICMP(type=8) / Raw(b"p"), "FORWARDED", ((F, 5),)),
    Case("icmp-other-type", lambda lab: V4(lab) / ICMP(type=13), "FW_DROP", ((F, 0),)),
    Case("log-rule", lambda lab: V4(lab) / TCP(sport=1000, dport=25, flags="S"), "FW_KERNEL", ()),
    Case("negated-sport", lambda lab: V4(lab) / UDP(sport=2000, dport=9), "FORWARDED", ((F, 8),)),
    Case("negated-sport-miss", lambda lab: V4(lab) / UDP(sport=1500, dport=9), "FW_DROP", ((F, 0),)),
    Case("multiport-either", lambda lab: V4(lab) / UDP(sport=1500, dport=6005), "FORWARDED", ((F, 9),)),
    Case("gre-policy", lambda lab: V4(lab, proto=47) / Raw(b"\0" * 8), "FW_DROP", ((F, 0),)),
    # review fix: an L4 header shorter than a match needs is the kernel's
    # (iptables hotdrops it when such a match is reached)
    Case("udp-header-truncated", truncated_udp, "FW_KERNEL", ()),
    Case("tcp-offset-short", short_tcp_offset, "FW_KERNEL", ()),
    Case("icmp-header-truncated", truncated_icmp, "FW_KERNEL", ()),
]


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("case", CODE_CASES, ids=lambda c: c.name)
def test_code_table(compiled: Callable[..., FirewallHarness], hook: str, case: Case) -> None:
    run_table(compiled(hook, CODE), CODE, case)


# Sets: runs of same-shaped rules become one LPM lookup each - nested source
# prefixes (the first rule counts, not the longest prefix), and a set of
# RETURN rules in FORWARD (the policy applies).
SETS = table("DROP", "".join(f"-A {r}\n" for r in (
    "FORWARD -j blk",
    *(f"FORWARD -p udp -m udp --dport {2000 + i} -j RETURN" for i in range(4)),
    "FORWARD -p udp -j ACCEPT",
    "blk -s 192.0.2.128/25 -j DROP",
    "blk -s 192.0.2.160/27 -j DROP",
    "blk -s 192.0.2.9/32 -j DROP",
    "blk -s 192.0.2.10/32 -j DROP",
)), chains=("blk",))
B = "blk"

SET_CASES = [
    Case("set-return-policy", lambda lab: V4(lab) / UDP(sport=9, dport=2002), "FW_DROP", ((F, 1), (F, 4), (F, 0))),
    Case("nested-prefix-first-rule", lambda lab: V4(lab, src="192.0.2.170") / UDP(sport=9, dport=9), "FW_DROP",
         ((F, 1), (B, 1))),
    Case("host-entry", lambda lab: V4(lab, src="192.0.2.10") / UDP(sport=9, dport=9), "FW_DROP",
         ((F, 1), (B, 4))),
    Case("no-set-entry", lambda lab: V4(lab) / UDP(sport=9, dport=9), "FORWARDED", ((F, 1), (F, 6))),
    Case("tcp-policy", lambda lab: V4(lab) / TCP(sport=9, dport=2002, flags="A"), "FW_DROP", ((F, 1), (F, 0))),
]


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("case", SET_CASES, ids=lambda c: c.name)
def test_set_table(compiled: Callable[..., FirewallHarness], hook: str, case: Case) -> None:
    h = compiled(hook, SETS)
    assert sorted(h.sets) == ["fw4_set0", "fw4_set1"]  # decided by lookups, not one `if` per rule
    run_table(h, SETS, case)


def jumps(n: int, tail: str) -> str:
    """n jumps to chains that RETURN at once (2 rule steps each), then tail."""
    return table("ACCEPT", "".join(f"-A FORWARD -j c{i}\n-A c{i} -j RETURN\n" for i in range(n)) + tail,
                 chains=tuple(f"c{i}" for i in range(n + 1)))


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize(("rules", "steps", "reason"), [
    (jumps(7, "-A FORWARD -j c7\n-A c7 -j ACCEPT\n"), FW_PATH_MAX, "FORWARDED"),
    (jumps(8, ""), FW_PATH_MAX + 1, "FW_KERNEL"),   # the policy is step 17
], ids=["16-steps", "17-steps"])
def test_a_longer_path_than_recorded_is_the_kernels(compiled: Callable[..., FirewallHarness], hook: str,
                                                    fwlab: RouterLab, rules: str, steps: int, reason: str) -> None:
    frame = bytes(V4(fwlab) / UDP(sport=9, dport=9))
    trace: list[tuple[str, int]] = []
    assert evaluate(parse_save(rules)["filter"], F, fw_packet(frame), trace) == ACCEPT
    assert len(trace) == steps
    path = Counter((4, c, i) for c, i in trace)
    check(compiled(hook, rules), frame, "REDIRECT" if reason == "FORWARDED" else "PASS", reason, path)


# conntrack: the state decides; no entry in r's table, so NEW or INVALID as
# conntrack would judge the packet (tcp_error(), udp_error(), tcp_new()).
CT = table("DROP", "".join(f"-A FORWARD {r}\n" for r in (
    "-m conntrack --ctstate INVALID -j DROP",
    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-p udp -m udp --dport 53 -j ACCEPT",
    "-p tcp -m tcp --dport 80 -j ACCEPT",
)))


def bad_udp_len(lab: RouterLab) -> Packet:
    return V4(lab) / UDP(sport=1000, dport=53, len=200) / Raw(b"x" * 8)


def bad_udp_csum(lab: RouterLab) -> Packet:
    pkt = Ether(bytes(V4(lab) / UDP(sport=1000, dport=53) / Raw(b"x" * 8)))
    pkt[UDP].chksum ^= 0x0101
    return pkt


CT_CASES = [
    Case("udp-new", lambda lab: V4(lab) / UDP(sport=1000, dport=53) / Raw(b"x"), "CT_NEW", (), "NEW"),
    Case("udp-len-invalid", bad_udp_len, "FW_DROP", ((F, 1),), "INVALID"),
    Case("syn-fin-invalid", lambda lab: V4(lab) / TCP(sport=1000, dport=80, flags="SF"), "FW_DROP",
         ((F, 1),), "INVALID"),
    Case("fin-ack-no-connection", lambda lab: V4(lab) / TCP(sport=1000, dport=80, flags="FA"), "FW_DROP",
         ((F, 1),), "INVALID"),
    Case("syn-new", lambda lab: V4(lab) / TCP(sport=1000, dport=80, flags="S"), "CT_NEW", (), "NEW"),
    Case("new-dropped-by-policy", lambda lab: V4(lab) / TCP(sport=1000, dport=81, flags="S"), "FW_DROP",
         ((F, 0),), "NEW"),
    Case("icmp-not-looked-up", lambda lab: V4(lab) / ICMP(type=8), "CT_PROTO", ()),
]


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("case", CT_CASES, ids=lambda c: c.name)
def test_conntrack_table(compiled: Callable[..., FirewallHarness], hook: str, case: Case) -> None:
    h = compiled(hook, CT)
    assert h.fw.ct4
    run_table(h, CT, case)


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_conntrack_sysctls(compiled: Callable[..., FirewallHarness], hook: str, fwlab: RouterLab) -> None:
    """nf_conntrack_tcp_loose: a plain ACK starts a connection (NEW) or is
    INVALID; nf_conntrack_checksum: a bad checksum is INVALID or ignored."""
    h = compiled(hook, CT)
    ack = bytes(V4(fwlab) / TCP(sport=1000, dport=80, flags="A"))
    bad = bytes(bad_udp_csum(fwlab))
    try:
        h.set_state(ct_flags=abi.TNA_CT_TCP_LOOSE | abi.TNA_CT_CSUM)
        check(h, ack, "PASS", "CT_NEW", Counter())
        check(h, bad, "DROP", "FW_DROP", Counter({(4, F, 1): 1}))
        h.set_state(ct_flags=0)
        check(h, ack, "DROP", "FW_DROP", Counter({(4, F, 1): 1}))
        check(h, bad, "PASS", "CT_NEW", Counter())
    finally:
        h.set_state()


def conntrack_entry(lab: RouterLab, sport: int) -> list[str]:
    return ["-p", "udp", "-s", lab.h1.ip4, "-d", "198.51.100.7", "--sport", str(sport), "--dport", "4000"]


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_established_connection(compiled: Callable[..., FirewallHarness], hook: str, fwlab: RouterLab) -> None:
    """An entry in r's conntrack table that has seen both directions and is
    assured: ESTABLISHED, accepted by rule 2 and forwarded here, its timeout
    refreshed as the kernel would; one not yet assured is the kernel's."""
    h, lab = compiled(hook, CT), fwlab
    assured, unassured = conntrack_entry(lab, 4001), conntrack_entry(lab, 4002)
    lab.run(lab.r, ["conntrack", "-I", *assured, "--timeout", "30", "--status", "SEEN_REPLY,ASSURED"])
    lab.run(lab.r, ["conntrack", "-I", *unassured, "--timeout", "30", "--status", "SEEN_REPLY"])
    try:
        frame = bytes(V4(lab, dst="198.51.100.7") / UDP(sport=4001, dport=4000) / Raw(b"x"))
        check(h, frame, "REDIRECT", "FORWARDED", Counter({(4, F, 2): 1}))
        listed = lab.run(lab.r, ["conntrack", "-L", *assured]).stdout.split()
        assert int(listed[2]) > 30, listed  # the timeout, refreshed to CT_TIMEOUT_MS
        frame = bytes(V4(lab, dst="198.51.100.7") / UDP(sport=4002, dport=4000) / Raw(b"x"))
        check(h, frame, "PASS", "CT_STATE", Counter())  # the kernel records the assurance
    finally:
        for entry in (assured, unassured):
            lab.run(lab.r, ["conntrack", "-D", *entry], check=False)


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_timeout_stored_once_a_jiffy(compiled: Callable[..., FirewallHarness], hook: str, fwlab: RouterLab) -> None:
    """A carried connection's deadline is stored only when that changes it,
    as nf_ct_refresh() does: a second packet in the same jiffy stores
    nothing (no write to the shared entry per packet), one a jiffy later
    stores it again.  To tell "not stored" from "stored the same value",
    the second packet's config doubles HZ and halves the timeout: the
    deadline it compares with is the same, the one a store makes is not."""
    h, lab = compiled(hook, CT), fwlab
    entry = conntrack_entry(lab, 4003)
    lab.run(lab.r, ["conntrack", "-I", *entry, "--timeout", "30", "--status", "SEEN_REPLY,ASSURED"])
    frame = bytes(V4(lab, dst="198.51.100.7") / UDP(sport=4003, dport=4000) / Raw(b"x"))
    probe, timeout = CtProbe(lab.r), CT_TIMEOUT_MS * h.hz // 1000

    def carry(halved: bool = False) -> None:
        h.set_state(ct_timeout_ms=CT_TIMEOUT_MS // 2, hz=2 * h.hz) if halved else h.set_state()
        assert h.run(frame)[:2] == ("REDIRECT", "FORWARDED")
    try:
        for _ in range(200):  # until both packets fall in one jiffy (a jiffy is ms, a try µs)
            carry()
            stored, now = probe(frame)
            assert stored - now in range(timeout - h.hz, timeout + 1), (stored, now)  # now + timeout
            carry(halved=True)
            again, later = probe(frame)
            if later == stored - timeout:  # the store's jiffy: the second packet was in it
                assert again == stored
                break
        else:
            pytest.fail("never two packets in one jiffy")
        assert wait_for(lambda: probe(frame)[1] != later, timeout=30)
        carry(halved=True)
        stored, now = probe(frame)
        assert stored - now in range(timeout // 2 - h.hz, timeout // 2 + 1), (stored, now)
    finally:
        probe.close()
        lab.run(lab.r, ["conntrack", "-D", *entry], check=False)


# One-way UDP: an entry that has seen no reply makes its packets NEW (not
# ESTABLISHED); with the entry there, the kernel would create nothing: the
# rules' verdict on NEW is carried out here.
CT_EST_ONLY = table("DROP", "-A FORWARD -m conntrack --ctstate INVALID -j DROP\n"
                    "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
CT_LOG = table("DROP", "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
               "-A FORWARD -p udp -m udp --dport 53 -j LOG\n-A FORWARD -p udp -m udp --dport 53 -j ACCEPT\n")


def timeout_of(lab: RouterLab, entry: list[str]) -> tuple[int, list[str]]:
    listed = lab.run(lab.r, ["conntrack", "-L", *entry]).stdout.split()
    return int(listed[2]), listed


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("rules, verdict, reason, path", [
    (CT, "REDIRECT", "FORWARDED", ((F, 3),)),
    (CT_EST_ONLY, "DROP", "FW_DROP", ((F, 0),)),
    (CT_LOG, "PASS", "FW_KERNEL", ()),
], ids=["accepted-as-new", "established-only-drops", "log-rule"])
def test_unreplied_udp_entry(compiled: Callable[..., FirewallHarness], hook: str, fwlab: RouterLab, rules: str,
                             verdict: str, reason: str, path: tuple[tuple[str, int], ...]) -> None:
    """A UDP entry with no reply: a packet in its original direction is NEW
    to the rules, and whatever they decide, conntrack has refreshed the
    entry to the unreplied timeout (before the rules run); a packet in the
    reply direction would set SEEN_REPLY: the kernel's; a bad checksum
    is INVALID to conntrack: the kernel's too."""
    h, lab = compiled(hook, rules), fwlab
    one_way = ["-p", "udp", "-s", lab.h1.ip4, "-d", "198.51.100.7", "--sport", "4003", "--dport", "53"]
    # the other way round: h1's packet 4004 -> 53 is this entry's reply
    answered = ["-p", "udp", "-s", "198.51.100.7", "-d", lab.h1.ip4, "--sport", "53", "--dport", "4004"]
    for entry in (one_way, answered):
        lab.run(lab.r, ["conntrack", "-I", *entry, "--timeout", "10"])
    try:
        frame = bytes(V4(lab, dst="198.51.100.7") / UDP(sport=4003, dport=53) / Raw(b"x"))
        decision = evaluate(parse_save(rules)["filter"], F, fw_packet(frame, ctstate="NEW"))
        assert verdict_of(decision, "NEW", entry=True) == (verdict, reason)  # the reference semantics agree
        check(h, frame, verdict, reason, Counter((4, c, i) for c, i in path))
        timeout, listed = timeout_of(lab, one_way)
        assert CT_UNREPLIED_MS // 1000 - 5 < timeout <= CT_UNREPLIED_MS // 1000, listed
        assert "[UNREPLIED]" in listed and "[ASSURED]" not in listed, listed
        bad = Ether(frame)
        bad[UDP].chksum ^= 0x0101
        h.set_state(ct_flags=abi.TNA_CT_CSUM)
        check(h, bytes(bad), "PASS", "CT_STATE", Counter())
        reply = bytes(V4(lab, dst="198.51.100.7") / UDP(sport=4004, dport=53) / Raw(b"x"))
        check(h, reply, "PASS", "CT_STATE", Counter())
        timeout, listed = timeout_of(lab, answered)
        assert timeout <= 10 and "[UNREPLIED]" in listed, listed  # untouched: the kernel's to change
    finally:
        h.set_state()
        for entry in (one_way, answered):
            lab.run(lab.r, ["conntrack", "-D", *entry], check=False)


# INPUT: only a drop is acted on, early, for the box's own addresses.
INPUT = table("ACCEPT", "-A INPUT -p udp -m udp --dport 9999 -j DROP\n-A INPUT -i r-h2 -j DROP\n",
              input_="ACCEPT")
INPUT6 = table("ACCEPT", "-A INPUT -p udp -m udp --dport 9999 -j DROP\n")
I = "INPUT"  # noqa: E741

INPUT_CASES = [
    Case("input-drop", lambda lab: V4(lab, dst="192.0.2.1") / UDP(sport=9, dport=9999), "FW_INPUT_DROP",
         ((I, 1),)),
    Case("input-other-address", lambda lab: V4(lab, dst="198.51.100.1") / UDP(sport=9, dport=9999),
         "FW_INPUT_DROP", ((I, 1),)),
    Case("input-accept", lambda lab: V4(lab, dst="192.0.2.1") / UDP(sport=9, dport=9998), "NOT_FWDED", ()),
    Case("input-iif-miss", lambda lab: V4(lab, dst="192.0.2.1") / TCP(sport=9, dport=22), "NOT_FWDED", ()),
]


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("case", INPUT_CASES, ids=lambda c: c.name)
def test_input_table(compiled: Callable[..., FirewallHarness], hook: str, case: Case) -> None:
    run_table(compiled(hook, INPUT), INPUT, case, chain="INPUT")


V6_RULES = table("ACCEPT", "".join(f"-A FORWARD {r}\n" for r in (
    "-s 2001:db8:1::/120 -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT",
    "-p tcp -m tcp --tcp-flags SYN,RST,ACK,FIN SYN -j DROP",
    "-d 2001:db8:2::7/128 -j DROP",
)))
V6_CASES = [
    Case("echo6-accepted", lambda lab: V6(lab) / ICMPv6EchoRequest(), "FORWARDED", ((F, 1),)),
    Case("echo6-other-source", lambda lab: V6(lab, src="2001:db8:1::1:2") / ICMPv6EchoRequest(), "FORWARDED",
         ((F, 0),)),
    Case("syn6-dropped", lambda lab: V6(lab) / TCP(sport=9, dport=443, flags="S"), "FW_DROP", ((F, 2),)),
    Case("dst6-dropped", lambda lab: V6(lab, dst="2001:db8:2::7") / UDP(sport=9, dport=9), "FW_DROP", ((F, 3),)),
]


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("case", V6_CASES, ids=lambda c: c.name)
def test_ipv6_table(compiled: Callable[..., FirewallHarness], hook: str, case: Case) -> None:
    run_table(compiled(hook, "", V6_RULES), V6_RULES, case, family=6)


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_ipv6_input_drop(compiled: Callable[..., FirewallHarness], hook: str, fwlab: RouterLab) -> None:
    h = compiled(hook, "", INPUT6)
    frame = bytes(V6(fwlab, dst="2001:db8:1::1") / UDP(sport=9, dport=9999))
    check(h, frame, "DROP", "FW_INPUT_DROP", Counter({(6, I, 1): 1}))
    frame = bytes(V6(fwlab, dst="2001:db8:1::1") / UDP(sport=9, dport=9998))
    check(h, frame, "PASS", "NOT_FWDED", Counter())

