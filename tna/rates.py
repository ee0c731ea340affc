"""Rates of the datapath's counters between two reads (`tna stats --watch`).

Pure functions: a Sample is what one read of `tna status`'s counters gave.
Rates are computed per interface and then added up, so one interface whose
program was replaced (its counters start again from zero) does not turn
the total negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Counts = dict[str, tuple[int, int]]  # reason -> (packets, bytes)
Rates = dict[str, tuple[float, float]]  # reason -> (packets/s, bits/s)


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic() of the read
    ifaces: dict[str, tuple[int, Counts]]  # interface -> (program id, counters)

    @classmethod
    def of(cls, at: float, collected: dict[str, Any]) -> Sample:
        """From collect()'s result (state.json plus live counters)."""
        return cls(at, {name: (i["prog_id"], {r: (c["packets"], c["bytes"]) for r, c in i["reasons"].items()})
                        for name, i in collected["ifaces"].items()})


def _delta(before: int, after: int) -> int:
    return after - before if after >= before else after  # went down: restarted from zero


def iface_rates(before: Sample, after: Sample) -> dict[str, Rates]:
    """Per interface, reason -> (packets/s, bits/s) between the two reads; a
    new program on an interface counts from zero."""
    seconds = after.at - before.at
    if seconds <= 0:
        raise ValueError("the second sample must be later than the first")
    out: dict[str, Rates] = {}
    for name, (prog_id, counts) in after.ifaces.items():
        old_id, old = before.ifaces.get(name, (prog_id, {}))
        if old_id != prog_id:
            old = {}
        out[name] = {}
        for reason, (p, b) in counts.items():
            p0, b0 = old.get(reason, (0, 0))
            out[name][reason] = (_delta(p0, p) / seconds, _delta(b0, b) * 8 / seconds)
    return out


def total_rates(per_iface: dict[str, Rates]) -> Rates:
    """Reason -> (packets/s, bits/s) over every interface."""
    total: Rates = {}
    for rates in per_iface.values():
        for reason, (pps, bps) in rates.items():
            tp, tb = total.get(reason, (0.0, 0.0))
            total[reason] = (tp + pps, tb + bps)
    return total


def si(value: float) -> str:
    """1234567 -> '1.235M' (k, M, G, T: powers of 1000, as link speeds are)."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{prefix}"
    return f"{value:.4g}"
