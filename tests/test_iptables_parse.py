"""The iptables-save parser on outputs recorded from iptables-nft 1.8.9
(`iptables-save -c`, `ip6tables-save`), no root."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from tna.model.hooks import _uses_conntrack
from tna.model.iptables import Neg, ParseError, parse_save

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def v4():
    return parse_save((DATA / "iptables_save_v4.txt").read_text())


def test_tables_chains_policies_and_counters(v4) -> None:
    assert set(v4) == {"filter", "nat"}
    f = v4["filter"]
    assert {n: c.policy for n, c in f.chains.items()} == {"INPUT": "ACCEPT", "FORWARD": "DROP",
                                                          "OUTPUT": "ACCEPT", "blk": None}
    assert f.chains["FORWARD"].counters == (12, 720)
    assert [r.index for r in f.chains["FORWARD"].rules] == list(range(1, 9))
    assert f.chains["FORWARD"].rules[0].counters == (100, 5000)
    assert not f.empty and not v4["nat"].empty


def test_stateful_accept(v4) -> None:
    r = v4["filter"].chains["FORWARD"].rules[0]
    assert r.ctstate == Neg(frozenset({"RELATED", "ESTABLISHED"}))
    assert r.target == "ACCEPT" and r.expressible and not r.jump


def test_addresses_interfaces_multiport_comment(v4) -> None:
    r = v4["filter"].chains["FORWARD"].rules[1]
    assert r.src == Neg(ipaddress.ip_network("192.0.2.0/24"))
    assert r.dst == Neg(ipaddress.ip_network("198.51.100.7/32"), neg=True)
    assert r.iif == Neg("eth+") and r.proto == Neg(6)
    assert r.dport == Neg(((22, 22), (80, 80), (8000, 8100)))
    assert r.comment == "web and ssh" and r.expressible


def test_jump_return_and_port_ranges(v4) -> None:
    fwd, blk = v4["filter"].chains["FORWARD"].rules, v4["filter"].chains["blk"].rules
    assert fwd[2].target == "blk" and fwd[2].jump and fwd[2].expressible
    assert fwd[3].sport == Neg(((53, 53),)) and fwd[3].dport == Neg(((1024, 65535),))
    assert blk[0].src == Neg(ipaddress.ip_network("203.0.113.0/25")) and blk[0].target == "DROP"
    assert blk[1].target == "RETURN" and blk[1].expressible


def test_what_tna_cannot_express_is_named(v4) -> None:
    fwd = v4["filter"].chains["FORWARD"].rules
    log = fwd[4]
    assert log.tcp_flags == Neg((0x06, 0x02)) and log.unsupported == ("-j LOG",)
    assert log.target_args == ("--log-prefix", "x y")
    assert fwd[5].icmp_type == Neg((8, None)) and fwd[5].expressible
    assert fwd[6].unsupported == ("-m string", "string --string", "string --algo")
    assert v4["nat"].chains["POSTROUTING"].rules[0].unsupported == ("-j MASQUERADE",)


def test_quoting_and_negated_protocol(v4) -> None:
    r = v4["filter"].chains["FORWARD"].rules[7]
    assert r.proto == Neg(6, neg=True) and r.comment == 'quote " and \\ kept'


def test_ipv6() -> None:
    t = parse_save((DATA / "iptables_save_v6.txt").read_text())["filter"]
    fwd = t.chains["FORWARD"].rules
    assert fwd[0].proto == Neg(58) and fwd[0].icmp_type == Neg((128, None))
    assert fwd[1].icmp_type == Neg((1, 4))
    assert fwd[2].tcp_flags == Neg((0x17, 0x02))  # --syn
    assert fwd[3].dst == Neg(ipaddress.ip_network("2001:db8:1::/64")) and fwd[3].dport == Neg(((443, 443),), True)
    assert t.chains["FORWARD"].counters == (0, 0)


def test_empty_ruleset_and_errors() -> None:
    empty = parse_save("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
    assert empty["filter"].empty
    assert parse_save("") == {}
    with pytest.raises(ParseError, match="line 2"):
        parse_save("*filter\n-A NOPE -j ACCEPT\nCOMMIT\n")
    with pytest.raises(ParseError):
        parse_save("-A FORWARD -j ACCEPT\n")
    with pytest.raises(ParseError):
        parse_save("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate BOGUS -j ACCEPT\n")


def test_a_line_read_again_takes_its_place_counters_and_targets_from_this_read() -> None:
    """Lines are parsed once and remembered (a rule set is re-read on every
    change); a rule's index, counters and whether its target is a chain
    still come from the read it is part of."""
    head = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    line = "-A FORWARD -s 192.0.2.7/32 -j blk\n"
    first = parse_save(head + ":blk - [0:0]\n[3:180] " + line + "COMMIT\n")["filter"].chains["FORWARD"].rules
    again = parse_save(head + "[9:540] -A FORWARD -j ACCEPT\n[1:60] " + line + "COMMIT\n")["filter"]
    (jump,), (_, lost) = first, again.chains["FORWARD"].rules
    assert (jump.index, jump.counters, jump.jump, jump.unsupported) == (1, (3, 180), True, ())
    assert (lost.index, lost.counters, lost.unsupported) == (2, (1, 60), ("-j blk",))
    assert lost.src == jump.src and lost.text == jump.text
    with pytest.raises(ParseError, match="unknown chain"):
        parse_save(head.replace(":FORWARD ACCEPT [0:0]\n", "") + line + "COMMIT\n")


def test_matches_after_a_stateful_one_restrict_nothing() -> None:
    """iptables runs a rule's matches in order: `-m recent --set` adds every
    TCP packet's source that reaches it, whatever its port, so the port
    match after it may not narrow what the rule could touch (the built-in
    -p and addresses run first and still do); before it, it does."""
    head = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    after, before = parse_save(head + "-A FORWARD -s 192.0.2.0/24 -p tcp -m recent --set --name ssh --mask "
                               "255.255.255.255 --rsource -m tcp --dport 22 -m set --match-set blk src -j ACCEPT\n"
                               "-A FORWARD -p tcp -m tcp --dport 22 -m recent --set --name ssh --mask "
                               "255.255.255.255 --rsource -j ACCEPT\nCOMMIT\n")["filter"].chains["FORWARD"].rules
    assert (after.dport, after.sets, after.proto, after.src) == (
        None, (), Neg(6), Neg(ipaddress.ip_network("192.0.2.0/24")))
    assert "-m recent" in after.unsupported and not after.expressible
    assert before.dport == Neg(((22, 22),)) and "-m recent" in before.unsupported


def test_a_conntrack_match_after_a_stateful_one_still_tracks_and_restricts_nothing() -> None:
    head = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    state, ctdir = parse_save(head + "-A FORWARD -m limit --limit 5/sec -m conntrack --ctstate NEW -j ACCEPT\n"
                              "-A FORWARD -m recent --set --name x -m conntrack --ctdir REPLY -j DROP\n"
                              "COMMIT\n")["filter"].chains["FORWARD"].rules
    assert (state.ctstate, ctdir.ctdir) == (None, None)
    assert _uses_conntrack(state) and _uses_conntrack(ctdir)


def test_a_field_matched_twice_is_the_kernels() -> None:
    """Both must hold; the fields keep one value (the last): the kernel decides what it lets through."""
    head = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    (r,) = parse_save(head + "-A FORWARD -p tcp -m tcp --dport 80 -m multiport --dports 81,82 -j DROP\n"
                      "COMMIT\n")["filter"].chains["FORWARD"].rules
    assert not r.expressible and "a second dport match" in r.unsupported
