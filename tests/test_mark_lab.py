"""The mark of a frame from a veth peer in the same namespace (issue #11):
r's own stack sends through r-va, whose peer r-vb is in r too, so the
frames r forwards from r-vb to h2 keep the mark r's mangle OUTPUT gave them
(only a namespace crossing scrubs it), and FORWARD drops the marked ones.
XDP cannot see that mark: even with --hook xdp, r-vb goes on the TC hook
and the marked frames are dropped as with Linux alone."""

from __future__ import annotations

import subprocess

import pytest

from netns_labs.lab import RouterLab, py, wait_for
from netns_labs.tna_proc import tna_running

pytestmark = pytest.mark.root

MARK = b"TNA-MARK-PEER"
MARKED, PLAIN = 7001, 7002  # UDP destination ports: the mangle rule marks the first
# a raw IPv4 socket (its packets pass OUTPUT) bound to r-va, sending the frames given in hex
SEND = """import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"r-va")
for h in sys.argv[1].split(","):
    s.sendto(bytes.fromhex(h), (sys.argv[2], 0))
"""


def setup(lab: RouterLab) -> None:
    lab.veth(lab.r, "r-va", lab.r, "r-vb")
    for dev in ("r-va", "r-vb"):  # GRO: a veth takes XDP-redirected frames (tna_running waits for it)
        lab.run(lab.r, ["ethtool", "-K", dev, "gro", "on"])
    for conf in ("all", "r-vb"):  # h1's source arrives on r-vb: no reverse-path check
        lab.sysctl(lab.r, f"net.ipv4.conf.{conf}.rp_filter", 0)
    # r-va has no route to h2: bound to it, r sends on link, to r-vb's MAC
    lab.neigh(lab.r, "r-va", lab.h2.ip4, lab.mac(lab.r, "r-vb"))
    lab.run(lab.r, ["iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", str(MARKED),
                    "-j", "MARK", "--set-mark", "1"])
    lab.run(lab.r, ["iptables", "-A", "FORWARD", "-m", "mark", "--mark", "1", "-j", "DROP"])


def received(lab: RouterLab) -> list[int]:
    """Per probe that reached h2, its destination port: 3 of each sent."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    probes = [bytes(IP(src=lab.h1.ip4, dst=lab.h2.ip4, ttl=64) / UDP(sport=40700, dport=port) /
                    Raw(MARK + b"%d" % k)) for port in (MARKED, PLAIN) for k in range(3)]
    cap = lab.popen(lab.h2.ns, py("netns_labs.xfer", "raw-capture", lab.h2.dev, MARK.hex(), str(len(probes)), "3"),
                    stdout=subprocess.PIPE, text=True, cwd=lab.repo)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    lab.run(lab.r, ["python3", "-c", SEND, ",".join(p.hex() for p in probes), lab.h2.ip4])
    return sorted(Ether(bytes.fromhex(h))[UDP].dport for h in cap.communicate(timeout=30)[0].split())


def test_marked_frames_from_a_peer_here_are_dropped_as_with_linux(router_lab: RouterLab) -> None:
    """Also when the rule comes and goes while tna runs: r-vb moves to XDP
    without it, back to TC with it."""
    lab = router_lab
    setup(lab)
    assert received(lab) == [PLAIN] * 3
    with tna_running(lab, lab.r, "xdp", ["r-h1", "r-h2", "r-va", "r-vb"], [lab.h1, lab.h2]) as tna:
        def hook(want: str) -> bool:
            st = tna.state()
            return st is not None and st["ifaces"].get("r-vb", {}).get("hook") == want
        ifaces = tna.status()["ifaces"]
        assert ifaces["r-vb"]["hook"] == "tc" and "veth peer is in this namespace" in ifaces["r-vb"]["hook_why"]
        before = tna.counters("r-vb")
        got = received(lab)
        after = tna.counters("r-vb")
        for op, want in (("-D", "xdp"), ("-A", "tc")):
            lab.run(lab.r, ["iptables", op, "FORWARD", "-m", "mark", "--mark", "1", "-j", "DROP"])
            assert wait_for(lambda want=want: hook(want), 30, 0.2), tna.output()
        tna.wait_attached(["r-vb"])
        again = received(lab)
    assert got == again == [PLAIN] * 3
    assert after.get("FORWARDED", 0) - before.get("FORWARDED", 0) == 3, (before, after)  # the fast path ran
