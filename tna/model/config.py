"""The kernel's configuration as TNA sees it: pure data, no I/O.

Netlink messages (pyroute2 nlmsg objects, live or decoded from a recording)
go in through Model.apply(); dataclasses come out.  Everything the planner
and the map synchroniser decide is a function of this model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tna.bpf.abi import TNA_CT_ACCT, TNA_CT_CSUM, TNA_CT_TCP_LIBERAL, TNA_CT_TCP_LOOSE, TNA_MP_GUARD_V4, TNA_MP_GUARD_V6
from tna.model.firewall import Firewall

AF_INET = 2
AF_INET6 = 10
AF_BRIDGE = 7

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80
ARPHRD_ETHER = 1

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29

NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY = 0x01, 0x02, 0x04, 0x08
NUD_PROBE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x10, 0x20, 0x40, 0x80
NTF_EXT_LEARNED = 0x10
NTF_EXT_LOCKED = 0x1   # NDA_FLAGS_EXT: an entry a locked port holds back (MAB)
BR_STATE_FORWARDING = 3
USER_HZ = 100          # bridge times (ageing_time) are in clock_t


class NlMsg(Protocol):
    """What we use of a pyroute2 message."""

    def get(self, key: str, default: Any = None) -> Any: ...
    def __getitem__(self, key: str) -> Any: ...


@dataclass(frozen=True)
class Bridge:
    """A bridge device's own settings (IFLA_INFO_DATA)."""

    vlan_filtering: bool = False
    ageing_cs: int = 30000          # ageing_time in centiseconds (clock_t)
    stp: bool = False               # STP on: a topology change shortens ageing to forward_delay
    forward_delay_cs: int = 1500
    nf_call_iptables: bool = False  # per-bridge br_netfilter switches (ORed with the sysctls)
    nf_call_ip6tables: bool = False


    @property
    def hold_cs(self) -> int:
        """The shortest time a learned entry may live: with STP, a topology
        change ages entries after forward_delay (no netlink event says when)."""
        return min(self.ageing_cs, self.forward_delay_cs) if self.stp else self.ageing_cs


@dataclass(frozen=True)
class Port:
    """A bridge port's state and policy (IFLA_BRPORT_*)."""

    state: int = BR_STATE_FORWARDING
    learning: bool = True
    hairpin: bool = False
    isolated: bool = False
    locked: bool = False
    mab: bool = False
    neigh_suppress: bool = False


@dataclass(frozen=True)
class FdbEntry:
    """One bridge FDB entry: (bridge, vid, mac) -> port."""

    bridge: int
    vid: int
    mac: str
    port: int
    local: bool      # the bridge's own address (permanent, or on the bridge device)
    dynamic: bool    # learned: ages out unless frames through the kernel renew it


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None          # IFLA_INFO_KIND; None for a physical NIC
    mac: str | None
    mtu: int
    flags: int
    arptype: int
    master: int | None = None
    qdisc: str | None = None         # root qdisc kind (IFLA_QDISC)
    bridge: Bridge | None = None     # kind == "bridge"
    port: Port | None = None         # enslaved to a bridge

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    @property
    def ethernet(self) -> bool:
        return self.arptype == ARPHRD_ETHER and not self.flags & IFF_NOARP and self.mac is not None


@dataclass(frozen=True)
class Addr:
    index: int
    family: int
    address: str
    prefixlen: int


@dataclass(frozen=True)
class Route:
    family: int
    table: int
    dst: str
    dst_len: int
    type: int
    oif: int | None
    gateway: str | None
    multipath: int = 0  # number of next hops when > 1
    mtu: int = 0        # the route's own MTU metric (RTAX_MTU), 0 if none


@dataclass(frozen=True)
class Neigh:
    index: int
    family: int
    dst: str
    lladdr: str | None
    state: int


@dataclass(frozen=True)
class XdpXmit:
    """Whether a device accepts XDP-redirected frames now (netdev
    xdp-features NDO_XMIT): a dump entry or a change notification."""

    ifindex: int
    capable: bool


@dataclass(frozen=True)
class TcFilters:
    """tc filters on a device's clsact hooks that are not TNA's: on egress an
    XDP redirect would bypass them, on ingress TNA's redirect would."""

    ifindex: int
    egress: bool
    ingress: bool


@dataclass(frozen=True)
class Sysctls:
    ipv4_forward: bool = False
    ipv6_forward: bool = False
    ipv4_mp_hash_policy: int = 0  # net.ipv4.fib_multipath_hash_policy
    ipv6_mp_hash_policy: int = 0  # net.ipv6.fib_multipath_hash_policy
    # br_netfilter (net.bridge.*): bridged IP goes through iptables hooks
    br_nf_iptables: bool = False
    br_nf_ip6tables: bool = False
    br_nf_vlan: bool = False      # bridge-nf-filter-vlan-tagged
    br_nf_pppoe: bool = False     # bridge-nf-filter-pppoe-tagged
    # conntrack (net.netfilter.*), what the fast path repeats for a tracked family
    ct_checksum: bool = True      # nf_conntrack_checksum: bad L4 checksums are INVALID
    ct_acct: bool = False         # nf_conntrack_acct: per-connection packet counters
    ct_tcp_loose: bool = True     # nf_conntrack_tcp_loose: pick up established flows
    ct_timeout_tcp: int = 432000  # s, nf_conntrack_tcp_timeout_established
    ct_timeout_udp: int = 120     # s, nf_conntrack_udp_timeout_stream
    ct_tcp_liberal: bool = False  # nf_conntrack_tcp_be_liberal: no TCP segment is out of window
    ct_tcp_max_retrans: int = 3   # nf_conntrack_tcp_max_retrans
    ct_timeout_unack: int = 300   # s, nf_conntrack_tcp_timeout_unacknowledged
    ct_timeout_retrans: int = 300  # s, nf_conntrack_tcp_timeout_max_retrans

    @property
    def forwarding(self) -> bool:
        return self.ipv4_forward or self.ipv6_forward


@dataclass
class Model:
    links: dict[int, Link] = field(default_factory=dict)
    addrs: set[Addr] = field(default_factory=set)
    routes: set[Route] = field(default_factory=set)
    neighs: dict[tuple[int, int, str], Neigh] = field(default_factory=dict)
    fdb: dict[tuple[int, int, str], FdbEntry] = field(default_factory=dict)
    sysctls: Sysctls = field(default_factory=Sysctls)
    # Does the device accept XDP-redirected frames now (netdev xdp-features
    # NDO_XMIT)?  From XdpXmit events; the planner only reads it.
    xdp_xmit: dict[int, bool] = field(default_factory=dict)
    # Devices with others' clsact egress / ingress filters (TcFilters facts).
    egress_filters: set[int] = field(default_factory=set)
    ingress_filters: set[int] = field(default_factory=set)
    # Effective IPv4 rp_filter per ifindex: max(conf.all, conf.<dev>) (/proc/sys).
    rp_filter: dict[int, int] = field(default_factory=dict)
    # The FORWARD chains the fast path evaluates (None: no filtering rules).
    firewall: Firewall | None = None

    def apply(self, msg: NlMsg | XdpXmit | TcFilters) -> bool:
        """Apply one netlink message (or a fact the watcher derived from
        netlink); True if the model changed."""
        if isinstance(msg, XdpXmit):
            changed = self.xdp_xmit.get(msg.ifindex) != msg.capable
            self.xdp_xmit[msg.ifindex] = msg.capable
            return changed
        if isinstance(msg, TcFilters):
            changed = _apply_set(self.egress_filters, msg.ifindex, msg.egress)
            return _apply_set(self.ingress_filters, msg.ifindex, msg.ingress) or changed
        kind = msg["header"]["type"]
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            if msg["family"] == AF_BRIDGE:  # a port's bridge view, not the device
                return self._apply_port(msg, kind == RTM_NEWLINK)
            return self._apply_link(msg, kind == RTM_NEWLINK)
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            return _apply_set(self.addrs, addr_from_msg(msg), kind == RTM_NEWADDR)
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            route = route_from_msg(msg)
            return route is not None and _apply_set(self.routes, route, kind == RTM_NEWROUTE)
        if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
            if msg["family"] == AF_BRIDGE:
                return self._apply_fdb(msg, kind == RTM_NEWNEIGH)
            return self._apply_neigh(msg, kind == RTM_NEWNEIGH)
        return False

    def _apply_link(self, msg: NlMsg, new: bool) -> bool:
        link = link_from_msg(msg)
        old = self.links.get(link.index)
        if not new:
            if old is None:
                return False
            del self.links[link.index]
            self.addrs = {a for a in self.addrs if a.index != link.index}
            self.neighs = {k: n for k, n in self.neighs.items() if n.index != link.index}
            self.fdb = {k: e for k, e in self.fdb.items() if link.index not in (e.port, e.bridge)}
            self.xdp_xmit.pop(link.index, None)
            self.egress_filters.discard(link.index)
            self.ingress_filters.discard(link.index)
            self.rp_filter.pop(link.index, None)
            return True
        if old is not None and link.qdisc is None:
            link = replace(link, qdisc=old.qdisc)  # not every RTM_NEWLINK carries it
        if link.master is None:
            link = replace(link, port=None)
        elif link.port is None and old is not None and old.master == link.master:
            link = replace(link, port=old.port)
        self.links[link.index] = link
        return old != link

    def _apply_port(self, msg: NlMsg, new: bool) -> bool:
        """AF_BRIDGE link messages: the only notification of an STP state
        or port flag change; RTM_DELLINK means "no longer a port"."""
        old = self.links.get(msg["index"])
        if old is None:
            return False
        info = msg.get("IFLA_PROTINFO")
        port = port_from_attrs(info) if new and info is not None else None
        if new and port is None:
            return False
        link = replace(old, port=port)
        self.links[old.index] = link
        return link != old

    def _apply_fdb(self, msg: NlMsg, new: bool) -> bool:
        entry = fdb_from_msg(msg)
        if entry is None:
            return False
        key = (entry.bridge, entry.vid, entry.mac)
        if new:
            changed = self.fdb.get(key) != entry
            self.fdb[key] = entry
            return changed
        return self.fdb.pop(key, None) is not None

    def _apply_neigh(self, msg: NlMsg, new: bool) -> bool:
        neigh = neigh_from_msg(msg)
        if neigh is None:
            return False
        key = (neigh.index, neigh.family, neigh.dst)
        if new and neigh.state not in (NUD_FAILED,):
            changed = self.neighs.get(key) != neigh
            self.neighs[key] = neigh
            return changed
        return self.neighs.pop(key, None) is not None

    def ct_config(self) -> tuple[int, int, int, int, int, int]:
        """tna_config's (ct_flags, ct_timeout_tcp, ct_timeout_udp,
        ct_timeout_unack, ct_timeout_retrans, ct_max_retrans): the conntrack
        behaviour the fast path repeats (timeouts in ms)."""
        sc = self.sysctls
        flags = ((TNA_CT_CSUM if sc.ct_checksum else 0) | (TNA_CT_ACCT if sc.ct_acct else 0)
                 | (TNA_CT_TCP_LOOSE if sc.ct_tcp_loose else 0) | (TNA_CT_TCP_LIBERAL if sc.ct_tcp_liberal else 0))

        def ms(s: int) -> int:
            return min(s * 1000, 0xFFFFFFFF)
        return (flags, ms(sc.ct_timeout_tcp), ms(sc.ct_timeout_udp), ms(sc.ct_timeout_unack),
                ms(sc.ct_timeout_retrans), sc.ct_tcp_max_retrans)

    def set_sysctls(self, sysctls: Sysctls) -> bool:
        changed = sysctls != self.sysctls
        self.sysctls = sysctls
        return changed

    def set_firewall(self, fw: Firewall | None) -> bool:
        changed = fw != self.firewall
        self.firewall = fw
        return changed

    def set_rp_filter(self, index: int, mode: int) -> bool:
        changed = self.rp_filter.get(index, 0) != mode
        self.rp_filter[index] = mode
        return changed

    def has_ipv4(self, index: int) -> bool:
        return any(a.index == index and a.family == AF_INET for a in self.addrs)

    def local_ipv4(self) -> list[str]:
        """This namespace's IPv4 addresses but loopback ones (127/8 sources
        are martians anyway)."""
        return sorted({a.address for a in self.addrs if a.family == AF_INET and not a.address.startswith("127.")})

    def local_ipv6(self) -> list[str]:
        """This namespace's global IPv6 addresses (what early drop compares a
        destination with; loopback and link-local never reach it)."""
        return sorted({a.address for a in self.addrs if a.family == AF_INET6 and a.address != "::1"
                       and not a.address.lower().startswith("fe80")})

    def multipath_guard(self) -> int:
        """TNA_MP_GUARD_* bits: families whose multipath choice may depend on
        a hash the packet already carries (L4 policy + multipath routes)."""
        guard = 0
        for family, policy, bit in ((AF_INET, self.sysctls.ipv4_mp_hash_policy, TNA_MP_GUARD_V4),
                                    (AF_INET6, self.sysctls.ipv6_mp_hash_policy, TNA_MP_GUARD_V6)):
            if policy != 0 and any(r.family == family and r.multipath > 1 for r in self.routes):
                guard |= bit
        return guard

    def route_mtu(self, family: int) -> int:
        """Smallest route MTU metric in family, 0 if no route sets one."""
        return min((r.mtu for r in self.routes if r.family == family and r.mtu), default=0)

    def stale_neighbours(self) -> set[Neigh]:
        """Neighbours the kernel would re-validate on their next use."""
        return {n for n in self.neighs.values() if n.state == NUD_STALE}


def _apply_set(items: set, item: object, add: bool) -> bool:
    if add:
        if item in items:
            return False
        items.add(item)
        return True
    if item not in items:
        return False
    items.discard(item)
    return True


def port_from_attrs(a: NlMsg) -> Port:
    """IFLA_BRPORT_* from IFLA_INFO_SLAVE_DATA or (AF_BRIDGE) IFLA_PROTINFO."""
    def flag(name: str, default: bool = False) -> bool:
        v = a.get(name)
        return default if v is None else bool(v)

    state = a.get("IFLA_BRPORT_STATE")
    return Port(
        state=BR_STATE_FORWARDING if state is None else state,
        learning=flag("IFLA_BRPORT_LEARNING", True),
        hairpin=flag("IFLA_BRPORT_MODE"),
        isolated=flag("IFLA_BRPORT_ISOLATED"),
        locked=flag("IFLA_BRPORT_LOCKED"),
        mab=flag("IFLA_BRPORT_MAB"),
        neigh_suppress=flag("IFLA_BRPORT_NEIGH_SUPPRESS") or flag("IFLA_BRPORT_NEIGH_VLAN_SUPPRESS"),
    )


def bridge_from_attrs(d: NlMsg) -> Bridge:
    ageing = d.get("IFLA_BR_AGEING_TIME")
    return Bridge(
        vlan_filtering=bool(d.get("IFLA_BR_VLAN_FILTERING")),
        ageing_cs=30000 if ageing is None else ageing,
        stp=bool(d.get("IFLA_BR_STP_STATE")),
        forward_delay_cs=d.get("IFLA_BR_FORWARD_DELAY") or 1500,
        nf_call_iptables=bool(d.get("IFLA_BR_NF_CALL_IPTABLES")),
        nf_call_ip6tables=bool(d.get("IFLA_BR_NF_CALL_IP6TABLES")),
    )


def link_from_msg(msg: NlMsg) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info is not None else None
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    slave = info.get("IFLA_INFO_SLAVE_DATA") if info is not None else None
    is_port = info is not None and info.get("IFLA_INFO_SLAVE_KIND") == "bridge" and slave is not None
    return Link(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME") or f"if{msg['index']}",
        kind=kind,
        mac=msg.get("IFLA_ADDRESS"),
        mtu=msg.get("IFLA_MTU") or 0,
        flags=msg["flags"],
        arptype=msg["ifi_type"],
        master=msg.get("IFLA_MASTER") or None,
        qdisc=msg.get("IFLA_QDISC"),
        bridge=bridge_from_attrs(data) if kind == "bridge" and data is not None else None,
        port=port_from_attrs(slave) if is_port else None,
    )


def addr_from_msg(msg: NlMsg) -> Addr:
    return Addr(msg["index"], msg["family"], msg.get("IFA_ADDRESS") or "", msg["prefixlen"])


def route_from_msg(msg: NlMsg) -> Route | None:
    if msg["family"] not in (AF_INET, AF_INET6):
        return None
    mp = msg.get("RTA_MULTIPATH") or []
    return Route(
        family=msg["family"],
        table=msg.get("RTA_TABLE") or msg["table"],
        dst=msg.get("RTA_DST") or ("0.0.0.0" if msg["family"] == AF_INET else "::"),
        dst_len=msg["dst_len"],
        type=msg["type"],
        oif=msg.get("RTA_OIF"),
        gateway=msg.get("RTA_GATEWAY"),
        multipath=len(mp),
        mtu=(metrics.get("RTAX_MTU") or 0) if (metrics := msg.get("RTA_METRICS")) is not None else 0,
    )


def fdb_from_msg(msg: NlMsg) -> FdbEntry | None:
    """An entry of a bridge's FDB (the bridge reports its own with NDA_MASTER);
    None for a device's unicast/multicast address lists ("self" entries),
    which nothing forwards by."""
    port, mac, bridge = msg["ifindex"], msg.get("NDA_LLADDR"), msg.get("NDA_MASTER")
    if bridge is None or mac is None or (msg.get("NDA_FLAGS_EXT") or 0) & NTF_EXT_LOCKED:
        return None
    state = msg["state"]
    local = bool(state & NUD_PERMANENT) or port == bridge
    dynamic = not local and not state & NUD_NOARP and not msg["flags"] & NTF_EXT_LEARNED
    return FdbEntry(bridge, msg.get("NDA_VLAN") or 0, mac.lower(), port, local, dynamic)


def neigh_from_msg(msg: NlMsg) -> Neigh | None:
    if msg["family"] not in (AF_INET, AF_INET6):
        return None
    return Neigh(msg["ifindex"], msg["family"], msg.get("NDA_DST") or "", msg.get("NDA_LLADDR"), msg["state"])
