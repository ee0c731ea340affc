"""A member change of a mirrored ipset is a map update (no hold, no new
program); a change of what the set is (here: it gains a timeout) is a new
rule set, held like a rule change."""

from __future__ import annotations

import ipaddress

import pytest

from tests.test_reconcile_order import HELD, assert_held_throughout, reconcile, recording_daemon, rules
from tna import daemon as daemon_mod
from tna.model.ipset import IpSet, Member, status
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


def test_a_failed_member_write_takes_the_sets_rules_to_the_kernel_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member missing from the map would say "not in the set" where the
    kernel's set holds it: from the failed write the programs are held,
    then rebuilt with the set's rules on the kernel path, and they stay
    there until the set changes."""
    d = recording_daemon(monkeypatch)
    d.rules.tables = RULES
    set_sets(d, blocklist("192.0.2.0/24"))
    reconcile(d)
    dp = d.dp
    full = {map_name("bl"): "[Errno 7] Argument list too long"}

    def sync_ipsets(entries: dict[str, dict[bytes, bytes]], fw: object) -> dict[str, str]:
        dp.calls.append(("sync_ipsets", entries))  # type: ignore[attr-defined]
        return {n: why for n, why in full.items() if n in entries}

    monkeypatch.setattr(dp.sets, "sync_ipsets", sync_ipsets)
    set_sets(d, blocklist("192.0.2.0/24", "203.0.113.0/24"))
    calls = reconcile(d)
    failed_at = next(i for i, c in enumerate(calls) if c[0] == "sync_ipsets" and c[1])
    assert_held_throughout(calls[failed_at + 1:])
    assert ("attach", "r-h1") in calls[failed_at:]
    assert d.model.firewall is not None and d.model.firewall.ipsets == ()
    fw = d.model.firewall
    why = status((r for c in fw.fwd4 or () for r in c.rules), fw.ipsets, d.model.ipsets)["bl"]["kernel_path"]
    assert any("could not be written" in w for w in why), why
    assert d.rules._filtering(RULES, d.model.ipsets)[0].ipsets == ()  # the same set: still the kernel's
    changed = d.rules._filtering(RULES, blocklist("192.0.2.0/24"))[0]
    assert changed is not None and changed.ipsets != ()  # a new listing is tried again


def test_a_commit_hold_ends_only_once_the_new_members_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """An nftables commit holds at once (the reader thread); if the re-read
    rules differ only in a set's members, the programs stay, and the hold
    must last until the map has the new members: released before, the
    programs would decide with the old ones (a blocked source forwarded)."""
    d = recording_daemon(monkeypatch)
    set_sets(d, blocklist("192.0.2.0/24"))
    reconcile(d)
    d.holds.nft_begin()
    d.holds.nft_end(1, False)
    d.holds.rules_read()  # what _poll() does when it reads the commit's rules
    set_sets(d, blocklist("192.0.2.0/24", "203.0.113.0/24"))
    calls = reconcile(d)
    synced = next(i for i, c in enumerate(calls) if c[0] == "sync_ipsets")
    assert ("release", 0) not in calls[:synced], calls
    assert "attach" not in [c[0] for c in calls] and calls[-1] == ("release", 0), calls
