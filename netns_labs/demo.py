"""The demo: a Linux router and a Linux bridge in namespace labs, before and
after `tna`.

  python -m netns_labs.demo        (or: netns_labs/setup.sh demo)

Part 1 - frames from a wire: 64-byte packets from a live-frames generator
(an AF_PACKET one where the kernel refuses live frames) through the router, then through the bridge, plain Linux vs
`tna run --hook xdp`.
Part 2 - two real TCP stacks, through the router and through the bridge: a
transfer checked byte for byte, and iperf3 throughput, plain Linux vs
`tna run` (auto: TC on the veths).
Part 3 - a Docker host with Docker 28's rules (netns_labs/hostlab.py): the
same 64-byte frames from a container out through MASQUERADE, and from the
outside to a published port (DNAT), plain Linux vs `tna run --hook xdp`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

from netns_labs.bench import Scenario, iperf, measure_pps, progs, scenario, variants
from netns_labs.bench_hosts import host_scenario
from netns_labs.hostlab import RULESETS
from netns_labs.lab import BridgeLab, RouterLab, py, tcp_transfer
from netns_labs.progs import generator_kind
from netns_labs.tna_proc import Tna

COUNT = 1_000_000


def wire_frames(name: str, part: int = 1,
                open_scenario: Callable[[str], AbstractContextManager[Scenario]] = scenario) -> None:
    with open_scenario(name) as sc:
        print(f"Part {part}, {name}: {COUNT} frames of 64 bytes into {sc.ingress}, out of {sc.egress} "
              f"(generator: {generator_kind()})")
        progs(sc.lab, sc.dst.ns, "attach", sc.dst.dev, "sink")
        results, status = {}, ""
        for v in variants(sc)[:2]:  # linux, tna
            handle = v.up()
            try:
                measure_pps(sc, 100_000)
                mpps, delivered = measure_pps(sc, COUNT)
                if isinstance(handle, Tna):
                    status = sc.lab.run(sc.ns, py("tna", "status"), cwd=sc.lab.repo).stdout
            finally:
                v.down(handle)
            results[v.name] = mpps
            print(f"  {v.name:<16} {mpps:6.2f} Mpps delivered ({delivered} of {COUNT})")
        print(f"  speed-up: {results['tna --hook xdp'] / results['linux']:.2f}x\n")
        print("tna status while it ran:\n" + status)


def real_stacks(name: str) -> None:
    with scenario(name) as sc:
        print(f"Part 2, {name}: TCP from {sc.src.ns} to {sc.dst.ns} (default offloads)")
        linux = iperf(sc.lab, sc.src, sc.dst, 3)
        tna = Tna(sc.lab, sc.ns)
        try:
            tna.wait_attached(sc.tna_ifaces)
            sent, received = tcp_transfer(sc.lab, sc.src.ns, sc.dst.ns, sc.dst.ip4, 32 << 20)
            accelerated = iperf(sc.lab, sc.src, sc.dst, 3)
            print(f"  32 MiB transfer through tna: sha256 sent {sent[:16]}... received {received[:16]}... "
                  f"{'identical' if sent == received else 'DIFFERENT'}")
            print(f"  iperf3: linux {linux:.2f} Gbit/s, tna {accelerated:.2f} Gbit/s "
                  f"({accelerated / linux:.2f}x)")
            print("\n" + sc.lab.run(sc.ns, py("tna", "stats"), cwd=sc.lab.repo).stdout)
        finally:
            tna.stop()
            tna.close()


def main() -> int:
    print(__doc__)
    print("The router lab:", RouterLab.__doc__)
    print("The bridge lab:", BridgeLab.__doc__)
    for name in ("routing", "bridging"):
        wire_frames(name)
    for name in ("routing", "bridging"):
        real_stacks(name)
    print("A Docker host, with the rules Docker 28 writes:\n" + (RULESETS / "docker-28-v4.txt").read_text())
    for name in ("masquerade", "dnat"):
        wire_frames(name, 3, host_scenario)
    return 0


if __name__ == "__main__":
    sys.exit(main())
