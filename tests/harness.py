"""TNA programs loaded for one ingress interface of a lab and run with
BPF_PROG_RUN: frame in -> (verdict, reason, frame out).  The kernel's real
FIB and neighbour table of the lab answer bpf_fib_lookup(); the harness
writes the maps the daemon would.

  RouterHarness    the router module on r-h1 of a RouterLab
  FirewallHarness  the router and firewall modules on r-h1, for one rule set
  BridgeHarness    the bridge (+fdb, router) modules on b-h1 of a routed BridgeLab
"""

from __future__ import annotations

import ctypes
import socket
from collections import Counter

from netns_labs.lab import BridgeLab, Lab, RouterLab, in_netns
from netns_labs.progs import build
from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.bpf.testrun import SkBuff, XdpMd, test_run
from tna.deploy.counters import read_counters, read_stats
from tna.deploy.datapath import iface_cfg
from tna.deploy.lease import jiffies_hz, renew, set_fw_hold
from tna.deploy.mapwrite import load_with_sets
from tna.model.firewall import Firewall
from tna.model.fwdiff import HeldFlow
from tna.model.ipset import IpSet
from tna.model.iptables import Table, parse_save
from tna.snapshot import plan_filtering
from tna.synth import setgen
from tna.synth.compile import compile_source
from tna.synth.fwgen import all_set_entries, rule_refs
from tna.synth.render import render

VERDICTS = {
    "xdp": {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"},
    "tc": {0xFFFFFFFF: "PASS", 2: "DROP", 7: "REDIRECT"},  # TC_ACT_UNSPEC: tcx's next
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
LOCAL6 = ("2001:db8:1::1", "2001:db8:2::1")
CT_TIMEOUT_MS = 120_000  # what a fast-pathed packet refreshes a connection's timeout to
CT_UNREPLIED_MS = 45_000  # ... and a UDP entry's that has seen no reply (nf_conntrack_udp_timeout)


class ProgHarness:
    """One program instance (its own maps) for ingress dev in namespace ns."""

    def __init__(self, lab: Lab, ns: str, dev: str, hook: str, modules: tuple[str, ...], mac: str,
                 flags: int, egress: list[int], local4: tuple[str, ...], port_slot: int = 0,
                 firewall: Firewall | None = None, local6: tuple[str, ...] = (),
                 ipsets: dict[str, IpSet] | None = None) -> None:
        self.lab, self.ns, self.hook, self.local4, self.local6 = lab, ns, hook, local4, local6
        self.ifindex = lab.ifindex(ns, dev)
        self.obj = bpf.BpfObject(str(compile_source(render(hook, modules, firewall=firewall))))
        self.obj.set_initial_value(abi.SECTION_IFACE, iface_cfg(self.ifindex, mac, flags, port_slot))
        # sized and filled as the daemon does (Datapath._load)
        self.obj.set_max_entries(abi.MAP_FW_RULES, max(1, len(rule_refs(firewall))))
        with in_netns(ns):
            shapes = firewall.ipsets if firewall else ()
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in lab.ipr(ns).get_links()}
            members = setgen.all_entries(shapes, ipsets or {}, names)
            self.sets = load_with_sets(self.obj, {**all_set_entries(firewall), **members}, None,
                                       setgen.map_sizes(shapes))
            self.prog = self.obj.program(abi.PROGRAM_NAME)
            u32 = ctypes.c_uint32
            for i in egress:
                self.obj.map(abi.MAP_DEVMAP).update(bytes(u32(i)), bytes(u32(i)))
                self.obj.map(abi.MAP_EGRESS).update(bytes(u32(i)), bytes(abi.TnaEgress()))
        self.hz = jiffies_hz(self.obj.program(abi.RENEW_PROGRAM), self.obj.map(abi.MAP_STATE))
        self.set_state()

    def close(self) -> None:
        for m in self.sets.values():
            m.close()
        self.obj.close()

    def set_state(self, lease_s: float = 3600, pass_reason: int = 0, mp_guard: int = 0, stale: int = 0,
                  route_mtu: tuple[int, int] = (1400, 1400), local4: tuple[str, ...] | None = None,
                  ct_flags: int = 0, ct_timeout_ms: int = CT_TIMEOUT_MS, hz: int = 0,
                  pass_cache_s: float = 0, xfrm: int = 0, ct_timeout_unack_ms: int = 0,
                  held: tuple[HeldFlow, ...] = ()) -> None:
        """What the daemon would publish (route MTUs and addresses match the lab;
        hz: the jiffies per second it says, 0 for the measured; pass_cache_s 0:
        the pass cache off; xfrm: tna_config.xfrm_families)."""
        local4, local6 = self.local4 if local4 is None else local4, self.local6
        cfg = abi.TnaConfig(lease_jiffies=int(lease_s * self.hz), pass_reason=pass_reason, mp_guard=mp_guard,
                            stale_count=stale, route_mtu4=route_mtu[0], route_mtu6=route_mtu[1],
                            local4_count=len(local4), local6_count=len(local6), ct_flags=ct_flags,
                            ct_timeout_tcp=ct_timeout_ms, ct_timeout_udp=ct_timeout_ms, hz=hz or self.hz,
                            ct_timeout_udp_unreplied=CT_UNREPLIED_MS, ct_timeout_unack=ct_timeout_unack_ms,
                            pass_cache_jiffies=int(pass_cache_s * self.hz), xfrm_families=xfrm)
        for i, addr in enumerate(local4[:abi.LOCAL4_MAX]):
            cfg.local4[i] = int.from_bytes(socket.inet_aton(addr), "little")
        packed = b"".join(socket.inet_pton(socket.AF_INET6, a) for a in local6[:abi.LOCAL6_MAX])
        ctypes.memmove(cfg.local6, packed, len(packed))
        set_fw_hold(cfg, held)
        renew(self.obj.program(abi.RENEW_PROGRAM), cfg)

    def now(self) -> int:
        """jiffies, as the datapath reads them (renewed_at of a fresh renewal)."""
        self.set_state()
        raw = self.obj.map(abi.MAP_STATE).lookup(b"\0\0\0\0")
        assert isinstance(raw, bytes)
        return abi.TnaState.from_buffer_copy(raw).renewed_at

    def run(self, frame: bytes, mark: int = 0) -> tuple[str, str, bytes]:
        """mark: the skb's (TC; an XDP frame has none)."""
        stats = self.obj.map(abi.MAP_STATS)
        before = read_stats(stats)
        if self.hook == "xdp":
            # the kernel wants data_end == the frame length when a ctx is given
            ctx: ctypes.Structure = XdpMd(data_end=len(frame), ingress_ifindex=self.ifindex)
        else:
            ctx = SkBuff(ifindex=self.ifindex, mark=mark)
        with in_netns(self.ns):
            ret, out, _ = test_run(self.prog, frame, ctx=ctx)
        after = read_stats(stats)
        moved = [r for r in after if after[r][0] != before.get(r, (0, 0))[0]]
        assert len(moved) == 1, (before, after)
        return VERDICTS[self.hook][ret], moved[0], out


class RouterHarness(ProgHarness):
    def __init__(self, lab: RouterLab, hook: str, flags: int = 0, firewall: Firewall | None = None,
                 ipsets: dict[str, IpSet] | None = None) -> None:
        self.egress = lab.ifindex(lab.r, "r-h2")
        modules = ("firewall", "router") if firewall else ("router",)
        super().__init__(lab, lab.r, "r-h1", hook, modules, lab.r_h1_mac, flags, [self.egress], LOCAL4,
                         firewall=firewall, local6=LOCAL6, ipsets=ipsets)

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


class FirewallHarness(RouterHarness):
    """The router and firewall modules on r-h1, compiled for the filter
    tables of rules4/rules6 (iptables-save text, or tables) and the ipsets they match
    on as the daemon plans them, tna_fw_ifaces written for r-h1 and r-h2."""

    def __init__(self, lab: RouterLab, hook: str, rules4: str | dict[str, Table], rules6: str | dict[str, Table] = "",
                 ipsets: dict[str, IpSet] | None = None) -> None:
        fw, why = plan_filtering({v: parse_save(r) if isinstance(r, str) else r for v, r in ((4, rules4), (6, rules6))},
                                 ipsets or {})
        assert fw is not None, why
        self.fw, self.refs = fw, {r.id: r for r in rule_refs(fw)}
        super().__init__(lab, hook, firewall=fw, ipsets=ipsets)
        names = {lab.ifindex(lab.r, d): d for d in ("r-h1", "r-h2")}
        for i, mask in fw.iface_masks(names).items():
            self.obj.map(abi.MAP_FW_IFACES).update(bytes(ctypes.c_uint32(i)), bytes(ctypes.c_uint64(mask)))

    def run_fw(self, frame: bytes, by_table: bool = False, mark: int = 0) -> tuple[str, str, bytes, Counter[tuple]]:
        """run(), and the rules the program counted for the frame: (family,
        chain, rule index or 0 for the policy) -> packets; by_table: (family,
        table, chain, index)."""
        counters = self.obj.map(abi.MAP_FW_RULES)
        before = read_counters(counters)
        verdict, reason, out = self.run(frame, mark)
        after = read_counters(counters)
        # iptables counts the IP length
        l3len = int.from_bytes(frame[16:18], "big") if frame[12:14] == b"\x08\x00" \
            else 40 + int.from_bytes(frame[18:20], "big")
        path: Counter[tuple] = Counter()
        for i, (pkts, byts) in after.items():
            old = before.get(i, (0, 0))
            if pkts != old[0]:
                assert byts - old[1] == (pkts - old[0]) * l3len, (self.refs[i], byts - old[1], l3len)
                ref = self.refs[i]
                key = (ref.family, ref.table, ref.chain, ref.index) if by_table else (ref.family, ref.chain, ref.index)
                path[key] = pkts - old[0]
        return verdict, reason, out, path


class BridgeHarness(ProgHarness):
    """Ingress b-h1 of a routed BridgeLab; ports, FDB and L3 bridges are
    written by the test through port()/fdb()/l3()."""

    def __init__(self, lab: BridgeLab, hook: str, flags: int = 0) -> None:
        self.blab = lab
        self.idx = {d: lab.ifindex(lab.b, d) for d in ("br0", "br1", "b-h1", "b-h2", "b-h3", "b-h4", "b-h5")}
        egress = [self.idx[d] for d in ("b-h1", "b-h2", "b-h3", "b-h4", "b-h5")]
        super().__init__(lab, lab.b, "b-h1", hook, ("fdb", "bridge", "router"), lab.mac(lab.b, "b-h1"),
                         flags, egress, ("192.0.2.1", "198.51.100.1", "203.0.113.1"), self.slot("b-h1"))

    @staticmethod
    def slot(dev: str) -> int:
        """Fixed tna_ports slots: b-hN at N."""
        return int(dev[3:]) if dev.startswith("b-h") else 0

    def port(self, dev: str, flags: int | None = None, bridge: str = "br0", mtu: int = 1500,
             refresh_jiffies: int = 1 << 30) -> None:
        """A tna_ports entry (flags default: forwarding)."""
        flags = abi.PORT_FLAGS["FORWARDING"] if flags is None else flags
        br = abi.TnaIfaceCfg.from_buffer_copy(iface_cfg(self.idx[bridge], self.blab.mac(self.blab.b, bridge), 0))
        value = abi.TnaPort(ifindex=self.idx[dev], flags=flags, mtu=mtu, refresh_jiffies=refresh_jiffies, br=br)
        self.obj.map(abi.MAP_PORTS).update(bytes(ctypes.c_uint32(self.slot(dev))), bytes(value))

    def unport(self, dev: str) -> None:
        self.obj.map(abi.MAP_PORTS).update(bytes(ctypes.c_uint32(self.slot(dev))), bytes(abi.TnaPort()))

    def fdb_key(self, mac: str, bridge: str = "br0") -> bytes:
        key = abi.TnaFdbKey(bridge=self.idx[bridge])
        key.mac[:] = bytes.fromhex(mac.replace(":", ""))
        return bytes(key)

    def fdb(self, mac: str, dev: str, bridge: str = "br0", flags: int = 0, refreshed: int = 0) -> None:
        value = abi.TnaFdb(port=self.idx[dev], port_slot=self.slot(dev), flags=flags, refreshed=refreshed)
        self.obj.map(abi.MAP_FDB).update(self.fdb_key(mac, bridge), bytes(value))

    def fdb_entry(self, mac: str, bridge: str = "br0") -> abi.TnaFdb | None:
        raw = self.obj.map(abi.MAP_FDB).lookup(self.fdb_key(mac, bridge))
        return None if raw is None else abi.TnaFdb.from_buffer_copy(raw)

    def unfdb(self, mac: str, bridge: str = "br0") -> None:
        self.obj.map(abi.MAP_FDB).delete(self.fdb_key(mac, bridge))

    def l3(self, bridge: str, flags: int = abi.TNA_IF_L2_EGRESS) -> None:
        i = self.idx[bridge]
        value = iface_cfg(i, self.blab.mac(self.blab.b, bridge), flags)
        self.obj.map(abi.MAP_L3BR).update(bytes(ctypes.c_uint32(i)), value)


class CtProbe:
    """netns_labs/bpf/ct_probe.c: the conntrack entry of an IPv4/UDP frame's
    flow in namespace ns, read exactly (ctnetlink rounds to seconds)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.obj = bpf.BpfObject(str(build("ct_probe")))
        self.obj.load()

    def __call__(self, frame: bytes) -> tuple[int, int]:
        """(the entry's stored deadline, jiffies now), both as u32 jiffies."""
        with in_netns(self.ns):
            ret, _, _ = test_run(self.obj.program("ct_probe"), frame)
        assert ret == 2, "no conntrack entry"  # XDP_PASS
        raw = self.obj.map("probe_out").lookup(bytes(ctypes.c_uint32(0)))
        assert isinstance(raw, bytes)
        return int.from_bytes(raw[8:12], "little"), int.from_bytes(raw[:8], "little") & 0xFFFFFFFF

    def close(self) -> None:
        self.obj.close()


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
