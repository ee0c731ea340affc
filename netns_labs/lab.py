"""Network-namespace labs built with pyroute2.

Every lab creates its own uniquely named namespaces and removes them on
exit, even on failure (use it as a context manager).  Documentation address
ranges only: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2 import config as pyroute2_config

_REPO = Path(__file__).resolve().parent.parent
# pyroute2 forks to make a namespace's sockets and ends each child with
# SIGTERM: there it must end the child, never run a handler of the tests'
# (one that raises would unwind the parent's stack in the copy)
pyroute2_config.disable_mp_signal = True


@dataclass(frozen=True)
class Host:
    ns: str
    dev: str
    ip4: str
    ip6: str
    mac: str


class Lab:
    """A set of namespaces, veth pairs, addresses and routes."""

    repo = _REPO  # cwd for `python -m netns_labs...`/`tna` run inside the lab

    def __init__(self) -> None:
        self.tag = f"tna{os.getpid() % 100000}{secrets.token_hex(2)}"
        self._owner = os.getpid()
        self.namespaces: list[str] = []
        self._ipr: dict[str, IPRoute] = {}
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if os.getpid() != self._owner:
            # a forked copy unwinding the parent's stack (pyroute2 forks to
            # make namespaces and their sockets): the lab is the parent's
            return
        for p in self._procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for ipr in self._ipr.values():
            ipr.close()
        self._ipr.clear()
        for ns in self.namespaces:
            try:
                netns.remove(ns)
            except OSError:
                pass
        self.namespaces.clear()

    # --- building -------------------------------------------------------

    def add_ns(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        netns.create(name)
        self.namespaces.append(name)
        self.ipr(name).link("set", index=1, state="up")
        # no DAD: addresses are usable at once and tests never wait on it
        self.sysctl(name, "net.ipv6.conf.all.accept_dad", 0)
        self.sysctl(name, "net.ipv6.conf.default.accept_dad", 0)
        return name

    def ipr(self, ns: str) -> IPRoute:
        if ns not in self._ipr:
            self._ipr[ns] = IPRoute(netns=ns)
        return self._ipr[ns]

    def ifindex(self, ns: str, dev: str) -> int:
        return self.ipr(ns).link_lookup(ifname=dev)[0]

    def mac(self, ns: str, dev: str) -> str:
        return self.ipr(ns).get_links(self.ifindex(ns, dev))[0].get("IFLA_ADDRESS")

    def veth(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        """A veth pair, dev_a in ns_a and dev_b in ns_b, both up."""
        self.run(ns_a, ["ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b])
        self.ipr(ns_a).link("set", index=self.ifindex(ns_a, dev_a), state="up")
        self.ipr(ns_b).link("set", index=self.ifindex(ns_b, dev_b), state="up")

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        ip, plen = cidr.split("/")
        self.ipr(ns).addr("add", index=self.ifindex(ns, dev), address=ip, prefixlen=int(plen))

    def route(self, ns: str, dst: str, via: str | None = None, dev: str | None = None,
              multipath: Sequence[tuple[str, str]] = ()) -> None:
        cmd = ["ip", "route", "replace", dst]
        if via:
            cmd += ["via", via]
        if dev:
            cmd += ["dev", dev]
        for gw, nh_dev in multipath:
            cmd += ["nexthop", "via", gw, "dev", nh_dev]
        self.run(ns, cmd)

    def neigh(self, ns: str, dev: str, ip: str, mac: str) -> None:
        """A permanent neighbour, so ARP/ND timing never makes a test flaky."""
        self.run(ns, ["ip", "neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent"])

    def sysctl(self, ns: str, key: str, value: int | str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(ns, ["sh", "-c", f"echo {value} > {path}"])

    # --- running things -------------------------------------------------

    def run(self, ns: str, cmd: Sequence[str], check: bool = True, timeout: float = 60,
            **kw: object) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout,
                              capture_output=True, text=True, **kw)

    def popen(self, ns: str, cmd: Sequence[str], **kw: object) -> subprocess.Popen:
        """A background process in ns, killed (with its group) when the lab closes."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], start_new_session=True, **kw)
        self._procs.append(p)
        return p


class RouterLab(Lab):
    """h1 -- r -- h2, IPv4 and IPv6, r forwards.

        h1 [h1-r] 192.0.2.2/24     2001:db8:1::2/64
             |
        r  [r-h1] 192.0.2.1/24     2001:db8:1::1/64
           [r-h2] 198.51.100.1/24  2001:db8:2::1/64
             |
        h2 [h2-r] 198.51.100.2/24  2001:db8:2::2/64
    """

    def __init__(self, permanent_neighbours: bool = True) -> None:
        super().__init__()
        try:
            self._build(permanent_neighbours)
        except BaseException:
            self.close()
            raise

    def _build(self, permanent: bool) -> None:
        self.r = self.add_ns("r")
        h1, h2 = self.add_ns("h1"), self.add_ns("h2")
        self.veth(h1, "h1-r", self.r, "r-h1")
        self.veth(h2, "h2-r", self.r, "r-h2")
        self.addr(h1, "h1-r", "192.0.2.2/24")
        self.addr(h1, "h1-r", "2001:db8:1::2/64")
        self.addr(self.r, "r-h1", "192.0.2.1/24")
        self.addr(self.r, "r-h1", "2001:db8:1::1/64")
        self.addr(self.r, "r-h2", "198.51.100.1/24")
        self.addr(self.r, "r-h2", "2001:db8:2::1/64")
        self.addr(h2, "h2-r", "198.51.100.2/24")
        self.addr(h2, "h2-r", "2001:db8:2::2/64")
        self.route(h1, "default", via="192.0.2.1")
        self.route(h1, "default", via="2001:db8:1::1")
        self.route(h2, "default", via="198.51.100.1")
        self.route(h2, "default", via="2001:db8:2::1")
        self.sysctl(self.r, "net.ipv4.ip_forward", 1)
        self.sysctl(self.r, "net.ipv6.conf.all.forwarding", 1)
        self.h1 = Host(h1, "h1-r", "192.0.2.2", "2001:db8:1::2", self.mac(h1, "h1-r"))
        self.h2 = Host(h2, "h2-r", "198.51.100.2", "2001:db8:2::2", self.mac(h2, "h2-r"))
        self.r_h1_mac, self.r_h2_mac = self.mac(self.r, "r-h1"), self.mac(self.r, "r-h2")
        if permanent:
            self.neigh(self.r, "r-h1", self.h1.ip4, self.h1.mac)
            self.neigh(self.r, "r-h1", self.h1.ip6, self.h1.mac)
            self.neigh(self.r, "r-h2", self.h2.ip4, self.h2.mac)
            self.neigh(self.r, "r-h2", self.h2.ip6, self.h2.mac)
            self.neigh(h1, "h1-r", "192.0.2.1", self.r_h1_mac)
            self.neigh(h1, "h1-r", "2001:db8:1::1", self.r_h1_mac)
            self.neigh(h2, "h2-r", "198.51.100.1", self.r_h2_mac)
            self.neigh(h2, "h2-r", "2001:db8:2::1", self.r_h2_mac)


class EcmpLab(Lab):
    """h1 -- r == h2: r reaches 203.0.113.1 (on h2's loopback) over two
    equal-cost paths; fib_multipath_hash_policy 1 hashes on L4 ports.

        h1 [h1-r] 192.0.2.2/24 2001:db8:1::2/64 -- [r-h1] 192.0.2.1, 2001:db8:1::1
        r [r-a] 198.51.100.1/25,   2001:db8:a::1/64 -- [h2-a] 198.51.100.2,   2001:db8:a::2
        r [r-b] 198.51.100.129/25, 2001:db8:b::1/64 -- [h2-b] 198.51.100.130, 2001:db8:b::2
        h2 lo: 203.0.113.1/32, 2001:db8:f::1/128
    """

    DST4, DST6 = "203.0.113.1", "2001:db8:f::1"

    def __init__(self) -> None:
        super().__init__()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        self.r = self.add_ns("r")
        h1, h2 = self.add_ns("h1"), self.add_ns("h2")
        self.veth(h1, "h1-r", self.r, "r-h1")
        self.veth(h2, "h2-a", self.r, "r-a")
        self.veth(h2, "h2-b", self.r, "r-b")
        for ns, dev, cidr in [
            (h1, "h1-r", "192.0.2.2/24"), (h1, "h1-r", "2001:db8:1::2/64"),
            (self.r, "r-h1", "192.0.2.1/24"), (self.r, "r-h1", "2001:db8:1::1/64"),
            (self.r, "r-a", "198.51.100.1/25"), (self.r, "r-a", "2001:db8:a::1/64"),
            (self.r, "r-b", "198.51.100.129/25"), (self.r, "r-b", "2001:db8:b::1/64"),
            (h2, "h2-a", "198.51.100.2/25"), (h2, "h2-a", "2001:db8:a::2/64"),
            (h2, "h2-b", "198.51.100.130/25"), (h2, "h2-b", "2001:db8:b::2/64"),
            (h2, "lo", "203.0.113.1/32"), (h2, "lo", "2001:db8:f::1/128"),
        ]:
            self.addr(ns, dev, cidr)
        self.route(h1, "default", via="192.0.2.1")
        self.route(h1, "default", via="2001:db8:1::1")
        self.route(h2, "default", via="198.51.100.1")
        self.route(h2, "default", via="2001:db8:a::1")
        self.route(self.r, "203.0.113.0/24", multipath=[("198.51.100.2", "r-a"), ("198.51.100.130", "r-b")])
        self.route(self.r, "2001:db8:f::/64", multipath=[("2001:db8:a::2", "r-a"), ("2001:db8:b::2", "r-b")])
        self.sysctl(self.r, "net.ipv4.ip_forward", 1)
        self.sysctl(self.r, "net.ipv6.conf.all.forwarding", 1)
        self.sysctl(self.r, "net.ipv4.fib_multipath_hash_policy", 1)
        self.sysctl(self.r, "net.ipv6.fib_multipath_hash_policy", 1)
        self.h1, self.h2 = h1, h2
        for dev, peer in (("r-a", "h2-a"), ("r-b", "h2-b")):
            mac = self.mac(h2, peer)
            for ip in self.run(h2, ["ip", "-o", "addr", "show", "dev", peer]).stdout.split():
                if "/" in ip and (ip.startswith("198.51.100.") or ip.startswith("2001:db8:")):
                    self.neigh(self.r, dev, ip.split("/")[0], mac)
        self.neigh(self.r, "r-h1", "192.0.2.2", self.mac(h1, "h1-r"))
        self.neigh(self.r, "r-h1", "2001:db8:1::2", self.mac(h1, "h1-r"))


class BridgeLab(Lab):
    """Three hosts on bridge br0 in namespace b; with routed=True the bridge
    also routes (to a plain uplink and to a second bridge).

        h1 [h1-b] 192.0.2.11  2001:db8:1::11 -- [b-h1] -+
        h2 [h2-b] 192.0.2.12  2001:db8:1::12 -- [b-h2] -+- br0 (192.0.2.1, 2001:db8:1::1 if routed)
        h3 [h3-b] 192.0.2.13  2001:db8:1::13 -- [b-h3] -+
      routed:
        h4 [h4-b] 198.51.100.2 2001:db8:2::2 -- [b-h4] 198.51.100.1 2001:db8:2::1
        h5 [h5-b] 203.0.113.2  2001:db8:3::2 -- [b-h5] in br1 (203.0.113.1, 2001:db8:3::1)
    """

    def __init__(self, routed: bool = False, ageing_s: float = 300) -> None:
        super().__init__()
        try:
            self._build(routed, ageing_s)
        except BaseException:
            self.close()
            raise

    def _build(self, routed: bool, ageing_s: float) -> None:
        self.b = self.add_ns("b")
        self.bridge("br0", ageing_s)
        self.hosts = [self.host(i, "br0", f"192.0.2.{10 + i}/24", f"2001:db8:1::{10 + i}/64") for i in (1, 2, 3)]
        self.h1, self.h2, self.h3 = self.hosts
        if not routed:
            return
        self.sysctl(self.b, "net.ipv4.ip_forward", 1)
        self.sysctl(self.b, "net.ipv6.conf.all.forwarding", 1)
        self.addr(self.b, "br0", "192.0.2.1/24")
        self.addr(self.b, "br0", "2001:db8:1::1/64")
        self.h4 = self.host(4, None, "198.51.100.2/24", "2001:db8:2::2/64")
        self.addr(self.b, "b-h4", "198.51.100.1/24")
        self.addr(self.b, "b-h4", "2001:db8:2::1/64")
        self.bridge("br1", ageing_s)
        self.h5 = self.host(5, "br1", "203.0.113.2/24", "2001:db8:3::2/64")
        self.addr(self.b, "br1", "203.0.113.1/24")
        self.addr(self.b, "br1", "2001:db8:3::1/64")
        for h, gw4, gw6 in ((self.h1, "192.0.2.1", "2001:db8:1::1"), (self.h2, "192.0.2.1", "2001:db8:1::1"),
                            (self.h3, "192.0.2.1", "2001:db8:1::1"), (self.h4, "198.51.100.1", "2001:db8:2::1"),
                            (self.h5, "203.0.113.1", "2001:db8:3::1")):
            self.route(h.ns, "default", via=gw4)
            self.route(h.ns, "default", via=gw6)

    def bridge(self, name: str, ageing_s: float) -> None:
        self.run(self.b, ["ip", "link", "add", name, "type", "bridge", "ageing_time", str(int(ageing_s * 100))])
        self.run(self.b, ["ip", "link", "set", name, "up"])

    def host(self, i: int, bridge: str | None, cidr4: str, cidr6: str) -> Host:
        """Host h<i> on port b-h<i> (of bridge, or a plain routed port)."""
        ns, dev, port = self.add_ns(f"h{i}"), f"h{i}-b", f"b-h{i}"
        self.veth(ns, dev, self.b, port)
        if bridge is not None:
            self.run(self.b, ["ip", "link", "set", port, "master", bridge])
        self.addr(ns, dev, cidr4)
        self.addr(ns, dev, cidr6)
        return Host(ns, dev, cidr4.split("/")[0], cidr6.split("/")[0], self.mac(ns, dev))

    def fdb(self) -> dict[str, str]:
        """The kernel's FDB on the bridges: MAC -> port, learned or static entries only."""
        out = self.run(self.b, ["bridge", "fdb", "show"]).stdout
        entries = {}
        for line in out.splitlines():
            f = line.split()
            if "master" in f and "permanent" not in f:
                entries[f[0]] = f[2]
        return entries


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run this thread inside namespace ns for a while (BPF test runs and
    map writes resolve ifindexes in the caller's namespace)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        yield
    finally:
        _libc.setns(home, _CLONE_NEWNET)
        os.close(target)
        os.close(home)


def wait_for(pred, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll pred until it is true or timeout passes (bounded waits only)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def py(module: str, *args: str) -> list[str]:
    """`python -m module args` with this interpreter (run it with Lab.run/popen)."""
    return [sys.executable, "-m", module, *args]


def _server(lab: Lab, ns: str, *args: str) -> subprocess.Popen:
    """An xfer server in ns, returned once it listens."""
    server = lab.popen(ns, py("netns_labs.xfer", *args), stdout=subprocess.PIPE, text=True, cwd=_REPO)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    return server


def tcp_transfer(lab: Lab, src: str, dst: str, dst_ip: str, nbytes: int, port: int = 5201) -> tuple[str, str]:
    """Send nbytes over TCP from namespace src to dst_ip in namespace dst;
    (sha256 sent, sha256 received).  Raises if either side fails."""
    server = _server(lab, dst, "tcp-server", str(port))
    assert server.stdout is not None
    client = lab.run(src, py("netns_labs.xfer", "tcp-client", dst_ip, str(port), str(nbytes)),
                     cwd=_REPO, timeout=120)
    got = server.stdout.readline().split()
    server.wait(timeout=10)
    sent = client.stdout.split()
    assert int(sent[0]) == nbytes and int(got[0]) == nbytes, (sent, got)
    return sent[1], got[1]


def udp_echo(lab: Lab, src: str, dst: str, dst_ip: str, count: int, port: int = 5202) -> int:
    """Datagrams echoed back intact out of count."""
    server = _server(lab, dst, "udp-echo", str(port))
    out = lab.run(src, py("netns_labs.xfer", "udp-client", dst_ip, str(port), str(count)),
                  cwd=_REPO, timeout=120)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    return int(out.stdout.split()[0])


def ping(lab: Lab, ns: str, dst: str, count: int = 3, *opts: str) -> subprocess.CompletedProcess:
    return lab.run(ns, ["ping", "-c", str(count), "-i", "0.05", "-W", "1", *opts, dst], check=False, timeout=30)
