"""NAT byte for byte: frames of established UDP and TCP connections through
r's MASQUERADE, DNAT with port translation and an entry with both a DNAT
and an SNAT (a published port whose server sees r's inside address), sent
by scapy in both directions, arrive exactly as with Linux alone - addresses,
ports, the IPv4 header and L4 checksums, TTL/hop limit, MACs - and the fast
path is what carried them.  UDP: an IPv4 datagram sent without a checksum
keeps none; one whose translated checksum computes to 0 carries 0xffff.
TCP: segments with timestamps and payload, after a handshake the hosts'
stacks never see (their OUTPUT drops every reply)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from netns_labs.lab import Host, RouterLab, py, wait_for
from netns_labs.tna_proc import tna_running
from tests.test_nat_lab import OUTSIDE4, OUTSIDE6, setup

pytestmark = pytest.mark.root

MARK = b"TNA-NAT-BYTES"
INSIDE4, INSIDE6 = "192.0.2.1", "2001:db8:1::1"  # r's inside addresses: the source h1 sees after the SNAT
ISN = {False: 1000, True: 7_000_000}  # TCP initial sequence numbers: original direction, reply
TCP_PROBES = 2  # data segments per direction


def both_nat_rules(lab: RouterLab) -> None:
    """The published ports 8083 (UDP) and 8081 (TCP) DNAT'd to h1:5203 and,
    on their way in, SNAT'd to r's inside address."""
    for tool, inside, r_in in (("iptables", lab.h1.ip4, INSIDE4), ("ip6tables", f"[{lab.h1.ip6}]", INSIDE6)):
        for proto, port in (("udp", "8083"), ("tcp", "8081")):
            lab.run(lab.r, [tool, "-t", "nat", "-A", "PREROUTING", "-i", "r-h2", "-p", proto, "--dport", port,
                            "-j", "DNAT", "--to-destination", f"{inside}:5203"])
            lab.run(lab.r, [tool, "-t", "nat", "-A", "POSTROUTING", "-o", "r-h1", "-p", proto, "--dport", "5203",
                            "-j", "SNAT", "--to-source", r_in])
            lab.run(lab.r, [tool, "-A", "FORWARD", "-i", "r-h2", "-o", "r-h1", "-p", proto, "--dport", "5203",
                            "-j", "ACCEPT"])


@dataclass(frozen=True)
class Way:
    """One direction of a connection as its sender sends it."""
    host: Host
    src: str
    dst: str
    sport: int
    dport: int


@dataclass(frozen=True)
class Flow:
    name: str
    proto: str  # "udp" | "tcp"
    orig: Way
    reply: Way  # as the kernel expects it: the inverse of the original once translated

    def translated(self, reply: bool) -> Way:
        """A direction as its receiver gets it."""
        o = self.orig if reply else self.reply
        return Way(o.host, o.dst, o.src, o.dport, o.sport)


def flows(lab: RouterLab) -> list[Flow]:
    h1, h2 = lab.h1, lab.h2
    out = []
    for v, inside, outside, r_out, r_in in (("4", h1.ip4, h2.ip4, OUTSIDE4, INSIDE4),
                                            ("6", h1.ip6, h2.ip6, OUTSIDE6, INSIDE6)):
        for proto, base, dnat_port, server, both_port in (("udp", 40500, 8082, 5202, 8083),
                                                          ("tcp", 40600, 8080, 5201, 8081)):
            out += [Flow(f"{proto}{v} masquerade", proto, Way(h1, inside, outside, base, 5555),
                         Way(h2, outside, r_out, 5555, base)),
                    Flow(f"{proto}{v} dnat", proto, Way(h2, outside, r_out, base + 1, dnat_port),
                         Way(h1, inside, outside, server, base + 1)),
                    Flow(f"{proto}{v} dnat+snat", proto, Way(h2, outside, r_out, base + 2, both_port),
                         Way(h1, inside, r_in, 5203, base + 2))]
    return out


def l3(way: Way) -> object:
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    return IPv6(src=way.src, dst=way.dst, hlim=64) if ":" in way.src else IP(src=way.src, dst=way.dst, ttl=64)


def frame(lab: RouterLab, way: Way, l4: object, payload: bytes = b"") -> bytes:
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    r_mac = lab.r_h1_mac if way.host is lab.h1 else lab.r_h2_mac
    return bytes(Ether(src=way.host.mac, dst=r_mac) / l3(way) / l4 / Raw(payload))


def udp(lab: RouterLab, way: Way, payload: bytes, no_csum: bool = False) -> bytes:
    from scapy.layers.inet import UDP

    return frame(lab, way, UDP(sport=way.sport, dport=way.dport, **({"chksum": 0} if no_csum else {})), payload)


def udp_csum(way: Way, payload: bytes) -> int:
    """The checksum scapy gives the datagram (a computed 0 as 0xffff)."""
    from scapy.layers.inet import UDP
    from scapy.packet import Raw

    p = l3(way) / UDP(sport=way.sport, dport=way.dport) / Raw(payload)
    return p.__class__(bytes(p))[UDP].chksum


def zero_sum(f: Flow, reply: bool, payload: bytes) -> bytes:
    """payload and a last word that makes the translated datagram's
    checksum compute to 0 (sent as 0xffff, RFC 768); payload has even length."""
    out = payload + udp_csum(f.translated(reply), payload + b"\0\0").to_bytes(2, "big")
    assert udp_csum(f.translated(reply), out) == 0xffff
    return out


def tcp(lab: RouterLab, f: Flow, reply: bool, flags: str, sent: int = 0, payload: bytes = b"") -> bytes:
    """A segment of f's direction after `sent` bytes of data, acking the
    peer's SYN, with the timestamps option."""
    from scapy.layers.inet import TCP

    way = f.reply if reply else f.orig
    seq = ISN[reply] + (sent + 1 if flags != "S" and flags != "SA" else 0)
    ack = ISN[not reply] + 1 if "A" in flags else 0
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (100 + sent + 50 * reply, 0 if flags == "S" else 100))]
    return frame(lab, way, TCP(sport=way.sport, dport=way.dport, seq=seq, ack=ack, flags=flags, window=65535,
                               options=opts), payload)


def send(lab: RouterLab, host: Host, frames: list[bytes]) -> None:
    if frames:
        lab.run(host.ns, py("netns_labs.xfer", "raw-send", host.dev, ",".join(f.hex() for f in frames), "1", "0.01"),
                cwd=lab.repo)


def establish(lab: RouterLab, tna: object = None) -> None:
    """UDP: each connection replied to, then ASSURED (a packet 2 s after the
    first).  TCP: the handshake, then (under tna) pure ACKs until the fast
    path carries them (the daemon first frees the connection from window
    tracking); they move no sequence number, so the probes stay the same."""
    fs = flows(lab)

    def each(step: Callable[[Flow], tuple[Host, bytes] | None]) -> None:
        """One step of every connection, sent by its hosts (one process each)."""
        by_host: dict[Host, list[bytes]] = {lab.h1: [], lab.h2: []}
        for host, sent in filter(None, map(step, fs)):
            by_host[host].append(sent)
        for host, frames in by_host.items():
            send(lab, host, frames)

    each(lambda f: (f.orig.host, udp(lab, f.orig, b"setup") if f.proto == "udp" else tcp(lab, f, False, "S")))
    each(lambda f: (f.reply.host, udp(lab, f.reply, b"setup") if f.proto == "udp" else tcp(lab, f, True, "SA")))
    each(lambda f: (f.orig.host, tcp(lab, f, False, "A")) if f.proto == "tcp" else None)
    time.sleep(2.2)
    each(lambda f: (f.orig.host, udp(lab, f.orig, b"setup")) if f.proto == "udp" else None)

    def assured() -> bool:
        out = "".join(lab.run(lab.r, ["conntrack", "-L", "-f", fam]).stdout for fam in ("ipv4", "ipv6"))
        return out.count("[ASSURED]") == len(fs)
    assert wait_for(assured, 10, 0.1), lab.run(lab.r, ["conntrack", "-L"]).stdout
    if tna is None:
        return
    def carried() -> bool:
        before = tna.counters().get("FORWARDED", 0)
        each(lambda f: (f.orig.host, tcp(lab, f, False, "A")) if f.proto == "tcp" else None)
        each(lambda f: (f.reply.host, tcp(lab, f, True, "A")) if f.proto == "tcp" else None)
        return tna.counters().get("FORWARDED", 0) - before >= 2 * sum(f.proto == "tcp" for f in fs)
    assert wait_for(carried, 20, 0.2), tna.counters()


def probe_frames(lab: RouterLab) -> dict[str, list[bytes]]:
    """Every connection's probe frames, both ways, by sender."""
    by_sender: dict[str, list[bytes]] = {lab.h1.ns: [], lab.h2.ns: []}
    n = 0
    for f in flows(lab):
        for reply in (False, True):
            way = f.reply if reply else f.orig
            tag = MARK + b"%04d" % n
            if f.proto == "udp":
                probes = [udp(lab, way, tag), udp(lab, way, zero_sum(f, reply, tag + b"z"))]
                if ":" not in way.src:
                    probes.append(udp(lab, way, tag, no_csum=True))
            else:
                probes = [tcp(lab, f, reply, "PA", k * len(tag), tag) for k in range(TCP_PROBES)]
            by_sender[way.host.ns] += probes
            n += 1
    return by_sender


def probes(lab: RouterLab) -> dict[str, list[str]]:
    """What each host received of the probes (hex)."""
    by_sender = probe_frames(lab)
    caps = {h.ns: lab.popen(h.ns, py("netns_labs.xfer", "raw-capture", h.dev, MARK.hex(),
                                     str(len(by_sender[other.ns])), "5"),
                            stdout=subprocess.PIPE, text=True, cwd=lab.repo)
            for h, other in ((lab.h1, lab.h2), (lab.h2, lab.h1))}
    for cap in caps.values():
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    for h in (lab.h1, lab.h2):
        send(lab, h, by_sender[h.ns])
    return {ns: sorted(cap.communicate(timeout=30)[0].split()) for ns, cap in caps.items()}


def udp_checksums(received: dict[str, list[str]]) -> list[int]:
    from scapy.layers.l2 import Ether

    return sorted(Ether(bytes.fromhex(h))["UDP"].chksum for frames in received.values() for h in frames
                  if Ether(bytes.fromhex(h)).haslayer("UDP"))


def test_established_nat_frames_arrive_as_with_linux(router_lab: RouterLab, hook: str) -> None:
    lab = router_lab
    setup(lab, hook)
    both_nat_rules(lab)
    for h in (lab.h1, lab.h2):  # the hosts answer nothing (no ICMP port unreachable, no RST)
        for tool in ("iptables", "ip6tables"):
            lab.run(h.ns, [tool, "-P", "OUTPUT", "DROP"])
    sent = probe_frames(lab)
    total = sum(len(v) for v in sent.values())
    establish(lab)
    linux = probes(lab)
    assert [len(linux[h.ns]) for h in (lab.h1, lab.h2)] == [len(sent[lab.h2.ns]), len(sent[lab.h1.ns])], linux
    csums = udp_checksums(linux)
    # the translated zero sums (6 connections x 2 ways), the IPv4 datagrams without one (3 x 2)
    assert csums.count(0xffff) == 12 and csums.count(0) == 6, csums
    lab.run(lab.r, ["conntrack", "-F"])
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        establish(lab, tna)
        before = tna.counters()
        got = probes(lab)
        after = tna.counters()
    assert got == linux
    assert after.get("FORWARDED", 0) - before.get("FORWARDED", 0) >= total, (before, after)
