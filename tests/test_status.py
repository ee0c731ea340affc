"""The status description (state.json, `tna status`): a pure function of
the model, the plan and what is attached (no root)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from tna.model.config import ARPHRD_ETHER, IFF_UP, Bridge, FdbEntry, Link, Model, Port, Sysctls
from tna.model.hooks import firewall_plan
from tna.model.iptables import parse_save
from tna.status import describe
from tna.synth.planner import IFF_LOWER_UP, plan

UP = IFF_UP | IFF_LOWER_UP


def veth(index: int, name: str, **kw: object) -> Link:
    return Link(index, name, "veth", f"02:00:00:00:00:{index:02x}", 1500, UP, ARPHRD_ETHER, qdisc="noqueue",
                **kw)  # type: ignore[arg-type]


def test_describe_reports_model_plan_and_programs() -> None:
    m = Model(links={
        1: Link(1, "lo", None, "00:00:00:00:00:00", 65536, UP | 0x8, 772),
        2: veth(2, "r-h1"), 3: veth(3, "r-h2"),
        4: Link(4, "br0", "bridge", "02:00:00:00:00:04", 1500, UP, ARPHRD_ETHER, qdisc="noqueue",
                bridge=Bridge(ageing_cs=1500)),
        5: veth(5, "p1", master=4, port=Port()),
    }, sysctls=Sysctls(True, False))
    m.apply(FdbEntry(4, 0, "02:00:00:00:00:99", 5, False, True))
    rules = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
             "-A FORWARD -i r-h1 -j ACCEPT\n-A INPUT -p udp --dport 9 -j DROP\nCOMMIT\n")
    fw, _ = firewall_plan({4: parse_save(rules)})
    m.set_firewall(fw)
    p = plan(m, "tc")
    attached = {i: SimpleNamespace(plan=ip, prog_id=100 + i, source=f"/c/{i}.c") for i, ip in p.ifaces.items()
                if ip.name != "r-h2"}
    st = describe(m, p, attached, pid=42, mode="tc", disabled=None, failed={3: "clang failed"},
                  fdb_map=({4: 1}, 65536))
    assert st["pid"] == 42 and st["mode"] == "tc" and st["disabled"] is None
    assert st["forwarding"] == {"ipv4": True, "ipv6": False}
    assert st["ifaces"]["r-h1"] == {"ifindex": 2, "hook": "tc", "hook_why": p.ifaces[2].hook_why,
                                    "modules": list(p.ifaces[2].modules), "prog_id": 102, "source": "/c/2.c",
                                    "xdp_egress": False}
    assert "r-h2" not in st["ifaces"] and st["failed"] == {"r-h2": "clang failed"}
    assert st["skipped"]["lo"]
    assert st["bridges"]["br0"] == {"accelerated": True, "why_not": None, "routed": True, "fdb": 1,
                                    "fdb_mirrored": 1, "fdb_capacity": 65536, "ageing_s": 15.0, "promiscuous": False,
                                    "ports": {"p1": {"state": "forwarding", "accelerated": True}}}
    assert st["firewall"] == {"chains": {"FORWARD v4": 1, "INPUT v4": 1}, "kernel_rules": [], "conntrack": [],
                              "ipsets": {}}
    assert [(r["chain"], r["index"]) for r in st["firewall_rules"]] == [
        ("FORWARD", 1), ("FORWARD", 0), ("INPUT", 1), ("INPUT", 0)]


def test_no_plan_yet_describes_no_interfaces() -> None:
    st = describe(Model(), None, {}, pid=1, mode="auto", disabled="netfilter unreadable", failed={})
    assert st["ifaces"] == {} and st["skipped"] == {} and st["firewall"] is None and st["firewall_rules"] == []
    assert st["disabled"] == "netfilter unreadable"


def test_a_bridge_left_alone_says_why() -> None:
    m = Model(links={
        4: Link(4, "br0", "bridge", "02:00:00:00:00:04", 1500, UP, ARPHRD_ETHER, qdisc="noqueue", bridge=Bridge()),
        5: veth(5, "p1", master=4, port=Port()),
    }, sysctls=Sysctls(True, False))
    st = describe(m, plan(m, ignore=["br0"]), {}, pid=1, mode="auto", disabled=None, failed={})
    assert st["bridges"]["br0"]["accelerated"] is False
    assert st["bridges"]["br0"]["why_not"] == "left alone by configuration (ignore = br0)"
    assert st["skipped"]["p1"] == "master br0 is left alone by configuration (ignore = br0)"


@pytest.mark.parametrize("aba", [False, True], ids=["new rules", "back to the same rules"])
def test_stats_rules_reads_the_counters_again_when_the_rules_changed_meanwhile(monkeypatch: Any, capsys: Any,
                                                                              aba: bool) -> None:
    """`tna stats --rules`: a program kept for new rules while it read the
    counters numbers them by the new rules; it reads them again with the
    state that names those."""
    from tna import cli
    from tna.netlink import netfilter

    def state(text: str, renumbered: int = 0) -> dict[str, Any]:
        return {"pid": 1, "ifaces": {"r-h1": {"prog_id": 12}}, "renumbered": renumbered, "firewall_rules": [
            {"id": 0, "family": 4, "chain": "FORWARD", "index": 1, "text": text, "table": "filter"}]}
    old, new = state("-A FORWARD -s 192.0.2.1/32 -j DROP"), state("-A FORWARD -s 192.0.2.2/32 -j DROP")
    if aba:  # kept for other rules and back again while the counters were read: the same rules, renumbered
        new = state("-A FORWARD -s 192.0.2.1/32 -j DROP", renumbered=2)
    states = iter([new, new])  # the read after the first counters' names the new rules
    counts = iter([{0: (1, 100)}, {0: (7, 700)}])
    monkeypatch.setattr(cli, "_running_state", lambda: next(states))
    monkeypatch.setattr(cli, "fast_path_rule_counters", lambda st: next(counts))
    monkeypatch.setattr(netfilter, "read_rulesets", lambda: SimpleNamespace(tables={4: {}}))
    cli.cmd_rules(old, as_json=True)
    rows = json.loads(capsys.readouterr().out)
    assert [(r["fast_path"]["packets"]) for r in rows] == [7]
    assert rows[0]["text"] == new["firewall_rules"][0]["text"]


def test_stats_rules_leaves_the_fast_paths_counts_out_when_the_rules_keep_changing(monkeypatch: Any,
                                                                                   capsys: Any) -> None:
    """Five reads, each with other rules after it: the kernel's counters
    are shown, the fast path's left out (never counts of other rules), and
    it says so."""
    from tna import cli
    from tna.netlink import netfilter

    def state(n: int) -> dict[str, Any]:
        return {"pid": 1, "ifaces": {"r-h1": {"prog_id": 12}}, "renumbered": n, "firewall_rules": [
            {"id": 0, "family": 4, "chain": "FORWARD", "index": 1, "text": "-A FORWARD -j DROP", "table": "filter"}]}
    states = (state(n) for n in range(1, 100))
    monkeypatch.setattr(cli, "_running_state", lambda: next(states))
    monkeypatch.setattr(cli, "fast_path_rule_counters", lambda st: {0: (7, 700)})
    monkeypatch.setattr(netfilter, "read_rulesets", lambda: SimpleNamespace(tables={4: {}}))
    cli.cmd_rules(state(0), as_json=True)
    out = capsys.readouterr()
    assert [r["fast_path"]["packets"] for r in json.loads(out.out)] == [0]
    assert "the rules kept changing" in out.err
