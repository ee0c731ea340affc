"""The kernel's configuration as TNA sees it: pure data, no I/O.

Facts (decoded from netlink by tna/netlink/decode.py, live or from a
recording) go in through Model.apply(); dataclasses come out.  Everything
the planner and the map synchroniser decide is a function of this model.
The model knows no netlink and no datapath encoding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from tna.model.firewall import Firewall
from tna.model.ipset import IpSet
from tna.model.routes import Dumped, Route, RouteDump, RouteTable

AF_INET = 2
AF_INET6 = 10
AF_BRIDGE = 7

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80
ARPHRD_ETHER = 1

NUD_STALE, NUD_FAILED = 0x04, 0x20
BR_STATE_FORWARDING = 3
USER_HZ = 100          # bridge times (ageing_time) are in clock_t


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


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """One bridge FDB entry: (bridge, vid, mac) -> port.  Slotted: a large
    L2 domain holds a million of them."""

    bridge: int
    vid: int
    mac: str
    port: int
    local: bool      # the bridge's own address (permanent, or on the bridge device)
    dynamic: bool    # learned: ages out unless frames through the kernel renew it
    sticky: bool = False  # NTF_STICKY: the kernel never moves it to another port


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
    link_netnsid: int | None = None  # IFLA_LINK_NETNSID: a veth's peer is in that namespace (None: in this one)
    promiscuity: int = 0      # IFLA_PROMISCUITY: packet sockets (tcpdump), uppers, `ip link set promisc on`

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    @property
    def peer_here(self) -> bool:
        """A veth whose peer is in this namespace: a frame from the peer
        keeps its sender's skb mark (only a namespace crossing scrubs it)."""
        return self.kind == "veth" and self.link_netnsid is None

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
class Nexthop:
    """A nexthop object (RTM_NEWNEXTHOP): a single next hop, or a group of
    them (hash-threshold or resilient) that routes name by id."""

    id: int
    group: tuple[int, ...] = ()  # the members' ids; () for a single next hop


@dataclass(frozen=True)
class Neigh:
    index: int
    family: int
    dst: str
    lladdr: str | None
    state: int


@dataclass(frozen=True)
class NeighLimit:
    """A neighbour table's gc_thresh3 (RTM_NEWNEIGHTBL): the most entries
    the kernel keeps for a family, all namespaces together."""

    family: int
    entries: int


@dataclass(frozen=True)
class XdpXmit:
    """Whether a device accepts XDP-redirected frames now (netdev
    xdp-features NDO_XMIT): a dump entry or a change notification."""

    ifindex: int
    capable: bool


@dataclass(frozen=True)
class TcFilters:
    """Others' programs on a device's tc hooks, of one kind: clsact filters
    (announced over netlink) or, tcx, tcx programs (announced by nothing:
    polled).  On egress an XDP redirect would bypass them, on ingress TNA's
    redirect would."""

    ifindex: int
    egress: bool
    ingress: bool
    tcx: bool = False


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
    ct_tcp_ignore_invalid_rst: bool = False  # nf_conntrack_tcp_ignore_invalid_rst
    ct_tcp_max_retrans: int = 3   # nf_conntrack_tcp_max_retrans
    ct_timeout_unack: int = 300   # s, nf_conntrack_tcp_timeout_unacknowledged
    ct_timeout_retrans: int = 300  # s, nf_conntrack_tcp_timeout_max_retrans
    ct_timeout_udp_unreplied: int = 30  # s, nf_conntrack_udp_timeout: a UDP entry with no reply yet
    # net.ipv{4,6}.conf.*.ignore_routes_with_linkdown on any device: route
    # lookups then differ in which routes they skip (firewall.c.j2 fw_rpf())
    ipv4_ignore_linkdown: bool = False
    ipv6_ignore_linkdown: bool = False
    # some device takes router advertisements (accept_ra 2, or 1 where it does
    # not forward): one may give a route an expiry without a notification
    # (addrconf_prefix_rcv() on an address's prefix route)
    ipv6_accept_ra: bool = False
    # br_netfilter is loaded (its net.bridge sysctls exist): without it a
    # bridge's own nf_call_iptables/ip6tables do nothing
    br_netfilter: bool = True
    ipv6: bool = True  # the kernel has IPv6 (not booted ipv6.disable=1: no net.ipv6 sysctls)

    @property
    def forwarding(self) -> bool:
        return self.ipv4_forward or self.ipv6_forward


@dataclass(frozen=True)
class PortView:
    """A port's bridge view (AF_BRIDGE link message); port None: the device
    is no longer a bridge port (it still exists)."""

    index: int
    port: Port | None


@dataclass(frozen=True)
class XfrmPolicies:
    """The families whose forwarded packets IPsec policies may check,
    encrypt or block (tna/netlink/xfrm.py): those go to the kernel."""

    families: frozenset[int] = frozenset()
    blocking_defaults: tuple[str, ...] = ()  # directions whose default policy blocks ("unknown": unreadable)
    sas: bool = False  # SAs exist: a packet one decrypted is received again, with a secpath


@dataclass(frozen=True)
class Removed:
    """The kernel removed fact."""

    fact: Link | Addr | Route | Neigh | FdbEntry | Nexthop


FdbKey = tuple[int, int, str]  # (bridge, vid, mac)
Fact = (Link | PortView | Addr | Route | Neigh | FdbEntry | Nexthop | XdpXmit | TcFilters | Removed
        | RouteDump | Dumped | XfrmPolicies | NeighLimit)


@dataclass
class Model:
    links: dict[int, Link] = field(default_factory=dict)
    addrs: set[Addr] = field(default_factory=set)
    routes: RouteTable = field(default_factory=RouteTable)
    nexthops: dict[int, Nexthop] = field(default_factory=dict)
    neighs: dict[tuple[int, int, str], Neigh] = field(default_factory=dict)
    neigh_limits: dict[int, int] = field(default_factory=dict)  # family -> its table's gc_thresh3
    fdb: dict[FdbKey, FdbEntry] = field(default_factory=dict)
    # the FDB keys changed since the map synchroniser last took them
    # (take_fdb_changes()): a change to one entry costs one, not a walk
    # of a million
    fdb_changed: set[FdbKey] = field(default_factory=set, compare=False)
    # entries per bridge, kept as they come and go (tna status shows it per
    # reconcile; counting a million entries each time costs 0.2 s)
    fdb_per_bridge: Counter[int] = field(default_factory=Counter, compare=False)
    sysctls: Sysctls = field(default_factory=Sysctls)
    # Does the device accept XDP-redirected frames now (netdev xdp-features
    # NDO_XMIT)?  From XdpXmit events; the planner only reads it.
    xdp_xmit: dict[int, bool] = field(default_factory=dict)
    # Devices with others' egress / ingress tc programs of either kind, and
    # the last TcFilters fact of each (ifindex, tcx).
    egress_filters: set[int] = field(default_factory=set)
    ingress_filters: set[int] = field(default_factory=set)
    tc_kinds: dict[tuple[int, bool], TcFilters] = field(default_factory=dict)
    xfrm: XfrmPolicies = field(default_factory=XfrmPolicies)
    # Effective IPv4 rp_filter per ifindex: max(conf.all, conf.<dev>) (/proc/sys).
    rp_filter: dict[int, int] = field(default_factory=dict)
    # The FORWARD and INPUT chains the fast path evaluates (None: no filtering rules).
    firewall: Firewall | None = None
    # The ipsets the rules match on, with their members, by name (polled).
    ipsets: dict[str, IpSet] = field(default_factory=dict)

    def apply(self, fact: Fact) -> bool:
        """Apply one fact the kernel stated; True if the model changed."""
        kind = type(fact)
        if kind is FdbEntry:  # first: a large L2 domain states a million of them, a BGP reset routes by the 100,000
            return self._apply_fdb(fact, True)
        if kind is Route:
            return self.routes.event(fact, True)
        if isinstance(fact, XdpXmit):
            changed = self.xdp_xmit.get(fact.ifindex) != fact.capable
            self.xdp_xmit[fact.ifindex] = fact.capable
            return changed
        if isinstance(fact, TcFilters):
            self.tc_kinds[fact.ifindex, fact.tcx] = fact
            other = self.tc_kinds.get((fact.ifindex, not fact.tcx), fact)
            changed = _apply_set(self.egress_filters, fact.ifindex, fact.egress or other.egress)
            return _apply_set(self.ingress_filters, fact.ifindex, fact.ingress or other.ingress) or changed
        if isinstance(fact, PortView):
            return self._apply_port(fact)
        if isinstance(fact, XfrmPolicies):
            changed, self.xfrm = fact != self.xfrm, fact
            return changed
        if isinstance(fact, NeighLimit):
            changed = self.neigh_limits.get(fact.family) != fact.entries
            self.neigh_limits[fact.family] = fact.entries
            return changed
        if isinstance(fact, RouteDump):
            return self.routes.dump(fact)
        if isinstance(fact, Dumped):
            return self.routes.dumped(fact.route)
        present = not isinstance(fact, Removed)
        item = fact.fact if isinstance(fact, Removed) else fact
        if isinstance(item, Link):
            return self._apply_link(item, present)
        if isinstance(item, Addr):
            return _apply_set(self.addrs, item, present)
        if isinstance(item, Route):
            return self.routes.event(item, present)
        if isinstance(item, Nexthop):
            return self._apply_nexthop(item, present)
        if isinstance(item, FdbEntry):
            return self._apply_fdb(item, present)
        return self._apply_neigh(item, present)

    def _apply_link(self, link: Link, present: bool) -> bool:
        old = self.links.get(link.index)
        if not present:
            if old is None:
                return False
            del self.links[link.index]
            self.addrs = {a for a in self.addrs if a.index != link.index}
            self.neighs = {k: n for k, n in self.neighs.items() if n.index != link.index}
            gone = [k for k, e in self.fdb.items() if link.index in (e.port, e.bridge)]
            for k in gone:
                self.fdb_per_bridge[self.fdb.pop(k).bridge] -= 1
            self.fdb_changed.update(gone)
            self.xdp_xmit.pop(link.index, None)
            self.egress_filters.discard(link.index)
            self.ingress_filters.discard(link.index)
            self.tc_kinds.pop((link.index, False), None)
            self.tc_kinds.pop((link.index, True), None)
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

    def _apply_port(self, view: PortView) -> bool:
        old = self.links.get(view.index)
        if old is None:
            return False
        link = replace(old, port=view.port)
        self.links[old.index] = link
        return link != old

    def _apply_nexthop(self, nh: Nexthop, present: bool) -> bool:
        if present:
            changed = self.nexthops.get(nh.id) != nh
            self.nexthops[nh.id] = nh
            return changed
        # The kernel deletes the routes using a deleted nexthop without a
        # word (IPv4 always, IPv6 with nexthop_compat_mode=0); it announces
        # the groups that lose it as members, or that it leaves empty.
        changed = self.routes.drop_nexthop(nh.id)
        return self.nexthops.pop(nh.id, None) is not None or changed

    def _apply_fdb(self, entry: FdbEntry, present: bool) -> bool:
        key = (entry.bridge, entry.vid, entry.mac)
        if present:
            old = self.fdb.get(key)
            if old == entry:
                return False
            self.fdb[key] = entry
            if old is None:
                self.fdb_per_bridge[entry.bridge] += 1
        elif self.fdb.pop(key, None) is None:
            return False
        else:
            self.fdb_per_bridge[entry.bridge] -= 1
        self.fdb_changed.add(key)
        return True

    def take_fdb_changes(self) -> set[FdbKey]:
        """The FDB keys changed (added, moved, removed) since the last call."""
        changed, self.fdb_changed = self.fdb_changed, set()
        return changed

    def _apply_neigh(self, neigh: Neigh, present: bool) -> bool:
        key = (neigh.index, neigh.family, neigh.dst)
        if present and neigh.state != NUD_FAILED:  # a failed neighbour is none
            changed = self.neighs.get(key) != neigh
            self.neighs[key] = neigh
            return changed
        return self.neighs.pop(key, None) is not None

    def set_sysctls(self, sysctls: Sysctls) -> bool:
        changed = sysctls != self.sysctls
        self.sysctls = sysctls
        return changed

    def set_firewall(self, fw: Firewall | None) -> bool:
        """An equal rule set keeps the object in hand: what programs were
        built for then compares by identity, not rule by rule."""
        if fw == self.firewall:
            return False
        self.firewall = fw
        return True

    def set_ipsets(self, sets: dict[str, IpSet]) -> bool:
        changed = sets != self.ipsets
        self.ipsets = sets
        return changed

    def set_rp_filter(self, index: int, mode: int) -> bool:
        changed = self.rp_filter_of(index) != mode
        self.rp_filter[index] = mode
        return changed

    def rp_filter_of(self, index: int) -> int:
        """A port's rp_filter mode; one not read yet (a device that came
        after the last read) counts as strict: the fast path then forwards
        only what the strictest check proves, the kernel judges the rest."""
        return self.rp_filter.get(index, 1)

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

    def bridged_to_kernel(self) -> frozenset[int]:
        """The families whose bridged IP is the kernel's where br_netfilter
        takes it: a family FORWARD filters or conntrack tracks, and IPv6
        without IPv6 in the kernel (br_nf_pre_routing() drops it)."""
        fw = self.firewall
        return frozenset(f for f, on in (
            (AF_INET, fw and (fw.fwd4 or fw.ct4)),
            (AF_INET6, (fw and (fw.fwd6 or fw.ct6)) or not self.sysctls.ipv6)) if on)

    def multipath_policies(self) -> dict[int, int]:
        """family -> its fib_multipath_hash_policy, for the families that have
        (or, while their routes load, may have) multipath routes, where the
        hash picks the next hop.  A route by nexthop object has the object's
        next hops: its messages copy them (RTA_MULTIPATH) only with
        nexthop_compat_mode=1 and are not re-sent when the group changes."""
        return {family: policy for family, policy in ((AF_INET, self.sysctls.ipv4_mp_hash_policy),
                                                      (AF_INET6, self.sysctls.ipv6_mp_hash_policy))
                if self.routes.has_multipath(family, self.nexthops)}

    def rpf_doubt(self) -> frozenset[int]:
        """The families in which bpf_fib_lookup() may find another route back
        to a source than nft's `fib saddr . iif oif` (nft_fib4_eval(),
        nft_fib6_eval()), apart from the ip rules the datapath checks
        itself: in IPv6 a multipath route or several routes for one prefix
        and metric (nft's lookup takes the first route, or hashes the next hop
        otherwise; IPv4's check accepts any next hop of the route, and the
        one bpf's lookup picks is one of them), a VRF (l3mdev) changes the
        lookup's device, the sysctl that skips routes over a link without
        carrier is honoured by bpf's lookup only, and some routes are looked
        up otherwise by each (RouteTable.has_unlike(): a TOS, a source
        prefix, an expiry; and where router advertisements are taken, an
        expiry may come unannounced)."""
        vrf = any(link.kind == "vrf" for link in self.links.values())
        return frozenset(f for f, linkdown, other in (
            (AF_INET, self.sysctls.ipv4_ignore_linkdown, self.routes.has_unlike(AF_INET)),
            (AF_INET6, self.sysctls.ipv6_ignore_linkdown,
             self.routes.shares_prefix6() or self.routes.has_unlike(AF_INET6) or self.sysctls.ipv6_accept_ra
             or self.routes.has_multipath(AF_INET6, self.nexthops)))
            if vrf or linkdown or other)

    def route_mtu(self, family: int) -> int:
        """Smallest route MTU metric in family, 0 if no route sets one (while
        the family's routes load: the smallest forwarding could use)."""
        return self.routes.smallest_mtu(family)

    def neigh_max(self) -> int:
        """The most neighbours the kernel may keep (0: not known)."""
        return sum(self.neigh_limits.values())

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
