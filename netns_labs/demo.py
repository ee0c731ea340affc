"""The demo: a Linux router and a Linux bridge in namespace labs, before and
after `tna`.

  python -m netns_labs.demo        (or: netns_labs/setup.sh demo)

Part 1 - frames from a wire: 64-byte packets from a live-frames generator
through the router, then through the bridge, plain Linux vs
`tna run --hook xdp`.
Part 2 - two real TCP stacks, through the router and through the bridge: a
transfer checked byte for byte, and iperf3 throughput, plain Linux vs
`tna run` (auto: TC on the veths).
"""

from __future__ import annotations

import sys

from netns_labs.bench import iperf, measure_pps, progs, scenario, variants
from netns_labs.lab import BridgeLab, RouterLab, Tna, py, tcp_transfer

COUNT = 1_000_000


def wire_frames(name: str) -> None:
    with scenario(name) as sc:
        print(f"Part 1, {name}: {COUNT} frames of 64 bytes into {sc.ingress}, out of {sc.egress}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
