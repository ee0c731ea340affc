"""held_traffic(): what a narrowed hold keeps on the kernel path while
programs for changed rules load - checked against the reference
semantics: a packet outside every flow it returns gets the same verdict
and the same rule counts from the old rules as from the new."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_tables_model import save
from tna.bpf import abi
from tna.model.firewall import Firewall, Packet
from tna.model.fwdiff import HELD_MAX, HeldFlow, _key, held_traffic
from tna.model.hooks import FORWARD_HOOK, evaluate_hook, firewall_plan
from tna.model.iptables import Neg, Rule, Table, parse_save

BASE = [
    "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A FORWARD -s 192.0.2.0/24 -p udp -m udp --dport 9 -j ACCEPT",
    "-A FORWARD -i lan -j USER",
    "-A USER -d 198.51.100.7/32 -p tcp -m tcp --dport 80 -j ACCEPT",
    "-A USER -j RETURN",
]


# the IPv6 twin of each IPv4 prefix the tests use (ip6tables-save takes no IPv4)
V6 = {"192.0.2.0/24": "2001:db8::/64", "198.51.100.7/32": "2001:db8:1::7/128", "203.0.113.9/32": "2001:db8:2::9/128",
      "203.0.113.0/24": "2001:db8:2::/64", "192.0.2.1/32": "2001:db8::1/128"}


def fw(rules: list[str], policy: str = "DROP", extra: str = "") -> Firewall:
    text = ("*filter\n:INPUT ACCEPT [0:0]\n" f":FORWARD {policy} [0:0]\n:OUTPUT ACCEPT [0:0]\n:USER - [0:0]\n{extra}"
            + "".join(r + "\n" for r in rules) + "COMMIT\n")
    text6 = text
    for v4, v6 in V6.items():
        text6 = text6.replace(v4, v6)
    f, why = firewall_plan({4: parse_save(text), 6: parse_save(text6)})
    assert f is not None, why
    return f


def test_an_inserted_rule_holds_what_it_could_match() -> None:
    new = [*BASE[:1], "-A FORWARD -d 203.0.113.9/32 -p tcp -m tcp --dport 443 -j DROP", *BASE[1:]]
    assert held_traffic(fw(BASE), fw(new)) == (
        HeldFlow(4, 6, None, ipaddress.ip_network("203.0.113.9/32"), dport=(443, 443)),
        HeldFlow(6, 6, None, ipaddress.ip_network("2001:db8:2::9/128"), dport=(443, 443)))


def test_a_deleted_rule_in_a_user_chain_holds_its_traffic_in_both_families() -> None:
    held = held_traffic(fw(BASE), fw([r for r in BASE if "USER -d" not in r]))
    assert held == (HeldFlow(4, 6, None, ipaddress.ip_network("198.51.100.7/32"), dport=(80, 80)),
                    HeldFlow(6, 6, None, ipaddress.ip_network("2001:db8:1::7/128"), dport=(80, 80)))


def test_negated_and_set_fields_are_any() -> None:
    new = [*BASE, "-A FORWARD ! -s 192.0.2.1/32 -p udp -m multiport --dports 5,7:8 -j DROP"]
    assert held_traffic(fw(BASE), fw(new)) == (HeldFlow(4, 17, dport=(5, 8)),
                                              HeldFlow(6, 17, dport=(5, 8)))


def test_what_else_changes_holds_everything() -> None:
    assert held_traffic(fw(BASE), fw(BASE, policy="ACCEPT")) is None  # a policy
    assert held_traffic(fw(BASE), fw([*BASE, "-A FORWARD -i wan -j DROP"])) is None  # a new interface pattern
    assert held_traffic(fw(BASE), fw([*BASE, "-A FORWARD -j DROP"])) is None  # a rule that matches everything
    assert held_traffic(fw(BASE), None) is None and held_traffic(None, fw(BASE)) is None
    many = [f"-A FORWARD -p tcp -m tcp --dport {p} -j DROP" for p in range(1, HELD_MAX + 2)]
    assert held_traffic(fw(BASE), fw(BASE + many)) is None
    assert held_traffic(fw(BASE), fw(BASE)) == ()


def test_the_model_holds_no_more_flows_than_the_datapath_can() -> None:
    assert HELD_MAX == abi.FW_HOLD_MAX  # tna_abi.h's TNA_FW_HOLD_MAX: the model reads no header


def test_a_new_user_chain_and_its_jump() -> None:
    new = [*BASE, "-A FORWARD -d 203.0.113.0/24 -j NEW", "-A NEW -p udp -j DROP"]
    held = held_traffic(fw(BASE), fw(new, extra=":NEW - [0:0]\n"))
    assert held == (HeldFlow(4, 0, None, ipaddress.ip_network("203.0.113.0/24")),
                    HeldFlow(6, 0, None, ipaddress.ip_network("2001:db8:2::/64")))


# the property: the reference semantics of both rule sets agree outside
# the held flows, over every table a forwarded packet passes
RULES = st.sampled_from([
    ("filter", "-A FORWARD -d 203.0.113.9/32 -p tcp -m tcp --dport 443 -j DROP"),
    ("filter", "-A FORWARD -s 192.0.2.0/25 -j ACCEPT"),
    ("filter", "-A FORWARD -p udp -m udp --sport 53 -j USER"),
    ("filter", "-A FORWARD -d 198.51.100.0/24 -p udp -g USER"),
    ("filter", "-A FORWARD -d 198.51.100.0/24 -p udp -j RETURN"),
    ("filter", "-A FORWARD -d 198.51.100.7/32 -j LOG"),
    ("filter", "-A FORWARD -p tcp -m recent --set --name x -m tcp --dport 80 -j ACCEPT"),
    ("filter", "-A USER -s 192.0.2.128/25 -p tcp -j DROP"),
    ("filter", "-A USER -d 203.0.113.0/24 -j ACCEPT"),
    ("filter", "-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -d 203.0.113.0/28 -j DROP"),
    ("raw", "-A PREROUTING -d 203.0.113.77/32 -j DROP"),
    ("raw", "-A PREROUTING -p udp -m udp --dport 9 -j ACCEPT"),
    ("mangle", "-A FORWARD -s 192.0.2.200/32 -p tcp -j DROP"),
    ("mangle", "-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"),
])
ADDRS = st.sampled_from(["192.0.2.1", "192.0.2.200", "198.51.100.7", "198.51.100.9", "203.0.113.9", "203.0.113.77"])


def _inside(h: HeldFlow, p: Packet) -> bool:
    return ((h.proto in (0, p.proto)) and (h.src is None or p.src in h.src) and (h.dst is None or p.dst in h.dst)
            and (p.sport is None or h.sport[0] <= p.sport <= h.sport[1])
            and (p.dport is None or h.dport[0] <= p.dport <= h.dport[1]))


def _tables(rules: list[tuple[str, str]]) -> dict[str, Table]:
    by = {t: [r for tt, r in rules if tt == t] for t in ("filter", "raw", "mangle")}
    return parse_save(save(filter=":FORWARD DROP [0:0]\n:USER - [0:0]\n" + "\n".join(
        by["filter"][:1] + BASE + by["filter"][1:]), raw="\n".join(by["raw"]), mangle="\n".join(by["mangle"])))


@settings(max_examples=400, deadline=None)
@given(old=st.lists(RULES, max_size=5), new=st.lists(RULES, max_size=5),
       src=ADDRS, dst=ADDRS, proto=st.sampled_from([6, 17, 1]), sport=st.sampled_from([53, 1000]),
       dport=st.sampled_from([9, 80, 443]), iif=st.sampled_from(["lan", "wan"]),
       state=st.sampled_from(["NEW", "ESTABLISHED"]), flags=st.sampled_from([0x02, 0x10]))
def test_outside_the_held_flows_the_old_rules_decide_as_the_new(old: list[tuple[str, str]],
                                                                new: list[tuple[str, str]], src: str, dst: str,
                                                                proto: int, sport: int, dport: int, iif: str,
                                                                state: str, flags: int) -> None:
    a, b = _tables(old), _tables(new)
    held = held_traffic(firewall_plan({4: a})[0], firewall_plan({4: b})[0])
    ports = proto != 1
    pkt = Packet(ipaddress.ip_address(src), ipaddress.ip_address(dst), iif, "out", proto,
                 sport if ports else None, dport if ports else None, tcp_flags=flags if proto == 6 else None,
                 icmp_type=8 if proto == 1 else None, icmp_code=0 if proto == 1 else None, ctstate=state)
    if held is None or any(_inside(h, pkt) for h in held):
        return
    trace_a: list[tuple[str, str, int]] = []
    trace_b: list[tuple[str, str, int]] = []
    assert evaluate_hook(a, FORWARD_HOOK, pkt, trace_a) == evaluate_hook(b, FORWARD_HOOK, pkt, trace_b)

    def texts(ts: dict[str, Table], trace: list[tuple[str, str, int]]) -> list[str]:
        return [ts[t].chains[c].rules[i - 1].text if i else f"{t} {c}" for t, c, i in trace]
    assert texts(a, trace_a) == texts(b, trace_b)  # the same rules counted


def test_an_nft_rule_is_keyed_by_all_it_does_but_its_place() -> None:
    rule = Rule("forward", 3, "tcp dport 22 drop", "DROP", proto=Neg(6), dport=Neg(((22, 22),)), handle=9)
    assert _key(rule) == _key(replace(rule, index=7)) == _key(replace(rule, counters=(5, 300)))
    assert _key(rule) != _key(replace(rule, dport=Neg(((23, 23),)))) != _key(replace(rule, target="ACCEPT"))
    assert _key(rule) != _key(replace(rule, handle=10))  # another nft rule
