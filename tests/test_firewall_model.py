"""The reference semantics of a filter chain (tna/model/firewall.py) on the
recorded rule sets, no root."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from tna.model.firewall import ACCEPT, DROP, KERNEL, MAX_COMPILED_RULES, Packet, evaluate, firewall_plan, iface_matches
from tna.model.iptables import parse_save

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
    assert why is None and fw is not None and fw.v4 is not None and fw.v6 is None and fw.in4 is None
    # a rule that uses conntrack makes the kernel track its family, nothing else
    fw, why = firewall_plan({4: parse_save(head + "-A INPUT -m state --state NEW -j ACCEPT\nCOMMIT\n"), 6: {}})
    assert why is None and fw is not None and fw.ct4 and not fw.ct6 and fw.v4 is None and fw.in4 is not None
    fw, _ = firewall_plan({4: {}, 6: parse_save(head + "-A INPUT -m conntrack --ctstatus ASSURED\nCOMMIT\n")})
    assert fw is not None and fw.ct6 and not fw.ct4
    empty_nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
    fw, why = firewall_plan({4: parse_save(empty_nat), 6: {}})  # NAT needs conntrack, rules or not
    assert why is None and fw is not None and fw.ct4 and fw.v4 is None
    nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n"
    _, why = firewall_plan({4: parse_save(nat), 6: {}})
    assert why is not None and "nat table" in why
    many = "".join(f"-A FORWARD -p udp --dport {1000 + i} -j DROP\n" for i in range(MAX_COMPILED_RULES + 1))
    _, why = firewall_plan({4: parse_save(head + many + "COMMIT\n"), 6: {}})
    assert why is not None and "not compiled in yet" in why
