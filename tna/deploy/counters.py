"""Reading a program's per-CPU counters (tna_stats, tna_fw_rules): what
`tna status`, `tna stats` and the tests show."""

from __future__ import annotations

from tna.bpf import abi
from tna.bpf import libbpf as bpf


def read_counters(counter_map: bpf.Map) -> dict[int, tuple[int, int]]:
    """index -> (packets, bytes) of a per-CPU tna_counter array, summed over
    CPUs; zero entries left out."""
    out: dict[int, tuple[int, int]] = {}
    for key, per_cpu in counter_map.items():
        counters = [abi.TnaCounter.from_buffer_copy(v) for v in per_cpu]
        pkts, byts = sum(c.packets for c in counters), sum(c.bytes for c in counters)
        if pkts:
            out[int.from_bytes(key, "little")] = (pkts, byts)
    return out


def read_stats(stats_map: bpf.Map) -> dict[str, tuple[int, int]]:
    """reason -> (packets, bytes), summed over CPUs; zero reasons left out."""
    return {abi.REASONS[i]: c for i, c in read_counters(stats_map).items() if i < len(abi.REASONS)}
