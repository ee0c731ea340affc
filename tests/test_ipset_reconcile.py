"""A member change of a mirrored ipset is a map update (no hold, no new
program); a change of what the set is (here: it gains a timeout) is a new
rule set, held like a rule change."""

from __future__ import annotations

import ipaddress

import pytest

from tests.test_reconcile_order import HELD, assert_held_throughout, reconcile, recording_daemon, rules
from tna import daemon as daemon_mod
from tna.model.ipset import IpSet, Member
from tna.model.iptables import parse_save
from tna.snapshot import plan_filtering
from tna.synth.setgen import map_name

RULES = {4: parse_save(rules("-A FORWARD -m set --match-set bl src -j DROP"))}


def blocklist(*nets: str, timeout: bool = False) -> dict[str, IpSet]:
    members = frozenset(Member(ipaddress.ip_network(n)) for n in nets)
    return {"bl": IpSet("bl", "hash:net", 4, 65536, timeout=timeout, members=members)}


def set_sets(d: daemon_mod.Daemon, sets: dict[str, IpSet]) -> None:
    fw, why = plan_filtering(RULES, sets)
    assert why is None
    d.model.set_ipsets(sets)
    d.model.set_firewall(fw)


def test_members_are_map_updates_and_the_set_kind_is_code(monkeypatch: pytest.MonkeyPatch) -> None:
    d = recording_daemon(monkeypatch)
    set_sets(d, blocklist("192.0.2.0/24"))
    calls = reconcile(d)
    assert_held_throughout(calls)
    assert ("attach", "r-h1") in calls
    entries = dict(calls)["sync_ipsets"][map_name("bl")]
    assert len(entries) == 1

    set_sets(d, blocklist("192.0.2.0/24", "203.0.113.0/24"))
    calls = reconcile(d)
    ops = [c[0] for c in calls]
    assert ("hold", HELD) not in calls and "attach" not in ops, calls
    assert len(dict(calls)["sync_ipsets"][map_name("bl")]) == 2

    set_sets(d, blocklist("192.0.2.0/24", timeout=True))  # its rule becomes the kernel's
    calls = reconcile(d)
    assert_held_throughout(calls)
    assert ("attach", "r-h1") in calls and dict(calls)["sync_ipsets"] == {}
