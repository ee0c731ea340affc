"""Property test of the firewall module through BPF_PROG_RUN: random filter
tables (user chains, jumps and RETURN, negations, -i/-o patterns with `+`,
protocols, ports, multiport lists and ranges, TCP flags, ICMP types, address
prefixes, runs of same-shaped rules that become LPM sets, --ctstate, rules
without a target (counters), rules TNA cannot express) x random packets.  The program's verdict, reason and
counted rule path must be evaluate()'s; where evaluate() says the kernel
decides, the program passes the packet with the matching reason.

Conntrack's view of a packet of no connection (r's table holds none) is
modelled here from the kernel's rules (tcp_error(), udp_error(), tcp_new()),
independently of conntrack.c.j2.  Derandomized, without a database: CI runs
the same examples every time.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import RouterLab
from tests.harness import FirewallHarness
from tests.test_firewall_prog import FW_PATH_MAX, check, fw_packet, table, verdict_of
from tna.bpf import abi
from tna.model.firewall import KERNEL, evaluate
from tna.model.iptables import parse_save

pytestmark = pytest.mark.root

PATTERNS = ["r-h1", "r-h2", "r-h+", "r-+", "+", "eth0", "eth+", "r-h"]
SRC = {4: ["192.0.2.2", "192.0.2.70", "192.0.2.130", "192.0.2.200", "203.0.113.9", "203.0.113.77"],
       6: ["2001:db8:1::2", "2001:db8:1::70", "2001:db8:1::1:2", "2001:db8:7::9"]}
DST = {4: ["198.51.100.2", "198.51.100.7"], 6: ["2001:db8:2::2", "2001:db8:2::7"]}
PREFIXES = {4: [8, 16, 24, 25, 26, 30, 32], 6: [32, 48, 64, 112, 120, 128]}
PORTS = [22, 53, 80, 1000, 5000, 65535]  # few: rules and packets meet
ICMP_TYPES = {4: [0, 8, 13, 14, 17], 6: [128, 129, 200]}  # not errors/ND: the router's before any rule
ICMP_NAME = {4: ("icmp", "icmp", "--icmp-type"), 6: ("ipv6-icmp", "icmp6", "--icmpv6-type")}
CT_STATES = ["NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"]
NEED = {6: 20, 17: 8, 132: 4, 1: 8, 58: 8}  # L4 bytes a protocol's match reads (else: hotdrop)

neg = st.sampled_from(["", "", "! "])


@st.composite
def net(draw: st.DrawFn, family: int) -> str:
    addr = draw(st.sampled_from(SRC[family] + DST[family]))
    return str(ipaddress.ip_network(f"{addr}/{draw(st.sampled_from(PREFIXES[family]))}", strict=False))


@st.composite
def ports(draw: st.DrawFn, multi: bool) -> str:
    """A port, a range, or (multiport) a list of both."""
    def one() -> str:
        lo = draw(st.sampled_from(PORTS))
        return f"{lo}:{min(65535, lo + draw(st.sampled_from([1, 10, 1000])))}" if draw(st.booleans()) else str(lo)
    return ",".join(one() for _ in range(draw(st.integers(1, 3)) if multi else 1))


@st.composite
def matches(draw: st.DrawFn, family: int, ct: bool) -> str:
    """A rule's matches, in the order iptables-save prints them."""
    if draw(st.integers(0, 2)) == 0:  # few matches: a rule packets reach beyond
        return draw(st.sampled_from(["", "-p tcp", "-p udp", f"-s {draw(net(family))}", "-i r-h+", "! -o r-h1"]))
    out = []
    for opt in ("-s", "-d"):
        if draw(st.integers(0, 4)) == 0:
            out.append(f"{draw(neg)}{opt} {draw(net(family))}")
    for opt in ("-i", "-o"):
        if draw(st.integers(0, 4)) == 0:
            out.append(f"{draw(neg)}{opt} {draw(st.sampled_from(PATTERNS))}")
    icmp, icmp_mod, icmp_opt = ICMP_NAME[family]
    proto = draw(st.sampled_from([None, None, None, "tcp", "tcp", "udp", "udp", icmp, "sctp", "gre", "! tcp", "all"]))
    if proto is not None:
        out.append(f"! -p {proto[2:]}" if proto.startswith("! ") else f"-p {proto}")
    if proto in ("tcp", "udp"):
        kind = draw(st.sampled_from(["", "", "sport", "dport", "both", "multi", "flags", "syn"]))
        if kind in ("sport", "dport", "both"):
            opts = [f"{draw(neg)}--{p} {draw(ports(False))}" for p in ("sport", "dport") if kind in (p, "both")]
            out.append(f"-m {proto} " + " ".join(opts))
        elif kind == "multi":
            which = draw(st.sampled_from(["--sports", "--dports", "--ports"]))
            out.append(f"-m multiport {draw(neg)}{which} {draw(ports(True))}")
        elif kind in ("flags", "syn") and proto == "tcp":
            names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG"]
            mask = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
            comp = draw(st.lists(st.sampled_from(mask), max_size=2, unique=True))
            out.append(f"-m tcp {draw(neg)}--syn" if kind == "syn" else
                       f"-m tcp {draw(neg)}--tcp-flags {','.join(mask)} {','.join(comp) or 'NONE'}")
    elif proto == icmp and draw(st.booleans()):
        code = f"/{draw(st.integers(0, 1))}" if draw(st.booleans()) else ""
        out.append(f"-m {icmp_mod} {draw(neg)}{icmp_opt} {draw(st.sampled_from(ICMP_TYPES[family]))}{code}")
    if ct and draw(st.integers(0, 2)) == 0:
        states = draw(st.lists(st.sampled_from(CT_STATES), min_size=1, max_size=2, unique=True))
        out.append(f"-m conntrack {draw(neg)}--ctstate {','.join(states)}")
    if draw(st.integers(0, 12)) == 0:
        out.append("-m limit --limit 5/sec")  # a match TNA does not model
    return " ".join(out)


@st.composite
def target(draw: st.DrawFn, callees: list[str]) -> str:
    choices = ["ACCEPT", "DROP", "RETURN", "RETURN"] + callees * 3 + ["LOG", ""]  # "": no -j, a counter
    return draw(st.sampled_from(choices))


@st.composite
def run(draw: st.DrawFn, family: int, chain: str) -> list[str]:
    """4 to 6 same-shaped rules: what becomes a set (one LPM lookup)."""
    shape = draw(st.sampled_from(["src", "dport", "dst-dport", "multiport"]))
    verdict = draw(st.sampled_from(["ACCEPT", "DROP", "RETURN"]))
    proto = draw(st.sampled_from(["tcp", "udp"]))
    out = []
    for _ in range(draw(st.integers(4, 6))):
        port = draw(st.sampled_from(PORTS))
        if shape == "src":
            m = f"-s {draw(net(family))}"
        elif shape == "multiport":
            m = f"-p {proto} -m multiport --dports {port},{port - 1}"
        else:
            host = f"-d {draw(st.sampled_from(DST[family]))}/{32 if family == 4 else 128} "
            m = f"{host if shape == 'dst-dport' else ''}-p {proto} -m {proto} --dport {port}"
        out.append(f"-A {chain} {m} -j {verdict}")
    return out


@st.composite
def rule_sets(draw: st.DrawFn, family: int) -> str:
    """iptables-save text of a random filter table (FORWARD and up to three
    user chains, each jumping only to later ones: no loops)."""
    ct = draw(st.booleans())
    users = [f"u{i}" for i in range(draw(st.integers(0, 3)))]
    body = []
    for k, chain in enumerate(["FORWARD", *users]):
        callees = users[k:]  # FORWARD (k=0) may call every user chain, u_i only later ones
        for _ in range(draw(st.integers(2 if chain == "FORWARD" else 0, 7))):
            if draw(st.integers(0, 4)) == 0:
                body += draw(run(family, chain))
            else:
                t = draw(target(callees))
                rule = f"-A {chain} {draw(matches(family, ct))} {f'-j {t}' if t else ''}"
                body.append(" ".join(rule.split()))
    return table(draw(st.sampled_from(["ACCEPT", "DROP"])), "".join(f"{r}\n" for r in body), chains=tuple(users))


@st.composite
def packets(draw: st.DrawFn, family: int, lab: RouterLab) -> tuple[bytes, bool]:
    """(frame, whether its L4 header is cut short by the IP length)."""
    src, dst = draw(st.sampled_from(SRC[family])), draw(st.sampled_from(DST[family]))
    ip = IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)
    proto = draw(st.sampled_from([6, 6, 17, 17, 1 if family == 4 else 58, 132, 47]))
    sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    if proto == 6:
        l4 = TCP(sport=sport, dport=dport, flags=draw(st.integers(0, 255)))
    elif proto == 17:
        l4 = UDP(sport=sport, dport=dport)
    elif proto == 1:
        l4 = ICMP(type=draw(st.sampled_from(ICMP_TYPES[4])), code=draw(st.integers(0, 1)))
    else:
        ip.setfieldval("proto" if family == 4 else "nh", proto)
        head = bytes([draw(st.sampled_from(ICMP_TYPES[6])), draw(st.integers(0, 1))]) if proto == 58 \
            else sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
        l4 = Raw(head + bytes(8 - len(head) if proto != 47 else 0))
    pkt = Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / ip / l4 / Raw(draw(st.binary(max_size=16)))
    damage = draw(st.sampled_from(["none"] * 6 + ["csum", "udp-len", "short"]))
    frame = bytearray(bytes(pkt))
    l4off = 14 + (20 if family == 4 else 40)
    if damage == "csum" and proto in (6, 17):
        frame[l4off + (16 if proto == 6 else 6)] ^= 0x01
    elif damage == "udp-len" and proto == 17:
        frame[l4off + 4:l4off + 6] = draw(st.sampled_from([4, len(frame) - l4off + 8])).to_bytes(2, "big")
    elif damage == "short" and proto in NEED:
        # the IP length ends inside the L4 header; its rest is padding
        keep = draw(st.integers(0 if family == 4 else 1, NEED[proto] - 1))  # IPv6: plen 0 is a jumbogram
        if family == 4:
            pkt[IP].len, pkt[IP].chksum = 20 + keep, None
        else:
            pkt[IPv6].plen = keep
        return bytes(pkt), True
    return bytes(frame), False


# --- conntrack's view of a packet of no connection ---------------------------

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = (1 << i for i in range(8))
VALID_TCP = {SYN, SYN | URG, SYN | ACK, RST, RST | ACK, FIN | ACK, FIN | ACK | URG, ACK, ACK | URG}


def _l4_csum_ok(frame: bytes, family: int) -> bool:
    ip = frame[14:]
    if family == 4:
        hlen, l4len, proto = 20, int.from_bytes(ip[2:4], "big") - 20, ip[9]
        pseudo = ip[12:20]
    else:
        hlen, l4len, proto = 40, int.from_bytes(ip[4:6], "big"), ip[6]
        pseudo = ip[8:40]
    data = pseudo + proto.to_bytes(2, "big") + l4len.to_bytes(2, "big") + ip[hlen:hlen + l4len]
    data += b"\0" * (len(data) % 2)
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def ct_state(frame: bytes, family: int, ct_flags: int) -> str:
    """NEW or INVALID: what conntrack makes of a TCP/UDP packet it has no
    entry for (nf_conntrack_checksum, nf_conntrack_tcp_loose from ct_flags)."""
    l4off = 14 + (20 if family == 4 else 40)
    l4len = len(frame) - l4off
    l4 = frame[l4off:]
    checked = ct_flags & abi.TNA_CT_CSUM
    if (frame[23] if family == 4 else frame[20]) == 17:
        ulen = int.from_bytes(l4[4:6], "big")
        if ulen < 8 or ulen > l4len:
            return "INVALID"
        if l4[6:8] != b"\0\0" and checked and not _l4_csum_ok(frame, family):
            return "INVALID"
        return "NEW"
    flags = l4[13]
    if checked and not _l4_csum_ok(frame, family):
        return "INVALID"
    if flags & ~(ECE | CWR | PSH) not in VALID_TCP:
        return "INVALID"
    # tcp_new(): the TCP_CONNTRACK_NONE column of tcp_conntracks[0]
    if flags & RST:
        return "INVALID"
    if flags & SYN:
        return "INVALID" if flags & ACK else "NEW"
    if flags & FIN:
        return "INVALID"
    return "NEW" if flags & ACK and ct_flags & abi.TNA_CT_TCP_LOOSE else "INVALID"


def expect(rules: str, family: int, tracked: bool, frame: bytes, short: bool,
           ct_flags: int) -> tuple[str, str, Counter[tuple[int, str, int]]]:
    if short:
        return "PASS", "FW_KERNEL", Counter()
    proto = frame[23] if family == 4 else frame[20]
    if tracked and proto not in (6, 17):
        return "PASS", "CT_PROTO", Counter()  # the conntrack kfuncs look up TCP and UDP only
    ctstate = ct_state(frame, family, ct_flags) if tracked else None
    trace: list[tuple[str, int]] = []
    decision = evaluate(parse_save(rules)["filter"], "FORWARD", fw_packet(frame, ctstate=ctstate), trace)
    if len(trace) > FW_PATH_MAX:
        decision = KERNEL
    return *verdict_of(decision, ctstate), Counter((family, c, i) for c, i in trace)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("hook", ["xdp", "tc"])
# No shrinking: every attempt compiles and loads a program (minutes); the
# failing rule set is reported whole, the packet by note().  The load (clang,
# the verifier) dominates: few rule sets, many packets through each.
@settings(max_examples=10, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_program_decides_as_evaluate(fwlab: RouterLab, hook: str, family: int, data: st.DataObject) -> None:
    rules = data.draw(rule_sets(family), label="rules")
    ct_flags = data.draw(st.sampled_from([0, abi.TNA_CT_CSUM, abi.TNA_CT_TCP_LOOSE,
                                          abi.TNA_CT_CSUM | abi.TNA_CT_TCP_LOOSE]), label="ct_flags")
    h = FirewallHarness(fwlab, hook, *((rules, "") if family == 4 else ("", rules)))
    try:
        h.set_state(ct_flags=ct_flags)
        tracked = h.fw.ct4 if family == 4 else h.fw.ct6
        for n in range(30):
            frame, short = data.draw(packets(family, fwlab), label=f"packet {n}")
            note(f"packet {n}: {Ether(frame)!r}")
            check(h, frame, *expect(rules, family, tracked, frame, short, ct_flags))
    finally:
        h.close()

