"""How the rule sets are read (tna/netlink/netfilter.py) when native
nftables tables exist: `nft -j list ruleset` only then, only the native
tables' items handed to the translation, tables iptables-nft-save calls
incompatible read natively, the native sets mirrored with the ipsets but
never polled as ipsets.  The tools' output is canned (shaped as
libnftables-json(5) and iptables-save(8) document it), except for the
dormant table (root: a namespace of its own)."""

from __future__ import annotations

import json
import subprocess
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from netns_labs.lab import in_netns
from tests.nft_tables import native
from tna.model.ipset import IpSet
from tna.netlink import netfilter

IPT_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:180]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


def chain(family: str, table: str, name: str, hook: str | None = "forward") -> dict[str, Any]:
    c: dict[str, Any] = {"family": family, "table": table, "name": name, "handle": 1}
    if hook:
        c.update(type="filter", hook=hook, prio=0, policy="accept")
    return {"chain": c}


def fake(monkeypatch: pytest.MonkeyPatch, chains: list[dict], save4: str = "", ruleset: list[dict] | None = None
         ) -> tuple[list[list[str]], list[dict]]:
    """Canned tools; returns the commands run and the documents translated."""
    ran: list[list[str]] = []
    given: list[dict] = []

    def run(cmd: list[str]) -> str:
        ran.append(cmd)
        if cmd[:3] == ["nft", "-j", "list"]:
            items = chains if cmd[3] == "chains" else ruleset or []
            return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]})
        return save4 if cmd[0].startswith("iptables") else ""

    def parse(doc: dict) -> SimpleNamespace:
        given.append(doc)
        t = native("inet filter", ":forward DROP [0:0]\n-A forward -p tcp -j ACCEPT", {"forward": ("forward", 0)})
        blocked = IpSet("inet filter blocked", "hash:ip", 4, 65536)
        return SimpleNamespace(tables={4: {"inet filter": t}, 6: {"inet filter": t}},
                               sets={blocked.name: blocked}, foreign=[])

    monkeypatch.setattr(netfilter, "run_tool", run)
    monkeypatch.setattr(netfilter, "parse_ruleset", parse)
    monkeypatch.setattr(netfilter, "_legacy_tables", lambda version: [])
    return ran, given


def test_only_iptables_tables_list_no_ruleset(monkeypatch: pytest.MonkeyPatch) -> None:
    ran, given = fake(monkeypatch, [chain("ip", "filter", "FORWARD")], IPT_FILTER)
    rs = netfilter.read_rulesets()
    assert ["nft", "-j", "list", "ruleset"] not in ran and not given
    assert list(rs.tables[4]) == ["filter"] and not rs.sets and not rs.foreign


def test_native_tables_are_read_once_and_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [chain("ip", "filter", "FORWARD"), chain("inet", "filter", "forward"), chain("inet", "filter", "u", None),
             {"table": {"family": "inet", "name": "filter", "handle": 1}},
             {"table": {"family": "ip", "name": "filter", "handle": 2}},
             {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 3, "expr": []}},
             {"set": {"family": "inet", "table": "filter", "name": "blocked", "type": "ipv4_addr", "handle": 4}}]
    ran, given = fake(monkeypatch, items[:3], IPT_FILTER, items)
    rs = netfilter.read_rulesets()
    assert ran.count(["nft", "-j", "list", "ruleset"]) == 1
    # the translation sees the native table's items (and the metainfo), not iptables-nft's
    kinds = [(k, v.get("table", v.get("name"))) for i in given[0]["nftables"] for k, v in i.items()]
    assert kinds == [("metainfo", None), ("chain", "filter"), ("chain", "filter"), ("table", "filter"),
                     ("set", "filter")]
    assert all(v.get("family") in (None, "inet") for i in given[0]["nftables"] for v in i.values())
    assert sorted(rs.tables[4]) == ["filter", "inet filter"] and list(rs.tables[6]) == ["inet filter"]
    assert list(rs.sets) == ["inet filter blocked"]


def test_a_table_iptables_nft_cannot_decode_is_read_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    save = "# Table `filter' is incompatible, use 'nft' tool.\n"
    _, given = fake(monkeypatch, [chain("ip", "filter", "FORWARD")], save,
                      [chain("ip", "filter", "FORWARD"), chain("ip", "nat", "POSTROUTING", "postrouting")])
    rs = netfilter.read_rulesets()
    assert not rs.foreign and given
    assert [i["chain"]["table"] for i in given[0]["nftables"] if "chain" in i] == ["filter"]
    assert "inet filter" in rs.tables[4]


def test_native_sets_are_mirrored_but_not_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    """read_firewall() asks the ipset reader only for ipsets; the native
    sets join what it returns."""
    from tna import snapshot

    fake(monkeypatch, [chain("inet", "filter", "forward")], "", [chain("inet", "filter", "forward")])
    asked: list[set[str]] = []

    class Reader:
        def read(self, names: set[str]) -> dict[str, IpSet]:
            asked.append(set(names))
            return {}

    f = snapshot.read_firewall(Reader())  # type: ignore[arg-type]
    assert asked == [set()] and list(f.nft_sets) == ["inet filter blocked"] and "inet filter blocked" in f.ipsets
    assert f.fw is not None and f.why is None


def test_a_translation_that_fails_keeps_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    fake(monkeypatch, [chain("inet", "filter", "forward")], "", [chain("inet", "filter", "forward")])

    def broken(doc: dict) -> None:
        raise KeyError("expr")
    monkeypatch.setattr(netfilter, "parse_ruleset", broken)
    rs = netfilter.read_rulesets()
    assert rs.foreign and "cannot translate" in rs.foreign[0] and not rs.tables[4]


def stateful_json(packets: int) -> dict:
    """`nft -j list ruleset` of test_nft_lab.STATEFUL as nft 1.0.6 prints it,
    its counters at packets."""
    def rule(handle: int, *expr: dict) -> dict:
        return {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": handle,
                         "expr": list(expr)}}
    counter = {"counter": {"packets": packets, "bytes": 84 * packets}}
    return {"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "filter", "handle": 2}},
        {"set": {"family": "inet", "name": "blocked", "table": "filter", "type": "ipv4_addr", "handle": 2}},
        {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "drop"}},
        rule(3, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@blocked"}},
             counter, {"drop": None}),
        rule(4, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
             counter, {"accept": None}),
        rule(5, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5202}},
             {"accept": None})]}


def test_the_translation_plans_both_versions_and_mirrors_the_set() -> None:
    from tna.model.nftables import parse_ruleset
    from tna.snapshot import plan_filtering

    rules = parse_ruleset(stateful_json(0))
    fw, why = plan_filtering(rules.tables, rules.sets)
    assert why is None and fw is not None and fw.ct4 and fw.ct6
    assert [(c.table, c.name, c.hook, c.stage) for c in fw.fwd4 or ()] == [("inet filter", "forward", "forward",
                                                                              "routed")]
    assert len((fw.fwd4 or ())[0].rules) == 3 and len((fw.fwd6 or ())[0].rules) == 2  # ip saddr: IPv4 only
    assert [s.name for s in fw.ipsets] == list(rules.sets)


def test_counter_values_are_no_part_of_the_rule_set() -> None:
    """Counting packets must not change what is compiled (a recompile and
    a new program per commit otherwise)."""
    from tna.model.nftables import parse_ruleset
    from tna.snapshot import plan_filtering

    plans = [plan_filtering(r.tables, r.sets)[0] for r in map(parse_ruleset, (stateful_json(0), stateful_json(9)))]
    assert plans[0] == plans[1]


@pytest.mark.root
def test_a_dormant_table_is_not_modelled() -> None:
    """A dormant table registers no hook; nft 1.0.6 prints its flags wrong in
    JSON, so the reader reads them from the text: its drop is no drop."""
    ns = f"tna-dormant-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, text=True, input=(
            "table inet d {\n flags dormant\n chain f {\n type filter hook forward priority 0; policy drop;\n }\n}\n"
            "table inet a {\n chain f {\n type filter hook forward priority 0; policy drop;\n }\n}\n"))
        with in_netns(ns):
            rs = netfilter.read_rulesets()
        assert "inet a" in rs.tables[4] and "inet d" not in rs.tables[4] and "inet d" not in rs.tables[6]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.root
@pytest.mark.parametrize("legacy", [["-A", "FORWARD", "-s", "192.0.2.9", "-j", "DROP"], ["-L"]])
def test_a_table_in_both_iptables_back_ends(legacy: list[str]) -> None:
    """iptables-legacy and iptables-nft both hook their filter table into
    FORWARD: with rules in both, one model would hide the other's (the
    fast path stays off); an empty legacy table (`iptables-legacy -L` makes
    one) decides nothing, and the nft one stands."""
    ns = f"tna-both-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["iptables-legacy", *legacy], ["iptables-nft", "-A", "FORWARD", "-p", "udp", "-j", "ACCEPT"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True)
        with in_netns(ns):
            rs = netfilter.read_rulesets()
        if legacy == ["-L"]:
            assert rs.foreign == [] and [r.target for r in rs.tables[4]["filter"].chains["FORWARD"].rules] == ["ACCEPT"]
        else:
            assert any("iptables-legacy and iptables-nft" in f for f in rs.foreign), rs.foreign
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
