"""Run a case: build its lab once, then per mode (plain Linux, then `tna run`
per hook) reset the dynamic state, send every frame, capture what every
host receives, and snapshot what an admin sees.

Lab-wide settings, the same in every mode, keep runs deterministic: the hosts
send nothing of their own (OUTPUT DROP: no replies, no rate-limited ICMP),
every host veth runs the XDP pass program (so XDP redirects deliver, and the
Linux run sees the same receive path), the box has no ICMP rate limits and
only permanent neighbours (no ARP/ND timing).
"""

from __future__ import annotations

import ipaddress
import json
import re
import select
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field

from netns_labs.difftest.gen import Case, Cmd
from netns_labs.lab import BridgeLab, EcmpLab, Lab, RouterLab, in_netns, wait_for
from netns_labs.tna_proc import Tna, host_xdp, tna_running
from netns_labs.xfer import ETH_P_ALL, raw_socket, recv_frame

LINUX = "linux"
IDLE_S = 0.5  # a capture is complete once no host received anything for this long after the last frame
HELLO = b"TNAhello"
SO_RCVBUFFORCE = 33  # not in the socket module: a large buffer, so no burst is lost


@dataclass
class Topology:
    """A built lab: the box under test, the host ends (role -> ns, dev)."""

    lab: Lab
    box: str
    hosts: dict[str, tuple[str, str]]
    ifaces: list[str]  # the box's interfaces tna accelerates
    bridged: list[str] = field(default_factory=list)  # host roles on br0 (FDB primed per mode)

    def own4(self) -> set[bytes]:
        """The box's own IPv4 addresses (packed), the sources of what its stack
        originates: its local routes (interface addresses, and a user's
        `local` prefix up to a /24; not loopback's /8)."""
        out = json.loads(self.lab.run(self.box, ["ip", "-j", "-4", "route", "show", "table", "local",
                                                 "type", "local"]).stdout)
        nets = [ipaddress.ip_network(r["dst"]) for r in out]
        return {a.packed for n in nets if n.num_addresses <= 256 for a in n}

    def macs(self) -> dict[str, str]:
        out = {f"{role[:2]}:{dev}": self.lab.mac(ns, dev) for role, (ns, dev) in self.hosts.items()}
        for link in self.lab.ipr(self.box).get_links():
            name = link.get("IFLA_IFNAME")
            if name != "lo":
                out[f"box:{name}"] = link.get("IFLA_ADDRESS")
        return out


def build(kind: str) -> Topology:
    if kind == "router":
        lab: Lab = RouterLab()
        hosts = {"h1": (lab.h1.ns, lab.h1.dev), "h2": (lab.h2.ns, lab.h2.dev)}
        topo = Topology(lab, lab.r, hosts, ["r-h1", "r-h2"])
    elif kind == "ecmp":
        lab = EcmpLab()
        hosts = {"h1": (lab.h1, "h1-r"), "h2a": (lab.h2, "h2-a"), "h2b": (lab.h2, "h2-b")}
        topo = Topology(lab, lab.r, hosts, ["r-h1", "r-a", "r-b"])
    else:
        lab = BridgeLab(routed=True)
        hosts = {f"h{i}": (h.ns, h.dev) for i, h in enumerate((lab.h1, lab.h2, lab.h3, lab.h4, lab.h5), 1)}
        topo = Topology(lab, lab.b, hosts, [f"b-h{i}" for i in range(1, 6)], ["h1", "h2", "h3", "h5"])
    try:
        _quiet(topo)
    except BaseException:
        lab.close()
        raise
    return topo


def _quiet(topo: Topology) -> None:
    lab = topo.lab
    for ns in {ns for ns, _ in topo.hosts.values()}:
        lab.run(ns, ["iptables", "-P", "OUTPUT", "DROP"])
        lab.run(ns, ["ip6tables", "-P", "OUTPUT", "DROP"])
    for ns, dev in topo.hosts.values():
        host_xdp(lab, ns, dev)
    for key, value in (("net.ipv4.icmp_ratelimit", 0), ("net.ipv6.icmp.ratelimit", 0),
                       ("net.ipv4.icmp_msgs_per_sec", 100000), ("net.ipv4.icmp_msgs_burst", 100000)):
        lab.sysctl(topo.box, key, value)


def apply(topo: Topology, cmds: list[Cmd]) -> None:
    """The commands, one shell per namespace (each `ip netns exec` costs a
    process start); the first that fails stops the case."""
    scripts: dict[str, list[str]] = {}
    for c in cmds:
        ns = topo.box if c.node == "box" else topo.hosts[c.node][0]
        line = shlex.join(c.argv)
        scripts.setdefault(ns, []).append(line if c.stdin is None else f"{line} <<'EOF'\n{c.stdin}EOF")
    for ns, lines in scripts.items():
        topo.lab.run(ns, ["sh", "-ec", "\n".join(lines)])


@dataclass
class Observation:
    frames: dict[str, list[bytes]]  # host role -> frames it received, in order
    state: dict[str, object]        # what an admin sees while the mode runs
    after: dict[str, object]        # ... and once tna has exited
    send_errors: list[int]
    log: str = ""
    not_attached: dict[str, str] = field(default_factory=dict)  # interface -> why tna left it to the kernel
    during: object = None  # what Runner.observe's during returned


class Runner:
    """Runs one case in its built lab, mode by mode."""

    def __init__(self, topo: Topology, case: Case) -> None:
        self.topo, self.case, self.lab = topo, case, topo.lab
        self.timeouts = self._ct_timeouts()

    def observe(self, mode: str, only: set[int] | None = None,
                during: Callable[[Tna | None], object] | None = None) -> Observation:
        """during: more to do in this mode once the frames are captured and the
        state taken (with the running tna, None for plain Linux)."""
        self._reset()
        links0 = self._links()
        log = ""
        ctx = (nullcontext() if mode == LINUX
               else tna_running(self.lab, self.topo.box, mode, self.topo.ifaces, [], settled=True, timeout=120))
        not_attached: dict[str, str] = {}
        with ctx as tna:
            if tna is not None:
                st = tna.status() or {}
                not_attached = {name: why for name, why in {**st.get("skipped", {}), **st.get("failed", {})}.items()
                                if name in self.topo.ifaces}
            frames, errors = self._exchange(only)
            state = self._state(links0)
            extra = during(tna) if during is not None else None
            if tna is not None:
                log = tna.output()
        after = ({k: v for k, v in state.items() if k != "conntrack"} if mode == LINUX
                 else self._state(links0, conntrack=False))
        return Observation(frames, state, after, errors, log, not_attached, extra)

    # --- traffic --------------------------------------------------------

    def _exchange(self, only: set[int] | None) -> tuple[dict[str, list[bytes]], list[int]]:
        with ExitStack() as stack:
            caps, outs = {}, {}
            for role, (ns, dev) in self.topo.hosts.items():
                with in_netns(ns):
                    caps[role] = stack.enter_context(raw_socket(dev, ETH_P_ALL))
                    outs[role] = stack.enter_context(raw_socket(dev))
                caps[role].setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
                caps[role].setblocking(False)
            got: dict[str, list[bytes]] = {role: [] for role in caps}
            errors = []
            for i, send in enumerate(self.case.sends):
                if only is not None and i not in only:
                    continue
                if send.pause:
                    _drain(caps, got, send.pause)
                try:
                    outs[send.host].send(send.frame)
                except OSError:
                    errors.append(i)  # e.g. longer than the link allows: the same in every mode
                _drain(caps, got, 0)
            _drain(caps, got, IDLE_S, until_idle=True)
        return got, errors

    # --- state ----------------------------------------------------------

    def _reset(self) -> None:
        """Each mode starts from the same dynamic state: no conntrack entries,
        no resolved or failed neighbours but the permanent ones, the FDB
        learned afresh from one frame per bridged host."""
        lab, box = self.lab, self.topo.box
        lab.run(box, ["conntrack", "-F"], check=False)
        lab.run(box, ["sh", "-c", "ip -4 neigh flush all; ip -6 neigh flush all"])  # permanent ones stay
        if not self.topo.bridged:
            return
        lab.run(box, ["bridge", "fdb", "flush", "dev", "br0", "dynamic"])
        lab.run(box, ["bridge", "fdb", "flush", "dev", "br1", "dynamic"])
        expect = set()
        ports = {p["ifname"]: p for p in self._ports()}
        for role in self.topo.bridged:
            ns, dev = self.topo.hosts[role]
            mac = lab.mac(ns, dev)
            frame = b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) + b"\x88\xb5" + HELLO + bytes(40)
            with in_netns(ns), raw_socket(dev) as s:
                s.send(frame)
            p = ports.get("b-" + role)
            if p and p["state"] in ("learning", "forwarding") and p["learning"]:
                expect.add(mac)
        wait_for(lambda: expect <= {key.split("@")[0] for key in self._fdb()}, 5)

    def _ports(self) -> list[dict]:
        return json.loads(self.lab.run(self.topo.box, ["bridge", "-j", "-d", "link", "show"]).stdout or "[]")

    def _fdb(self) -> dict[str, tuple]:
        """Learned and static entries: MAC -> (port, flags, state)."""
        out = json.loads(self.lab.run(self.topo.box, ["bridge", "-j", "fdb", "show"]).stdout or "[]")
        return {f"{e['mac']}@{e.get('master')}": (e["ifname"], tuple(e.get("flags", ())), e.get("state", ""))
                for e in out if "master" in e and e.get("state") != "permanent"}

    def _links(self) -> dict[str, dict]:
        out = {}
        nodes = {("box", self.topo.box)} | {(role[:2], ns) for role, (ns, _) in self.topo.hosts.items()}
        for name, ns in sorted(nodes):
            for link in self.lab.ipr(ns).get_links():
                keys = ("IFLA_MTU", "IFLA_OPERSTATE", "IFLA_ADDRESS", "IFLA_PROMISCUITY", "IFLA_ALLMULTI",
                        "IFLA_CARRIER", "IFLA_CARRIER_CHANGES", "IFLA_GSO_MAX_SIZE", "IFLA_GSO_MAX_SEGS",
                        "IFLA_GRO_MAX_SIZE", "IFLA_TSO_MAX_SIZE", "IFLA_TSO_MAX_SEGS", "IFLA_MASTER")
                out[f"{name}:{link.get('IFLA_IFNAME')}"] = {"flags": link["flags"]} | {k: link.get(k) for k in keys}
        return out

    def _state(self, links0: dict[str, dict], conntrack: bool = True) -> dict[str, object]:
        links = self._links()
        for name, attrs in links.items():
            # the count is cumulative: what a mode did is how far it moved
            attrs["IFLA_CARRIER_CHANGES"] -= links0.get(name, attrs)["IFLA_CARRIER_CHANGES"]
        state: dict[str, object] = {"links": links}
        if self.topo.bridged:
            state["ports"] = {p["ifname"]: {k: v for k, v in p.items() if k != "ifindex"} for p in self._ports()}
            state["fdb"] = self._fdb()
        if conntrack:
            state["conntrack"] = self._conntrack()
        return state

    def _ct_timeouts(self) -> dict[str, list[int]]:
        """The box's conntrack timeouts by protocol (to name an entry's timeout class)."""
        out = self.lab.run(self.topo.box, ["sh", "-c", "grep -H . /proc/sys/net/netfilter/nf_conntrack_*timeout*"],
                           check=False).stdout
        table: dict[str, list[int]] = {}
        for line in out.splitlines():
            path, value = line.rsplit(":", 1)
            proto = path.rsplit("/", 1)[1].split("_")[2].replace("generic", "unknown")  # as conntrack -L names it
            table.setdefault(proto, []).append(int(value))
        return {proto: sorted(v) for proto, v in table.items()}

    def _conntrack(self) -> list[str]:
        """conntrack -L, each entry's remaining timeout replaced by its class
        (the smallest configured timeout it fits under) and its use count dropped."""
        out = self.lab.run(self.topo.box, ["conntrack", "-L"], check=False).stdout
        entries = []
        for line in out.splitlines():
            f = line.split()
            if len(f) < 3 or not f[2].isdigit():
                continue
            dst = next((x[4:] for x in f if x.startswith("dst=")), "")
            if dst and ipaddress.ip_address(dst).is_multicast:
                continue  # the hosts' own IGMP/MLD reports, sent when their stacks choose: no scenario's
            left = int(f[2])
            cls = next((t for t in self.timeouts.get(f[0], []) if t >= left), left)
            f[2] = f"timeout<={cls}"
            entries.append(" ".join(x for x in f if not re.match(r"use=\d+", x)))
        return sorted(entries)


def _drain(caps: dict[str, socket.socket], got: dict[str, list[bytes]], wait: float, until_idle: bool = False) -> None:
    """Read every captured frame; wait up to wait seconds for more (until_idle:
    until no frame came for wait seconds, within a bound)."""
    end = time.monotonic() + (20 if until_idle else wait)
    by_fd = {s.fileno(): role for role, s in caps.items()}
    while True:
        left = end - time.monotonic()
        ready, _, _ = select.select(list(caps.values()), [], [], max(0, min(left, wait)))
        if not ready and (until_idle or left <= 0):
            return
        for s in ready:
            while True:
                try:
                    frame = recv_frame(s)
                except BlockingIOError:
                    break
                if frame is not None and HELLO not in frame:
                    got[by_fd[s.fileno()]].append(frame)


@contextmanager
def lab_for(kind: str) -> Iterator[Topology]:
    """The lab, built again (up to three times) if building failed: with many
    labs at once an `ip netns exec` can fail on its own (a failed lab removes
    what it made)."""
    for attempt in range(3):
        try:
            topo = build(kind)
            break
        except subprocess.CalledProcessError as e:
            print(f"lab build failed ({e.cmd}): {e.stderr}", file=sys.stderr)
            if attempt == 2:
                raise
            time.sleep(2)
    try:
        yield topo
    finally:
        topo.lab.close()
