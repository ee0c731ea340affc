"""Two cores: does the fast path scale like the kernel when both CPUs forward?

  python -m netns_labs.bench_cores [--count 1000000] [--rounds 3] [--scenario routing routing+ct10 bridging]
                                   [--json FILE]

Labs of netns_labs/bench.py.  Two live-frames generators send 64-byte frames
into the box, one from each end, each pinned to its own CPU: h1 -> h2 on
CPU 0, and h2 -> h1 on CPU 1 - the reply direction of the same UDP flow
(ports 4321 <-> 9), so behind the stateful chain of routing+ct10 both CPUs
look up and refresh one conntrack entry, and on the bridge both directions
read the same port table.  On veths a frame is forwarded on the CPU that
sent it, so each generator's CPU carries its direction's whole trip.
Sinks on both ends count what arrives.

Per variant (Linux alone, `tna run --hook xdp`): delivered Mpps with the
h1 -> h2 generator alone, then with both, started at one instant (the rate
is all frames delivered over the longer of the two runs), and the scaling
ratio two / one (2.00: perfect).  Medians of --rounds alternating rounds;
delivered must equal sent (a run that loses frames is measured again).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from netns_labs.bench import FRAME_DPORT, FRAME_SPORT, LOSS_RETRIES, Scenario, frame64, progs, scenario, write_doc
from netns_labs.lab import Host, Lab, py, wait_for
from netns_labs.tna_proc import Tna

SCENARIOS = ("routing", "routing+ct10", "bridging")
CPUS = ("0", "1")
START_DELAY = 5.0  # s: both generators load first (seconds on a busy machine), then start together


def reply_frame(sc: Scenario) -> bytes:
    """The flow's reply direction, dst -> src (ports swapped), addressed to
    the box's MAC on the egress side (or straight to h1 across a bridge)."""
    to = sc.src.mac if sc.name == "bridging" else sc.lab.mac(sc.ns, sc.egress)
    frame = bytearray(frame64(sc.dst.mac, to, sc.dst, sc.src))
    # swap the UDP ports: two 16-bit words swapped leave their sum, the checksum, as it is
    frame[34:38] = FRAME_DPORT.to_bytes(2, "big") + FRAME_SPORT.to_bytes(2, "big")
    return bytes(frame)


def generate(sc: Scenario, flows: list[tuple[Host, bytes, str]], count: int) -> tuple[float, list[int]]:
    """Run one generator per flow (sender, frame, CPU) at once; returns
    (delivered Mpps over the longest run, delivered per flow)."""
    sinks = [sc.dst if host is sc.src else sc.src for host, _, _ in flows]
    before = [int(progs(sc.lab, s.ns, "count", s.dev)) for s in sinks]
    start = time.time() + START_DELAY
    gens = [sc.lab.popen(host.ns, ["taskset", "-c", cpu, *py("netns_labs.progs", "generate", host.dev, frame.hex(),
                                                             str(count), f"{start:.3f}")],
                         cwd=Lab.repo, stdout=subprocess.PIPE, text=True)
            for host, frame, cpu in flows]
    took = [int(g.communicate(timeout=300)[0]) for g in gens]
    last: list[int] = []
    while True:  # anything still in flight lands within a few ms
        now = [int(progs(sc.lab, s.ns, "count", s.dev)) - b for s, b in zip(sinks, before, strict=True)]
        if now == last:
            break
        last = now
        time.sleep(0.05)
    return sum(last) / max(took) * 1e3, last


def measure(sc: Scenario, flows: list[tuple[Host, bytes, str]], count: int, what: str) -> float:
    for attempt in range(1, LOSS_RETRIES + 1):
        mpps, delivered = generate(sc, flows, count)
        if all(d == count for d in delivered):
            return mpps
        print(f"{sc.name}, {what}: delivered {delivered} of {count} each (attempt {attempt}, measured again)",
              file=sys.stderr, flush=True)
    raise SystemExit(f"{sc.name}, {what}: frames lost in {LOSS_RETRIES} attempts")


def tna_up(sc: Scenario) -> Tna:
    tna = Tna(sc.lab, sc.ns, "--hook", "xdp")
    tna.wait_attached(sc.tna_ifaces)
    ends = (sc.ingress, sc.egress)
    if "+ct" in sc.name and not wait_for(
            lambda: "firewall" in tna.status()["ifaces"][sc.ingress]["modules"], 30, 0.2):
        raise RuntimeError("the FORWARD rules were not compiled in")
    if not wait_for(lambda: all(tna.status()["ifaces"][d]["xdp_egress"] for d in ends), 10, 0.2):
        raise RuntimeError(f"{ends} never became XDP egresses")
    return tna


def bench(name: str, count: int, rounds: int) -> dict[str, dict]:
    runs: dict[str, dict[str, list[float]]] = {}
    with scenario(name) as sc:
        for host in (sc.src, sc.dst):
            progs(sc.lab, host.ns, "attach", host.dev, "sink")
        forward = (sc.src, sc.frame, CPUS[0])
        both = [forward, (sc.dst, reply_frame(sc), CPUS[1])]
        for _ in range(rounds):
            for variant in ("linux", "tna --hook xdp"):
                tna = None
                if variant == "linux":  # a veth takes XDP frames only while it runs XDP
                    for dev in (sc.ingress, sc.egress):
                        progs(sc.lab, sc.ns, "attach", dev, "pass")
                else:
                    tna = tna_up(sc)
                try:
                    generate(sc, both, min(100_000, count // 10))  # warm up caches and the page pools
                    one = measure(sc, [forward], count, f"{variant}, 1 generator")
                    two = measure(sc, both, count, f"{variant}, 2 generators")
                finally:
                    if tna is None:
                        for dev in (sc.ingress, sc.egress):
                            progs(sc.lab, sc.ns, "detach", dev)
                    else:
                        tna.stop()
                        tna.close()
                r = runs.setdefault(variant, {"one": [], "two": []})
                r["one"].append(one)
                r["two"].append(two)
    out = {}
    for variant, r in runs.items():
        one, two = statistics.median(r["one"]), statistics.median(r["two"])
        out[variant] = {**r, "one_mpps": one, "two_mpps": two, "scaling": two / one}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000_000,
                    help="frames per generator and measurement (long runs: the two start a few ms apart)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--json", type=Path, default=Lab.repo / "docs" / "bench" / "cores.json", metavar="FILE")
    args = ap.parse_args(argv)
    load = [os.getloadavg()[0]]
    results = {}
    for name in args.scenario:
        results[name] = table = bench(name, args.count, args.rounds)
        print(f"\n{name}: 64-byte frames, medians of {args.rounds} rounds of {args.count} frames per generator")
        print(f"{'variant':<16} {'1 gen Mpps':>10} {'2 gen Mpps':>10} {'scaling':>8}")
        for variant, row in table.items():
            print(f"{variant:<16} {row['one_mpps']:>10.2f} {row['two_mpps']:>10.2f} {row['scaling']:>8.2f}", flush=True)
    load.append(os.getloadavg()[0])
    write_doc(args.json, "bench_cores", sys.argv[1:] if argv is None else argv, loadavg_1min=load, results=results)
    print(f"\nload average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}; results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
