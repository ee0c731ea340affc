"""The reference semantics of a filter chain (tna/model/firewall.py) on the
recorded rule sets, no root."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tna.model.config import Model
from tna.model.firewall import (
    ACCEPT,
    DROP,
    KERNEL,
    Packet,
    RuleSet,
    evaluate,
    iface_matches,
    segments,
)
from tna.model.hooks import firewall_plan
from tna.model.iptables import Chain, Neg, Rule, Table, parse_save
from tna.synth.fwgen import MAX_COMPILED_RULES, set_entries, unfit

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def v4():
    return parse_save((DATA / "iptables_save_v4.txt").read_text())["filter"]


def pkt(src: str = "192.0.2.2", dst: str = "198.51.100.2", proto: int = 17, sport: int | None = 1000,
        dport: int | None = 2000, iif: str = "eth1", oif: str | None = "eth2", **kw: object) -> Packet:
    return Packet(ip_address(src), ip_address(dst), iif, oif, proto, sport, dport, **kw)  # type: ignore[arg-type]


def test_interface_wildcards() -> None:
    assert iface_matches("eth+", "eth0") and iface_matches("eth0", "eth0")
    assert not iface_matches("eth+", "veth0") and not iface_matches("eth0", "eth01")
    assert iface_matches("+", "anything") and not iface_matches("eth0", None)


def test_established_is_accepted(v4) -> None:
    assert evaluate(v4, "FORWARD", pkt(ctstate="ESTABLISHED")) == ACCEPT
    assert evaluate(v4, "FORWARD", pkt(ctstate="RELATED", proto=1, sport=None, dport=None)) == ACCEPT


def test_allowed_service_and_negated_destination(v4) -> None:
    web = pkt(proto=6, dport=8050, tcp_flags=0x10, ctstate="NEW")
    assert evaluate(v4, "FORWARD", web) == ACCEPT
    # ! -d 198.51.100.7: that host is not covered by the rule; the next rules
    # decide (the SYN-less packet reaches the string match: kernel)
    assert evaluate(v4, "FORWARD", pkt(dst="198.51.100.7", proto=6, dport=80, tcp_flags=0x10,
                                       ctstate="NEW")) == KERNEL
    # -i eth+: from another interface, not this rule either
    assert evaluate(v4, "FORWARD", pkt(iif="veth1", proto=6, dport=80, tcp_flags=0x10, ctstate="NEW")) == KERNEL


def test_user_chain_drop_and_return(v4) -> None:
    assert evaluate(v4, "FORWARD", pkt(src="203.0.113.5", ctstate="NEW")) == DROP
    # 203.0.113.200 is outside the /25: RETURN, then the DNS rule accepts
    assert evaluate(v4, "FORWARD", pkt(src="203.0.113.200", sport=53, dport=5353, ctstate="NEW")) == ACCEPT


def test_unexpressible_rules_only_claim_what_they_could_match(v4) -> None:
    # the LOG rule matches TCP SYNs: those go to the kernel ...
    assert evaluate(v4, "FORWARD", pkt(src="198.51.100.9", proto=6, dport=25, tcp_flags=0x02,
                                       ctstate="NEW")) == KERNEL
    # ... ICMP echo requests never reach it: the ICMP rule accepts first
    assert evaluate(v4, "FORWARD", pkt(proto=1, sport=None, dport=None, icmp_type=8, icmp_code=0,
                                       ctstate="NEW")) == ACCEPT
    # the string match could match anything that gets that far
    assert evaluate(v4, "FORWARD", pkt(proto=1, sport=None, dport=None, icmp_type=0, icmp_code=0,
                                       ctstate="NEW")) == KERNEL


def test_input_chain_and_policy(v4) -> None:
    assert evaluate(v4, "INPUT", pkt(dport=9999, oif=None)) == DROP
    assert evaluate(v4, "INPUT", pkt(dport=9998, oif=None)) == ACCEPT  # policy


def test_ipv6_rules_and_policy() -> None:
    t = parse_save((DATA / "iptables_save_v6.txt").read_text())["filter"]
    p6 = dict(src="2001:db8:2::2", dst="2001:db8:1::5", oif="eth2")
    assert evaluate(t, "FORWARD", pkt(**p6, proto=58, sport=None, dport=None, icmp_type=128, icmp_code=0)) == ACCEPT
    assert evaluate(t, "FORWARD", pkt(**p6, proto=6, dport=443, tcp_flags=0x02)) == DROP   # --syn
    assert evaluate(t, "FORWARD", pkt(**p6, proto=6, dport=443, tcp_flags=0x10)) == ACCEPT  # policy
    assert evaluate(t, "FORWARD", pkt(**p6, proto=6, dport=22, tcp_flags=0x10)) == DROP    # ! --dport 443


def test_state_matches_act_only_where_every_possible_state_agrees() -> None:
    t = parse_save("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                   "-A FORWARD -m conntrack --ctstate INVALID -j DROP\n"
                   "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                   "-A FORWARD -p udp -m udp --dport 53 -m state ! --state INVALID -j ACCEPT\n"
                   "-A FORWARD -p udp -m udp --dport 54 -j DROP\nCOMMIT\n")["filter"]
    p = dict(src=ip_address("192.0.2.2"), dst=ip_address("198.51.100.2"), iif="a", oif="b", proto=17, sport=1)
    unknown = frozenset({"NEW", "INVALID"})  # no entry, checksum out of reach
    assert evaluate(t, "FORWARD", Packet(**p, dport=53, ctstate="ESTABLISHED")) == ACCEPT
    assert evaluate(t, "FORWARD", Packet(**p, dport=53, ctstate="INVALID")) == DROP
    assert evaluate(t, "FORWARD", Packet(**p, dport=53, ctstate="NEW")) == ACCEPT
    assert evaluate(t, "FORWARD", Packet(**p, dport=54, ctstate=unknown)) == KERNEL  # rule 1: INVALID only
    trace: list[tuple[str, int]] = []
    assert evaluate(t, "FORWARD", Packet(**p, dport=54, ctstate="NEW"), trace) == DROP
    assert trace == [("FORWARD", 4)]
    assert evaluate(t, "FORWARD", Packet(**p, dport=99, ctstate="NEW")) == DROP  # policy


def test_plans_what_it_may_take_over() -> None:
    head = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    assert firewall_plan({4: parse_save(head + "COMMIT\n"), 6: {}}) == (None, None)  # nothing to do
    fw, why = firewall_plan({4: parse_save(head + "-A FORWARD -p udp -j DROP\nCOMMIT\n"), 6: {}})
    assert why is None and fw is not None and fw.fwd4 is not None and fw.fwd6 is None and fw.in4 is None
    # a rule that uses conntrack makes the kernel track its family, nothing else
    fw, why = firewall_plan({4: parse_save(head + "-A INPUT -m state --state NEW -j ACCEPT\nCOMMIT\n"), 6: {}})
    assert why is None and fw is not None and fw.ct4 and not fw.ct6 and fw.fwd4 is None and fw.in4 is not None
    fw, _ = firewall_plan({4: {}, 6: parse_save(head + "-A INPUT -m conntrack --ctstatus ASSURED\nCOMMIT\n")})
    assert fw is not None and fw.ct6 and not fw.ct4
    empty_nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
    fw, why = firewall_plan({4: parse_save(empty_nat), 6: {}})  # NAT needs conntrack, rules or not
    assert why is None and fw is not None and fw.ct4 and fw.fwd4 is None and not fw.nat4
    # NAT rules: the fast path rewrites established connections of that family
    nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n"
    fw, why = firewall_plan({4: parse_save(nat), 6: {}})
    assert why is None and fw is not None and fw.ct4 and fw.nat4 and not fw.nat6
    # ... and no INPUT early drop: PREROUTING may send a new connection elsewhere
    fw, _ = firewall_plan({4: parse_save(head + "-A INPUT -p tcp -j DROP\nCOMMIT\n" + nat), 6: {}})
    assert fw is not None and fw.nat4 and fw.in4 is None
    # thousands of same-shaped rules are one set; rules that cannot share a
    # lookup (alternating targets) are code, and code has a limit
    many = "".join(f"-A FORWARD -p udp --dport {1000 + i} -j DROP\n" for i in range(10 * MAX_COMPILED_RULES))
    fw, why = firewall_plan({4: parse_save(head + many + "COMMIT\n"), 6: {}})
    assert why is None and fw is not None and unfit(fw) is None
    mixed = "".join(f"-A FORWARD -p udp --dport {1000 + i} -j {('DROP', 'ACCEPT')[i % 2]}\n"
                    for i in range(MAX_COMPILED_RULES + 1))
    fw, why = firewall_plan({4: parse_save(head + mixed + "COMMIT\n"), 6: {}})
    assert why is None and fw is not None
    why = unfit(fw)
    assert why is not None and f"at most {MAX_COMPILED_RULES}" in why


# --- sets of rules decided by one lookup (RuleSet, fwgen.set_entries) --------

def _lpm(entries: dict[bytes, bytes], data: bytes) -> int | None:
    """A longest-prefix-match lookup, as the kernel's LPM trie does it."""
    best: tuple[int, int] | None = None
    n = int.from_bytes(data, "big")
    width = len(data) * 8
    for key, value in entries.items():
        bits = int.from_bytes(key[:4], "little")
        prefix = int.from_bytes(key[4:4 + len(data)], "big")
        mask = ((1 << bits) - 1) << (width - bits) if bits else 0
        if n & mask == prefix and (best is None or bits > best[0]):
            best = (bits, int.from_bytes(value, "little"))
    return None if best is None else best[1]


_NETS = ["192.0.2.0/24", "192.0.2.0/25", "192.0.2.64/26", "192.0.2.96/27", "192.0.2.100/32", "192.0.2.7/32",
         "198.51.100.0/24", "198.51.100.2/32"]


@settings(max_examples=150, deadline=None)
@given(rules=st.lists(st.tuples(st.sampled_from(_NETS), st.sampled_from(["tcp", "udp"]),
                                st.lists(st.integers(20, 25), min_size=1, max_size=3)), min_size=4, max_size=24),
       pkts=st.lists(st.tuples(st.sampled_from(["192.0.2.1", "192.0.2.7", "192.0.2.70", "192.0.2.100",
                                                "192.0.2.97", "198.51.100.2", "203.0.113.1"]),
                               st.sampled_from([6, 17]), st.integers(19, 26)), min_size=1, max_size=20))
def test_a_set_lookup_finds_the_first_rule_that_matches(rules: list[tuple[str, str, list[int]]],
                                                        pkts: list[tuple[str, int, int]]) -> None:
    """For same-shaped rules, one LPM lookup in fwgen's entries gives the
    rule the kernel's walk stops at (what its counters count)."""
    text = "".join(f"-A FORWARD -s {net} -p {p} -m multiport --dports {','.join(map(str, ports))} -j DROP\n"
                   for net, p, ports in rules)
    table = parse_save(f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{text}COMMIT\n")
    chain = table["filter"].chains["FORWARD"]
    (rs,) = segments(tuple(chain.rules))
    assert isinstance(rs, RuleSet) and rs.fields == ("proto", "dport", "src") and rs.lpm == "src"
    entries = set_entries(rs, 4, {r.index: r.index for r in rs.rules})
    for src, proto, dport in pkts:
        trace: list[tuple[str, int]] = []
        pkt = Packet(ip_address(src), ip_address("198.51.100.9"), "a", "b", proto, 1000, dport)
        verdict = evaluate(table["filter"], "FORWARD", pkt, trace)
        data = bytes([proto]) + dport.to_bytes(2, "big") + ip_address(src).packed
        assert _lpm(entries, data) == (trace[0][1] if verdict == DROP else None)


def test_rules_group_into_sets_only_where_order_needs_no_code() -> None:
    def shape(text: str) -> list[str]:
        t = parse_save(f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{text}COMMIT\n")
        return [f"set{len(s.rules)}" if isinstance(s, RuleSet) else "rule"
                for s in segments(tuple(t["filter"].chains["FORWARD"].rules))]
    drops = "".join(f"-A FORWARD -s 192.0.2.{i}/32 -j DROP\n" for i in range(6))
    assert shape(drops) == ["set6"]
    assert shape(drops[:3 * 34]) == ["rule"] * 3  # shorter than SET_MIN: code is cheaper
    assert shape(drops + "-A FORWARD -s 192.0.2.9/32 -j ACCEPT\n" + drops) == ["set6", "rule", "set6"]
    assert shape(drops.replace("-s 192.0.2.3/32", "! -s 192.0.2.3/32")) == ["rule"] * 6  # a negation splits
    # two prefix fields cannot share one key: the run breaks where both appear
    both = "".join(f"-A FORWARD -s 192.0.2.{i}/32 -d 198.51.100.0/{24 + i} -j DROP\n" for i in range(5))
    assert shape(both + "-A FORWARD -s 192.0.2.0/24 -d 198.51.100.0/24 -j DROP\n") == ["set5", "rule"]
    assert shape("".join(f"-A FORWARD -p tcp -m tcp --dport 1:{i + 100} -j DROP\n" for i in range(5))) == ["rule"] * 5


def test_the_reverse_path_check_decides_only_where_the_route_back_is_known() -> None:
    """nft's `fib saddr . iif oif missing drop`: the fast path knows only that
    the route back leaves by the input device (rpf True) or nothing (None):
    unknown sends what the rule could drop to the kernel."""
    t = Table("filter", {"FORWARD": Chain("FORWARD", ACCEPT, rules=[
        Rule(chain="FORWARD", index=1, text="fib saddr . iif oif missing drop", target=DROP,
             rpf=Neg(True, neg=True))])})
    assert evaluate(t, "FORWARD", pkt(rpf=True)) == ACCEPT
    assert evaluate(t, "FORWARD", pkt()) == KERNEL
    exists = Table("filter", {"FORWARD": Chain("FORWARD", DROP, rules=[
        Rule(chain="FORWARD", index=1, text="fib saddr . iif oif exists accept", target=ACCEPT, rpf=Neg(True))])})
    assert evaluate(exists, "FORWARD", pkt(rpf=True)) == ACCEPT
    assert evaluate(exists, "FORWARD", pkt()) == KERNEL


def test_an_equal_rule_set_read_again_keeps_the_one_in_hand() -> None:
    """Programs are built for the model's Firewall object: an equal one
    read again (a commit elsewhere) must not make every later comparison
    walk the rules."""
    text = "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -p udp -m udp --dport 7 -j ACCEPT\nCOMMIT\n"
    first, _ = firewall_plan({4: parse_save(text)})
    again, _ = firewall_plan({4: parse_save(text)})
    assert first == again and first is not again
    m = Model()
    assert m.set_firewall(first)
    assert not m.set_firewall(again) and m.firewall is first
