"""tna_stale as the reader thread and the main loop write it (StaleMap):
a neighbour announced STALE is in the map at once, even where the
datapath took an earlier entry for it out, and stays until the model has
taken the batch; a busy loop holds nothing for it."""

from __future__ import annotations

import pytest
from pyroute2 import IPRoute

from tests.test_pending_hold import _neigh
from tna.bpf import abi
from tna.daemon import Daemon
from tna.deploy.datapath import STALE_MAX, Datapath
from tna.deploy.stale import StaleMap, neigh_key
from tna.holds import Holds
from tna.model.config import AF_INET, NUD_STALE, Model, Neigh, NeighLimit
from tna.netlink.decode import RTM_NEWNEIGH, facts

N = Neigh(3, AF_INET, "198.51.100.2", "02:00:00:00:00:02", NUD_STALE)
M = Neigh(3, AF_INET, "198.51.100.3", "02:00:00:00:00:03", NUD_STALE)


class FakeMap:
    def __init__(self, room: int = 8) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.room = room

    def update(self, key: bytes, value: bytes) -> None:
        if key not in self.entries and len(self.entries) >= self.room:
            raise OSError(7, "Argument list too long")
        self.entries[key] = value

    def delete(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None


class FakeLease:
    stale_count = 0

    def set_stale_count(self, n: int) -> None:
        self.stale_count = n


def stale_map(room: int = 8) -> tuple[StaleMap, FakeMap, FakeLease, list[int]]:
    lease, m, taken = FakeLease(), FakeMap(room), [0]
    s = StaleMap(lease)  # type: ignore[arg-type]
    s.map, s.taken = m, lambda: taken[0]  # type: ignore[assignment]
    return s, m, lease, taken


def test_a_mark_stays_until_the_model_has_taken_its_batch() -> None:
    s, m, lease, taken = stale_map()
    assert s.mark([N], batch=1)
    assert m.entries == {neigh_key(N): b"\x01"} and lease.stale_count == 1
    s.sync(set())  # a model that has not applied batch 1 yet
    assert neigh_key(N) in m.entries
    taken[0] = 1
    s.sync({M})  # it has, and N is no longer STALE in it
    assert m.entries == {neigh_key(M): b"\x01"} and lease.stale_count == 1


def test_a_neighbour_announced_stale_again_is_written_again() -> None:
    """The datapath deletes an entry as it hands the neighbour's packet to
    the kernel (router.c.j2); the kernel's DELAY that follows is announced
    to no one, and a later STALE must put the entry back, though the model
    and what we wrote last never changed."""
    s, m, _, taken = stale_map()
    s.sync({N})
    del m.entries[neigh_key(N)]  # the datapath took it out
    s.sync({N})
    assert m.entries == {}  # the main loop's diff sees nothing to write
    assert s.mark([N], batch=2)
    assert neigh_key(N) in m.entries
    del m.entries[neigh_key(N)]
    assert s.mark([M], batch=3)
    s.rewrite()  # a new dump: everything STALE is written again, the rest deleted
    taken[0] = 3
    s.sync({N})
    assert m.entries == {neigh_key(N): b"\x01"}


def test_no_map_or_no_room_is_no_mark() -> None:
    s, _, _, _ = stale_map(room=1)
    assert not s.mark([N, M], batch=1)
    s.map = None
    assert not s.mark([N], batch=2)


@pytest.mark.parametrize("marked", [True, False])
def test_a_busy_loop_holds_for_a_stale_neighbour_only_if_it_is_not_in_the_map(marked: bool) -> None:
    held: list[int] = []
    calls: list[tuple[list[Neigh], int]] = []

    def stale(neighs: list[Neigh], batch: int) -> bool:
        calls.append((neighs, batch))
        return marked

    h = Holds(held.append, stale=stale)
    h.events_queued([_neigh(RTM_NEWNEIGH, 2, NUD_STALE)])
    assert [n.dst for n in calls[0][0]] == ["192.0.2.2"]
    assert calls[0][1] == 1
    assert held == ([] if marked else [abi.REASON["PENDING"]])


def test_the_daemon_marks_through_its_datapath() -> None:
    d = Daemon()
    assert d.holds._stale == d.dp.stale.mark
    d.holds._taken = 5
    assert d.dp.stale.taken() == 5


def test_tna_stale_is_sized_for_every_neighbour_the_kernel_may_keep() -> None:
    """The neighbour tables' gc_thresh3 (global; dumped as RTM_NEWNEIGHTBL,
    as a namespace cannot read them in /proc/sys) bound what can be STALE."""
    with IPRoute() as ipr:
        limits = [f for msg in ipr.get_ntables() for f in facts(msg)]
    assert {type(f) for f in limits} == {NeighLimit} and {f.family for f in limits} == {2, 10}
    m = Model()
    for f in limits:
        m.apply(f)
    assert m.neigh_max() == sum(f.entries for f in limits)
    dp = Datapath()
    dp.expect(0, 0, 16384)
    assert dp._size(abi.MAP_STALE) == 32768
    dp.expect(0, 0, 1 << 31)  # a limit set to "no limit": the room stays what a map can have
    assert dp._size(abi.MAP_STALE) == STALE_MAX
    dp.expect(0, 0, 0)  # not known: the smallest
    assert dp._size(abi.MAP_STALE) == abi.STALE_SIZE
