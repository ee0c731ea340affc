"""Compare what TNA did with what Linux did, after normalising exactly what
the kernel itself varies from run to run:

- the IPv4 ID (and so the header checksum) of packets the box's own stack
  originates (ICMP errors, echo replies, resets from its addresses): the
  kernel draws it from a per-destination generator that advances with time
  and use; in an ICMP timestamp reply also its receive and transmit times
  (the box's clock) and the ICMP checksum; and the bytes past its IP
  datagram ("bytes past"): such a short frame, delivered to a host veth that
  runs XDP, arrives with a few trailing bytes of stale memory (seen: the
  reply's own timestamps), with plain Linux as with TNA;
- unsolicited multicast membership reports and router solicitations, which
  the stacks send on their own timers (MLD, IGMP, RS; never a probe frame);
- neighbour resolution (ARP requests, neighbour solicitations and the
  advertisements answering them, never a probe frame): retransmitted on the
  box's timers, and a host's own reachability probes (NUD: a unicast
  solicitation once its entry is stale) come on its timers, so how many a
  capture holds depends on how long it lasted (each mode starts with the
  box's non-permanent neighbours flushed, so resolution starts alike);
- ICMP redirects (IPv4 type 5, ICMPv6 137): the kernel limits them per host
  by time (IPv4: exponential back-off remembered across runs; IPv6: one per
  second with a burst of six), whatever the ICMP rate-limit sysctls say, so
  which of several redirect-worthy frames gets one depends on when it came.
  The redirected frame itself is still compared.

Frames are compared per receiving host as multisets, not in order: a frame
the fast path forwards can overtake one the kernel is still working on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from netns_labs.difftest.gen import MARK
from netns_labs.difftest.run import Observation

_TIMERS_V6 = {130, 131, 132, 133, 135, 136, 143}  # MLD query/report/done, RS, NS, NA, MLDv2 report


@dataclass
class Difference:
    where: str           # "frames at h2", "state ports", ...
    detail: str
    frames: set[int] = field(default_factory=set)  # indexes of the sent frames involved, when known


def _l3(frame: bytes) -> tuple[int, int]:
    """(offset of the L3 header, EtherType), past any VLAN tags."""
    off, etype = 14, int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else 0
    while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
        etype, off = int.from_bytes(frame[off + 2:off + 4], "big"), off + 4
    return off, etype


def _noise(frame: bytes, off: int, etype: int, own4: set[bytes]) -> bool:
    """Sent on the stacks' own timers, or limited by time (see above)."""
    if etype == 0x0806 and len(frame) >= off + 8:
        return frame[off + 6:off + 8] == b"\0\1" and MARK not in frame  # an ARP request (resolution)
    if etype == 0x0800 and len(frame) >= off + 20:
        proto, at = frame[off + 9], off + (frame[off] & 0xF) * 4
        if proto == 2:
            return MARK not in frame  # IGMP
        return proto == 1 and len(frame) > at and frame[at] == 5 and frame[off + 12:off + 16] in own4
    if etype == 0x86DD and len(frame) >= off + 41:
        nh, at = frame[off + 6], off + 40
        if nh == 0 and len(frame) >= at + 8:  # MLD rides behind a hop-by-hop header
            nh, at = frame[at], at + (frame[at + 1] + 1) * 8
        if nh == 58 and len(frame) > at:
            return frame[at] == 137 or (frame[at] in _TIMERS_V6 and MARK not in frame)
    return False


def normalise(frame: bytes, own4: set[bytes]) -> bytes | None:
    """The frame with what the kernel varies zeroed; None for noise."""
    off, etype = _l3(frame)
    if _noise(frame, off, etype, own4):
        return None
    if etype == 0x0800 and len(frame) >= off + 20 and frame[off + 12:off + 16] in own4:
        b = bytearray(frame)
        b[off + 4:off + 6] = b[off + 10:off + 12] = b"\0\0"
        at = off + (frame[off] & 0xF) * 4
        if frame[off + 9] == 1 and len(frame) >= at + 20 and frame[at] == 14:
            b[at + 2:at + 4] = b[at + 12:at + 20] = bytes(10)  # a timestamp reply: the box's clock
        return bytes(b[:off + int.from_bytes(frame[off + 2:off + 4], "big")])  # see "bytes past" above
    return frame


def show(frame: bytes, limit: int = 64) -> str:
    """A frame for a report: scapy's summary, then its first bytes in hex."""
    from scapy.layers.l2 import Ether

    more = f"... ({len(frame)} bytes)" if len(frame) > limit else ""
    return f"{Ether(frame).summary()}\n      {frame[:limit].hex()}{more}"


def frame_index(frame: bytes) -> int | None:
    at = frame.find(MARK)
    if at < 0 or len(frame) < at + len(MARK) + 2:
        return None
    return int.from_bytes(frame[at + len(MARK):at + len(MARK) + 2], "big")


def compare(linux: Observation, tna: Observation, own4: set[bytes]) -> list[Difference]:
    diffs = []
    for role in sorted(linux.frames):
        want = Counter(n for f in linux.frames[role] if (n := normalise(f, own4)) is not None)
        got = Counter(n for f in tna.frames.get(role, []) if (n := normalise(f, own4)) is not None)
        missing, extra = want - got, got - want
        if missing or extra:
            lines = [f"  linux only: {show(f)}" for f in missing.elements()]
            lines += [f"  tna only:   {show(f)}" for f in extra.elements()]
            involved = {i for f in [*missing, *extra] if (i := frame_index(f)) is not None}
            diffs.append(Difference(f"frames at {role}", "\n".join(lines), involved))
    for when, a, b in (("while running", linux.state, tna.state), ("after exit", linux.after, tna.after)):
        for key in sorted(set(a) | set(b)):
            detail = _state_diff(a.get(key), b.get(key))
            if detail:
                diffs.append(Difference(f"state {key} {when}", detail))
    if linux.send_errors != tna.send_errors:
        diffs.append(Difference("send errors", f"  linux {linux.send_errors} tna {tna.send_errors}"))
    return diffs


def _state_diff(a: object, b: object) -> str:
    if a == b:
        return ""
    if isinstance(a, dict) and isinstance(b, dict):
        lines = []
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                x, y = a.get(k), b.get(k)
                if isinstance(x, dict) and isinstance(y, dict):
                    x = {f: v for f, v in x.items() if y.get(f) != v}
                    y = {f: v for f, v in y.items() if a[k].get(f) != v}
                lines.append(f"  {k}: linux {x} tna {y}")
        return "\n".join(lines)
    if isinstance(a, list) and isinstance(b, list):
        return "\n".join([f"  linux only: {e}" for e in a if e not in b]
                         + [f"  tna only:   {e}" for e in b if e not in a])
    return f"  linux {a} tna {b}"
