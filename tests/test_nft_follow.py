"""The daemon follows an nftables commit of set elements as a map update
(no re-read, no new program), and holds the datapath from a commit's first
message until what it changed is in every map; anything it cannot follow
exactly is read again."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from tests.test_reconcile_order import reconcile, recording_daemon
from tna import daemon as daemon_mod
from tna import rulesinput
from tna.model.ipset import Member
from tna.model.nftables import parse_ruleset
from tna.model.nftsets import SetElement, mirrors, nft_set_name
from tna.netlink.netfilter import NetfilterChanged
from tna.snapshot import plan_filtering
from tna.synth.setgen import map_name

SET = "nft:inet t:bl"
RULESET = {"nftables": [
    {"table": {"family": "inet", "name": "t", "handle": 1}},
    {"set": {"family": "inet", "table": "t", "name": "bl", "type": "ipv4_addr", "handle": 2,
             "flags": ["interval"], "elem": [{"prefix": {"addr": "192.0.2.0", "len": 24}}]}},
    {"chain": {"family": "inet", "table": "t", "name": "c", "handle": 3, "type": "filter", "hook": "forward",
               "prio": 0, "policy": "accept"}},
    {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 4, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@bl"}},
        {"drop": None}]}},
]}
# 203.0.113.0/24 added: its first address and the first after it
ADD = (SetElement(SET, True, bytes([203, 0, 113, 0])), SetElement(SET, True, bytes([203, 0, 114, 0]), end=True))


def concat_port(proto: str) -> dict:
    """A rule dropping `ip saddr . <proto> dport @ap`."""
    return {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 5, "expr": [
        {"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "saddr"}},
                                                    {"payload": {"protocol": proto, "field": "dport"}}]},
                   "right": "@ap"}},
        {"drop": None}]}}


# a concatenation set, matched by a TCP and a UDP rule
CONCAT = {"nftables": [
    *RULESET["nftables"],
    {"set": {"family": "inet", "table": "t", "name": "ap", "type": ["ipv4_addr", "inet_service"], "handle": 6,
             "elem": [{"concat": ["192.0.2.1", 22]}]}},
    concat_port("tcp"), concat_port("udp"),
]}


def nft_daemon(monkeypatch: pytest.MonkeyPatch, ruleset: dict = RULESET) -> daemon_mod.Daemon:
    """A daemon whose rules in hand are ruleset, read with no commit under way."""
    d = recording_daemon(monkeypatch)
    rules = parse_ruleset(ruleset)
    fw, why = plan_filtering(rules.tables, rules.sets)
    assert why is None and fw is not None and fw.ipsets
    d.rules.tables, d.rules.nft_sets = rules.tables, dict(rules.sets)
    d.model.set_ipsets(dict(rules.sets))
    d.model.set_firewall(fw)
    d.holds.rules_exact = True
    reconcile(d)
    return d


def commit(d: daemon_mod.Daemon, elements: tuple[SetElement, ...] | None) -> NetfilterChanged:
    """What the reader thread does for one commit: hold, number it."""
    d.holds.nft_begin()
    return NetfilterChanged(d.holds.nft_end(1, False), elements)


def no_reread(monkeypatch: pytest.MonkeyPatch) -> None:
    def read(*args: Any) -> None:
        raise AssertionError("the rule sets were read again")
    monkeypatch.setattr(rulesinput, "read_firewall", read)


def test_set_elements_are_a_map_update_and_the_hold_ends_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    d = nft_daemon(monkeypatch)
    no_reread(monkeypatch)
    c = commit(d, ADD)
    assert d._apply_set_elements([c])
    assert len(d.model.ipsets[SET].members) == 2 and d.holds.rules_gen == c.gen
    calls = reconcile(d)
    ops = [op for op, _ in calls]
    assert "attach" not in ops, calls
    assert len(dict(calls)["sync_ipsets"][map_name(SET)]) == 2
    synced = ops.index("sync_ipsets")
    assert ("release", 0) not in calls[:synced] and calls[-1] == ("release", 0), calls


def test_a_concatenation_sets_elements_update_the_set_of_each_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    d = nft_daemon(monkeypatch, CONCAT)
    no_reread(monkeypatch)
    key = bytes([198, 51, 100, 7]) + (8080).to_bytes(2, "big") + bytes(2)  # the port in a 32-bit register
    c = commit(d, (SetElement("nft:inet t:ap", True, key),))
    assert d._apply_set_elements([c])
    calls = reconcile(d)
    assert "attach" not in [op for op, _ in calls], calls
    for proto, num in (("tcp", 6), ("udp", 17)):
        name = f"nft:inet t:ap:{proto}"
        assert {(str(m.net), m.proto, m.port) for m in d.model.ipsets[name].members} == {
            ("192.0.2.1/32", num, 22), ("198.51.100.7/32", num, 8080)}
        assert len(dict(calls)["sync_ipsets"][map_name(name)]) == 2


# a port set, matched by TCP rules of both IP versions
PORTS = {"nftables": [
    *RULESET["nftables"],
    {"set": {"family": "inet", "table": "t", "name": "svc", "type": "inet_service", "handle": 6, "elem": [22]}},
    {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 7, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": "@svc"}},
        {"drop": None}]}},
]}


def test_a_port_sets_elements_update_the_set_of_each_ip_version(monkeypatch: pytest.MonkeyPatch) -> None:
    d = nft_daemon(monkeypatch, PORTS)
    no_reread(monkeypatch)
    c = commit(d, (SetElement("nft:inet t:svc", True, (8080).to_bytes(2, "big")),))
    assert d._apply_set_elements([c])
    calls = reconcile(d)
    assert "attach" not in [op for op, _ in calls], calls
    for v, net in ((4, "0.0.0.0/0"), (6, "::/0")):
        name = f"nft:inet t:svc:tcp:{v}"
        assert {(str(m.net), m.proto, m.port) for m in d.model.ipsets[name].members} == {
            (net, 6, 22), (net, 6, 8080)}
        assert len(dict(calls)["sync_ipsets"][map_name(name)]) == 2


def test_a_port_set_some_rule_compiles_as_code_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sctp dport @svc` compiles the set's ports into code (a hash:*,port
    map reads an SCTP port as ipset does, not as nft): an element change of
    it is a re-read, even where `tcp dport @svc` mirrors it as a map."""
    ruleset = {"nftables": [*PORTS["nftables"], {"rule": {
        "family": "inet", "table": "t", "chain": "c", "handle": 8, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "sctp", "field": "dport"}}, "right": "@svc"}},
            {"drop": None}]}}]}
    d = nft_daemon(monkeypatch, ruleset)
    c = commit(d, (SetElement("nft:inet t:svc", True, (8080).to_bytes(2, "big")),))
    assert not d._apply_set_elements([c])


def _set(name: str, handle: int, typ: object = "ipv4_addr") -> dict:
    return {"set": {"family": "inet", "table": "t", "name": name, "type": typ, "handle": handle}}


def _match(left: object, right: str, handle: int) -> dict:
    return {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": handle, "expr": [
        {"match": {"op": "==", "left": left, "right": right}}, {"drop": None}]}}


SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
# set names may hold ':' (the kernel allows any character): "m" beside
# "m:tcp", concatenation "c" (its TCP mirror) beside address set "c:tcp"
COLONS = {"nftables": [
    *RULESET["nftables"][:3],
    _set("m", 10), _set("m:tcp", 11), _set("c", 12, ["ipv4_addr", "inet_service"]), _set("c:tcp", 13),
    _match(SADDR, "@m", 20), _match(SADDR, "@m:tcp", 21), _match(SADDR, "@c:tcp", 23),
    _match({"concat": [SADDR, {"payload": {"protocol": "tcp", "field": "dport"}}]}, "@c", 22),
]}


@pytest.mark.parametrize("name", ["m", "m:tcp", "c", "c:tcp"])
def test_an_element_of_a_set_named_with_colons_changes_that_set_only(monkeypatch: pytest.MonkeyPatch,
                                                                      name: str) -> None:
    d = nft_daemon(monkeypatch, COLONS)
    no_reread(monkeypatch)
    before = dict(d.model.ipsets)
    assert len([n for n in before if n.startswith("nft:inet t:")]) == 4  # m, m:tcp, c:tcp, c's TCP mirror
    key = bytes([203, 0, 113, 9]) + (bytes([0, 80, 0, 0]) if name == "c" else b"")
    c = commit(d, (SetElement(nft_set_name("inet", "t", name), True, key),))
    assert d._apply_set_elements([c])
    changed = {n for n, s in d.model.ipsets.items() if s != before[n]}
    assert changed == set(mirrors(nft_set_name("inet", "t", name), before)) and len(changed) == 1


def test_a_commit_under_way_holds_whatever_the_counts_say(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a commit's first message to its end the reader decodes it; a
    reconcile meanwhile must not end the hold (the kernel runs it already)."""
    d = nft_daemon(monkeypatch)
    d.holds.nft_begin()
    assert d.holds.commits == d.holds.rules_gen
    assert ("release", 0) not in reconcile(d)
    d.holds.rules_gen = d.holds.nft_end(1, False)
    assert reconcile(d)[-1] == ("release", 0)


@pytest.mark.parametrize("case", ["other commit", "unknown set", "read while a commit was under way",
                                  "a commit missed", "stale set"])
def test_what_cannot_be_followed_exactly_is_read_again(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    d = nft_daemon(monkeypatch)
    before = d.model.ipsets
    if case == "other commit":
        commits = [commit(d, ADD), commit(d, None)]
    elif case == "unknown set":
        commits = [commit(d, tuple(SetElement("nft:inet t:other", e.add, e.key, e.end) for e in ADD))]
    elif case == "read while a commit was under way":
        d.holds.rules_exact = False
        commits = [commit(d, ADD)]
    elif case == "a commit missed":
        commit(d, ADD)
        commits = [commit(d, ADD)]
    else:  # the commit is in the set in hand already: its add overlaps
        s = d.rules.nft_sets[SET]
        d.rules.nft_sets[SET] = replace(s, members=s.members | {Member(ipaddress.ip_network("203.0.113.0/24"))})
        commits = [commit(d, ADD)]
    assert not d._apply_set_elements(commits)
    assert d.model.ipsets == before and d.holds.rules_gen != d.holds.commits  # still held, for the re-read


def _vmap_ruleset(elements: list) -> dict:
    """`ip saddr vmap @blk` over a named verdict map of these elements."""
    return {"nftables": [
        *RULESET["nftables"][:1], RULESET["nftables"][2],
        {"map": {"family": "inet", "table": "t", "name": "blk", "type": "ipv4_addr", "map": "verdict",
                 "handle": 5, "elem": elements}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 6, "expr": [
            {"vmap": {"key": {"payload": {"protocol": "ip", "field": "saddr"}}, "data": "@blk"}}]}}]}


def _sctp_ruleset(ports: list[int]) -> dict:
    """`sctp dport @svc drop` over a named port set of these elements."""
    return {"nftables": [
        *RULESET["nftables"][:1], RULESET["nftables"][2],
        {"set": {"family": "inet", "table": "t", "name": "svc", "type": "inet_service", "handle": 5, "elem": ports}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 6, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "sctp", "field": "dport"}}, "right": "@svc"}},
            {"drop": None}]}}]}


@pytest.mark.parametrize("before,after", [
    (_sctp_ruleset([22]), _sctp_ruleset([22, 8080])),
    (_vmap_ruleset([["192.0.2.1", {"drop": None}]]), _vmap_ruleset([["192.0.2.2", {"drop": None}]])),
    (_vmap_ruleset([["192.0.2.1", {"drop": None}]]), _vmap_ruleset([["192.0.2.1", {"accept": None}]])),
], ids=["port-set-as-code", "vmap-key", "vmap-verdict"])
def test_elements_of_a_named_set_compiled_as_code_make_another_rule_set(before: dict, after: dict) -> None:
    """A named set or verdict map whose elements become code (the rule's
    text names only `@set`): another element is another rule set, whose
    program must replace the old one when the commit is read again."""
    from tna.synth.render import render

    fws = []
    for ruleset in (before, after):
        rules = parse_ruleset(ruleset)
        fw, why = plan_filtering(rules.tables, rules.sets)
        assert why is None and fw is not None
        fws.append(fw)
    assert fws[0] != fws[1]
    assert render("xdp", ("firewall", "router"), False, fws[0]) != render("xdp", ("firewall", "router"), False, fws[1])
