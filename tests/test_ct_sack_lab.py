"""The window copy of a carried TCP connection reads SACK blocks as
tcp_sack() does (ct_tcp.c.j2, tna_tcp_sack()): a block's right edge moves
what an ACK acknowledges, so an ACK whose SACK block covers data the peer
never sent is INVALID to Linux (dropped here by `--ctstate INVALID -j
DROP`) and goes to the kernel from the fast path (CT_WINDOW), wherever the
block lies among the options; one whose blocks lie within the data is
carried."""

from __future__ import annotations

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

    lab = router_lab
    setup(lab, hook)
    with a_carried_connection(lab, hook) as (tna, seen):
        last = max((Ether(f)[TCP] for f in seen), key=lambda t: t.seq)
        nxt, sent = (last.seq + len(last.payload)) & 0xFFFFFFFF, last.ack  # h1's next byte; h2's (no data)

        def verdict(*options: tuple[str, object]) -> dict[str, int]:
            """What the fast path made of a pure ACK from h1 with these options."""
            ack = Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / IP(src=lab.h1.ip4, dst=lab.h2.ip4) / TCP(
                sport=last.sport, dport=5201, flags="A", seq=nxt, ack=sent, window=last.window,
                options=list(options))
            before = tna.counters("r-h1")
            lab.run(lab.h1.ns, py("netns_labs.xfer", "raw-send", lab.h1.dev, bytes(ack).hex(), "1"), cwd=lab.repo)
            time.sleep(0.3)  # and past the pass cache's 20 ms
            after = tna.counters("r-h1")
            return {k: d for k in ("FORWARDED", "CT_WINDOW") if (d := after.get(k, 0) - before.get(k, 0))}

        beyond = (sent + 1000, sent + 2000)  # h2 never sent these bytes
        within = ((sent - 2000) & 0xFFFFFFFF, sent)
        got = {
            "linux layout, beyond": verdict(NOP, NOP, TS, NOP, NOP, ("SAck", beyond)),
            "first, beyond": verdict(("SAck", beyond), NOP, NOP, TS),
            "second block beyond": verdict(NOP, NOP, ("SAck", (*within, *beyond)), NOP, NOP, TS),
            "linux layout, within": verdict(NOP, NOP, TS, NOP, NOP, ("SAck", within)),
            "timestamps only": verdict(NOP, NOP, TS),
        }
    assert got == {"linux layout, beyond": {"CT_WINDOW": 1}, "first, beyond": {"CT_WINDOW": 1},
                   "second block beyond": {"CT_WINDOW": 1}, "linux layout, within": {"FORWARDED": 1},
                   "timestamps only": {"FORWARDED": 1}}, got
