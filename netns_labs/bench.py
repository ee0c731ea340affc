"""Side-by-side benchmark, one run:

  python -m netns_labs.bench [--count 2000000] [--rounds 3] [--tcp-runs 5]

1. 64-byte IPv4 frames through the router lab, delivered packets per second
   for: plain Linux, `tna run --hook xdp`, and a minimal hand-written XDP
   forwarder (netns_labs/bpf/ref_router.c).  Frames come from a live-frames
   generator (BPF_PROG_TEST_RUN + BPF_F_TEST_XDP_LIVE_FRAMES) on h1's veth,
   as from a wire, pinned to one CPU; an XDP sink on h2's veth counts them.
   Variants alternate round by round in the same lab; medians are reported,
   and delivered must equal sent.
2. The cost of the program alone (BPF_PROG_TEST_RUN, no traffic): ns per
   packet for the TNA program and the reference on the same frame.
3. TCP bulk transfer (iperf3) between two real stacks with default offloads,
   plain Linux vs `tna run` (auto: TC on the veths), alternating runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import Lab, RouterLab, Tna, in_netns, py, wait_for
from tna.bpf import abi
from tna.bpf import libbpf as bpf

GEN_CPU = "1"


def frame64(lab: RouterLab) -> bytes:
    """A 60-byte frame (64 on the wire with the FCS): UDP to the sink's port."""
    pkt = Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / IP(src=lab.h1.ip4, dst=lab.h2.ip4, ttl=64) \
        / UDP(sport=4321, dport=9) / Raw(b"\0" * 18)
    frame = bytes(pkt)
    assert len(frame) == 60
    return frame


def progs(lab: Lab, ns: str, *args: str, cpu: str | None = None) -> str:
    cmd = py("netns_labs.progs", *args)
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    return lab.run(ns, cmd, cwd=Lab.repo, timeout=300).stdout.strip()


class Variant:
    def __init__(self, name: str, up: Callable[[], object], down: Callable[[object], None]) -> None:
        self.name, self.up, self.down = name, up, down


def variants(lab: RouterLab) -> list[Variant]:
    def linux_up() -> None:
        # a veth only accepts the generator's frames if it runs XDP (or GRO):
        # the Linux row gets an XDP_PASS program; the kernel does the rest
        progs(lab, lab.r, "attach", "r-h1", "pass")

    def tna_up() -> Tna:
        tna = Tna(lab, lab.r, "--hook", "xdp")
        tna.wait_attached(["r-h1", "r-h2"])
        if not wait_for(lambda: tna.status()["ifaces"]["r-h2"]["xdp_egress"], 10, 0.2):
            raise RuntimeError("r-h2 never became an XDP egress")
        return tna

    def tna_down(tna: object) -> None:
        assert isinstance(tna, Tna)
        tna.stop()
        tna.close()

    def detach(_: object) -> None:
        progs(lab, lab.r, "detach", "r-h1")

    return [
        Variant("linux", linux_up, detach),
        Variant("tna --hook xdp", tna_up, tna_down),
        Variant("reference", lambda: progs(lab, lab.r, "reference", "r-h1", "r-h2"), detach),
    ]


def measure_pps(lab: RouterLab, frame: bytes, count: int) -> tuple[float, int]:
    """(delivered Mpps, delivered) for count frames."""
    before = int(progs(lab, lab.h2.ns, "count", lab.h2.dev))
    ns = int(progs(lab, lab.h1.ns, "generate", lab.h1.dev, frame.hex(), str(count), cpu=GEN_CPU))
    last = -1
    while True:  # anything still in flight lands within a few ms
        now = int(progs(lab, lab.h2.ns, "count", lab.h2.dev)) - before
        if now == last:
            break
        last = now
        time.sleep(0.05)
    return last / ns * 1e3, last


def _median_run_ns(prog: bpf.Program, frame: bytes, ctx: bpf.XdpMd, runs: int = 20_000) -> float:
    """Median kernel-measured ns of single runs: a repeated run would feed the
    program the frame it rewrote the time before."""
    durations = []
    for _ in range(runs):
        ret, _, dur = prog.test_run(frame, ctx=ctx)
        assert ret == 4, "the program should redirect the benchmark frame"
        durations.append(dur)
    return statistics.median(durations)


def program_cost(lab: RouterLab, frame: bytes) -> dict[str, float]:
    """ns per packet of the programs alone (BPF_PROG_TEST_RUN, no traffic)."""
    from netns_labs.progs import build
    from tna.deploy.datapath import iface_cfg, renew
    from tna.synth.compile import compile_source
    from tna.synth.render import render

    out = {}
    ifindex = lab.ifindex(lab.r, "r-h1")
    egress = lab.ifindex(lab.r, "r-h2").to_bytes(4, "little")
    ctx = bpf.XdpMd(data_end=len(frame), ingress_ifindex=ifindex)
    with in_netns(lab.r):
        with bpf.BpfObject(str(compile_source(render("xdp", ("router",))))) as obj:
            obj.set_initial_value(abi.SECTION_IFACE, iface_cfg(ifindex, lab.r_h1_mac, 0))
            obj.load()
            obj.map(abi.MAP_DEVMAP).update(egress, egress)
            renew(obj.program(abi.RENEW_PROGRAM), abi.TnaConfig(lease_jiffies=1 << 40))
            out["tna --hook xdp"] = _median_run_ns(obj.program(abi.PROGRAM_NAME), frame, ctx)
        with bpf.BpfObject(str(build("ref_router"))) as obj:
            obj.load()
            obj.map("ref_ports").update(egress, egress)
            out["reference"] = _median_run_ns(obj.program("ref_router"), frame, ctx)
    return out


def iperf(lab: RouterLab, seconds: int) -> float:
    """Gbit/s received by h2 from h1 over TCP."""
    server = lab.popen(lab.h2.ns, ["iperf3", "-s", "-1", "-B", lab.h2.ip4], stdout=subprocess.DEVNULL)
    wait_for(lambda: lab.run(lab.h2.ns, ["ss", "-ltn", "sport = :5201"]).stdout.count("LISTEN") > 0, 5)
    out = lab.run(lab.h1.ns, ["iperf3", "-c", lab.h2.ip4, "-t", str(seconds), "-J"], timeout=seconds + 30).stdout
    server.wait(timeout=10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def bench_pps(count: int, rounds: int) -> list[dict]:
    rows: dict[str, list[float]] = {}
    with RouterLab() as lab:
        progs(lab, lab.h2.ns, "attach", lab.h2.dev, "sink")
        frame = frame64(lab)
        for _ in range(rounds):
            for v in variants(lab):
                handle = v.up()
                try:
                    measure_pps(lab, frame, 100_000)  # warm up caches and the page pool
                    mpps, delivered = measure_pps(lab, frame, count)
                finally:
                    v.down(handle)
                if delivered != count:
                    raise SystemExit(f"{v.name}: delivered {delivered} of {count} frames")
                rows.setdefault(v.name, []).append(mpps)
        cost = program_cost(lab, frame)
    linux, ref = statistics.median(rows["linux"]), statistics.median(rows["reference"])
    table = []
    for name, runs in rows.items():
        med = statistics.median(runs)
        table.append({"variant": name, "mpps": med, "runs": runs, "vs_linux": med / linux, "vs_reference": med / ref,
                      "prog_ns": cost.get(name)})
    return table


def bench_tcp(runs: int, seconds: int) -> dict:
    linux, tna_runs = [], []
    with RouterLab() as lab:
        for _ in range(runs):
            linux.append(iperf(lab, seconds))
            tna = Tna(lab, lab.r)
            try:
                tna.wait_attached(["r-h1", "r-h2"])
                tna_runs.append(iperf(lab, seconds))
                fast = tna.counters().get("FORWARDED", 0)
            finally:
                tna.stop()
                tna.close()
            if fast == 0:
                raise SystemExit("tna did not forward the TCP transfer")
    return {"linux": linux, "tna": tna_runs,
            "ratio": statistics.median(tna_runs) / statistics.median(linux)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2_000_000, help="frames per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tcp-runs", type=int, default=5)
    ap.add_argument("--tcp-seconds", type=int, default=4)
    args = ap.parse_args(argv)

    table = bench_pps(args.count, args.rounds)
    print(f"\n64-byte IPv4 frames, router lab, one CPU, median of {args.rounds} alternating rounds "
          f"of {args.count} frames (delivered == sent in every run)")
    print(f"{'variant':<16} {'Mpps':>7} {'x Linux':>8} {'x reference':>12} {'program ns/pkt':>15}")
    for row in table:
        cost = f"{row['prog_ns']:.1f}" if row["prog_ns"] is not None else "-"
        print(f"{row['variant']:<16} {row['mpps']:>7.2f} {row['vs_linux']:>8.2f} {row['vs_reference']:>12.2f} "
              f"{cost:>15}")
    if args.tcp_runs:
        tcp = bench_tcp(args.tcp_runs, args.tcp_seconds)
        print(f"\nTCP bulk h1 -> h2 (iperf3, {args.tcp_seconds} s, default offloads), {args.tcp_runs} alternating runs")
        for name in ("linux", "tna"):
            runs = tcp[name]
            print(f"{name:<5} Gbit/s: {' '.join(f'{x:.2f}' for x in runs)}  median {statistics.median(runs):.2f}")
        print(f"tna / linux (medians): {tcp['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
