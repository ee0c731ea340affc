"""Writing map contents: a new object's rule-set and ipset maps at their
load, and later only the difference from what was written (shadow + diff).

A rule set's maps get room to change in place: a rule that joins or
leaves a set of rules changes map entries only (fwgen.rule_refs() keeps
the code's constants), so Datapath.keep_programs() rewrites the entries
and the per-program rule counters instead of loading new programs.  The
sets' LPM tries allocate per entry (BPF_F_NO_PREALLOC): their room costs
nothing until used; the counters are per-CPU arrays, whose room does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from tna.bpf import abi
from tna.bpf import libbpf as bpf

log = logging.getLogger(__name__)


def set_room(entries: int) -> int:
    """Capacity of a set-of-rules map for its entries."""
    return 2 * entries + 64


def counter_room(counters: int) -> int:
    """Capacity of a program's tna_fw_rules for a rule set's counters."""
    return min(abi.FW_RULES_MAX, counters + max(64, counters // 8))


def load_with_sets(obj: bpf.BpfObject, sets: dict[str, dict[bytes, bytes]],
                   reuse: dict[str, bpf.Map] | None = None, sizes: Mapping[str, int] | None = None
                   ) -> dict[str, bpf.Map]:
    """Load obj with its rule-set and ipset maps sized for (sizes: a
    capacity of their own, else set_room()), and filled with, sets, before
    anything can attach the program; or with reuse, maps another program
    already holds the same sets in.  Returns the set maps (descriptors of
    their own)."""
    if reuse is not None:
        for name, m in reuse.items():
            obj.reuse_map(name, m.fd)
        obj.load()
        return reuse
    for name, entries in sets.items():
        obj.set_max_entries(name, (sizes or {}).get(name) or set_room(len(entries)))
    obj.load()
    maps = {}
    for name, entries in sets.items():
        m = obj.map(name)
        for key, value in entries.items():
            m.update(key, value)
        maps[name] = bpf.Map(os.dup(m.fd), m.key_size, m.value_size, name, owned=True)
    return maps


def write_diff(m: bpf.Map, shadow: dict[bytes, bytes], desired: dict[bytes, bytes], name: str,
               array: bool = False, adds_first: bool = False) -> list[OSError]:
    """Write only the difference between what we wrote last (shadow) and
    desired (an array's entries cannot be deleted: they are zeroed);
    deletes first (room in a full map) unless adds_first.  Returns the
    failed writes."""
    failed: list[OSError] = []

    def delete() -> None:
        for key in shadow.keys() - desired.keys():
            if array:
                m.update(key, bytes(m.value_size))
            else:
                m.delete(key)
            del shadow[key]

    if not adds_first:
        delete()
    for key, value in desired.items():
        if shadow.get(key) != value:
            try:
                m.update(key, value)
            except OSError as e:  # a device that vanished meanwhile, a full map
                failed.append(e)
                continue
            shadow[key] = value
    if adds_first:
        delete()
    if failed:
        # those entries' packets take the kernel path (a missing port or
        # FDB entry is a pass; an ipset's caller moves its rules there, a
        # rule set's gets new maps), so one line per sync is enough
        log.warning("map %s: %d entries not written (%s); their traffic stays on the kernel path",
                    name, len(failed), failed[0])
    return failed


ZERO_BATCH = 1024  # entries a syscall: a per-CPU entry is a value per possible CPU


def zero_array(m: bpf.Map, n: int | None = None) -> None:
    """The first n entries of an array map (all: None) zeroed, in batches."""
    n = bpf.map_info(m.fd).max_entries if n is None else n
    for lo in range(0, n, ZERO_BATCH):
        count = min(ZERO_BATCH, n - lo)
        keys = b"".join(i.to_bytes(4, "little") for i in range(lo, lo + count))
        if m.update_batch(keys, bytes(count * m.entry_bytes)) != count:
            raise OSError(f"map {m.name}: not every entry zeroed")
