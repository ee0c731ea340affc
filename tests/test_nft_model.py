"""tna/model/nftables.py: real `nft -j list ruleset` JSON (this nft version's,
from rule sets loaded into a network namespace) -> the rule model.

The rule sets below are written from public documentation: Debian's stock
/etc/nftables.conf (the nftables package's examples), the nftables wiki
("Simple ruleset for a home router", "Verdict Maps", "Sets", "Matching TCP
flags"), firewalld's documented nftables zone layout (filter_INPUT ->
filter_INPUT_ZONES -> filter_IN_<zone>, reject with icmpx) and OpenWrt's fw4
documentation (input -> input_lan / input_wan zone chains, accept_to_wan).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from netns_labs.lab import in_netns
from tna.cli import rule_rows
from tna.model.hooks import _uses_conntrack, firewall_plan
from tna.model.ipset import mirror_problem, resolve
from tna.model.iptables import Neg, Rule
from tna.model.nftables import VANISHING, NftRules, parse_ruleset
from tna.snapshot import plan_filtering

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    name = f"tnanft-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "wan0", "type", "veth", "peer", "name", "wan1"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def load(ns: str, text: str) -> NftRules:
    """The model of `text` as this nft prints it back in JSON."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True)
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"], check=True,
                         capture_output=True, text=True).stdout
    return parse_ruleset(json.loads(out))


def rules(m: NftRules, version: int, table: str, chain: str) -> list[Rule]:
    return m.tables[version][table].chains[chain].rules


def one(text: str, ns: str, version: int = 4) -> list[Rule]:
    """The Rules of one rule in an inet filter input chain."""
    m = load(ns, "table inet t {\n chain c {\n type filter hook input priority 0; policy accept;\n"
             f" {text}\n }}\n chain sub {{\n }}\n}}\n")
    return rules(m, version, "inet t", "c")


DEBIAN = """#!/usr/sbin/nft -f
flush ruleset
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


def test_debian_stock(ns: str) -> None:
    m = load(ns, DEBIAN)
    assert m.foreign == [] and m.sets == {}
    for v in (4, 6):
        t = m.tables[v]["inet filter"]
        assert t.name == "inet filter" and t.empty
        assert [(c.name, c.hook, c.priority, c.kind, c.policy) for c in t.chains.values()] == [
            ("input", "input", 0, "filter", "ACCEPT"), ("forward", "forward", 0, "filter", "ACCEPT"),
            ("output", "output", 0, "filter", "ACCEPT")]


ROUTER = """
table inet filter {
    set blocked {
        type ipv4_addr
        flags interval
        elements = { 192.0.2.0/28, 198.51.100.7, 203.0.113.1-203.0.113.6 }
    }
    chain input {
        type filter hook input priority 0; policy drop;
        ct state vmap { established : accept, related : accept, invalid : drop }
        iifname "lo" accept
        ip saddr @blocked counter drop
        iifname "lan*" jump lan_in
        icmpv6 type { nd-neighbor-solicit, nd-router-advert } accept
    }
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" counter accept
    }
    chain lan_in {
        tcp dport { 22, 53 } accept
        udp dport 53 accept
        meta l4proto icmp accept
    }
}
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }
}
"""


def test_router(ns: str) -> None:
    m = load(ns, ROUTER)
    vmap = rules(m, 4, "inet filter", "input")[:3]
    assert {(r.ctstate, r.target) for r in vmap} == {
        (Neg(frozenset({"ESTABLISHED"})), "ACCEPT"), (Neg(frozenset({"RELATED"})), "ACCEPT"),
        (Neg(frozenset({"INVALID"})), "DROP")}
    assert len({r.handle for r in vmap}) == 1
    r4 = rules(m, 4, "inet filter", "input")
    assert r4[3].iif == Neg("lo") and r4[3].target == "ACCEPT"
    blocked = r4[4]
    assert blocked.target == "DROP" and resolve(m.tables, m.sets)[0][4]["inet filter"].chains["input"].rules[
        4].expressible
    (sm,) = blocked.sets
    assert sm.dirs == ("src",) and not sm.neg and sm.family == 4
    s = m.sets[sm.name]
    assert s.type == "hash:net" and s.family == 4 and not s.timeout and not s.counters
    assert {e.net for e in s.members} == {ipaddress.ip_network(n) for n in (
        "192.0.2.0/28", "198.51.100.7/32", "203.0.113.1/32", "203.0.113.2/31", "203.0.113.4/31",
        "203.0.113.6/32")}
    assert r4[5].iif == Neg("lan+") and r4[5].target == "lan_in" and not r4[5].goto
    # the set match implies IPv4: the IPv6 chain lacks the rule
    r6 = rules(m, 6, "inet filter", "input")
    assert [r.handle for r in r6].count(blocked.handle) == 0 and len(r6) == len(r4) - 1 + 0
    assert {r.icmp_type.value for r in r6[-2:]} == {(135, None), (134, None)}  # type: ignore[union-attr]
    # indexes stay unique within a chain over both versions
    assert len({r.index for r in r4} | {r.index for r in r6}) == len(r4) + len(r6)
    fwd = rules(m, 4, "inet filter", "forward")
    assert fwd[0].ctstate == Neg(frozenset({"ESTABLISHED", "RELATED"}))
    assert fwd[1].iif == Neg("lan0") and fwd[1].oif == Neg("wan0") and fwd[1].counters == (0, 0)
    lan = rules(m, 4, "inet filter", "lan_in")
    assert lan[0].proto == Neg(6) and lan[0].dport == Neg(((22, 22), (53, 53)))
    assert lan[1].proto == Neg(17) and lan[2].proto == Neg(1) and lan[2].target == "ACCEPT"
    assert m.tables[4]["inet filter"].chains["lan_in"].policy is None
    nat = m.tables[4]["ip nat"].chains["postrouting"]
    assert (nat.kind, nat.hook, nat.priority) == ("nat", "postrouting", 100)
    assert nat.rules[0].oif == Neg("wan0") and "masquerade statement" in nat.rules[0].unsupported
    assert "ip nat" not in m.tables[6]


FIREWALLD = """
table inet firewalld {
    chain filter_INPUT {
        type filter hook input priority filter + 10; policy accept;
        ct state { established, related } accept
        ct status dnat accept
        iifname "lo" accept
        jump filter_INPUT_ZONES
        ct state { invalid } drop
        reject with icmpx admin-prohibited
    }
    chain filter_INPUT_ZONES {
        iifname "wan0" goto filter_IN_public
        goto filter_IN_public
    }
    chain filter_IN_public {
        meta l4proto { icmp, ipv6-icmp } accept
        tcp dport 22 ct state { new, untracked } accept
        fib daddr type broadcast drop
    }
}
"""


def test_firewalld(ns: str) -> None:
    m = load(ns, FIREWALLD)
    c = m.tables[4]["inet firewalld"].chains["filter_INPUT"]
    assert (c.hook, c.priority, c.policy) == ("input", 10, "ACCEPT")
    r = c.rules
    assert r[0].ctstate == Neg(frozenset({"ESTABLISHED", "RELATED"}))
    assert r[1].ctstatus == Neg(1 << 5) and r[1].expressible  # ct status dnat: IPS_DST_NAT
    assert r[3].target == "filter_INPUT_ZONES" and r[3].expressible
    assert r[4].ctstate == Neg(frozenset({"INVALID"})) and r[4].target == "DROP"
    assert r[5].target == "REJECT" and r[5].unsupported == ("reject statement",)
    z = rules(m, 6, "inet firewalld", "filter_INPUT_ZONES")
    assert [(x.iif, x.target, x.goto) for x in z] == [(Neg("wan0"), "filter_IN_public", True),
                                                      (None, "filter_IN_public", True)]
    pub = rules(m, 4, "inet firewalld", "filter_IN_public")
    assert [x.proto for x in pub[:2]] == [Neg(1), Neg(58)] and pub[0].handle == pub[1].handle
    assert pub[2].ctstate == Neg(frozenset({"NEW", "UNTRACKED"})) and pub[2].dport == Neg(((22, 22),))
    assert pub[3].dst_type == Neg(frozenset({"BROADCAST"}))


FW4 = """
table inet fw4 {
    chain input {
        type filter hook input priority filter; policy drop;
        iifname "lo" accept comment "!fw4: Accept traffic from loopback"
        ct state established,related accept
        tcp flags syn / fin,syn,rst,ack jump syn_flood
        iifname "br-lan" jump input_lan
        iifname "wan0" jump input_wan
    }
    chain syn_flood {
        limit rate 25/second burst 50 packets return
        drop
    }
    chain input_lan {
        jump accept_from_lan
    }
    chain input_wan {
        meta nfproto ipv4 udp dport 68 accept
        meta nfproto ipv6 udp dport 546 ip6 saddr fe80::/10 accept
        icmp type echo-request accept
        ip6 saddr != 2001:db8::/32 counter drop
        jump reject_from_wan
    }
    chain accept_from_lan {
        iifname "br-lan" counter accept
    }
    chain reject_from_wan {
        iifname "wan0" counter reject
    }
}
"""


def test_fw4(ns: str) -> None:
    m = load(ns, FW4)
    inp = rules(m, 4, "inet fw4", "input")
    assert inp[0].comment == "!fw4: Accept traffic from loopback"
    assert inp[2].tcp_flags == Neg((0x17, 0x02)) and inp[2].target == "syn_flood"
    syn = rules(m, 4, "inet fw4", "syn_flood")
    assert syn[0].unsupported == ("limit statement",) and syn[0].target == "RETURN"
    assert syn[1].target == "DROP" and syn[1].expressible
    w4, w6 = rules(m, 4, "inet fw4", "input_wan"), rules(m, 6, "inet fw4", "input_wan")
    assert [r.dport for r in w4[:1]] == [Neg(((68, 68),))] and all(r.dport != Neg(((546, 546),)) for r in w4)
    assert w6[0].dport == Neg(((546, 546),)) and w6[0].src == Neg(ipaddress.ip_network("fe80::/10"))
    assert w6[1].icmp_type == Neg((8, None))  # icmp in an inet table: l4proto 1, either family
    assert w6[2].src == Neg(ipaddress.ip_network("2001:db8::/32"), True) and w6[2].target == "DROP"
    assert all(r.handle != w6[2].handle for r in w4)
    assert rules(m, 4, "inet fw4", "reject_from_wan")[0].target == "REJECT"


@pytest.mark.parametrize("text, flags", [
    ("tcp flags syn accept", (0x02, 0x02)),                    # syn set, whatever the others
    ("tcp flags == syn accept", (0xFF, 0x02)),                 # exactly syn
    ("tcp flags & (syn|rst) == syn accept", (0x06, 0x02)),
    ("tcp flags syn / syn,rst accept", (0x06, 0x02)),
    ("tcp flags & (fin|syn|rst|ack) != syn accept", None),     # negated below
])
def test_tcp_flags(ns: str, text: str, flags: tuple[int, int] | None) -> None:
    (r,) = one(text, ns)
    assert r.proto == Neg(6) and r.expressible
    assert r.tcp_flags == (Neg(flags) if flags else Neg((0x17, 0x02), True))


def test_statement_order(ns: str) -> None:
    """`log tcp dport 22 accept` logs every packet: the match after it
    restricts nothing the fast path could rely on."""
    (r,) = one('log prefix "x " tcp dport 22 accept', ns)
    assert r.dport is None and r.proto is None and r.unsupported == ("log statement",)
    (r,) = one('tcp dport 22 log accept', ns)
    assert r.dport == Neg(((22, 22),)) and not r.expressible
    # a counter counts every packet that reaches it, matched after or not
    (r,) = one("counter tcp dport 22 accept", ns)
    assert r.dport is None and r.unsupported == ("counter before a match",)
    # a conntrack match not kept still says conntrack is in use; numgen inc counts what reaches it
    for text in ("counter ct state new accept", "limit rate 5/second ct state new accept"):
        (r,) = one(text, ns)
        assert r.ctstate is None and "ct after a statement" in r.unsupported, r
        assert _uses_conntrack(r)
    (r,) = one("numgen inc mod 2 0 tcp dport 80 drop", ns)
    assert r.dport is None and not r.expressible
    (r,) = one("tcp dport 22 counter accept", ns)
    assert r.dport == Neg(((22, 22),)) and r.expressible


def test_counters_and_continue(ns: str) -> None:
    (r,) = one("tcp dport != 1000-2000 counter", ns)
    assert r.target == "CONTINUE" and r.dport == Neg(((1000, 2000),), True) and r.expressible
    assert r.text == "tcp dport != 1000-2000 counter"  # the counts are not the text (it must not change)


def test_matches(ns: str) -> None:
    assert one("meta mark and 0xff == 1 accept", ns)[0].mark == Neg((1, 0xFF))
    assert one("meta mark 0x2 drop", ns)[0].mark == Neg((2, 0xFFFFFFFF))
    assert one("meta mark and 0xffff0000 == 0x10000 drop", ns)[0].mark == Neg((0x10000, 0xFFFF0000))  # a prefix
    assert one('oifname != "wan*" accept', ns)[0].oif == Neg("wan+", True)
    assert one('iif "lo" accept', ns)[0].iif == Neg("lo")
    assert not one("ct direction reply accept", ns)[0].expressible  # nft's breaks without an entry
    assert one("ct status assured accept", ns)[0].ctstatus == Neg(4)
    assert not one("ct status == assured accept", ns)[0].expressible  # exactly assured: not "any of"
    assert one("icmp type destination-unreachable icmp code 4 accept", ns)[0].icmp_type == Neg((3, 4))
    assert not one("icmp code 4 accept", ns)[0].expressible
    assert one("ip protocol udp accept", ns, 6) == []
    (r,) = one("ip daddr 192.0.2.0/24 udp sport { 1, 5-7 } goto sub", ns)
    assert r.dst == Neg(ipaddress.ip_network("192.0.2.0/24")) and r.sport == Neg(((1, 1), (5, 7))) and r.goto
    assert not one("th dport 53 accept", ns)[0].expressible  # which protocol's ports: any
    assert [x.proto for x in one("meta l4proto { tcp, udp } th dport 53 accept", ns)] == [Neg(6), Neg(17)]
    assert not one("meta pkttype host accept", ns)[0].expressible
    # the reverse-path check; the mark matters to ip rules only (with any, the fast path does not know)
    (r,) = one("fib saddr . iif oif missing drop", ns)
    assert r.rpf == Neg(True, neg=True) and r.expressible and r.text == "fib saddr . iif oif missing drop"
    assert one("fib saddr . mark . iif oif exists accept", ns)[0].rpf == Neg(True)
    assert one("fib saddr . iif oif != missing accept", ns)[0].rpf == Neg(True)
    assert not one("fib daddr . iif oif missing drop", ns)[0].expressible
    assert not one('fib saddr . iif oifname "eth0" accept', ns)[0].expressible


def test_anonymous_sets(ns: str) -> None:
    m = load(ns, "table ip6 t {\n chain c {\n type filter hook forward priority 0;\n"
             " ip6 saddr { 2001:db8::/64, 2001:db8:1::1 } accept\n ip6 daddr != 2001:db8::1-2001:db8::3 drop\n }\n}\n")
    a, b = rules(m, 6, "ip6 t", "c")
    assert 4 not in m.tables or "ip6 t" not in m.tables[4]
    sa, sb = m.sets[a.sets[0].name], m.sets[b.sets[0].name]
    assert a.sets[0].name.startswith("nft:ip6 t:anon:") and a.sets[0].name != b.sets[0].name
    assert {e.net for e in sa.members} == {ipaddress.ip_network("2001:db8::/64"),
                                           ipaddress.ip_network("2001:db8:1::1/128")}
    assert b.sets[0].neg and b.sets[0].dirs == ("dst",) and sa.family == sb.family == 6
    assert {e.net for e in sb.members} == {ipaddress.ip_network("2001:db8::1/128"),
                                           ipaddress.ip_network("2001:db8::2/127")}


def test_dynamic_sets(ns: str) -> None:
    m = load(ns, "table inet t {\n set seen { type ipv4_addr; flags dynamic,timeout; timeout 1m; }\n"
             " set cnt { type ipv4_addr; counter; elements = { 192.0.2.1 } }\n"
             " set svc { type inet_service; elements = { 22, 80 } }\n"
             " chain c {\n type filter hook input priority 0;\n ip saddr @seen drop\n ip saddr @cnt drop\n"
             " tcp dport @svc accept\n }\n}\n")
    seen, cnt, svc = rules(m, 4, "inet t", "c")
    assert m.sets[seen.sets[0].name].timeout and m.sets[cnt.sets[0].name].counters
    # a port set is a map per protocol and IP version, its members the ports
    assert svc.dport is None
    (port_set,) = svc.sets
    assert port_set.dirs == ("dst", "dst") and not port_set.neg
    assert {(str(e.net), e.proto, e.port) for e in m.sets[port_set.name].members} == {
        ("0.0.0.0/0", 6, 22), ("0.0.0.0/0", 6, 80)}


def test_sets_the_rules_fill_from_the_packet_path_are_the_kernels(ns: str) -> None:
    """A port knock (`add @s { ip saddr }`, `update @s ...`) fills a set
    without a flag saying so and without a notification: the rules that
    match it are decided by the kernel."""
    m = load(ns, "table inet t {\n set knock { type ipv4_addr; }\n set pair { type ipv4_addr . inet_service; }\n"
             " set plain { type ipv4_addr; elements = { 192.0.2.1 } }\n set svc { type inet_service; }\n"
             " chain i {\n type filter hook input priority 0;\n tcp dport 7000 add @knock { ip saddr }\n"
             " tcp dport 7001 update @pair { ip saddr . tcp dport }\n tcp dport 7002 add @svc { tcp sport }\n }\n"
             " chain f {\n type filter hook forward priority 0;\n ip saddr @knock accept\n"
             " ip saddr . tcp dport @pair accept\n ip saddr @plain accept\n tcp dport @svc accept\n }\n}\n")
    knock, pair, plain, svc = rules(m, 4, "inet t", "f")
    assert mirror_problem(m.sets[svc.sets[0].name], svc.sets[0]) is not None
    assert mirror_problem(m.sets[knock.sets[0].name], knock.sets[0]) is not None
    assert mirror_problem(m.sets[pair.sets[0].name], pair.sets[0]) is not None
    assert mirror_problem(m.sets[plain.sets[0].name], plain.sets[0]) is None


@pytest.mark.parametrize("proto", ["dccp", "sctp"])
def test_a_concatenation_with_a_dccp_or_sctp_port_is_the_kernels(ns: str, proto: str) -> None:
    """A hash:ip,port map reads ports as ipset does: a DCCP packet's as 0,
    none of an SCTP packet shorter than its 12-byte header; nft reads the
    port of either from the first 4 bytes."""
    m = load(ns, "table inet t {\n set ap { type ipv4_addr . inet_service; elements = { 192.0.2.1 . 5000 } }\n"
             f" chain c {{\n type filter hook input priority 0;\n ip saddr . {proto} dport @ap drop\n }}\n}}\n")
    (r,) = rules(m, 4, "inet t", "c")
    assert not r.expressible and not r.sets


def test_foreign(ns: str) -> None:
    m = load(ns, "table netdev n {\n chain i {\n type filter hook ingress device wan0 priority 0;\n }\n}\n"
             "table bridge b {\n chain f {\n type filter hook forward priority 0;\n }\n}\n"
             "table arp a {\n chain i {\n type filter hook input priority 0;\n }\n}\n")
    assert len(m.foreign) == 2 and m.foreign[0].startswith("netdev n chain i: hook ingress")
    assert m.foreign[1].startswith("bridge b chain f")
    assert "arp a" not in m.tables[4]
    m = load(ns, "table bridge b {\n chain i {\n type filter hook input priority 0;\n }\n}\n")
    assert m.foreign and m.foreign[0].startswith("bridge b chain i")  # routed frames to the bridge pass it


def test_flow_add() -> None:
    """This kernel has no flowtables, so nft cannot load one: the JSON is
    written from libnftables-json(5) (FLOW: {"flow": {"op": "add", "flowtable": ...}})."""
    doc = {"nftables": [
        {"table": {"family": "inet", "name": "t", "handle": 1}},
        {"chain": {"family": "inet", "table": "t", "name": "c", "handle": 1, "type": "filter", "hook": "forward",
                   "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"flow": {"op": "add", "flowtable": "@ft"}}]}}]}
    (r,) = parse_ruleset(doc).tables[6]["inet t"].chains["c"].rules
    assert r.unsupported == ("flow add statement",) and r.proto == Neg(6) and r.target == "CONTINUE"


def test_concatenation_and_ifname_sets(ns: str) -> None:
    m = load(ns, "table inet t {\n set ap { type ipv4_addr . inet_service; elements = { 192.0.2.1 . 22 } }\n"
             " set np { type ipv4_addr . inet_service; flags interval; elements = { 192.0.2.0/24 . 1000-1002 } }\n"
             ' set ifs { type ifname; elements = { "lan0", "lan1" } }\n'
             " chain c {\n type filter hook input priority 0;\n ip saddr . tcp dport @ap accept\n"
             " ip daddr . udp dport @np accept\n iifname @ifs accept\n iifname != @ifs drop\n }\n}\n")
    ap, np_, lan0, lan1, notlan = rules(m, 4, "inet t", "c")
    assert ap.proto == Neg(6) and ap.sets[0].dirs == ("src", "dst")
    s = m.sets[ap.sets[0].name]
    assert (s.type, s.family) == ("hash:ip,port", 4)
    assert {(str(e.net), e.proto, e.port) for e in s.members} == {("192.0.2.1/32", 6, 22)}
    s = m.sets[np_.sets[0].name]
    assert s.type == "hash:net,port" and np_.sets[0].dirs == ("dst", "dst") and np_.proto == Neg(17)
    assert {e.port for e in s.members} == {1000, 1001, 1002}
    assert (lan0.iif, lan1.iif, lan0.handle) == (Neg("lan0"), Neg("lan1"), lan1.handle)
    assert not notlan.expressible
    assert len(rules(m, 6, "inet t", "c")) == 3  # the concatenations are IPv4's


@st.composite
def nft_rule(draw: st.DrawFn) -> tuple[str, dict[str, object], str]:
    """A rule from a small grammar: its text, the typed fields it should
    become, and its target."""
    parts: list[str] = []
    want: dict[str, object] = {}
    if draw(st.booleans()):
        net = ipaddress.ip_network(f"192.0.2.{draw(st.integers(0, 255))}/{draw(st.integers(24, 32))}", strict=False)
        neg = draw(st.booleans())
        parts.append(f"ip saddr {'!= ' if neg else ''}{net}")
        want["src"] = Neg(net, neg)
    if draw(st.booleans()):
        proto = draw(st.sampled_from(["tcp", "udp"]))
        lo = draw(st.integers(1, 65535))
        hi = draw(st.integers(lo, 65535)) if draw(st.booleans()) else lo
        neg = draw(st.booleans())
        parts.append(f"{proto} dport {'!= ' if neg else ''}{lo}" + (f"-{hi}" if hi != lo else ""))
        want.update(proto=Neg(6 if proto == "tcp" else 17), dport=Neg(((lo, hi),), neg))
    if draw(st.booleans()):
        name = draw(st.sampled_from(["lan0", "lan1", "lan*", "wan0"]))
        neg = draw(st.booleans())
        parts.append(f'iifname {"!= " if neg else ""}"{name}"')
        want["iif"] = Neg(name.replace("*", "+"), neg)
    if draw(st.booleans()):
        states = draw(st.sets(st.sampled_from(["new", "established", "related", "invalid"]), min_size=1))
        parts.append(f"ct state {','.join(sorted(states))}")
        want["ctstate"] = Neg(frozenset(x.upper() for x in states))
    if draw(st.booleans()):
        mask = draw(st.integers(1, 0xFFFFFFFF))
        value = draw(st.integers(0, 0xFFFFFFFF)) & mask
        parts.append(f"meta mark and {mask:#x} == {value:#x}")
        want["mark"] = Neg((value, mask))
    verdict = draw(st.sampled_from(["accept", "drop", "return", "counter", "jump sub"]))
    return " ".join([*parts, verdict]), want, {"counter": "CONTINUE", "jump sub": "sub"}.get(verdict,
                                                                                             verdict.upper())


@settings(max_examples=30, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=st.lists(nft_rule(), min_size=1, max_size=8))
def test_random_rules(ns: str, drawn: list[tuple[str, dict[str, object], str]]) -> None:
    """What this nft prints back for random rules is read as what they say."""
    m = load(ns, "table inet t {\n chain c {\n type filter hook forward priority 0;\n"
             + "".join(f" {text}\n" for text, _, _ in drawn) + " }\n chain sub {\n }\n}\n")
    got = rules(m, 4, "inet t", "c")
    assert len(got) == len(drawn)
    for r, (text, want, target) in zip(got, drawn, strict=True):
        fields = {k: getattr(r, k) for k in ("src", "proto", "dport", "iif", "ctstate", "mark")
                  if getattr(r, k) is not None}
        assert (fields, r.target, r.unsupported) == (want, target, ()), (text, r.text)
    assert [r.handle for r in rules(m, 6, "inet t", "c")] == [r.handle for r in got if r.src is None]


def test_verdict_maps(ns: str) -> None:
    r = one('iifname vmap { "lan0" : jump sub, "wan0" : drop }', ns)
    assert [(x.iif, x.target) for x in r] == [(Neg("lan0"), "sub"), (Neg("wan0"), "DROP")]
    r = one("meta l4proto vmap { tcp : goto sub, udp : accept }", ns)
    assert sorted((x.proto.value, x.target, x.goto) for x in r) == [(6, "sub", True), (17, "ACCEPT", False)]  # type: ignore[union-attr]
    assert len({x.index for x in r}) == 2 and len({x.handle for x in r}) == 1
    # a named verdict map (Docker 29's per-bridge jumps) expands the same way;
    # a set of the same kind is no map
    m = load(ns, "table ip t {\n map jumps {\n type ifname : verdict\n"
             ' elements = { "br0" : jump sub, "br1" : drop }\n }\n'
             " chain c {\n type filter hook forward priority 0;\n iifname vmap @jumps\n }\n chain sub {\n }\n}\n")
    assert sorted((str(x.iif.value), x.target) for x in rules(m, 4, "ip t", "c")) == [("br0", "sub"), ("br1", "DROP")]  # type: ignore[union-attr]


def test_stats_rules_count_an_nft_rule_once(ns: str) -> None:
    """An anonymous set's Rules, in both versions of an inet table, are one
    nft rule with one kernel counter: `tna stats --rules` shows it once,
    with what the fast path counted for all of them.  (A counter before the
    match would count what the match then fails as well: the kernel's.)"""
    m = load(ns, "table inet t {\n chain c {\n type filter hook forward priority 0;\n"
             " meta l4proto { tcp, udp } counter packets 10 bytes 600 accept\n }\n}\n")
    made = [(v, r) for v in (4, 6) for r in rules(m, v, "inet t", "c")]
    assert len(made) == 4 and {r.counters for _, r in made} == {(10, 600)}
    refs = [{"id": i, "family": v, "chain": "c", "index": r.index, "text": r.text, "table": "inet t"}
            for i, (v, r) in enumerate(made)]
    rows = rule_rows(refs, m.tables, {i: (1, 60) for i in range(len(refs))})
    assert [(r["families"], r["kernel"], r["fast_path"]) for r in rows] == [
        ([4, 6], {"packets": 10, "bytes": 600}, {"packets": 4, "bytes": 240})]


def test_resolve_keeps_base_chains(ns: str) -> None:
    """ipset.resolve() rebuilds the tables: a base chain stays one."""
    c = resolve(load(ns, ROUTER).tables, {})[0][4]["ip nat"].chains["postrouting"]
    assert (c.hook, c.priority, c.kind, c.policy) == ("postrouting", 100, "nat", "ACCEPT")


def test_xt_match(ns: str) -> None:
    """An iptables-nft table in the JSON: its compat match restricts, it does
    not act (the caller knows which tables are iptables')."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "iptables-nft", "-A", "FORWARD", "-m", "comment", "--comment", "x",
                    "-p", "tcp", "--dport", "22", "-j", "ACCEPT"], check=True)
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"], check=True,
                         capture_output=True, text=True).stdout
    (r,) = rules(parse_ruleset(json.loads(out)), 4, "ip filter", "FORWARD")
    assert r.dport == Neg(((22, 22),)) and r.target == "ACCEPT" and r.unsupported == ("xt match comment",)


def test_review_findings(ns: str) -> None:
    """What an independent review found read differently from the kernel:
    each now the kernel's, or read as the kernel reads it."""
    # a negated set of names is no interface named like the set
    assert not one('iifname != { "eth0", "eth1" } drop', ns)[0].expressible
    # protocol 0 is HOPOPTS to nft, "all" to the model
    assert not one("meta l4proto 0 drop", ns, 6)[0].expressible
    # a literal '+' ending a name is no wildcard to nft
    assert not one('iifname "eth+" drop', ns)[0].expressible
    # a mark compared with bits its mask clears never matches
    assert one("meta mark and 0x0f == 0x11 drop", ns) == []
    # an entry's helper: packets without an entry may be expected (RELATED)
    m = load(ns, "table inet t {\n ct helper ftp-std {\n type \"ftp\" protocol tcp;\n }\n"
             " chain c {\n type filter hook forward priority 0; policy drop;\n"
             ' tcp dport 21 ct helper set "ftp-std"\n ct state established,related accept\n }\n}\n')
    fw, _ = firewall_plan(m.tables)
    assert fw is not None and fw.ct_helpers and fw.ct4
    # a stateful compat match stops the rule like a statement: `recent --set`
    # records every packet reaching it, whatever the port match after it says
    subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "iptables-nft", "-A", "FORWARD", "-p", "tcp", "-m", "recent", "--set",
                    "-m", "tcp", "--dport", "22", "-j", "ACCEPT"], check=True)
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"], check=True,
                         capture_output=True, text=True).stdout
    (r,) = rules(parse_ruleset(json.loads(out)), 4, "ip filter", "FORWARD")
    assert r.proto == Neg(6) and r.dport is None and "xt match recent" in r.unsupported
    # ct state with ct status: no entry matches xt_conntrack's way, not nft's
    assert not one("ct state new ct status dnat accept", ns)[0].expressible


def test_dormant_table(ns: str) -> None:
    """A dormant table registers no hook: nothing of it is modelled (nft
    1.0.6 prints its flags wrong in JSON: the reader takes them from the
    kernel, tna.netlink.netfilter.table_flags(); here the JSON as newer nft
    prints it)."""
    doc = {"nftables": [
        {"table": {"family": "inet", "name": "d", "handle": 1, "flags": ["dormant"]}},
        {"chain": {"family": "inet", "table": "d", "name": "f", "handle": 1, "type": "filter", "hook": "forward",
                   "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "d", "chain": "f", "handle": 2, "expr": [{"drop": None}]}}]}
    m = parse_ruleset(doc)
    assert "inet d" not in m.tables[4] and "inet d" not in m.tables[6]


@pytest.mark.parametrize("flags", [["owner"], ["owner", "persist"]])
def test_what_a_table_gone_with_its_owner_would_drop_is_the_kernels(flags: list[str]) -> None:
    """flags owner without persist: the kernel deletes the table when its
    owner's socket closes, unannounced - its drops (rules and policy) stay
    on the kernel path.  With persist the table outlives its owner."""
    doc = {"nftables": [
        {"table": {"family": "inet", "name": "o", "handle": 1, "flags": flags}},
        {"chain": {"family": "inet", "table": "o", "name": "f", "handle": 1, "type": "filter", "hook": "forward",
                   "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "o", "chain": "f", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}},
            {"accept": None}]}},
        {"rule": {"family": "inet", "table": "o", "chain": "f", "handle": 3, "expr": [{"drop": None}]}}]}
    chain = parse_ruleset(doc).tables[4]["inet o"].chains["f"]
    vanishing = "persist" not in flags
    assert chain.policy == ("KERNEL" if vanishing else "DROP")
    assert [r.unsupported for r in chain.rules] == [(), (VANISHING,) if vanishing else ()]


def test_a_table_gone_with_its_owner_that_tracks_or_nats_keeps_the_fast_path_off() -> None:
    """Its end, unannounced, may end conntrack's or NAT's hooks for the
    family: established NAT'd flows would go untranslated, entries
    unrefreshed, where the fast path went on."""
    def doc(expr: list[dict], kind: str = "filter") -> dict:
        return {"nftables": [
            {"table": {"family": "ip", "name": "o", "handle": 1, "flags": ["owner"]}},
            {"chain": {"family": "ip", "table": "o", "name": "c", "handle": 1, "type": kind,
                       "hook": "forward" if kind == "filter" else "postrouting", "prio": 0 if kind == "filter" else 100,
                       "policy": "accept"}},
            {"rule": {"family": "ip", "table": "o", "chain": "c", "handle": 2, "expr": expr}}]}
    ct = [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "established"}}, {"accept": None}]
    for d in (doc(ct), doc([{"masquerade": None}], "nat")):
        fw, why = plan_filtering(parse_ruleset(d).tables, {})  # as the daemon plans: the sets resolved first
        assert fw is None and why is not None and "flags owner" in why, why
    fw, why = plan_filtering(parse_ruleset(doc([{"drop": None}])).tables, {})
    assert fw is not None and why is None


def test_a_table_listed_but_not_in_the_flags_read_before_is_taken_for_an_owners() -> None:
    """Flags are read before the listing: a table listed without flags came
    in between (a commit, so the rules are read again); until then what it
    drops stays on the kernel path."""
    from tna.netlink import netfilter

    listing = {"nftables": [
        {"table": {"family": "inet", "name": "o", "handle": 1}},
        {"chain": {"family": "inet", "table": "o", "name": "c", "handle": 1, "type": "filter", "hook": "forward",
                   "prio": 0, "policy": "drop"}}]}
    out = netfilter.Rulesets()
    orig = netfilter.run_tool
    netfilter.run_tool = lambda cmd: json.dumps(listing)  # type: ignore[assignment]
    try:
        netfilter._read_native({("inet", "o")}, {}, out)
    finally:
        netfilter.run_tool = orig
    assert out.tables[4]["inet o"].vanishing and out.tables[4]["inet o"].chains["c"].policy == "KERNEL"


def test_an_iptables_named_table_with_flags_is_read_the_native_way(ns: str) -> None:
    """iptables-nft decodes an `ip filter` whatever its flags: one its
    owner holds is read the native way, which heeds them."""
    from tna.netlink.netfilter import read_rulesets

    subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
    owner = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "-i"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
    assert owner.stdin is not None
    try:
        owner.stdin.write("add table ip filter { flags owner; }\n"
                          "add chain ip filter FORWARD { type filter hook forward priority 0; policy accept; }\n"
                          "add rule ip filter FORWARD udp dport 53 drop\n")
        owner.stdin.flush()
        deadline = time.monotonic() + 10
        while "filter" not in subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                                             capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with in_netns(ns):
            rs = read_rulesets()
        assert "filter" not in rs.tables[4] and rs.tables[4]["ip filter"].vanishing
        assert [r.unsupported for r in rs.tables[4]["ip filter"].chains["FORWARD"].rules] == [(VANISHING,)]
    finally:
        owner.kill()
        owner.wait()
