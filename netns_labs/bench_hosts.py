"""64-byte UDP through a Docker host (netns_labs.hostlab with Docker 28's
rules): a container's flow leaving MASQUERADEd, and the outside's flow to a
published port DNATed to the container.

  python -m netns_labs.bench_hosts [--count 1000000] [--rounds 3] [--scenario masquerade dnat]

The machinery is netns_labs.bench's (live-frames generator on the sender's
veth, XDP sink on the receiver's, alternating variants, medians, delivered
must equal sent): plain Linux and `tna run --hook xdp`, then Linux with GRO
and `tna run --hook tc` (what `auto` picks on veths facing real stacks). No
reference program: the hand-written ones do not NAT.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.bench import FRAME_DPORT, FRAME_SPORT, Scenario, bench_pps, write_doc
from netns_labs.hostlab import FAR4, FAR6, UDP_PORT, UPLINK4, HostLab
from netns_labs.lab import Host, py

SCENARIOS = ("masquerade", "dnat")


def _frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    """bench.frame64's frame with other ports: the sink counts what comes from
    or goes to FRAME_DPORT."""
    frame = bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst, ttl=64)
                  / UDP(sport=sport, dport=dport) / Raw(b"\0" * 18))
    assert len(frame) == 60
    return frame


@contextmanager
def host_scenario(name: str) -> Iterator[Scenario]:
    """masquerade: c1 -> an outside address (FAR4), out of eth0; dnat: the
    outside -> the host's published UDP port, out of veth-c1. One datagram first, so
    the flow has its conntrack entry (and NAT) before the frames come."""
    with HostLab() as lab:
        lab.load_ruleset("docker-28")
        far = Host(lab.out.ns, lab.out.dev, FAR4, FAR6, lab.out.mac)
        if name == "masquerade":
            frame = _frame(lab.c1.mac, lab.mac(lab.host, "docker0"), lab.c1.ip4, FAR4, FRAME_SPORT, FRAME_DPORT)
            first = (lab.c1.ns, FAR4, FRAME_SPORT, FRAME_DPORT)
            sc = Scenario(name, lab, lab.host, "veth-c1", "eth0", lab.c1, far, frame, lab.ports, [])
        else:
            frame = _frame(lab.out.mac, lab.host_mac, lab.out.ip4, UPLINK4, FRAME_DPORT, UDP_PORT)
            first = (lab.out.ns, UPLINK4, FRAME_DPORT, UDP_PORT)
            sc = Scenario(name, lab, lab.host, "eth0", "veth-c1", lab.out, lab.c1, frame, lab.ports, [])
        ns, dst, sport, dport = first
        lab.run(ns, py("netns_labs.xfer", "udp-send", dst, str(dport), str(sport), "1"), cwd=lab.repo)
        yield sc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000, help="frames per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    pps = {}
    for name in args.scenario:
        table = pps[name] = bench_pps(name, args.count, args.rounds, host_scenario)
        print(f"\n{name}: 64-byte UDP through the Docker 28 host, median of {args.rounds} rounds of {args.count}")
        for row in table:
            print(f"  {row['variant']:<16} {row['mpps']:6.2f} Mpps  {row['vs_linux']:.2f}x Linux", flush=True)
    if args.json:
        write_doc(args.json, "bench_hosts", sys.argv[1:] if argv is None else argv, pps=pps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
