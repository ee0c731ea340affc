"""The transparency harness: one fixed scenario through a host lab with a
real tool's rule set, once with plain Linux and once per `tna run` hook, and
what differs.

Two kinds of traffic, because real stacks vary between runs (IP IDs, TCP
timestamps and ISNs) and crafted frames do not:

- crafted frames (`crafted`), compared byte for byte as every host receives
  them (netns_labs.difftest's runner and comparator): established TCP flows
  from a container address to the outside and back, IPv4 and IPv6, with a
  pause after the handshake (time for a fast path to take the flow over);
  UDP both ways; spoofed sources; traffic the rules deny. They use addresses
  no stack owns (hostlab.GHOST4/6, FAR4/6), so no real stack answers them;
- real stacks (`real_traffic`), compared by outcome (`OUTCOMES`): SHA-256
  checked TCP transfers and UDP echoes from a container to the outside and
  from the outside to the published ports, a one-way UDP stream, pings, and
  what the rules deny (direct access, isolation).

`observe` also records, per tna run, the fast path's counters (what it
carried, by reason), read after one more TCP flow long enough to be carried
(`carried_flow`), and why traffic stays on the kernel path (`tna status`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from netns_labs.difftest.compare import compare, show
from netns_labs.difftest.gen import MARK, Case, Send
from netns_labs.difftest.run import LINUX, Observation, Runner, Topology
from netns_labs.hostlab import CLOSED_PORT, FAR4, FAR6, GHOST4, GHOST6, TCP_PORT, UDP_PORT, UPLINK4, UPLINK6, HostLab
from netns_labs.lab import Lab, _server, py
from netns_labs.tna_proc import Tna, host_xdp

HOOKS = ("xdp", "auto")  # every interface of a host lab is a veth: `auto` is `tc` there (as tests/conftest.HOOKS)
OUTCOMES = ("tcp out v4", "tcp out v6", "tcp published v4", "tcp published v6", "tcp direct v4",
            "udp out v4", "udp out v6", "udp published v4", "udp published v6", "udp one-way v4",
            "ping out v4", "ping out v6", "ping direct v4", "ping direct v6", "ping isolated v4", "ping isolated v6")
NBYTES, ECHOES, CONNECT_S = 256 << 10, 5, 3  # connecting fails fast where the rules drop
PAD = 16  # bytes after a crafted frame's mark
CARRIED_S = 1.5  # carried_flow's length


@dataclass
class Run:
    mode: str
    frames: Observation            # crafted frames received, state, tna's log
    outcomes: dict[str, str]
    counters: dict[str, int] = field(default_factory=dict)  # packets by reason (tna runs)
    kernel_path: str | None = None  # why tna leaves all traffic to the kernel, if it does
    carried: str | None = None      # carried_flow's outcome (tna runs where "tcp out v4" is ok)


def topology(lab: HostLab) -> Topology:
    """The lab as the difftest runner sees it; every host veth runs the XDP
    pass program in every mode (XDP redirects deliver; Linux sees the same
    receive path); c2 takes no part in the scenario, but its veth too must be
    valid XDP egress."""
    hosts = {"c1": (lab.c1.ns, lab.c1.dev), "c3": (lab.c3.ns, lab.c3.dev), "out": (lab.out.ns, lab.out.dev)}
    for h in (*lab.containers, lab.out):
        host_xdp(lab, h.ns, h.dev)
    return Topology(lab, lab.host, hosts, lab.ports)


def crafted(lab: HostLab) -> list[Send]:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    gw_mac = lab.mac(lab.host, lab.bridges[0])
    sends: list[Send] = []

    def send(host: str, l3: object, pause: float = 0.0) -> None:
        mac = lab.c1.mac if host == "c1" else lab.out.mac
        dst = gw_mac if host == "c1" else lab.host_mac
        frame = Ether(src=mac, dst=dst) / l3 / (MARK + len(sends).to_bytes(2, "big") + bytes(PAD))
        sends.append(Send(host, bytes(frame), pause))

    for ip, ghost, far, uplink in ((IP, GHOST4, FAR4, UPLINK4), (IPv6, GHOST6, FAR6, UPLINK6)):
        c, o = ip(src=ghost, dst=far), ip(src=far, dst=uplink)  # the outside answers the NATed address
        seq, ack, sport = 1000, 5000, 40001
        send("c1", c / TCP(sport=sport, dport=80, flags="S", seq=seq))
        send("out", o / TCP(sport=80, dport=sport, flags="SA", seq=ack, ack=seq + 1))
        send("c1", c / TCP(sport=sport, dport=80, flags="A", seq=seq + 1, ack=ack + 1))
        n = len(MARK) + 2 + PAD  # every frame's payload: the mark
        send("c1", c / TCP(sport=sport, dport=80, flags="PA", seq=seq + 1, ack=ack + 1), pause=0.5)
        send("out", o / TCP(sport=80, dport=sport, flags="PA", seq=ack + 1, ack=seq + 1 + n))
        send("c1", c / TCP(sport=sport, dport=80, flags="FA", seq=seq + 1 + n, ack=ack + 1 + n))
        send("out", o / TCP(sport=80, dport=sport, flags="FA", seq=ack + 1 + n, ack=seq + 2 + n))
        send("c1", c / TCP(sport=sport, dport=80, flags="A", seq=seq + 2 + n, ack=ack + 2 + n))
        send("c1", c / UDP(sport=40002, dport=53))
        send("out", o / UDP(sport=53, dport=40002))
        send("c1", c / UDP(sport=40002, dport=53), pause=0.5)
        send("out", o / UDP(sport=53, dport=40002))
        # denied: straight at a container address from outside, not published
        send("out", ip(src=far, dst=ghost) / TCP(sport=40003, dport=CLOSED_PORT, flags="S"))
    # spoofed: an outside source from a container, the host's own address, and
    # a container address from outside
    send("c1", IP(src="203.0.113.50", dst=FAR4) / UDP(sport=40004, dport=53))
    send("c1", IP(src=UPLINK4, dst=FAR4) / ICMP(id=7))
    send("out", IP(src="192.0.2.50", dst=GHOST4) / UDP(sport=40005, dport=53))
    return sends


def real_traffic(lab: HostLab) -> dict[str, str]:
    """Every outcome of OUTCOMES: "ok", "fail", or "partial N/M" (echoes).
    The servers start first, then every client at once."""
    c1, c3, out = lab.c1, lab.c3, lab.out
    servers = [_server(lab, out.ns, "tcp-server", str(TCP_PORT), "2"), _server(lab, out.ns, "udp-echo", str(UDP_PORT)),
               _server(lab, out.ns, "udp-sink", str(CLOSED_PORT), "1.5", "30"),
               _server(lab, c1.ns, "tcp-server", str(TCP_PORT), "3"), _server(lab, c1.ns, "udp-echo", str(UDP_PORT))]
    sink = servers[2]
    tcp = {"tcp out v4": (c1, out.ip4), "tcp out v6": (c1, out.ip6), "tcp published v4": (out, UPLINK4),
           "tcp published v6": (out, UPLINK6), "tcp direct v4": (out, c1.ip4)}
    udp = {"udp out v4": (c1, out.ip4), "udp out v6": (c1, out.ip6), "udp published v4": (out, UPLINK4),
           "udp published v6": (out, UPLINK6)}
    pings = {"ping out v4": (c1, out.ip4), "ping out v6": (c1, out.ip6), "ping direct v4": (out, c1.ip4),
             "ping direct v6": (out, c1.ip6), "ping isolated v4": (c3, c1.ip4), "ping isolated v6": (c3, c1.ip6)}
    clients: dict[str, tuple[subprocess.Popen, Callable[[str, int], str]]] = {}

    def start(name: str, ns: str, argv: list[str], judge: Callable[[str, int], str]) -> None:
        clients[name] = (lab.popen(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   cwd=Lab.repo), judge)

    for name, (src, dst) in tcp.items():
        start(name, src.ns, py("netns_labs.xfer", "tcp-client", dst, str(TCP_PORT), str(NBYTES), str(CONNECT_S)),
              _tcp_ok)
    for name, (src, dst) in udp.items():
        start(name, src.ns, py("netns_labs.xfer", "udp-client", dst, str(UDP_PORT), str(ECHOES)), _echoed)
    for name, (src, dst) in pings.items():
        start(name, src.ns, ["ping", "-c", "2", "-i", "0.2", "-W", "1", dst], lambda _, rc: "ok" if rc == 0 else "fail")
    start("stream", c1.ns, py("netns_labs.xfer", "udp-stream", out.ip4, str(CLOSED_PORT), "40010", "1", "0.02"),
          lambda text, _: text)
    results = {}
    try:
        for name, (proc, judge) in clients.items():
            text, _ = proc.communicate(timeout=120)
            results[name] = judge(text, proc.returncode)
        received, _ = sink.communicate(timeout=30)
        results["udp one-way v4"] = "ok" if received.split() == results.pop("stream").split() else "fail"
    finally:
        for s in servers:
            s.kill()
    return {k: results[k] for k in OUTCOMES}


def quiet_flow(lab: HostLab, timeout_s: int = 4) -> str:
    """One TCP connection from c1 to the outside (MASQUERADEd) that sends for
    longer than the host's established-flow conntrack timeout (timeout_s),
    pauses, then sends again: "ok" if every byte arrived. Only refreshed
    entries survive it: the timeout is short, and with nf_conntrack_tcp_loose
    off a connection whose entry expired is never picked up again (its NAT is
    gone)."""
    lab.sysctl(lab.host, "net.netfilter.nf_conntrack_tcp_timeout_established", timeout_s)
    lab.sysctl(lab.host, "net.netfilter.nf_conntrack_tcp_loose", 0)
    try:
        return _paced_flow(lab, TCP_PORT + 100, (timeout_s + 2, timeout_s // 2, 1))
    finally:
        lab.sysctl(lab.host, "net.netfilter.nf_conntrack_tcp_loose", 1)


def carried_flow(lab: HostLab, seconds: float = CARRIED_S) -> str:
    """One TCP connection from c1 to the outside on the port the scenario's
    transfers use, sending for seconds: long enough to be carried however late
    the daemon syncs its conntrack entry on a loaded machine (the scenario's
    own transfers can end before that)."""
    return _paced_flow(lab, TCP_PORT, (seconds,))


def _paced_flow(lab: HostLab, port: int, phases: tuple[float, ...]) -> str:
    """xfer's tcp-phases from c1 to the outside: "ok" if every byte arrived."""
    server = _server(lab, lab.out.ns, "tcp-server", str(port))
    try:
        res = lab.run(lab.c1.ns, py("netns_labs.xfer", "tcp-phases", lab.out.ip4, str(port), *map(str, phases)),
                      cwd=Lab.repo, check=False, timeout=120)
    finally:
        server.kill()
    return _tcp_ok(res.stdout, res.returncode)


def _tcp_ok(text: str, rc: int) -> str:
    f = text.split()
    return "ok" if rc == 0 and len(f) == 3 and f[1] == f[2] else "fail"


def _echoed(text: str, rc: int) -> str:
    ok, count = (int(x) for x in text.split()) if rc == 0 else (0, ECHOES)
    return "ok" if ok == count else "fail" if ok == 0 else f"partial {ok}/{count}"


class Harness:
    """A lab with a rule set loaded, ready to observe mode after mode."""

    def __init__(self, lab: HostLab) -> None:
        self.lab = lab
        self.topo = topology(lab)
        self.runner = Runner(self.topo, Case(0, 0, "hostlab", sends=crafted(lab)))

    def observe(self, mode: str, extra: Callable[[], object] | None = None) -> Run:
        """mode: LINUX or a hook; extra: more traffic while this mode runs
        (its result in Run.frames.during's "extra")."""
        def during(tna: Tna | None) -> dict[str, object]:
            outcomes = real_traffic(self.lab)
            got: dict[str, object] = {"outcomes": outcomes, "extra": extra() if extra else None}
            if tna is not None:
                if outcomes["tcp out v4"] == "ok":  # where the rules let it out
                    got["carried"] = carried_flow(self.lab)
                st = tna.status() or {}
                got["counters"] = tna.counters()
                got["kernel_path"] = st.get("disabled")
            return got
        obs = self.runner.observe(mode, during=during)
        d: dict = obs.during  # type: ignore[assignment]
        return Run(mode, obs, d["outcomes"], d.get("counters", {}), d.get("kernel_path"), d.get("carried"))

    def diff(self, linux: Run, other: Run) -> list[str]:
        """What other did differently from Linux; the first differing frame (in
        the order sent) named first."""
        out = [f"outcome {k}: linux {linux.outcomes[k]}, {other.mode} {other.outcomes[k]}"
               for k in OUTCOMES if linux.outcomes[k] != other.outcomes[k]]
        diffs = compare(linux.frames, other.frames, self.topo.own4())
        first = min((i for d in diffs for i in d.frames), default=None)
        if first is not None:
            s = self.runner.case.sends[first]
            out.append(f"first differing frame: #{first} from {s.host}: {show(s.frame)}")
        return out + [f"{d.where}:\n{d.detail}" for d in diffs]


def run_all(lab: HostLab, hooks: tuple[str, ...] = HOOKS) -> dict[str, list[str]]:
    """Linux, then each hook: the differences per hook (empty: transparent)."""
    h = Harness(lab)
    linux = h.observe(LINUX)
    return {hook: h.diff(linux, h.observe(hook)) for hook in hooks}

