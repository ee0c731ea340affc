"""The FDB at scale without root: the fast decoder against pyroute2's, the
map's size, and the mirror's writes into a map that fills up (a fake map
with the kernel's rules: a new key into a full hash map fails, an existing
one is rewritten in place)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from tna.bpf import abi
from tna.deploy.fdbmap import KEY, VALUE, FdbMirror, fdb_key, map_size
from tna.model.config import FdbEntry, Model, Removed
from tna.netlink.decode import fdb_from_msg
from tna.netlink.factmsg import FactMsg
from tna.netlink.fdb import decode_fdb_fast
from tna.netlink.nexthop import Marshal

DATA = Path(__file__).parent / "data"


def test_the_fast_decoder_states_what_pyroute2s_messages_do() -> None:
    slow, fast = Marshal(), Marshal()
    decode_fdb_fast(fast)
    seen = 0
    for line in (DATA / "bridge_lab.nl").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        raw = bytes.fromhex(line)
        (msg,) = slow.parse(raw)
        got = list(fast.parse(raw))
        if msg["header"]["type"] not in (28, 29) or msg["family"] != 7:
            assert [type(g) for g in got] == [type(msg)]  # everything else stays pyroute2's
            continue
        want = fdb_from_msg(msg)
        if want is None:  # a device's own address list: nothing forwards by it
            assert got == []
            continue
        (fm,) = got
        assert isinstance(fm, FactMsg) and fm["header"]["type"] == msg["header"]["type"]
        assert fm.fact == (want if msg["header"]["type"] == 28 else Removed(want))
        seen += 1
    assert seen >= 8  # the dump's entries, a static one added and deleted


def test_the_map_is_sized_from_the_count_with_headroom() -> None:
    assert map_size(0, 65536) == 65536 and map_size(100_000, 65536) == 262144
    assert map_size(1_000_000, 65536) == 2097152 and map_size(5, 8) == 16 and map_size(4, 8) == 8


def test_key_and_value_layouts_are_the_abis() -> None:
    assert (KEY.size, VALUE.size) == (ctypes.sizeof(abi.TnaFdbKey), ctypes.sizeof(abi.TnaFdb))
    k = abi.TnaFdbKey.from_buffer_copy(fdb_key((7, 3, "02:00:00:00:00:aa")))
    assert (k.bridge, k.vid, bytes(k.mac)) == (7, 3, bytes.fromhex("0200000000aa"))


class FakeHashMap:
    """A BPF hash map's update/delete rules, batch ops included."""

    key_size, name = KEY.size, "tna_fdb"

    def __init__(self, capacity: int) -> None:
        self.capacity, self.data, self.syscalls = capacity, {}, 0

    def update(self, key: bytes, value: bytes) -> None:
        self.syscalls += 1
        if key not in self.data and len(self.data) >= self.capacity:
            raise OSError(7, "Argument list too long")
        self.data[key] = value

    def delete(self, key: bytes) -> bool:
        self.syscalls += 1
        return self.data.pop(key, None) is not None

    def update_batch(self, keys: bytes, values: bytes) -> int:
        self.syscalls += 1
        n, vs = len(keys) // KEY.size, VALUE.size
        for i in range(n):
            k = keys[i * KEY.size:(i + 1) * KEY.size]
            if k not in self.data and len(self.data) >= self.capacity:
                return i
            self.data[k] = values[i * vs:(i + 1) * vs]
        return n

    def delete_batch(self, keys: bytes) -> int:
        self.syscalls += 1
        for i in range(len(keys) // KEY.size):
            if self.data.pop(keys[i * KEY.size:(i + 1) * KEY.size], None) is None:
                if i == 0:  # as Map.delete_batch: an error when nothing was deleted
                    raise OSError(2, "No such file or directory")
                return i
        return len(keys) // KEY.size

    def port_of(self, key: tuple[int, int, str]) -> int | None:
        v = self.data.get(fdb_key(key))
        return None if v is None else VALUE.unpack(v)[0]


def entry(i: int, port: int = 5, bridge: int = 4) -> FdbEntry:
    return FdbEntry(bridge, 0, f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", port, False, False)


def sync(mirror: FdbMirror, m: FakeHashMap, model: Model, full: bool = False) -> None:
    changed = model.take_fdb_changes()
    mirror.sync(m, model.fdb, None if full else changed, frozenset({4}), {5: 1, 6: 2})  # type: ignore[arg-type]


@pytest.fixture
def full_map() -> tuple[FdbMirror, FakeHashMap, Model]:
    """Capacity 8, the model holds 12: 4 do not fit."""
    mirror, m, model = FdbMirror(8), FakeHashMap(8), Model()
    for i in range(12):
        model.apply(entry(i))
    sync(mirror, m, model, full=True)
    return mirror, m, model


def test_what_does_not_fit_is_not_written_and_said(full_map: tuple[FdbMirror, FakeHashMap, Model]) -> None:
    mirror, m, _ = full_map
    assert len(m.data) == len(mirror.written) == 8 and len(mirror.unfit) == 4
    assert mirror.per_bridge[4] == 8
    assert all(m.port_of(k) == e.port for k, e in mirror.written.items())
    assert m.syscalls <= 3  # a batch, not one syscall per entry


def test_an_entry_in_the_full_map_that_moves_is_rewritten(full_map: tuple[FdbMirror, FakeHashMap, Model]) -> None:
    mirror, m, model = full_map
    k = next(iter(mirror.written))
    model.apply(FdbEntry(4, 0, k[2], 6, False, True))
    sync(mirror, m, model)
    assert m.port_of(k) == 6 and VALUE.unpack(m.data[fdb_key(k)])[1] == 2  # port 6's slot


def test_room_freed_lets_the_waiting_in_and_a_removed_one_leaves(
        full_map: tuple[FdbMirror, FakeHashMap, Model]) -> None:
    mirror, m, model = full_map
    waiting = list(mirror.unfit)
    gone = list(mirror.written)[:3]
    for k in gone:
        model.apply(Removed(model.fdb[k]))
    sync(mirror, m, model)
    assert all(m.port_of(k) is None for k in gone)
    assert all(m.port_of(k) == 5 for k in waiting[:3]) and len(mirror.unfit) == 1
    model.apply(Removed(model.fdb[waiting[3]]))  # the last one waiting goes: nothing to write
    sync(mirror, m, model)
    assert not mirror.unfit and len(m.data) == 8 == sum(mirror.per_bridge.values())


def test_a_full_comparison_finds_what_a_resync_lost(full_map: tuple[FdbMirror, FakeHashMap, Model]) -> None:
    mirror, m, _ = full_map
    fresh = Model()  # the dump after an overrun: two entries went meanwhile, unannounced
    for i in range(2, 12):
        fresh.apply(entry(i))
    sync(mirror, m, fresh, full=True)
    assert set(mirror.written) | set(mirror.unfit) == set(fresh.fdb)
    assert m.port_of((4, 0, entry(0).mac)) is None and m.port_of((4, 0, entry(1).mac)) is None
    assert len(m.data) == 8 and len(mirror.unfit) == 2


def test_a_bridge_no_longer_mirrored_takes_its_entries_along() -> None:
    mirror, m, model = FdbMirror(64), FakeHashMap(64), Model()
    for i in range(4):
        model.apply(entry(i))
        model.apply(entry(i, bridge=9))
    mirror.sync(m, model.fdb, None, frozenset({4, 9}), {5: 1})  # type: ignore[arg-type]
    assert len(m.data) == 8
    mirror.sync(m, model.fdb, model.take_fdb_changes(), frozenset({4}), {5: 1})  # type: ignore[arg-type]
    assert len(m.data) == 4 and mirror.per_bridge[9] == 0


def test_an_entry_already_gone_from_the_map_does_not_stop_the_deletes(
        full_map: tuple[FdbMirror, FakeHashMap, Model]) -> None:
    mirror, m, model = full_map
    gone = list(mirror.written)[:3]
    del m.data[fdb_key(gone[0])]  # not by us
    for k in gone:
        model.apply(Removed(model.fdb[k]))
    sync(mirror, m, model)
    assert all(m.port_of(k) is None and k not in mirror.written for k in gone)
    assert len(m.data) == 8 and set(mirror.written) == {k for k in model.fdb if m.port_of(k) == 5}
