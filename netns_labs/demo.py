"""The demo: a Linux router in a namespace lab, before and after `tna`.

  python -m netns_labs.demo        (or: netns_labs/setup.sh demo)

Part 1 - frames from a wire: 64-byte packets from a live-frames generator
through the router, plain Linux vs `tna run --hook xdp`.
Part 2 - two real TCP stacks: a transfer checked byte for byte, and iperf3
throughput, plain Linux vs `tna run` (auto: TC on the veths).
"""

from __future__ import annotations

import sys

from netns_labs.bench import frame64, iperf, measure_pps, progs, variants
from netns_labs.lab import RouterLab, Tna, py, tcp_transfer


def main() -> int:
    print(__doc__)
    with RouterLab() as lab:
        print(RouterLab.__doc__)
        progs(lab, lab.h2.ns, "attach", lab.h2.dev, "sink")
        frame, count = frame64(lab), 1_000_000
        results = {}
        for v in variants(lab)[:2]:
            handle = v.up()
            try:
                measure_pps(lab, frame, 100_000)
                mpps, delivered = measure_pps(lab, frame, count)
                if isinstance(handle, Tna):
                    status = lab.run(lab.r, py("tna", "status"), cwd=lab.repo).stdout
            finally:
                v.down(handle)
            results[v.name] = mpps
            print(f"  {v.name:<16} {mpps:6.2f} Mpps delivered ({delivered} of {count})")
        print(f"  speed-up: {results['tna --hook xdp'] / results['linux']:.2f}x\n")
        print("tna status while it ran:\n" + status)

    with RouterLab() as lab:
        print("Part 2: TCP between real stacks (default offloads)")
        linux = iperf(lab, 3)
        tna = Tna(lab, lab.r)
        try:
            tna.wait_attached(["r-h1", "r-h2"])
            sent, received = tcp_transfer(lab, lab.h1.ns, lab.h2.ns, lab.h2.ip4, 32 << 20)
            accelerated = iperf(lab, 3)
            print(f"  32 MiB transfer through tna: sha256 sent {sent[:16]}... received {received[:16]}... "
                  f"{'identical' if sent == received else 'DIFFERENT'}")
            print(f"  iperf3: linux {linux:.2f} Gbit/s, tna {accelerated:.2f} Gbit/s "
                  f"({accelerated / linux:.2f}x)")
            print("\n" + lab.run(lab.r, py("tna", "stats"), cwd=lab.repo).stdout)
        finally:
            tna.stop()
            tna.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
