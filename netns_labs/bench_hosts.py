"""Benchmarks on real hosts' rule sets (netns_labs.hostlab): a Docker 28 host
and a kube-proxy node with 1,000 services.

  python -m netns_labs.bench_hosts [--count 1000000] [--rounds 3] [--scenario ...] [--tcp-runs 5]

64-byte UDP scenarios (the flows are made established as a real exchange
makes them: a datagram, its reply from the far end, another datagram 2 s
later, so the entry is ASSURED; `oneway` has no reply):
- masquerade: Docker, container c1 -> the outside, MASQUERADE out of eth0
- dnat: Docker, the outside -> the host's published UDP port, DNAT to c1
- oneway: masquerade's flow without any reply (an unreplied entry: NEW to the rules)
- passed: masquerade's flow, and in DOCKER-USER a rule TNA cannot express
  (xt_length) that matches it: every packet goes to the kernel (the worst case)
- kube1000: kube-proxy (iptables mode) with 1,000 services and the cluster
  CIDR 192.0.2.0/24 (both bridges' pods): pod c3 -> a ClusterIP service,
  KUBE-SEP DNAT to pod c1 (no masquerade: the source is a pod's). nat rules
  decide a connection's first packet only, in Linux as in TNA, so what the
  established flow meets is filter's FORWARD / KUBE-FORWARD and the entry's NAT
and TCP bulk (--tcp-runs): iperf3 from c1 to the outside through Docker's
MASQUERADE, Linux alone vs `tna run` (auto: TC on the veths).

The machinery is netns_labs.bench's (live-frames generator on the sender's
veth, XDP sink on the receiver's, alternating variants, medians, delivered
must equal sent): plain Linux and `tna run --hook xdp`, then Linux with GRO
and `tna run --hook tc` (what `auto` picks on veths facing real stacks). No
reference program: the hand-written ones do not NAT.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.bench import FRAME_DPORT, FRAME_SPORT, Scenario, bench_pps, bench_tcp, write_doc
from netns_labs.hostlab import UDP_PORT, UPLINK4, HostLab
from netns_labs.lab import py
from netns_labs.rulesets import kube_proxy, service

SCENARIOS = ("masquerade", "dnat", "oneway", "passed", "kube1000")
# what `passed` adds to DOCKER-USER: a match TNA cannot express, as cheap for the kernel as a match can be
PASS_RULE = ["-p", "udp", "-m", "udp", "--dport", str(FRAME_DPORT), "-m", "length", "--length", "0:65535",
             "-j", "RETURN"]
REPLY = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def _frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    """bench.frame64's frame with other ports: the sink counts what comes from
    or goes to FRAME_DPORT."""
    frame = bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst, ttl=64)
                  / UDP(sport=sport, dport=dport) / Raw(b"\0" * 18))
    assert len(frame) == 60
    return frame


def _send(lab: HostLab, ns: str, dst: str, dport: int, sport: int) -> None:
    lab.run(ns, py("netns_labs.xfer", "udp-send", dst, str(dport), str(sport), "1"), cwd=lab.repo)


def _entry(lab: HostLab, sport: int, dport: int) -> str:
    out = lab.run(lab.host, ["conntrack", "-L", "-p", "udp", "--orig-port-src", str(sport),
                             "--orig-port-dst", str(dport)]).stdout.strip()
    if len(out.splitlines()) != 1:
        raise SystemExit(f"expected one conntrack entry for the benchmark flow, found: {out!r}")
    return out


def exchange(lab: HostLab, client: str, dst: str, dport: int, sport: int, server: str | None) -> None:
    """The flow's conntrack entry (and its NAT) as a real exchange makes it:
    client's datagram; then (server given) the reply from the server's side to
    the entry's reply tuple (translated addresses and ports, whatever NAT
    picked) and another datagram 2 s later, which makes it ASSURED."""
    _send(lab, client, dst, dport, sport)
    if server is None:
        if "UNREPLIED" not in _entry(lab, sport, dport):
            raise SystemExit("the benchmark flow should be unreplied")
        return
    _, reply_dst, reply_sport, reply_dport = REPLY.findall(_entry(lab, sport, dport))[1]
    _send(lab, server, reply_dst, int(reply_dport), int(reply_sport))
    time.sleep(2.2)
    _send(lab, client, dst, dport, sport)
    if "ASSURED" not in _entry(lab, sport, dport):
        raise SystemExit("the benchmark flow did not become an ASSURED conntrack entry")


@contextmanager
def host_scenario(name: str) -> Iterator[Scenario]:
    """One of SCENARIOS (or "tcp": the Docker host, c1 -> the outside) in a
    fresh lab, its flow's entry made first, so NAT is decided before the
    frames come."""
    if name == "kube1000":
        with HostLab(("cni0", "cni1")) as lab:
            lab.run(lab.host, ["iptables-restore", "-c"], input=kube_proxy(1000, pod_cidr="192.0.2.0/24"))
            vip, port = service(1)[2:4]
            frame = _frame(lab.c3.mac, lab.mac(lab.host, "cni1"), lab.c3.ip4, vip, FRAME_DPORT, port)
            exchange(lab, lab.c3.ns, vip, port, FRAME_DPORT, lab.c1.ns)
            yield Scenario(name, lab, lab.host, "veth-c3", "veth-c1", lab.c3, lab.c1, frame, lab.ports, [])
        return
    with HostLab() as lab:
        lab.load_ruleset("docker-28")
        if name == "dnat":
            frame = _frame(lab.out.mac, lab.host_mac, lab.out.ip4, UPLINK4, FRAME_DPORT, UDP_PORT)
            sc = Scenario(name, lab, lab.host, "eth0", "veth-c1", lab.out, lab.c1, frame, lab.ports, [])
            exchange(lab, lab.out.ns, UPLINK4, UDP_PORT, FRAME_DPORT, lab.c1.ns)
        else:
            # to the outside's own address: it can answer (the sink drops the frames before its stack)
            frame = _frame(lab.c1.mac, lab.mac(lab.host, "docker0"), lab.c1.ip4, lab.out.ip4, FRAME_SPORT, FRAME_DPORT)
            sc = Scenario(name, lab, lab.host, "veth-c1", "eth0", lab.c1, lab.out, frame, lab.ports, [])
            if name == "passed":
                lab.run(lab.host, ["iptables", "-I", "DOCKER-USER", "-s", lab.c1.ip4, *PASS_RULE])
            if name != "tcp":
                exchange(lab, lab.c1.ns, lab.out.ip4, FRAME_DPORT, FRAME_SPORT,
                         None if name == "oneway" else lab.out.ns)
        yield sc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000, help="frames per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenario", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--tcp-runs", type=int, default=5, help="TCP bulk runs per variant (0: none)")
    ap.add_argument("--tcp-seconds", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    pps, tcp = {}, {}
    for name in args.scenario:
        table = pps[name] = bench_pps(name, args.count, args.rounds, host_scenario)
        print(f"\n{name}: 64-byte UDP through the {'kube-proxy' if name == 'kube1000' else 'Docker 28'} host, "
              f"median of {args.rounds} rounds of {args.count}")
        for row in table:
            print(f"  {row['variant']:<16} {row['mpps']:6.2f} Mpps  {row['vs_linux']:.2f}x Linux", flush=True)
    if args.tcp_runs:
        tcp = bench_tcp("tcp", args.tcp_runs, args.tcp_seconds, host_scenario)
        print(f"\nTCP bulk c1 -> the outside through MASQUERADE (iperf3, {args.tcp_seconds} s), "
              f"{args.tcp_runs} alternating runs")
        for variant in ("linux", "tna"):
            runs = tcp[variant]
            print(f"  {variant:<5} Gbit/s: {' '.join(f'{x:.2f}' for x in runs)}  median {statistics.median(runs):.2f}")
        print(f"  tna (auto) / linux (medians): {tcp['ratio']:.2f}", flush=True)
    if args.json:
        write_doc(args.json, "bench_hosts", sys.argv[1:] if argv is None else argv, pps=pps, tcp=tcp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
