"""Datapath.preload(): the programs of several interfaces load at once (the
verifier runs without the GIL), a load that creates maps runs alone before
the others (or the maps are made beforehand, without a program), and
attach() takes what was loaded for its plan or the load's error (no root:
the loads are recorded, not made)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from tna.deploy.datapath import Datapath
from tna.model.firewall import Firewall
from tna.synth.compile import CompileError
from tna.synth.planner import IfacePlan

FW = Firewall(None, None, ("eth0",))


def plan(ifindex: int, firewall: Firewall | None = FW) -> IfacePlan:
    return IfacePlan(ifindex, f"veth{ifindex}", "tc", "test", ("firewall", "router"), "02:00:00:00:00:01", 0,
                     firewall)


class Loaded:
    def __init__(self, ifindex: int) -> None:
        self.ifindex, self.closed = ifindex, False

    def close(self) -> None:
        self.closed = True


class Loads:
    """Datapath._load as recorded: which loads ran, in what order, and
    whether the loads that reuse the rule set's maps overlapped (each waits
    at a barrier for the others: loads one after the other never pass it)."""

    def __init__(self, dp: Datapath, parallel: int, fail: int | None = None) -> None:
        self.dp, self.fail, self.log, self.objs = dp, fail, [], {}
        self.barrier = threading.Barrier(parallel, timeout=30)

    def __call__(self, plan: IfacePlan, art: Any) -> tuple[Loaded, str]:
        creates = self.dp.sets.maps is None or self.dp.sets.maps[0] != art.firewall
        self.log.append(("start", plan.ifindex, creates))
        if creates:  # what the real load does: these maps are the rule set's now
            self.dp.sets.maps, self.dp.shared = (art.firewall, {}), {"tna_state": object()}  # type: ignore[assignment]
        else:
            self.barrier.wait()
        self.log.append(("end", plan.ifindex, creates))
        if plan.ifindex == self.fail:
            raise OSError(22, "the verifier said no")
        self.objs[plan.ifindex] = Loaded(plan.ifindex)
        return self.objs[plan.ifindex], "prog"


def test_loads_run_at_once_after_the_one_that_creates_the_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    dp = Datapath()
    loads = Loads(dp, parallel=3, fail=4)
    monkeypatch.setattr(dp, "_load", loads)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    art = SimpleNamespace(firewall=FW)
    todo = [(plan(i), art) for i in (2, 3, 4, 5)]
    dp.preload(todo)  # type: ignore[arg-type]
    assert loads.log[:2] == [("start", 2, True), ("end", 2, True)]  # alone, first
    assert sorted(loads.log[2:5]) == [("start", i, False) for i in (3, 4, 5)]  # all three before any ended
    assert dp.preloads.take(*todo[0]) == (loads.objs[2], "prog")  # type: ignore[arg-type]
    with pytest.raises(OSError, match="the verifier said no"):
        dp.preloads.take(*todo[2])  # type: ignore[arg-type]
    # loaded for another plan (its interface changed since): not taken, closed
    assert dp.preloads.take(plan(3, None), art) is None  # type: ignore[arg-type]
    assert loads.objs[3].closed
    dp.preloads.drop()  # what no attach took
    assert loads.objs[5].closed and not loads.objs[2].closed
    assert dp.preloads.take(*todo[3]) is None  # type: ignore[arg-type]


def test_a_new_rule_sets_maps_are_made_first_and_every_program_loads_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dp = Datapath()
    dp.shared = {"tna_state": object()}  # type: ignore[dict-item]  # an earlier load made them
    loads = Loads(dp, parallel=3)
    made: list[Firewall] = []

    def make_sets(art: Any) -> None:  # what the maps-only load leaves behind
        made.append(art.firewall)
        dp.sets.maps = (art.firewall, {})

    monkeypatch.setattr(dp, "_load", loads)
    monkeypatch.setattr(dp, "_make_sets", make_sets)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    art = SimpleNamespace(firewall=FW)
    dp.preload([(plan(i), art) for i in (2, 3, 4)])  # type: ignore[list-item]
    assert made == [FW]
    assert sorted(loads.log[:3]) == [("start", i, False) for i in (2, 3, 4)]
    assert sorted(dp.preloads._items) == [2, 3, 4]
    dp.preloads.drop()


def test_each_program_shape_is_built_once_and_the_shapes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_all(): one build per program shape, shared by its interfaces,
    the shapes at once (each waits at a barrier for the other); a failed
    build is every one of its interfaces' error."""
    from tna.synth import build as build_mod

    barrier, built = threading.Barrier(2, timeout=30), []
    failed = CompileError("clang failed")

    def fake_build(p: IfacePlan, cache_dir: Any, observe: Any, source: str) -> str:
        built.append((p.hook, p.ifindex))
        barrier.wait()
        if p.hook == "xdp":
            raise failed
        return f"{p.hook}.o"

    monkeypatch.setattr(build_mod, "build", fake_build)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    uplinks = [IfacePlan(i, f"eth{i}", "xdp", "test", ("firewall", "router"), "02:00:00:00:00:09", 0, FW)
               for i in (9, 10)]
    got = build_mod.build_all([plan(2), plan(3), *uplinks, plan(4)])
    assert sorted(built) == [("tc", 2), ("xdp", 9)]
    assert got == {2: "tc.o", 3: "tc.o", 4: "tc.o", 9: failed, 10: failed}
