"""Side-by-side benchmark, one run:

  python -m netns_labs.bench [--count 2000000] [--rounds 3] [--tcp-runs 5] [--json FILE]

It prints tables and writes its results to docs/bench/results.json (with the
command, date, kernel and CPU), then renders them as PNG charts beside that
file (netns_labs/plot.py) if matplotlib is installed (the `plots` extra).

1. 64-byte IPv4 frames through eight labs - routing (RouterLab), routing
   with an ip rule (the kernel, and TNA, then check every source with a
   reverse route lookup), bridging (BridgeLab), bridge + routing (a bridge
   port to a routed uplink), and routing behind a stateful FORWARD chain of
   10 / 100 / 1,000 / 10,000 rules: INVALID dropped, then a blocklist the
   flow walks through, then RELATED,ESTABLISHED accepted (the flow is an
   ASSURED conntrack entry); the same chain of 10 / 10,000 rules with a
   one-way flow (an unreplied entry: NEW to the rules, accepted by the last
   one); and the worst case of passed traffic (the 10-rule chain with a rule
   TNA cannot express before the ESTABLISHED accept: every packet goes to the
   kernel, after the fast path's lookups) -
   delivered packets per second for: plain Linux, `tna run --hook xdp`, and
   a minimal hand-written XDP reference (netns_labs/bpf/ref_router.c, or
   ref_bridge.c over an FDB map; not for passed traffic, which measures
   both hooks instead: Linux and `tna run --hook tc` with GRO on the
   ingress veth, which then takes the generator's frames without XDP, and
   "empty tc": Linux with GRO and a tcx program that passes everything, the
   TC hook's own cost).  Frames come from a live-frames generator
   (BPF_PROG_TEST_RUN + BPF_F_TEST_XDP_LIVE_FRAMES; where the kernel refuses
   those, AF_PACKET: netns_labs/packet_gen.c) on the sender's veth, as
   from a wire, pinned to one CPU; an XDP sink on the receiver's veth counts
   them.  Variants alternate round by round in the same lab; medians are
   reported, and delivered must equal sent.
2. The cost of the router program alone (BPF_PROG_TEST_RUN, no traffic): ns
   per packet for the TNA program and the reference on the same frame.
3. TCP bulk transfer (iperf3) between two real stacks with default offloads,
   through the router and through the bridge: plain Linux vs `tna run`
   (auto: TC on the veths), alternating runs.
4. Early drop: the goodput of a TCP service on the box while a UDP flood
   its INPUT chain blocks arrives at a fixed rate, everything on one CPU:
   Linux without the flood, Linux and `tna` with it.

The bridge labs run with bridge-nf-call-iptables/ip6tables 0, as on a
distribution kernel where br_netfilter is not loaded (this kernel builds it
in, which makes it default to 1 and Linux slower).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs import plot
from netns_labs.lab import BridgeLab, Host, Lab, RouterLab, in_netns, ping, py, wait_for
from netns_labs.progs import generator_kind
from netns_labs.tna_proc import Tna
from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.bpf.testrun import XdpMd, test_run

GEN_CPU = "1"
LOSS_RETRIES = 3
SCENARIOS = ("routing", "routing+rule", "bridging", "bridge+routing", "routing+ct10", "routing+ct100",
             "routing+ct1000", "routing+ct10000", "oneway+ct10", "oneway+ct10000", "passed")
FRAME_SPORT, FRAME_DPORT = 4321, 9


def frame64(src_mac: str, dst_mac: str, src: Host, dst: Host) -> bytes:
    """A 60-byte frame (64 on the wire with the FCS): UDP to the sink's port."""
    pkt = Ether(src=src_mac, dst=dst_mac) / IP(src=src.ip4, dst=dst.ip4, ttl=64) \
        / UDP(sport=FRAME_SPORT, dport=FRAME_DPORT) / Raw(b"\0" * 18)
    frame = bytes(pkt)
    assert len(frame) == 60
    return frame


@dataclass
class Scenario:
    """A box under test in a lab: frames enter at ingress, leave at egress."""

    name: str
    lab: Lab
    ns: str
    ingress: str
    egress: str
    src: Host
    dst: Host
    frame: bytes
    tna_ifaces: list[str]
    reference: list[str]  # netns_labs.progs arguments attaching the reference to ingress ([]: none)


# a match TNA cannot express (xt_length), as cheap for the kernel as a match can be
KERNEL_RULE = f"-A FORWARD -p udp -m udp --dport {FRAME_DPORT} -m length --length 0:65535 -j ACCEPT\n"


def forward_rules(n: int, kernel_rule: bool = False) -> str:
    """A stateful FORWARD chain of n rules: INVALID dropped, a blocklist of
    n - 3 source+port pairs the benchmark flow walks through without a match,
    (kernel_rule: KERNEL_RULE, which accepts it,) RELATED,ESTABLISHED
    accepted, the flow's service allowed, policy DROP."""
    block = "".join(f"-A FORWARD -s 203.0.113.{i % 250}/32 -p udp -m udp --dport {1000 + i} -j DROP\n"
                    for i in range(n - 3))
    return ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A FORWARD -m conntrack --ctstate INVALID -j DROP\n" + block + (KERNEL_RULE if kernel_rule else "") +
            "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
            f"-A FORWARD -p udp -m udp --dport {FRAME_DPORT} -j ACCEPT\nCOMMIT\n")


def assure(r: RouterLab) -> None:
    """Make the benchmark flow an ASSURED conntrack entry, as a real UDP
    exchange does: a datagram, a reply, and another datagram 2 s later."""
    r.run(r.h1.ns, py("netns_labs.xfer", "udp-send", r.h2.ip4, str(FRAME_DPORT), str(FRAME_SPORT), "1"), cwd=r.repo)
    r.run(r.h2.ns, py("netns_labs.xfer", "udp-send", r.h1.ip4, str(FRAME_SPORT), str(FRAME_DPORT), "1"), cwd=r.repo)
    time.sleep(2.2)
    r.run(r.h1.ns, py("netns_labs.xfer", "udp-send", r.h2.ip4, str(FRAME_DPORT), str(FRAME_SPORT), "1"), cwd=r.repo)
    if "ASSURED" not in r.run(r.r, ["conntrack", "-L", "-p", "udp", "--dport", str(FRAME_DPORT)]).stdout:
        raise SystemExit("the benchmark flow did not become an ASSURED conntrack entry")


def one_way(r: RouterLab) -> None:
    """Make the benchmark flow an unreplied conntrack entry: one datagram."""
    r.run(r.h1.ns, py("netns_labs.xfer", "udp-send", r.h2.ip4, str(FRAME_DPORT), str(FRAME_SPORT), "1"), cwd=r.repo)
    if "UNREPLIED" not in r.run(r.r, ["conntrack", "-L", "-p", "udp", "--dport", str(FRAME_DPORT)]).stdout:
        raise SystemExit("the benchmark flow did not become an unreplied conntrack entry")


def rule_count(name: str) -> int:
    """The FORWARD chain's length in a +ctN scenario (passed: 10), else 0."""
    return int(name.rsplit("+ct", 1)[1]) if "+ct" in name else 10 if name == "passed" else 0


@contextmanager
def scenario(name: str) -> Iterator[Scenario]:
    if name.startswith(("routing", "oneway", "passed")):
        with RouterLab() as r:
            if name == "routing+rule":  # any ip rule: the kernel checks every source in full
                r.run(r.r, ["ip", "rule", "add", "from", "203.0.113.0/24", "lookup", "100", "pref", "100"])
            if rule_count(name):
                r.run(r.r, ["iptables-restore"], input=forward_rules(rule_count(name), name == "passed"))
                if name.startswith("oneway"):
                    one_way(r)
                else:
                    assure(r)
            yield Scenario(name, r, r.r, "r-h1", "r-h2", r.h1, r.h2, frame64(r.h1.mac, r.r_h1_mac, r.h1, r.h2),
                           ["r-h1", "r-h2"], ["reference", "r-h1", "r-h2"])
        return
    with BridgeLab(routed=name == "bridge+routing") as b:
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            b.sysctl(b.b, f"net.bridge.{key}", 0)
        ports = ["b-h1", "b-h2", "b-h3"]
        if name == "bridging":
            ping(b, b.h1.ns, b.h2.ip4, 1)  # the bridge learns both hosts
            ref = ["reference-bridge", "b-h1", f"{b.h1.mac}=b-h1", f"{b.h2.mac}=b-h2"]
            yield Scenario(name, b, b.b, "b-h1", "b-h2", b.h1, b.h2, frame64(b.h1.mac, b.h2.mac, b.h1, b.h2),
                           ports, ref)
        else:
            b.neigh(b.b, "b-h4", b.h4.ip4, b.h4.mac)
            ping(b, b.h1.ns, b.h4.ip4, 1)
            frame = frame64(b.h1.mac, b.mac(b.b, "br0"), b.h1, b.h4)
            yield Scenario(name, b, b.b, "b-h1", "b-h4", b.h1, b.h4, frame, [*ports, "b-h4", "b-h5"],
                           ["reference", "b-h1", "b-h4"])


def progs(lab: Lab, ns: str, *args: str, cpu: str | None = None) -> str:
    cmd = py("netns_labs.progs", *args)
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    try:
        return lab.run(ns, cmd, cwd=Lab.repo, timeout=300).stdout.strip()
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or "").strip().splitlines()
        raise SystemExit(f"netns_labs.progs {args[0]} failed in {ns}: {lines[-1] if lines else e}") from e


class Variant:
    def __init__(self, name: str, up: Callable[[], object], down: Callable[[object], None]) -> None:
        self.name, self.up, self.down = name, up, down


def variants(sc: Scenario) -> list[Variant]:
    lab = sc.lab

    def linux_up() -> None:
        # a veth only accepts the generator's frames if it runs XDP (or GRO):
        # the Linux row gets an XDP_PASS program; the kernel does the rest
        progs(lab, sc.ns, "attach", sc.ingress, "pass")

    def gro(on: bool) -> None:
        lab.run(sc.ns, ["ethtool", "-K", sc.ingress, "gro", "on" if on else "off"])

    def tna_up(hook: str) -> Tna:
        tna = Tna(lab, sc.ns, "--hook", hook)
        tna.wait_attached(sc.tna_ifaces)
        if rule_count(sc.name) and not wait_for(
                lambda: "firewall" in tna.status()["ifaces"][sc.ingress]["modules"], 30, 0.2):
            raise RuntimeError("the FORWARD rules were not compiled in")
        if hook == "xdp" and not wait_for(lambda: tna.status()["ifaces"][sc.egress]["xdp_egress"], 10, 0.2):
            raise RuntimeError(f"{sc.egress} never became an XDP egress")
        return tna

    def tna_down(tna: object) -> None:
        assert isinstance(tna, Tna)
        tna.stop()
        tna.close()
        gro(False)

    def detach(_: object) -> None:
        progs(lab, sc.ns, "detach", sc.ingress)

    def tc_up() -> Tna:
        gro(True)
        return tna_up("tc")

    def empty_tc_up() -> subprocess.Popen:
        gro(True)
        holder = lab.popen(sc.ns, py("netns_labs.progs", "tcx", sc.ingress, "ingress", "pass"),
                           cwd=Lab.repo, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline() == "attached\n"
        return holder

    def empty_tc_down(holder: object) -> None:
        assert isinstance(holder, subprocess.Popen)
        holder.terminate()
        holder.wait(30)
        gro(False)

    out = [Variant("linux", linux_up, detach), Variant("tna --hook xdp", lambda: tna_up("xdp"), tna_down)]
    # passed traffic, and labs without a reference program (NAT): both hooks;
    # GRO lets the veth take the generator's frames without XDP
    if sc.name == "passed" or not sc.reference:
        out += [Variant("linux (gro)", lambda: gro(True), lambda _: gro(False)),
                Variant("tna --hook tc", tc_up, tna_down)]
        if sc.name == "passed":  # Linux with an empty TC program: the TC hook's own cost
            out.append(Variant("empty tc", empty_tc_up, empty_tc_down))
        return out
    return [*out, Variant("reference", lambda: progs(lab, sc.ns, *sc.reference), detach)]


def measure_pps(sc: Scenario, count: int) -> tuple[float, int]:
    """(delivered Mpps, delivered) for count frames."""
    lab, dst = sc.lab, sc.dst
    before = int(progs(lab, dst.ns, "count", dst.dev))
    ns = int(progs(lab, sc.src.ns, "generate", sc.src.dev, sc.frame.hex(), str(count), cpu=GEN_CPU))
    last = -1
    while True:  # anything still in flight lands within a few ms
        now = int(progs(lab, dst.ns, "count", dst.dev)) - before
        if now == last:
            break
        last = now
        time.sleep(0.05)
    return last / ns * 1e3, last


def _median_run_ns(prog: bpf.Program, frame: bytes, ctx: XdpMd, runs: int = 20_000) -> float:
    """Median kernel-measured ns of single runs: a repeated run would feed the
    program the frame it rewrote the time before."""
    durations = []
    for _ in range(runs):
        ret, _, dur = test_run(prog, frame, ctx=ctx)
        assert ret == 4, "the program should redirect the benchmark frame"
        durations.append(dur)
    return statistics.median(durations)


def program_cost(lab: RouterLab, frame: bytes) -> dict[str, float]:
    """ns per packet of the programs alone (BPF_PROG_TEST_RUN, no traffic)."""
    from netns_labs.progs import build
    from tna.deploy.datapath import iface_cfg
    from tna.deploy.lease import renew
    from tna.synth.compile import compile_source
    from tna.synth.render import render

    out = {}
    ifindex = lab.ifindex(lab.r, "r-h1")
    egress = lab.ifindex(lab.r, "r-h2").to_bytes(4, "little")
    ctx = XdpMd(data_end=len(frame), ingress_ifindex=ifindex)
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


def iperf(lab: Lab, src: Host, dst: Host, seconds: int, cpu: str | None = None) -> float:
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    server = lab.popen(dst.ns, [*pin, "iperf3", "-s", "-1", "-B", dst.ip4], stdout=subprocess.DEVNULL)
    wait_for(lambda: lab.run(dst.ns, ["ss", "-ltn", "sport = :5201"]).stdout.count("LISTEN") > 0, 5)
    out = lab.run(src.ns, [*pin, "iperf3", "-c", dst.ip4, "-t", str(seconds), "-J"], timeout=seconds + 30).stdout
    server.wait(timeout=10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def frames_for(name: str, count: int) -> int:
    """Frames per Linux measurement: fewer behind thousands of rules, where
    Linux slows down by as much (so a round takes seconds, not minutes)."""
    rules = rule_count(name)
    return count if rules <= 100 else max(100_000, count * 100 // rules)


def bench_pps(name: str, frames: int, rounds: int,
              open_scenario: Callable[[str], AbstractContextManager[Scenario]] = scenario) -> list[dict]:
    """open_scenario: builds the lab of scenario name (another module's labs)."""
    rows: dict[str, list[float]] = {}
    with open_scenario(name) as sc:
        progs(sc.lab, sc.dst.ns, "attach", sc.dst.dev, "sink")
        for _ in range(rounds):
            for v in variants(sc):
                count = frames_for(name, frames) if v.name.startswith("linux") else frames
                handle = v.up()
                try:
                    measure_pps(sc, min(100_000, count // 10))  # warm up caches and the page pool
                    for attempt in range(1, LOSS_RETRIES + 1):
                        mpps, delivered = measure_pps(sc, count)
                        if delivered == count:
                            break
                        # a lost frame invalidates the run, whoever lost it (the
                        # veth rings overflow now and then, reference included)
                        why = f"; tna counters {handle.counters()}" if isinstance(handle, Tna) else ""
                        print(f"{name}, {v.name}: delivered {delivered} of {count} frames{why} "
                              f"(attempt {attempt}, measured again)", file=sys.stderr, flush=True)
                finally:
                    v.down(handle)
                if delivered != count:
                    raise SystemExit(f"{name}, {v.name}: frames lost in {LOSS_RETRIES} attempts")
                rows.setdefault(v.name, []).append(mpps)
        cost = program_cost(sc.lab, sc.frame) if name in ("routing", "routing+rule") and isinstance(sc.lab, RouterLab) \
            else {}
    linux = {v: statistics.median(runs) for v, runs in rows.items() if v.startswith("linux")}
    ref = statistics.median(rows["reference"]) if "reference" in rows else None
    table = []
    for variant, runs in rows.items():
        med = statistics.median(runs)
        # each hook against Linux measured the same way (a TC row, "empty tc" too: Linux with GRO)
        base = linux["linux (gro)"] if variant.endswith("tc") or variant == "linux (gro)" else linux["linux"]
        table.append({"variant": variant, "mpps": med, "runs": runs, "vs_linux": med / base,
                      "vs_reference": med / ref if ref else None, "prog_ns": cost.get(variant)})
    return table


def bench_tcp(name: str, runs: int, seconds: int,
              open_scenario: Callable[[str], AbstractContextManager[Scenario]] = scenario) -> dict:
    """iperf3 from the scenario's src to its dst: Linux alone vs `tna run`
    (auto), alternating; open_scenario as in bench_pps."""
    linux, tna_runs = [], []
    with open_scenario(name) as sc:
        for _ in range(runs):
            linux.append(iperf(sc.lab, sc.src, sc.dst, seconds))
            tna = Tna(sc.lab, sc.ns)
            try:
                tna.wait_attached(sc.tna_ifaces)
                tna_runs.append(iperf(sc.lab, sc.src, sc.dst, seconds))
                fast = tna.counters().get("FORWARDED", 0)
            finally:
                tna.stop()
                tna.close()
            if fast == 0:
                raise SystemExit(f"{name}: tna did not forward the TCP transfer")
    return {"linux": linux, "tna": tna_runs,
            "ratio": statistics.median(tna_runs) / statistics.median(linux)}


def bench_flood(runs: int, seconds: int, pps: int) -> dict[str, list[float]]:
    """Goodput of a TCP service on the box (iperf3, h2 -> r) while a UDP
    flood that `iptables -A INPUT -p udp --dport 9999 -j DROP` blocks hits
    it from h1 at pps.  Generator, box and iperf3 share one CPU, as a
    one-core box shares it between a flood and its service: what the
    flood's drops cost is what the service loses."""
    out: dict[str, list[float]] = {"linux, no flood": [], "linux, flood": [], "tna, flood": []}
    with RouterLab() as r:
        r.run(r.r, ["iptables", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "DROP"])
        box = Host(r.r, "r-h2", "198.51.100.1", "2001:db8:2::1", r.r_h2_mac)
        frame = bytes(Ether(src=r.h1.mac, dst=r.r_h1_mac) / IP(src=r.h1.ip4, dst="192.0.2.1", ttl=64)
                      / UDP(sport=FRAME_SPORT, dport=9999) / Raw(b"\0" * 18))

        def flooded(variant: str) -> float:
            gen = r.popen(r.h1.ns, ["taskset", "-c", GEN_CPU,
                                    *py("netns_labs.progs", "flood", r.h1.dev, frame.hex(), str(pps),
                                        str(seconds + 1.5))], cwd=r.repo, stdout=subprocess.PIPE, text=True)
            try:
                time.sleep(0.5)
                goodput = iperf(r, r.h2, box, seconds, GEN_CPU)
            finally:
                sent, _ = gen.communicate(timeout=60)
            out.setdefault(f"{variant}: flood Mpps", []).append(int(sent) / (seconds + 1.5) / 1e6)
            return goodput

        for _ in range(runs):
            progs(r, r.r, "attach", "r-h1", "pass")  # the generator needs XDP on the receiving veth
            out["linux, no flood"].append(iperf(r, r.h2, box, seconds, GEN_CPU))
            out["linux, flood"].append(flooded("linux"))
            progs(r, r.r, "detach", "r-h1")
            tna = Tna(r, r.r, "--iface-hook", "r-h1=xdp")  # auto (TC) for r-h2, which faces h2's stack
            try:
                tna.wait_attached(["r-h1", "r-h2"])
                if not wait_for(lambda t=tna: "firewall" in t.status()["ifaces"]["r-h1"]["modules"], 30, 0.2):
                    raise SystemExit("the INPUT rule was not compiled in")
                out["tna, flood"].append(flooded("tna"))
                out.setdefault("tna: flood dropped at XDP", []).append(tna.counters("r-h1").get("FW_INPUT_DROP", 0))
            finally:
                tna.stop()
                tna.close()
    return out


def machine() -> dict[str, object]:
    """What the numbers depend on besides the code: kernel, CPU, clang."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    try:
        clang = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        clang = "not found"
    return {"kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(), "clang": clang,
            "generator": generator_kind()}


def header(module: str, argv: list[str]) -> dict[str, object]:
    """What a benchmark's JSON starts with: who wrote it, the command, when, the machine."""
    return {"source": f"written by netns_labs/{module}.py",
            "command": shlex.join(["python", "-m", f"netns_labs.{module}", *argv]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **machine()}


def write_doc(path: Path, module: str, argv: list[str], **results: object) -> None:
    """A benchmark's JSON: header() and its results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**header(module, argv), **results}, indent=1) + "\n")


def write_results(path: Path, argv: list[str], pps: dict[str, list[dict]], tcp: dict[str, dict],
                  flood: dict[str, list[float]]) -> None:
    """The run as JSON, what netns_labs/plot.py reads: pps[scenario] is
    bench_pps()'s table, tcp[lab] bench_tcp()'s dict, flood bench_flood()'s."""
    write_doc(path, "bench", argv, pps=pps, tcp=tcp, flood=flood)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2_000_000, help="frames per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tcp-runs", type=int, default=5)
    ap.add_argument("--tcp-seconds", type=int, default=4)
    ap.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--flood-runs", type=int, default=3)
    ap.add_argument("--flood-pps", type=int, default=400_000)
    ap.add_argument("--json", type=Path, default=Lab.repo / "docs" / "bench" / "results.json", metavar="FILE",
                    help="where to write the results (the charts go beside it)")
    args = ap.parse_args(argv)

    pps: dict[str, list[dict]] = {}
    tcps: dict[str, dict] = {}
    flood: dict[str, list[float]] = {}
    for name in args.scenario:
        table = pps[name] = bench_pps(name, args.count, args.rounds)
        print(f"\n{name}: 64-byte IPv4 frames, one CPU, median of {args.rounds} alternating rounds "
              f"of {args.count} frames (Linux: {frames_for(name, args.count)}; delivered == sent in every run)")
        print(f"{'variant':<16} {'Mpps':>7} {'x Linux':>8} {'x reference':>12} {'program ns/pkt':>15}")
        for row in table:
            cost = f"{row['prog_ns']:.1f}" if row["prog_ns"] is not None else "-"
            ref = f"{row['vs_reference']:.2f}" if row["vs_reference"] is not None else "-"
            print(f"{row['variant']:<16} {row['mpps']:>7.2f} {row['vs_linux']:>8.2f} {ref:>12} "
                  f"{cost:>15}", flush=True)
    for name in ("routing", "bridging") if args.tcp_runs else ():
        tcp = tcps[name] = bench_tcp(name, args.tcp_runs, args.tcp_seconds)
        print(f"\n{name}: TCP bulk (iperf3, {args.tcp_seconds} s, default offloads), "
              f"{args.tcp_runs} alternating runs")
        for variant in ("linux", "tna"):
            runs = tcp[variant]
            print(f"{variant:<5} Gbit/s: {' '.join(f'{x:.2f}' for x in runs)}  median {statistics.median(runs):.2f}")
        print(f"tna / linux (medians): {tcp['ratio']:.2f}", flush=True)
    if args.flood_runs:
        flood = bench_flood(args.flood_runs, args.tcp_seconds, args.flood_pps)
        print(f"\nTCP service on the box under a {args.flood_pps} pps UDP flood its INPUT chain drops "
              f"(iperf3 {args.tcp_seconds} s, one CPU for flood, box and service), {args.flood_runs} runs")
        for variant, runs in flood.items():
            unit = "" if ":" in variant else " Gbit/s:"
            print(f"{variant:<26}{unit} {' '.join(f'{x:.2f}' for x in runs)}  median {statistics.median(runs):.2f}")
        print(f"tna / linux under the flood (medians): "
              f"{statistics.median(flood['tna, flood']) / statistics.median(flood['linux, flood']):.2f}", flush=True)
    write_results(args.json, sys.argv[1:] if argv is None else argv, pps, tcps, flood)
    print(f"\nresults: {args.json}")
    if plot.available():
        for png in plot.render(plot.load(args.json), args.json.parent):
            print(f"chart: {png}")
    else:
        print("no charts: matplotlib is not installed (pip install -e '.[plots]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
