"""tna_fdb kept equal to the model's FDB of the mirrored bridges, as far as
the map holds: by the model's change journal (one entry changed costs one
write, not a walk of a million), in batches (one syscall per 64k entries).

The map is sized when the shared maps are created (map_size(): twice what
the kernel held then, rounded up to a power of two).  An entry that does not
fit is not written: its frames miss the map and take the kernel path, as an
unknown destination does; it is written once room frees up.  An entry in the
map is always what the kernel holds: an entry that changes is rewritten (an
existing key always fits), one that goes is deleted, and one whose rewrite
fails is deleted too.  What was written is kept as references to the
model's own entries (no copy of their bytes).
"""

from __future__ import annotations

import itertools
import logging
import struct
from collections import Counter
from collections.abc import Iterable, Mapping

from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.model.config import FdbEntry, FdbKey

log = logging.getLogger(__name__)

BATCH = 65536
# struct tna_fdb_key {u32 bridge; u16 vid; u8 mac[6]} and struct tna_fdb
# {u32 port; u16 port_slot; u16 flags; u64 refreshed} (tests/test_abi.py)
KEY = struct.Struct("=IH6s")
VALUE = struct.Struct("=IHHQ")


def map_size(count: int, default: int) -> int:
    """Room for count entries with headroom: the next power of two of twice
    count, at least default."""
    return max(default, 1 << (2 * count - 1).bit_length()) if count > 0 else default


def fdb_key(k: FdbKey) -> bytes:
    bridge, vid, mac = k
    return KEY.pack(bridge, vid, bytes.fromhex(mac.replace(":", "")))


def fdb_value(e: FdbEntry, slot: int) -> bytes:
    flags = (abi.FDB_LOCAL if e.local else 0) | (abi.FDB_DYNAMIC if e.dynamic else 0) | \
        (abi.FDB_STICKY if e.sticky else 0)
    return VALUE.pack(e.port, slot, flags, 0)


class FdbMirror:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.written: dict[FdbKey, FdbEntry] = {}  # what the map holds, as the model's entries
        # wanted, not written (the map was full), oldest first
        self.unfit: dict[FdbKey, None] = {}
        self.per_bridge: Counter[int] = Counter()   # entries in the map, per bridge
        self._bridges: frozenset[int] = frozenset()
        self._slots: dict[int, int] = {}

    def sync(self, m: bpf.Map, fdb: Mapping[FdbKey, FdbEntry], changed: Iterable[FdbKey] | None,
             bridges: frozenset[int], slots: Mapping[int, int]) -> None:
        """changed: the keys changed since the last sync (None: all may have,
        e.g. after a resync: a full comparison)."""
        moved = {p for p in slots.keys() | self._slots.keys() if slots.get(p) != self._slots.get(p)}
        if changed is None or bridges != self._bridges or moved:
            self.unfit.clear()  # every entry is looked at again
            keys: Iterable[FdbKey] = itertools.chain(fdb.keys(), [k for k in self.written if k not in fdb])
        else:
            keys = changed
        self._bridges, self._slots = bridges, dict(slots)
        gone: list[FdbKey] = []
        rewrite: list[tuple[FdbKey, FdbEntry]] = []
        new: dict[FdbKey, FdbEntry] = {}
        for k in keys:
            e = fdb.get(k)
            if e is None or e.bridge not in bridges:
                if k in self.written:
                    gone.append(k)
                self.unfit.pop(k, None)
            elif (old := self.written.get(k)) is not None:
                if old != e or e.port in moved:
                    rewrite.append((k, e))
            else:
                new[k] = e
        self._delete(m, gone)
        self._write(m, rewrite, existing=True)
        room = max(0, self.capacity - len(self.written))
        if len(new) < room and self.unfit:  # room freed up: the longest waiting first
            for k in list(itertools.islice(self.unfit, room - len(new))):
                del self.unfit[k]
                if (e := fdb.get(k)) is not None and e.bridge in bridges and k not in self.written:
                    new[k] = e
        entries = list(new.items())
        for k, _ in entries[room:]:
            self.unfit[k] = None
        self._write(m, entries[:room], existing=False)

    def _delete(self, m: bpf.Map, keys: list[FdbKey]) -> None:
        for i in range(0, len(keys), BATCH):
            chunk = keys[i:i + BATCH]
            try:
                done = m.delete_batch(b"".join(fdb_key(k) for k in chunk))
            except OSError:  # the first key already missing: one by one below
                done = 0
            for k in chunk[done:]:  # one by one (a key the map did not hold stops a batch)
                m.delete(fdb_key(k))
            for k in chunk:
                self.per_bridge[self.written.pop(k).bridge] -= 1

    def _write(self, m: bpf.Map, entries: list[tuple[FdbKey, FdbEntry]], existing: bool) -> None:
        """Keys are the model's own (the same objects: no copy)."""
        failed: list[tuple[FdbKey, OSError]] = []
        for i in range(0, len(entries), BATCH):
            chunk = entries[i:i + BATCH]
            kb = [fdb_key(k) for k, _ in chunk]
            vb = [fdb_value(e, self._slots.get(e.port, 0)) for _, e in chunk]
            try:
                done = m.update_batch(b"".join(kb), b"".join(vb))
            except OSError:
                done = 0
            ok = chunk[:done]
            for j in range(done, len(chunk)):  # the rest one by one, to tell which failed
                try:
                    m.update(kb[j], vb[j])
                    ok.append(chunk[j])
                except OSError as err:
                    failed.append((chunk[j][0], err))
            for k, e in ok:
                if not existing:
                    self.per_bridge[e.bridge] += 1
                self.written[k] = e
        for k, _ in failed:
            if existing:  # never leave the old port in the map
                m.delete(fdb_key(k))
                self.per_bridge[self.written.pop(k).bridge] -= 1
            self.unfit[k] = None
        if failed:
            log.warning("map %s: %d entries not written (%s); their traffic stays on the kernel path",
                        abi.MAP_FDB, len(failed), failed[0][1])
