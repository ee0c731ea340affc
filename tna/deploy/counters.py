"""Reading a program's maps by its id: its per-CPU counters (tna_stats,
tna_fw_rules), the tna_state it reads; what `tna status`, `tna stats`,
the daemon's metrics and the tests show."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import TypeVar

from tna.bpf import abi
from tna.bpf import libbpf as bpf

T = TypeVar("T")


def read_counters(counter_map: bpf.Map) -> dict[int, tuple[int, int]]:
    """index -> (packets, bytes) of a per-CPU tna_counter array, summed over
    CPUs; zero entries left out."""
    out: dict[int, tuple[int, int]] = {}
    for key, per_cpu in counter_map.items(nonzero=True):
        counters = [abi.TnaCounter.from_buffer_copy(v) for v in per_cpu]
        pkts, byts = sum(c.packets for c in counters), sum(c.bytes for c in counters)
        if pkts:
            out[int.from_bytes(key, "little")] = (pkts, byts)
    return out


def _by_reason(counters: dict[int, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {abi.REASONS[i]: c for i, c in counters.items() if i < len(abi.REASONS)}


def read_stats(stats_map: bpf.Map) -> dict[str, tuple[int, int]]:
    """reason -> (packets, bytes), summed over CPUs; zero reasons left out."""
    return _by_reason(read_counters(stats_map))


def program_counters(prog_id: int, map_name: str) -> dict[int, tuple[int, int]]:
    """read_counters() of the program with id prog_id's map map_name ({}: the program is gone)."""
    return read_program_map(prog_id, map_name, read_counters) or {}


def read_program_map(prog_id: int, map_name: str, read: Callable[[bpf.Map], T]) -> T | None:
    """read() of the program with id prog_id's map map_name, through handles
    of our own: by id, so a program unloaded meanwhile reads as None instead
    of through a descriptor that may name something else now."""
    try:
        prog = bpf.Program.from_id(prog_id)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    try:
        m = prog.find_map(map_name)
        try:
            return read(m)
        finally:
            m.close()
    finally:
        prog.close()


def program_stats(prog_id: int) -> dict[str, tuple[int, int]]:
    """reason -> (packets, bytes) of the program with id prog_id (see program_counters)."""
    return _by_reason(program_counters(prog_id, abi.MAP_STATS))


def summed(counters: Iterable[dict[int, tuple[int, int]]]) -> dict[int, tuple[int, int]]:
    """Counters of several programs (each has its own tna_fw_rules), added up by index."""
    total: dict[int, tuple[int, int]] = {}
    for c in counters:
        for i, (p, b) in c.items():
            tp, tb = total.get(i, (0, 0))
            total[i] = (tp + p, tb + b)
    return total
