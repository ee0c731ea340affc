"""A packet conntrack calls INVALID is un-tracked by the kernel
(nf_conntrack_in() drops its entry), so its connection's NAT binding does
not apply: blind FINs (random sequence numbers, out of window) on a
connection h1 -> h2 through r's MASQUERADE, with no INVALID rule in
FORWARD, reach h2 with h1's own source where conntrack calls them INVALID
(about 3 in 4) and masqueraded where it ignores them - with tna too, which
carries the connection and freed it from window tracking."""

from __future__ import annotations

import random
import subprocess
import time

import pytest

from netns_labs.lab import RouterLab, py
from netns_labs.tna_proc import tna_running
from tests.test_conntrack_lab import trickle, trickle_entry
from tests.test_nat_lab import OUTSIDE4, setup

pytestmark = pytest.mark.root

MARK = b"TNA-NAT-INVALID"
FINS = 8  # all ignored (none INVALID): p = 4^-8


def blind_fins(lab: RouterLab, sport: int, rnd: random.Random) -> tuple[list[str], list[str]]:
    """The sources h2 saw the FINs from, and the entry after them."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    h1, h2 = lab.h1, lab.h2
    with trickle(lab, 5, sport):
        time.sleep(2)  # carried, under tna: freed from window tracking
        cap = lab.popen(h2.ns, py("netns_labs.xfer", "raw-capture", h2.dev, MARK.hex(), str(FINS), "3"),
                        stdout=subprocess.PIPE, text=True, cwd=lab.repo)
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
        fins = [bytes(Ether(src=h1.mac, dst=lab.r_h1_mac) / IP(src=h1.ip4, dst=h2.ip4)
                      / TCP(sport=sport, dport=5201, flags="FA", seq=rnd.getrandbits(32), ack=rnd.getrandbits(32))
                      / Raw(MARK)).hex() for _ in range(FINS)]
        lab.run(h1.ns, py("netns_labs.xfer", "raw-send", h1.dev, ",".join(fins), "1"), cwd=lab.repo)
        got = cap.communicate(timeout=30)[0].split()
        entry = trickle_entry(lab, sport)
    return sorted(str(IP(bytes.fromhex(f)[14:]).src) for f in got), entry


def test_invalid_packets_of_a_nat_connection_are_not_translated(router_lab: RouterLab, hook: str) -> None:
    lab = router_lab
    setup(lab, hook)
    lab.run(lab.r, ["iptables", "-D", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"])
    rnd = random.Random(11)
    linux, linux_entry = blind_fins(lab, 40131, rnd)
    assert linux_entry[3] == "ESTABLISHED", linux_entry
    assert len(linux) == FINS and set(linux) <= {lab.h1.ip4, OUTSIDE4} and lab.h1.ip4 in linux, linux
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        fast, fast_entry = blind_fins(lab, 40132, rnd)
        c = tna.counters()
    assert fast_entry[3] == "ESTABLISHED", fast_entry
    assert len(fast) == FINS and set(fast) <= {lab.h1.ip4, OUTSIDE4} and lab.h1.ip4 in fast, fast
    assert c.get("FORWARDED", 0) >= 10, c  # the trickle and the FINs were carried
