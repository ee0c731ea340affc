"""1,000 mixed changes under traffic, Linux alone vs `tna run` (issue #13, item 6):

  python -m netns_labs.bench_changes [--changes 1000] [--pace 0.02] [--pps 300] [--seed 13]
                                     [--grace 0.25] [--kinds KIND...] [--start K] [--json FILE]

The routed bridge lab (BridgeLab(routed=True), namespace b): h1-h3 on br0,
h4 on a routed port, h5 on br1.  The bridge ports have learning off and a
static FDB entry per host, b has a permanent neighbour per host, so where a
frame may go is a function of the configuration alone.  Traffic, IPv4 UDP
frames of 60 bytes, each carrying its flow's id, a sequence number and its
send time (CLOCK_MONOTONIC, shared by the namespaces), at --pps per flow:
routed from h4 to h1, h2, h3, h5 and two addresses in 10.0.0.0/8 whose
routes come and go, and bridged from h1 to h2 and h3.  A raw capture on
every host records which frames arrived where.

A seeded sequence of --changes changes, one every --pace s, is applied in b
(`ip -batch`, `bridge -batch`, iptables): routes (a host's /32 through
another host, a 10/16 through a host: add, replace, delete), neighbours
(a host's address to another host's MAC, or deleted: ARP finds the owner),
FDB moves (a host's MAC to another port, static), a FORWARD DROP for a
host's address (insert, delete), a host's port down/up, a port's MTU
(1280-1500: these frames fit every MTU, so it changes nothing they do).

The same sequence runs twice, in a fresh lab each: Linux alone, then with
`tna run` (auto hooks).  A frame's next hop is judged by a configuration in
force from --grace s before it was sent until then, where that hop takes
it (neighbour, FDB, ports) by one in force from then until it arrived (a
change is in force from its command's start, the one before it until that
command returned; a frame may wait for ARP): arriving where no such
configuration sends it is a misdelivery (must be 0); where only one from
before its sending does, in transition; late: more than --grace after its
sending.  Per host: frames delivered in each run, misdelivered,
transition, late; the first misdeliveries are listed in the JSON.
--kinds limits the kinds drawn; --start K applies the first K changes
before the traffic starts and runs the rest (a window of the sequence).
"""

from __future__ import annotations

import argparse
import json
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from netns_labs.bench import write_doc
from netns_labs.bench_control import Datapath
from netns_labs.lab import BridgeLab, Host, Lab, in_netns, py
from netns_labs.tna_proc import Tna
from netns_labs.xfer import raw_socket, recv_frame

MAGIC = b"TNA6"
PORT = 9  # the sinks' port: frames nobody listens for
PAYLOAD = struct.Struct("!4sHIQ")  # magic, flow, seq, send time (ns)
BR0 = ("b-h1", "b-h2", "b-h3")
TOGGLED = (*BR0, "b-h5")  # ports that go down and up, change MTU
BOX_MAC = "02:00:00:00:01:04"  # b-h4's
PREFIXES = ("10.1.0.0/16", "10.2.0.0/16")  # unused space routed through a host now and then


@dataclass(frozen=True)
class Flow:
    """Frames from host src to dst_ip: routed (to the box's MAC) or bridged (to dst_mac)."""

    name: str
    src: str
    dst_ip: str
    dst_mac: str | None = None  # bridged when set


@dataclass(frozen=True)
class Net:
    """The lab's fixed facts: hosts by name, each host's port and bridge."""

    hosts: dict[str, Host]
    port: dict[str, str]  # host -> its port in b
    bridge: dict[str, str | None]  # port -> br0 / br1 / None (routed)
    box_mac: str  # b-h4's MAC: where h4 sends routed frames


@dataclass(frozen=True)
class State:
    """What b is configured with (the parts the changes touch)."""

    neigh: dict[str, str] = field(default_factory=dict)  # ip -> MAC (absent: ARP finds the owner)
    fdb: dict[str, str] = field(default_factory=dict)  # MAC -> port
    routes: dict[str, str] = field(default_factory=dict)  # prefix -> gateway ip
    dropped: frozenset[str] = frozenset()  # FORWARD DROP -d ip
    down: frozenset[str] = frozenset()  # ports administratively down
    mtu: dict[str, int] = field(default_factory=dict)


def owner(net: Net, ip: str) -> str:
    return next(name for name, h in net.hosts.items() if h.ip4 == ip)


def bridged_to(net: Net, s: State, mac: str, ingress: str | None) -> set[str]:
    """Hosts a frame to mac reaches through br0 (static FDB, learning off)."""
    port = s.fdb[mac]
    if port == ingress or port in s.down:
        return set()
    return {next(name for name, p in net.port.items() if p == port)}


def next_hop(net: Net, s: State, flow: Flow) -> str | None:
    """What forwarding decides as the frame comes in: the gateway's address
    (or, bridged, the destination MAC); None: dropped there."""
    if flow.dst_mac is not None:
        return None if net.port[flow.src] in s.down else flow.dst_mac
    if flow.dst_ip in s.dropped:
        return None
    if flow.dst_ip.startswith("10."):
        return s.routes.get(flow.dst_ip.rsplit(".", 2)[0] + ".0.0/16")
    return s.routes.get(f"{flow.dst_ip}/32", flow.dst_ip)


def reached(net: Net, s: State, flow: Flow, hop: str) -> set[str]:
    """Where the frame goes from its next hop under s: the neighbour's MAC
    (it may be resolved later: a frame waits for ARP), the FDB, the ports."""
    if flow.dst_mac is not None:
        return bridged_to(net, s, hop, net.port[flow.src])
    host = owner(net, hop)
    if net.bridge[net.port[host]] == "br1":
        return set() if "b-h5" in s.down else {host}
    return bridged_to(net, s, s.neigh.get(hop, net.hosts[host].mac), None)


def delivered_to(net: Net, s: State, flow: Flow) -> set[str]:
    """Where Linux sends a frame of flow under configuration s."""
    hop = next_hop(net, s, flow)
    return set() if hop is None else reached(net, s, flow, hop)


KINDS = ("route", "route10", "neigh", "fdb", "iptables", "link", "mtu")


def changes(net: Net, seed: int, n: int, kinds: tuple[str, ...] = KINDS) -> list[tuple[str, str, list[str], State]]:
    """n changes of kinds: (kind, tool, its batch lines or argv, the configuration after it)."""
    rng = random.Random(seed)
    br0_hosts = ("h1", "h2", "h3")
    s = initial(net)
    out: list[tuple[str, str, list[str], State]] = []
    while len(out) < n:
        kind = rng.choice(kinds)
        if kind == "route":
            dst = net.hosts[rng.choice((*br0_hosts, "h5"))].ip4 + "/32"
            gw = net.hosts[rng.choice(br0_hosts)].ip4
            if dst in s.routes and rng.random() < 0.5:
                tool, arg, s = "ip", [f"route del {dst}"], replace(s, routes={k: v for k, v in s.routes.items()
                                                                              if k != dst})
            elif gw + "/32" != dst:
                verb = "replace" if dst in s.routes else "add"
                tool, arg, s = "ip", [f"route {verb} {dst} via {gw}"], replace(s, routes={**s.routes, dst: gw})
            else:
                continue
        elif kind == "route10":
            dst, gw = rng.choice(PREFIXES), net.hosts[rng.choice(br0_hosts)].ip4
            if dst in s.routes and rng.random() < 0.4:
                tool, arg, s = "ip", [f"route del {dst}"], replace(s, routes={k: v for k, v in s.routes.items()
                                                                              if k != dst})
            else:
                verb = "replace" if dst in s.routes else "add"
                tool, arg, s = "ip", [f"route {verb} {dst} via {gw}"], replace(s, routes={**s.routes, dst: gw})
        elif kind == "neigh":
            ip = net.hosts[rng.choice(br0_hosts)].ip4
            if ip in s.neigh and rng.random() < 0.3:  # only an entry b was given: ARP's may be in flight
                tool, arg = "ip", [f"neigh del {ip} dev br0"]
                s = replace(s, neigh={k: v for k, v in s.neigh.items() if k != ip})
            else:
                mac = net.hosts[rng.choice(br0_hosts)].mac
                tool, arg = "ip", [f"neigh replace {ip} lladdr {mac} dev br0 nud permanent"]
                s = replace(s, neigh={**s.neigh, ip: mac})
        elif kind == "fdb":
            mac, port = net.hosts[rng.choice(br0_hosts)].mac, rng.choice(BR0)
            tool, arg, s = "bridge", [f"fdb replace {mac} dev {port} master static"], replace(s, fdb={**s.fdb,
                                                                                                   mac: port})
        elif kind == "iptables":
            ip = net.hosts[rng.choice((*br0_hosts, "h5"))].ip4
            verb = "-D" if ip in s.dropped else "-I"
            tool, arg = "iptables", [verb, "FORWARD", "-d", ip, "-j", "DROP"]
            s = replace(s, dropped=s.dropped - {ip} if ip in s.dropped else s.dropped | {ip})
        elif kind == "link":
            port = rng.choice(TOGGLED)
            up = port in s.down
            tool, arg = "ip", [f"link set {port} {'up' if up else 'down'}"]
            s = replace(s, down=s.down - {port} if up else s.down | {port})
        else:
            port, mtu = rng.choice(TOGGLED), rng.randrange(1280, 1501)
            tool, arg, s = "ip", [f"link set {port} mtu {mtu}"], replace(s, mtu={**s.mtu, port: mtu})
        out.append((kind, tool, arg, s))
    return out


def initial(net: Net) -> State:
    """The lab as built: every host's permanent neighbour and static FDB entry."""
    on_br0 = [n for n, p in net.port.items() if net.bridge[p] == "br0"]
    return State(neigh={net.hosts[n].ip4: net.hosts[n].mac for n in on_br0},
                 fdb={net.hosts[n].mac: net.port[n] for n in on_br0})


IP4 = {"h1": "192.0.2.11", "h2": "192.0.2.12", "h3": "192.0.2.13", "h4": "198.51.100.2", "h5": "203.0.113.2"}
BRIDGE = {**{p: "br0" for p in BR0}, "b-h4": None, "b-h5": "br1"}


def topology(lab: BridgeLab | None = None) -> Net:
    """BridgeLab(routed=True)'s hosts with fixed MACs (the sequence names
    them), in lab's namespaces (None: a sequence's or a test's, unnamed)."""
    hosts = {name: Host(f"{lab.tag}-{name}" if lab else "", f"{name}-b", ip, "", f"02:00:00:00:00:0{name[1]}")
             for name, ip in IP4.items()}
    return Net(hosts, {name: f"b-{name}" for name in hosts}, BRIDGE, BOX_MAC)


def flows_of(net: Net) -> list[Flow]:
    routed = [Flow(f"h4>{n}", "h4", net.hosts[n].ip4) for n in ("h1", "h2", "h3", "h5")]
    routed += [Flow(f"h4>{p.split('/')[0][:-1]}1", "h4", p.split("/")[0][:-1] + "1") for p in PREFIXES]
    return routed + [Flow(f"h1>{n}", "h1", net.hosts[n].ip4, net.hosts[n].mac) for n in ("h2", "h3")]


@contextmanager
def changes_lab() -> Iterator[tuple[BridgeLab, Net]]:
    """The routed bridge lab set up so that the configuration alone decides
    where a frame goes."""
    with BridgeLab(routed=True) as lab:
        net, b = topology(lab), lab.b
        assert {h.ip4 for h in [*lab.hosts, lab.h4, lab.h5]} == set(IP4.values())
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            lab.sysctl(b, f"net.bridge.{key}", 0)
        lab.run(b, ["ip", "link", "set", "b-h4", "address", BOX_MAC])
        for name, h in net.hosts.items():
            lab.run(h.ns, ["ip", "link", "set", h.dev, "address", h.mac])
            port = net.port[name]
            lab.neigh(b, BRIDGE[port] or port, h.ip4, h.mac)
            if BRIDGE[port]:
                lab.run(b, ["bridge", "link", "set", "dev", port, "learning", "off"])
                lab.run(b, ["bridge", "fdb", "replace", h.mac, "dev", port, "master", "static"])
        yield lab, net


def header_bytes(net: Net, flow: Flow) -> bytes:
    """Ethernet + IPv4 + UDP headers of flow's frames (UDP checksum 0: none)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    src = net.hosts[flow.src]
    frame = bytes(Ether(src=src.mac, dst=flow.dst_mac or net.box_mac) / IP(src=src.ip4, dst=flow.dst_ip, ttl=64)
                  / UDP(sport=4321, dport=PORT, chksum=0) / (b"\0" * PAYLOAD.size))
    return frame[:-PAYLOAD.size]


def send(spec: list[tuple[str, str, str]], pps: int, seconds: float) -> None:
    """Frames of each flow (namespace, device, header hex) at pps for
    seconds, flow by flow in turn; prints the frames sent per flow."""
    socks = []
    for ns, dev, _ in spec:
        with in_netns(ns):
            socks.append(raw_socket(dev))
    heads = [bytes.fromhex(h) for _, _, h in spec]
    sent = [0] * len(spec)
    print("ready", flush=True)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(pps * elapsed)
        if due <= sent[0]:
            time.sleep(1e-3)
            continue
        for i, (s, head) in enumerate(zip(socks, heads, strict=True)):
            for seq in range(sent[i], due):
                try:
                    s.send(head + PAYLOAD.pack(MAGIC, i, seq, time.monotonic_ns()))
                except OSError:  # the sender's port is down: the frame is lost, as on a wire
                    pass
            sent[i] = due
    print(json.dumps(sent), flush=True)


SOL_PACKET, PACKET_STATISTICS = 263, 6


def capture(spec: list[tuple[str, str, str]]) -> None:
    """Record this run's frames arriving at each host (name, namespace,
    device) until stdin closes; prints {host: [[flow, seq, sent_ns, received_ns], ...]}
    and the frames each capture socket dropped."""
    socks = {}
    for name, ns, dev in spec:
        with in_netns(ns):
            s = raw_socket(dev, 3)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        socks[s] = name
    got: dict[str, list[tuple[int, int, int, int]]] = {name: [] for name, _, _ in spec}
    print("ready", flush=True)
    done = False
    while True:  # until stdin closes, then until the sockets are drained
        readable, _, _ = select.select([*socks] if done else [*socks, sys.stdin], [], [], 0.2 if done else 1.0)
        if done and not readable:
            break
        for s in readable:
            if s is sys.stdin:
                done = not sys.stdin.read(1)
            elif (data := recv_frame(s)) is not None and data[12:14] == b"\x08\x00" and data[14] == 0x45 \
                    and data[23] == 17 and data[36:38] == PORT.to_bytes(2, "big") and data[42:46] == MAGIC:
                _, flow, seq, t = PAYLOAD.unpack_from(data, 42)  # IPv4 without options, UDP to PORT, ours
                got[socks[s]].append((flow, seq, t, time.monotonic_ns()))
    drops = {name: struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1] for s, name in socks.items()}
    print(json.dumps({"arrivals": got, "capture_drops": drops}), flush=True)


def apply(lab: BridgeLab, tool: str, arg: list[str]) -> None:
    """One change in b: ip/bridge read it as a batch, iptables as its argv."""
    if tool == "iptables":
        lab.run(lab.b, ["iptables", "-w", *arg])
    else:
        subprocess.run([tool, "-n", lab.b, "-batch", "-"], input="\n".join(arg) + "\n", check=True,
                       capture_output=True, text=True, timeout=60)


def run(variant: str, seq: list[tuple[str, str, list[str], State]], pace: float, pps: int,
        warmup: float = 1.0, tail: float = 1.0, start: int = 0) -> dict:
    """One run of seq[start:] in a fresh lab given seq[:start] first, without
    traffic: the change times, what each flow sent, what arrived where
    (and, under tna, its counters)."""
    with changes_lab() as (lab, net):
        for _, tool, arg, _ in seq[:start]:
            apply(lab, tool, arg)
        seq = seq[start:]
        flows, tna, dp = flows_of(net), None, None
        if variant == "tna":
            tna = Tna(lab, lab.b)
            # settled: a port the prefix took down is skipped
            tna.wait_attached([*BR0, "b-h4", "b-h5"], timeout=120, settled=True)
            dp = Datapath(lab, lab.b, "b-h4")  # a port the changes never take down
        try:
            hosts = [(name, h.ns, h.dev) for name, h in net.hosts.items()]
            cap = lab.popen(lab.b, py("netns_labs.bench_changes", "capture", json.dumps(hosts)), cwd=lab.repo,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert cap.stdout is not None
            assert cap.stdout.readline().strip() == "ready"
            spec = [(net.hosts[f.src].ns, net.hosts[f.src].dev, header_bytes(net, f).hex()) for f in flows]
            seconds = warmup + len(seq) * pace + tail
            gen = lab.popen(lab.b, py("netns_labs.bench_changes", "send", json.dumps(spec), str(pps), str(seconds)),
                            cwd=lab.repo, stdout=subprocess.PIPE, text=True)
            assert gen.stdout is not None and gen.stdout.readline().strip() == "ready"
            time.sleep(warmup)
            times, held = [], 0
            t0 = time.monotonic()
            for i, (_, tool, arg, _) in enumerate(seq):
                time.sleep(max(0.0, t0 + i * pace - time.monotonic()))
                held += bool(dp and dp.pass_reason())  # the whole datapath on the kernel path now
                a = time.monotonic_ns()
                apply(lab, tool, arg)
                times.append((a, time.monotonic_ns()))
            took = time.monotonic() - t0
            sent = json.loads(gen.communicate(timeout=seconds + 60)[0])
            time.sleep(0.5)  # the last frames land
            result = json.loads(cap.communicate("", timeout=60)[0])  # stdin closed: the capture ends
            counters = tna.counters() if tna else {}
        finally:
            if dp:
                dp.state.close()
            if tna:
                rc = tna.stop()
                out = tna.close()
                if rc:
                    raise SystemExit(f"tna exited with {rc}:\n{out}")
        return {"variant": variant, "changes_s": took, "times": times, "sent": sent, "tna_counters": counters,
                "held_before": held if dp else None, **result}


def judge(r: dict, net: Net, states: list[State], grace: float) -> dict:
    """Per host: frames delivered, misdelivered, in transition, late, and
    duplicates over all hosts.  A frame's next hop is decided as it comes
    in, by a configuration in force from grace before its sending until
    then; where that hop takes it, by one in force from then until it
    arrived (it may wait for ARP).  Arriving where no such pair sends it is
    a misdelivery; where only one from before its sending does, in
    transition; late: more than grace after it was sent."""
    import bisect

    flows = flows_of(net)
    starts = [a for a, _ in r["times"]]  # S_k (k >= 1) is in force from starts[k-1] ...
    ends = [b for _, b in r["times"]]  # ... and S_k until ends[k] (the next change returned)
    hops = [[next_hop(net, s, f) for f in flows] for s in states]
    memo: dict[tuple[int, int, str], set[str]] = {}

    def allowed(flow: int, sent: int, arrived: int, before: float) -> set[str]:
        first = bisect.bisect_left(ends, sent - int(before * 1e9))  # the first still in force then
        at_send, at_arrival = bisect.bisect_right(starts, sent), bisect.bisect_right(starts, arrived)
        out: set[str] = set()
        for hop in {hops[k][flow] for k in range(first, at_send + 1)} - {None}:
            for k in range(first, at_arrival + 1):
                if (k, flow, hop) not in memo:
                    memo[k, flow, hop] = reached(net, states[k], flows[flow], hop)
                out |= memo[k, flow, hop]
        return out

    out: dict[str, dict[str, int]] = {}
    seen: dict[tuple[int, int], int] = {}
    wrong: list[dict] = []  # the first misdeliveries, for whoever looks into them
    for host, arrivals in r["arrivals"].items():
        row = out[host] = {"delivered": 0, "misdelivered": 0, "transition": 0, "late": 0}
        for flow, seq, sent, arrived in arrivals:
            seen[flow, seq] = seen.get((flow, seq), 0) + 1
            if host not in allowed(flow, sent, arrived, grace):
                row["misdelivered"] += 1
                if len(wrong) < 100:
                    wrong.append({"host": host, "flow": flows[flow].name, "seq": seq,
                                  "arrived_after_s": (arrived - sent) / 1e9,
                                  "sent_after_change": bisect.bisect_right(starts, sent)})
            else:
                row["delivered"] += 1
                row["transition"] += host not in allowed(flow, sent, arrived, 0)
                row["late"] += arrived - sent > grace * 1e9
    return {"hosts": out, "duplicates": sum(n - 1 for n in seen.values()), "sent": sum(r["sent"]),
            "capture_drops": sum(r["capture_drops"].values()), "misdeliveries": wrong}


def bench(n: int, seed: int, pace: float, pps: int, grace: float, kinds: tuple[str, ...] = KINDS,
          start: int = 0) -> dict:
    """The sequence (from change start on, see run()) under Linux alone,
    then under tna, each judged."""
    net = topology()
    seq = changes(net, seed, n, kinds)
    states = [initial(net), *(c[3] for c in seq)][start:]
    kinds_run = [c[0] for c in seq[start:]]
    out: dict = {"changes": len(kinds_run), "start": start, "seed": seed, "pace_s": pace, "pps_per_flow": pps,
                 "grace_s": grace, "kinds": {k: kinds_run.count(k) for k in sorted(set(kinds_run))}}
    for variant in ("linux", "tna"):
        r = run(variant, seq, pace, pps, start=start)
        out[variant] = {**judge(r, net, states, grace), "changes_s": r["changes_s"], "held_before": r["held_before"],
                        "tna_counters": r["tna_counters"]}
    return out


def report(res: dict) -> str:
    lines = [f"{res['changes']} changes (seed {res['seed']}, one per {res['pace_s']} s; linux applied them in "
             f"{res['linux']['changes_s']:.1f} s, tna in {res['tna']['changes_s']:.1f} s), "
             f"{res['pps_per_flow']} frames/s per flow, grace {res['grace_s']} s",
             f"{'host':<5} {'linux':>8} {'tna':>8} {'tna-linux':>10} {'misdelivered l/t':>17} {'transition l/t':>15}"
             f" {'late l/t':>11}"]
    lin, tna = res["linux"]["hosts"], res["tna"]["hosts"]
    for host in lin:
        a, b = lin[host], tna[host]
        lines.append(f"{host:<5} {a['delivered']:>8} {b['delivered']:>8} {b['delivered'] - a['delivered']:>10} "
                     f"{a['misdelivered']:>8}/{b['misdelivered']:<8} {a['transition']:>7}/{b['transition']:<7}"
                     f" {a['late']:>5}/{b['late']:<5}")
    for v in ("linux", "tna"):
        r = res[v]
        lines.append(f"{v}: sent {r['sent']}, duplicates {r['duplicates']}, capture drops {r['capture_drops']}")
    lines.append(f"tna: the datapath held (all on the kernel path) before {res['tna']['held_before']} of "
                 f"{res['changes']} changes; counters of the programs attached at the end: "
                 f"{res['tna']['tna_counters']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["send"]:
        send(json.loads(argv[1]), int(argv[2]), float(argv[3]))
        return 0
    if argv[:1] == ["capture"]:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        capture(json.loads(argv[1]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--pace", type=float, default=0.02, help="seconds between changes")
    ap.add_argument("--pps", type=int, default=300, help="frames per second per flow (8 flows)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--grace", type=float, default=0.25, help="seconds a change may take to reach the datapath")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="the kinds of change drawn")
    ap.add_argument("--start", type=int, default=0, metavar="K",
                    help="apply the first K changes before the traffic starts; run the rest")
    ap.add_argument("--json", type=Path, default=Lab.repo / "docs" / "bench" / "changes.json", metavar="FILE")
    args = ap.parse_args(argv)
    res = bench(args.changes, args.seed, args.pace, args.pps, args.grace, tuple(args.kinds), args.start)
    print(report(res))
    write_doc(args.json, "bench_changes", argv, results=res)
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
