"""The order of a reconcile, pinned without root: a recording fake
datapath stands in for the kernel.  Whenever the rules, the interface
masks or the filtered families change: hold -> attach -> every map ->
release, so no program ever decides with maps that do not match the rules
it was built for."""

from __future__ import annotations

import functools
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tna import daemon as daemon_mod
from tna.bpf import abi
from tna.config import Settings
from tna.deploy.lease import family_bits
from tna.deploy.rulecounts import RuleCounts
from tna.model.config import ARPHRD_ETHER, IFF_UP, Link, Model, Sysctls, XdpXmit
from tna.model.fwdiff import HeldFlow
from tna.model.hooks import firewall_plan
from tna.model.iptables import parse_save
from tna.synth.planner import IfacePlan

HELD = abi.REASON["FW_CHANGED"]
MAP_SYNCS = ("sync", "sync_bridges", "sync_firewall")


class RecordingLease:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls, self.cfg = calls, abi.TnaConfig()

    def hold(self, reason: int) -> None:
        self.cfg.pass_reason = reason
        self.calls.append(("hold", reason))

    def narrow(self, held: tuple[HeldFlow, ...]) -> None:
        self.calls.append(("narrow", held))

    def set_guards(self, pass_reason: int, mp_guarded: Any, route_mtu: Any, local: Any,
                   fw_families: frozenset[int] = frozenset(), sysctls: Any = None, rpf_doubt: Any = None,
                   xfrm: Any = None, held: tuple[HeldFlow, ...] = ()) -> None:
        self.cfg.fw_families = family_bits(fw_families, abi.TNA_FW_V4, abi.TNA_FW_V6)
        self.cfg.pass_reason = pass_reason
        self.calls.append(("narrowed", held) if held else ("release" if pass_reason == 0 else "guards", pass_reason))


class RecordingDatapath:
    """What Daemon.reconcile() asks of a Datapath, recorded in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lease = RecordingLease(self.calls)
        self.attached: dict[int, SimpleNamespace] = {}
        self.masks: dict[int, int] = {}
        self.fdb = SimpleNamespace(per_bridge={}, capacity=0)
        self.preloads = SimpleNamespace(drop=lambda: None)
        self.renumbered = 0
        self.rule_counts = RuleCounts()
        self.nft_seen_filter = None
        self.rewritten: Any = None  # the rule set keep_programs() rewrote the set maps for
        self.sets = RecordingSets(self.calls)
        self.stale = SimpleNamespace(rewrite=lambda: self.calls.append(("stale_rewrite", None)))

    def release_retired(self) -> None:
        pass

    def observe_rules(self, *_: Any) -> bool:
        return False

    def expect(self, *_: Any) -> None:
        pass

    def fw_masks(self) -> dict[int, int]:
        return self.masks

    def rule_set(self) -> tuple[Any, dict[str, dict[bytes, bytes]]]:
        rule_sets = [a.plan.firewall for a in self.attached.values()]
        return self.rewritten or (rule_sets[-1] if rule_sets else None), {}

    def is_current(self, plan: IfacePlan) -> bool:
        cur = self.attached.get(plan.ifindex)
        return cur is not None and cur.plan == plan

    def keep_programs(self, todo: list[tuple[IfacePlan, Any]]) -> set[int]:
        return set()  # the lab tests keep programs (test_firewall_lab.py)

    def preload(self, todo: list[tuple[IfacePlan, Any]]) -> None:
        self.calls.append(("preload", [plan.name for plan, _ in todo]))

    def attach(self, plan: IfacePlan, art: Any) -> None:
        self.attached[plan.ifindex] = SimpleNamespace(plan=plan, prog_id=plan.ifindex, source=art)
        self.calls.append(("attach", plan.name))

    def remove(self, ifindex: int, why: str) -> None:
        self.attached.pop(ifindex, None)
        self.calls.append(("remove", ifindex))

    def sync(self, *_: Any) -> None:
        self.calls.append(("sync", None))

    def sync_bridges(self, *_: Any) -> None:
        self.calls.append(("sync_bridges", None))

    def sync_firewall(self, masks: dict[int, int]) -> None:
        self.masks = dict(masks)
        self.calls.append(("sync_firewall", dict(masks)))



class RecordingSets:
    """The rule set's maps (Datapath.sets): the ipset writes recorded."""

    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls, self.ipset_entries = calls, {}

    def sync_ipsets(self, entries: dict[str, dict[bytes, bytes]], fw: Any) -> dict[str, str]:
        self.calls.append(("sync_ipsets", entries))
        return {}


def rules(*lines: str) -> str:
    return "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + "".join(
        f"{line}\n" for line in lines) + "COMMIT\n"


def link(index: int, name: str) -> Link:
    return Link(index, name, "veth", f"02:00:00:00:00:{index:02x}", 1500, IFF_UP, ARPHRD_ETHER, qdisc="noqueue")


def fake_build(plans: list[IfacePlan], cache_dir: Any, observe: Any, rendered: Any = None,
               calls: list | None = None, same_source: bool = False) -> dict[int, str]:
    """build_all() without clang: a source per plan, new for new rules (same_source: as when a rule
    joins or leaves a set of rules), told to rendered() before the "build" (recorded in calls)."""
    sources = {p.ifindex: f"{p.name}.c" if same_source else f"{p.name}-{hash(p.firewall)}.c" for p in plans}
    if rendered is not None:
        rendered(sources)
    if calls is not None:
        calls.append(("build", sorted(p.name for p in plans)))
    return sources


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> daemon_mod.Daemon:
    return recording_daemon(monkeypatch)


def recording_daemon(monkeypatch: pytest.MonkeyPatch) -> daemon_mod.Daemon:
    """A daemon on the recording datapath, two veths, forwarding on, --hook tc."""
    monkeypatch.setattr(daemon_mod, "publish_status", lambda state: None)
    d = daemon_mod.Daemon(Settings(hook="tc"))
    d.dp = RecordingDatapath()  # type: ignore[assignment]
    monkeypatch.setattr(daemon_mod, "build_all", functools.partial(fake_build, calls=d.dp.calls))
    d.model = Model(links={2: link(2, "r-h1"), 3: link(3, "r-h2")}, sysctls=Sysctls(True, True))
    return d


def set_rules(d: daemon_mod.Daemon, *lines: str) -> None:
    fw, why = firewall_plan({4: parse_save(rules(*lines))})
    assert why is None
    d.model.set_firewall(fw)


def reconcile(d: daemon_mod.Daemon) -> list[tuple[str, Any]]:
    dp = d.dp
    assert isinstance(dp, RecordingDatapath)
    dp.calls.clear()
    d.reconcile()
    return dp.calls


def assert_held_throughout(calls: list[tuple[str, Any]]) -> None:
    """Hold first, release last, and nothing between lets programs decide."""
    assert calls[0] == ("hold", HELD), calls
    assert calls[-1] == ("release", 0), calls
    assert ("release", 0) not in calls[:-1], calls
    ops = [c[0] for c in calls[1:-1]]
    assert set(MAP_SYNCS) <= set(ops), calls
    # every map is written (again) after the last attach: the new programs
    # read maps written for their rules (an earlier FDB write is for the old)
    if "attach" in ops:
        last = {o: i for i, o in enumerate(ops)}
        assert all(last["attach"] < last[s] for s in MAP_SYNCS), calls


def test_first_rules_are_held_until_their_masks_are_written(daemon: daemon_mod.Daemon) -> None:
    set_rules(daemon, "-A FORWARD -i r-h2 -j DROP")
    calls = reconcile(daemon)
    assert_held_throughout(calls)
    assert ("attach", "r-h1") in calls and ("sync_firewall", {3: 1}) in calls


def test_a_new_pattern_shifting_the_bits_is_held(daemon: daemon_mod.Daemon) -> None:
    set_rules(daemon, "-A FORWARD -i r-h2 -j DROP")
    reconcile(daemon)
    set_rules(daemon, "-A FORWARD -i r-h1 -j DROP", "-A FORWARD -i r-h2 -j DROP")
    calls = reconcile(daemon)
    assert_held_throughout(calls)
    assert ("sync_firewall", {2: 1, 3: 2}) in calls


def test_an_interface_that_appears_matching_a_pattern_is_held(daemon: daemon_mod.Daemon) -> None:
    set_rules(daemon, "-A FORWARD -o r-h+ -j DROP")
    reconcile(daemon)
    daemon.model.links[4] = link(4, "r-h3")  # egress to it is allowed only once its mask is there
    calls = reconcile(daemon)
    assert_held_throughout(calls)
    assert ("attach", "r-h3") in calls and ("sync_firewall", {2: 1, 3: 1, 4: 1}) in calls


def test_an_inserted_rule_narrows_the_hold_before_the_loads(daemon: daemon_mod.Daemon) -> None:
    """The running programs decide what the new rule could not match while
    the new ones load: the masks written, the flows published under the
    hold, then the hold narrowed to them; the release comes last as ever."""
    set_rules(daemon, "-A FORWARD -i r-h2 -j DROP")
    reconcile(daemon)
    set_rules(daemon, "-A FORWARD -p udp -m udp --dport 9 -j DROP", "-A FORWARD -i r-h2 -j DROP")
    calls = reconcile(daemon)
    held = (HeldFlow(4, 17, dport=(9, 9)),)
    assert calls[0] == ("hold", HELD) and calls[-1] == ("release", 0), calls
    ops = [c[0] for c in calls]
    narrowed = calls.index(("narrowed", held))
    # clang runs under the narrowed hold: no running program can be kept for the new sources
    assert ops.index("sync_firewall") < calls.index(("narrow", held)) < narrowed < ops.index("build"), calls
    assert ops.index("sync") < calls.index(("narrow", held)), calls  # egress and STALE maps too
    assert ("release", 0) not in calls[:-1], calls


def narrowable_change(d: daemon_mod.Daemon) -> list[tuple[str, Any]]:
    """An inserted rule the hold may narrow for, reconciled."""
    set_rules(d, "-A FORWARD -i r-h2 -j DROP")
    reconcile(d)
    set_rules(d, "-A FORWARD -p udp -m udp --dport 9 -j DROP", "-A FORWARD -i r-h2 -j DROP")
    return reconcile(d)


def test_a_pending_hold_the_reconcile_takes_is_not_narrowed_away(daemon: daemon_mod.Daemon) -> None:
    """A batch that held (PENDING: a sysctl written, an egress that stopped
    taking XDP frames) taken by this loop iteration: its maps and programs
    are written by this reconcile, whose last publication alone may end the
    hold; the next change narrows again."""
    set_rules(daemon, "-A FORWARD -i r-h2 -j DROP")
    reconcile(daemon)
    daemon.holds.idle()
    daemon.holds.events_queued([SimpleNamespace()])  # not a fact of any map: held only while busy
    daemon.holds.events_queued([XdpXmit(3, False)])
    assert daemon.holds.busy(lambda: True)  # the loop took it
    set_rules(daemon, "-A FORWARD -p udp -m udp --dport 9 -j DROP", "-A FORWARD -i r-h2 -j DROP")
    calls = reconcile(daemon)
    assert_held_throughout(calls)
    assert "narrow" not in [c[0] for c in calls], calls
    set_rules(daemon, "-A FORWARD -p udp -m udp --dport 10 -j DROP", "-A FORWARD -i r-h2 -j DROP")
    assert "narrow" in [c[0] for c in reconcile(daemon)]


def test_a_plan_that_changes_more_than_the_rules_is_held_whole(daemon: daemon_mod.Daemon) -> None:
    """A new interface, or a running program whose plan changes beside its
    rules (a hook, a flag in its .rodata): not yet what the kernel does."""
    set_rules(daemon, "-A FORWARD -i r-h2 -j DROP")
    reconcile(daemon)
    daemon.model.links[4] = link(4, "eth9")
    set_rules(daemon, "-A FORWARD -p udp -m udp --dport 9 -j DROP", "-A FORWARD -i r-h2 -j DROP")
    calls = reconcile(daemon)
    assert_held_throughout(calls)
    assert "narrow" not in [c[0] for c in calls], calls


def test_iptables_legacy_is_held_whole(daemon: daemon_mod.Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its rules are polled: one inserted while the programs load would
    wait for them, not for the next poll."""
    monkeypatch.setattr("tna.netlink.netfilter.legacy_in_use", lambda: True)
    calls = narrowable_change(daemon)
    assert_held_throughout(calls)
    assert "narrow" not in [c[0] for c in calls], calls


def test_set_maps_rewritten_for_the_new_rules_keep_the_hold_whole(daemon: daemon_mod.Daemon,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The keep rewrote the rule set's set maps in place, then kept no
    program (their counters too small for the new rules): the old programs
    read maps of the new rules until replaced."""
    dp = daemon.dp
    assert isinstance(dp, RecordingDatapath)
    monkeypatch.setattr(daemon_mod, "build_all", functools.partial(fake_build, calls=dp.calls, same_source=True))
    set_rules(daemon, "-A FORWARD -i r-h2 -j DROP")
    reconcile(daemon)

    def rewrote(todo: list[tuple[IfacePlan, Any]]) -> set[int]:
        dp.rewritten = daemon.model.firewall  # the maps serve the new rules now
        return set()
    monkeypatch.setattr(dp, "keep_programs", rewrote)
    set_rules(daemon, "-A FORWARD -p udp -m udp --dport 9 -j DROP", "-A FORWARD -i r-h2 -j DROP")
    calls = reconcile(daemon)
    assert_held_throughout(calls)
    assert "narrow" not in [c[0] for c in calls], calls


def test_a_program_that_may_be_kept_narrows_after_the_keep_kept_none(daemon: daemon_mod.Daemon,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule joins a set of rules: the running source is the new one, so the keep is tried (under the
    whole hold: it rewrites the set maps in place); here it keeps none, and then the hold narrows."""
    dp = daemon.dp
    assert isinstance(dp, RecordingDatapath)
    monkeypatch.setattr(daemon_mod, "build_all", functools.partial(fake_build, calls=dp.calls, same_source=True))
    set_rules(daemon, "-A FORWARD -i r-h2 -j DROP")
    reconcile(daemon)
    monkeypatch.setattr(dp, "keep_programs", lambda todo: dp.calls.append(("keep", None)) or set())
    set_rules(daemon, "-A FORWARD -p udp -m udp --dport 9 -j DROP", "-A FORWARD -i r-h2 -j DROP")
    calls = reconcile(daemon)
    ops = [c[0] for c in calls]
    assert ops.index("build") < ops.index("keep") < ops.index("narrow") < ops.index("narrowed") < ops.index("preload")


@pytest.mark.parametrize("change", ["policy", "pattern"])
def test_what_else_changes_is_held_whole(daemon: daemon_mod.Daemon, change: str) -> None:
    set_rules(daemon, "-A FORWARD -i r-h2 -j DROP")
    reconcile(daemon)
    fw, _ = firewall_plan({4: parse_save(rules("-A FORWARD -i r-h2 -j DROP").replace(":FORWARD ACCEPT", ":FORWARD DROP")
                                         if change == "policy" else rules("-A FORWARD -i r-h1 -j DROP",
                                                                          "-A FORWARD -i r-h2 -j DROP"))})
    daemon.model.set_firewall(fw)
    calls = reconcile(daemon)
    assert_held_throughout(calls)
    assert "narrow" not in [c[0] for c in calls], calls


def test_an_unchanged_rule_set_is_not_held(daemon: daemon_mod.Daemon) -> None:
    set_rules(daemon, "-A FORWARD -i r-h2 -j DROP")
    reconcile(daemon)
    daemon.model.links[4] = link(4, "eth9")  # matches no pattern: mask 0 either way
    calls = reconcile(daemon)
    assert ("hold", HELD) not in calls
    assert calls[0] == ("release", 0) and calls[-1] == ("release", 0), calls


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "new programs"])
def test_the_status_names_a_kept_programs_new_rules_before_the_release(daemon: daemon_mod.Daemon,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       kept: bool) -> None:
    """A program kept for new rules counts by their ids once the hold ends:
    state.json names them first (tna stats --rules); otherwise the status
    follows the release (the hold lasts no longer than the maps' writes)."""
    dp = daemon.dp
    assert isinstance(dp, RecordingDatapath)
    monkeypatch.setattr(daemon_mod, "build_all", functools.partial(fake_build, calls=dp.calls, same_source=True))
    set_rules(daemon, "-A FORWARD -p udp -m udp --dport 7 -j ACCEPT")
    reconcile(daemon)
    monkeypatch.setattr(daemon_mod, "publish_status", lambda state: dp.calls.append(("status", None)))

    def keep_programs(todo: list[tuple[IfacePlan, Any]]) -> set[int]:
        dp.renumbered += kept
        return set()
    monkeypatch.setattr(dp, "keep_programs", keep_programs)
    monkeypatch.setattr(dp, "release_retired", lambda: dp.calls.append(("release_retired", None)))
    set_rules(daemon, "-A FORWARD -p udp -m udp --dport 8 -j ACCEPT")
    calls = reconcile(daemon)
    assert (calls.index(("status", None)) < calls.index(("release", 0))) == kept, calls
    # the programs replaced stay readable until the status names their successors
    assert calls.index(("status", None)) < calls.index(("release_retired", None)), calls


def test_each_program_load_shows_the_main_loop_alive() -> None:
    """A reconcile's loads take N/2 verifier rounds on two CPUs: longer than
    HEARTBEAT_MAX_S on a host of many containers, after which the lease
    would lapse (pass-all) although the loop is at work; each load renews
    its heartbeat (Datapath.on_load, called by the loader threads)."""
    d = daemon_mod.Daemon(Settings(hook="tc"))
    d._heartbeat = time.monotonic() - 2 * daemon_mod.HEARTBEAT_MAX_S
    d.dp.on_load()
    assert time.monotonic() - d._heartbeat < daemon_mod.HEARTBEAT_MAX_S
