"""The router module, loaded for ingress r-h1 of a RouterLab and run with
BPF_PROG_RUN: frame in -> (verdict, reason, frame out).  The kernel's real
FIB and neighbour table of the lab answer bpf_fib_lookup()."""

from __future__ import annotations

import ctypes
import socket

from netns_labs.lab import RouterLab, in_netns
from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.deploy.datapath import iface_cfg, jiffies_hz, read_stats, renew
from tna.synth.compile import compile_source
from tna.synth.planner import IfacePlan
from tna.synth.render import render

VERDICTS = {
    "xdp": {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"},
    "tc": {0: "PASS", 2: "DROP", 7: "REDIRECT"},
}

# Extra state on r for the table: routes of every kind, an MTU-limited route,
# a next hop without a neighbour entry.
EXTRA_ROUTES = [
    ["ip", "route", "add", "blackhole", "203.0.113.0/26"],
    ["ip", "route", "add", "unreachable", "203.0.113.64/26"],
    ["ip", "route", "add", "prohibit", "203.0.113.128/26"],
    ["ip", "route", "add", "198.51.100.128/25", "dev", "r-h2", "mtu", "lock", "1400"],
    ["ip", "-6", "route", "add", "blackhole", "2001:db8:b1::/48"],
    ["ip", "-6", "route", "add", "unreachable", "2001:db8:b2::/48"],
    ["ip", "-6", "route", "add", "prohibit", "2001:db8:b3::/48"],
    ["ip", "-6", "route", "add", "2001:db8:3::/64", "via", "2001:db8:2::2", "mtu", "1400"],
]


LOCAL4 = ("192.0.2.1", "198.51.100.1")  # r's own IPv4 addresses


class RouterHarness:
    def __init__(self, lab: RouterLab, hook: str, flags: int = 0) -> None:
        self.lab, self.hook = lab, hook
        self.ifindex = lab.ifindex(lab.r, "r-h1")
        self.egress = lab.ifindex(lab.r, "r-h2")
        plan = IfacePlan(self.ifindex, "r-h1", hook, "test", ("router",), lab.r_h1_mac, flags)
        self.obj = bpf.BpfObject(str(compile_source(render(hook, ("router",)))))
        self.obj.set_initial_value(abi.SECTION_IFACE, iface_cfg(plan))
        with in_netns(lab.r):
            self.obj.load()
            self.prog = self.obj.program(abi.PROGRAM_NAME)
            u32 = ctypes.c_uint32
            self.obj.map(abi.MAP_DEVMAP).update(bytes(u32(self.egress)), bytes(u32(self.egress)))
            self.obj.map(abi.MAP_EGRESS).update(bytes(u32(self.egress)), bytes(abi.TnaEgress()))
        self.hz = jiffies_hz(self.obj.program(abi.RENEW_PROGRAM), self.obj.map(abi.MAP_STATE))
        self.set_state()

    def close(self) -> None:
        self.obj.close()

    def set_state(self, lease_s: float = 3600, pass_reason: int = 0, mp_guard: int = 0, stale: int = 0,
                  route_mtu: tuple[int, int] = (1400, 1400), local4: tuple[str, ...] = LOCAL4) -> None:
        """What the daemon would publish (route MTUs and addresses match the lab)."""
        cfg = abi.TnaConfig(lease_jiffies=int(lease_s * self.hz), pass_reason=pass_reason, mp_guard=mp_guard,
                            stale_count=stale, route_mtu4=route_mtu[0], route_mtu6=route_mtu[1],
                            local4_count=len(local4))
        for i, addr in enumerate(local4[:abi.LOCAL4_MAX]):
            cfg.local4[i] = int.from_bytes(socket.inet_aton(addr), "little")
        renew(self.obj.program(abi.RENEW_PROGRAM), cfg)

    def mark_stale(self, ip: str) -> bytes:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        key = abi.TnaNeighKey(ifindex=self.egress, family=family)
        packed = socket.inet_pton(family, ip)
        ctypes.memmove(key.addr, packed, len(packed))
        self.obj.map(abi.MAP_STALE).update(bytes(key), b"\x01")
        self.set_state(stale=1)
        return bytes(key)

    def stale_entries(self) -> int:
        return len(list(self.obj.map(abi.MAP_STALE).keys()))

    def run(self, frame: bytes) -> tuple[str, str, bytes]:
        stats = self.obj.map(abi.MAP_STATS)
        before = read_stats(stats)
        if self.hook == "xdp":
            # the kernel wants data_end == the frame length when a ctx is given
            ctx: ctypes.Structure = bpf.XdpMd(data_end=len(frame), ingress_ifindex=self.ifindex)
        else:
            ctx = bpf.SkBuff(ifindex=self.ifindex)
        with in_netns(self.lab.r):
            ret, out, _ = self.prog.test_run(frame, ctx=ctx)
        after = read_stats(stats)
        moved = [r for r in after if after[r][0] != before.get(r, (0, 0))[0]]
        assert len(moved) == 1, (before, after)
        return VERDICTS[self.hook][ret], moved[0], out


def pseudo_fold(pkt) -> int:
    """The folded, non-inverted pseudo-header sum a stack leaves in the
    TCP/UDP checksum field under CHECKSUM_PARTIAL (what a NIC completes)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    if IP in pkt:
        ip = pkt[IP]
        l4len = ip.len - ip.ihl * 4
        words = [socket.inet_aton(ip.src), socket.inet_aton(ip.dst)]
        proto = ip.proto
    else:
        ip = pkt[IPv6]
        l4len = ip.plen
        words = [socket.inet_pton(socket.AF_INET6, ip.src), socket.inet_pton(socket.AF_INET6, ip.dst)]
        proto = ip.nh
    data = b"".join(words) + proto.to_bytes(2, "big") + l4len.to_bytes(2, "big")
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s
