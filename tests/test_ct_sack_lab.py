"""The window copy of a carried TCP connection reads SACK blocks as
tcp_sack() does (ct_tcp.c.j2, tna_tcp_sack()): a block's right edge moves
what an ACK acknowledges, so an ACK whose SACK block covers data the peer
never sent is INVALID to Linux (dropped here by `--ctstate INVALID -j
DROP`) and goes to the kernel from the fast path (CT_WINDOW), wherever the
block lies among the options; one whose blocks lie within the data is
carried, and so is one whose SACK option tcp_sack() does not read (after
the end of the options, or longer than they are)."""

from __future__ import annotations

import struct
import time

import pytest

from netns_labs.lab import RouterLab, py
from tests.test_conntrack_lab import a_carried_connection, setup

pytestmark = pytest.mark.root

TS = ("Timestamp", (1, 1))
NOP = ("NOP", None)


def test_sack_blocks_are_read_wherever_they_lie_among_the_options(router_lab: RouterLab, hook: str) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    lab = router_lab
    setup(lab, hook)
    with a_carried_connection(lab, hook) as (tna, seen):
        last = Ether(seen[-1])[TCP]
        nxt, sent = (last.seq + len(last.payload)) & 0xFFFFFFFF, last.ack  # h1's next byte; h2's (no data)

        def verdict(options: list[tuple[str, object]] | bytes) -> dict[str, int]:
            """What the fast path made of a pure ACK from h1 with these
            options (bytes: as they are, a length byte the options' room
            does not hold included)."""
            tcp = TCP(sport=last.sport, dport=5201, flags="A", seq=nxt, ack=sent, window=last.window)
            if isinstance(options, bytes):
                tcp.dataofs = (20 + len(options)) // 4
                tcp = tcp / Raw(options)
            else:
                tcp.options = options
            ack = Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / IP(src=lab.h1.ip4, dst=lab.h2.ip4) / tcp
            before = tna.counters("r-h1")
            lab.run(lab.h1.ns, py("netns_labs.xfer", "raw-send", lab.h1.dev, bytes(ack).hex(), "1"), cwd=lab.repo)
            time.sleep(0.3)  # and past the pass cache's 20 ms
            after = tna.counters("r-h1")
            return {k: d for k in ("FORWARDED", "CT_WINDOW") if (d := after.get(k, 0) - before.get(k, 0))}

        # the right edge decides: a block from acknowledged data to bytes h2
        # never sent acknowledges those
        beyond = ((sent - 1000) & 0xFFFFFFFF, sent + 1000)
        within = ((sent - 2000) & 0xFFFFFFFF, sent)
        got = {
            "linux layout, beyond": verdict([NOP, NOP, TS, NOP, NOP, ("SAck", beyond)]),
            "first, beyond": verdict([("SAck", beyond), NOP, NOP, TS]),
            "second block beyond": verdict([NOP, NOP, ("SAck", (*within, *beyond)), NOP, NOP, TS]),
            "first block beyond": verdict([NOP, NOP, ("SAck", (*beyond, *within))]),
            "linux layout, within": verdict([NOP, NOP, TS, NOP, NOP, ("SAck", within)]),
            "timestamps only": verdict([NOP, NOP, TS]),
            # tcp_sack() stops at the end of the options, and at an option
            # longer than what is left of them
            "after the end of options": verdict([("EOL", None), NOP, NOP, ("SAck", beyond)]),
            "longer than the options": verdict(b"\x01\x01\x05\x12" + struct.pack("!II", *beyond)),
        }
    assert got == {"linux layout, beyond": {"CT_WINDOW": 1}, "first, beyond": {"CT_WINDOW": 1},
                   "second block beyond": {"CT_WINDOW": 1}, "first block beyond": {"CT_WINDOW": 1},
                   "linux layout, within": {"FORWARDED": 1}, "timestamps only": {"FORWARDED": 1},
                   "after the end of options": {"FORWARDED": 1}, "longer than the options": {"FORWARDED": 1}}, got
