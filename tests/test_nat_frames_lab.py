"""NAT byte for byte: frames of established UDP connections through r's
MASQUERADE and DNAT (with port translation), sent by scapy in both
directions, arrive exactly as with Linux alone - addresses, ports, the IPv4
header and UDP checksums (an IPv4 datagram sent without a checksum keeps
none), TTL/hop limit, MACs - and the fast path is what carried them."""

from __future__ import annotations

import subprocess
import time

import pytest

from netns_labs.lab import RouterLab, py, wait_for
from tests.conftest import tna_running
from tests.test_nat_lab import OUTSIDE4, OUTSIDE6, setup

pytestmark = pytest.mark.root

MARK = b"TNA-NAT-BYTES"


def flows(lab: RouterLab) -> list[tuple[str, tuple, tuple]]:
    """(name, original, reply) per connection: each direction as (sender
    host, src, dst, sport, dport), the reply as the kernel expects it."""
    h1, h2 = lab.h1, lab.h2
    out = []
    for v, inside, outside, r_out in (("4", h1.ip4, h2.ip4, OUTSIDE4), ("6", h1.ip6, h2.ip6, OUTSIDE6)):
        out.append((f"masquerade{v}", (h1, inside, outside, 40500, 5555), (h2, outside, r_out, 5555, 40500)))
        out.append((f"dnat{v}", (h2, outside, r_out, 40501, 8082), (h1, inside, outside, 5202, 40501)))
    return out


def frame(lab: RouterLab, way: tuple, payload: bytes, no_csum: bool = False) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    host, src, dst, sport, dport = way
    r_mac = lab.r_h1_mac if host is lab.h1 else lab.r_h2_mac
    ip = IPv6(src=src, dst=dst, hlim=64) if ":" in src else IP(src=src, dst=dst, ttl=64)
    udp = UDP(sport=sport, dport=dport, chksum=0) if no_csum else UDP(sport=sport, dport=dport)
    return bytes(Ether(src=host.mac, dst=r_mac) / ip / udp / Raw(payload))


def send(lab: RouterLab, host: object, frames: list[bytes]) -> None:
    if frames:
        lab.run(host.ns, py("netns_labs.xfer", "raw-send", host.dev, ",".join(f.hex() for f in frames), "1", "0.01"),
                cwd=lab.repo)


def establish(lab: RouterLab) -> None:
    """Each connection replied to, then ASSURED (a packet 2 s after the first)."""
    for _, orig, reply in flows(lab):
        send(lab, orig[0], [frame(lab, orig, b"setup")])
        send(lab, reply[0], [frame(lab, reply, b"setup")])
    time.sleep(2.2)
    for _, orig, _ in flows(lab):
        send(lab, orig[0], [frame(lab, orig, b"setup")])

    def assured() -> bool:
        out = "".join(lab.run(lab.r, ["conntrack", "-L", "-f", f, "-p", "udp"]).stdout for f in ("ipv4", "ipv6"))
        return out.count("[ASSURED]") == len(flows(lab))
    assert wait_for(assured, 10, 0.1), lab.run(lab.r, ["conntrack", "-L"]).stdout


def probes(lab: RouterLab) -> dict[str, list[str]]:
    """Probe frames of every connection, both ways: what each host received (hex)."""
    by_sender: dict[str, list[bytes]] = {lab.h1.ns: [], lab.h2.ns: []}
    n = 0
    for _, orig, reply in flows(lab):
        for way in (orig, reply):
            for no_csum in (False, True) if ":" not in way[1] else (False,):
                by_sender[way[0].ns].append(frame(lab, way, MARK + b"%04d" % n, no_csum))
                n += 1
    caps = {h.ns: lab.popen(h.ns, py("netns_labs.xfer", "raw-capture", h.dev, MARK.hex(),
                                     str(len(by_sender[other.ns])), "5"),
                            stdout=subprocess.PIPE, text=True, cwd=lab.repo)
            for h, other in ((lab.h1, lab.h2), (lab.h2, lab.h1))}
    for cap in caps.values():
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    for h in (lab.h1, lab.h2):
        send(lab, h, by_sender[h.ns])
    return {ns: sorted(cap.communicate(timeout=30)[0].split()) for ns, cap in caps.items()}


def test_established_nat_frames_arrive_as_with_linux(router_lab: RouterLab, hook: str) -> None:
    lab = router_lab
    setup(lab, hook)
    for h in (lab.h1, lab.h2):  # the hosts answer nothing (no ICMP port unreachable)
        for tool in ("iptables", "ip6tables"):
            lab.run(h.ns, [tool, "-P", "OUTPUT", "DROP"])
    establish(lab)
    linux = probes(lab)
    assert [len(v) for v in linux.values()] == [6, 6], linux  # 2 connections x (2 IPv4 + 1 IPv6) per receiver
    lab.run(lab.r, ["conntrack", "-F"])
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        establish(lab)
        before = tna.counters()
        got = probes(lab)
        after = tna.counters()
    assert got == linux
    assert after.get("FORWARDED", 0) - before.get("FORWARDED", 0) >= 12, (before, after)
