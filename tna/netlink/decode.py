"""rtnetlink messages -> model facts.

The model (tna/model/config.py) knows nothing of netlink: the daemon and the
tests turn every message (live from the watcher, or decoded from a
recording) into facts here and hand those to Model.apply().
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from pyroute2.netlink import nlmsg_base

from tna.model.config import (
    AF_BRIDGE,
    AF_INET,
    AF_INET6,
    BR_STATE_FORWARDING,
    NUD_STALE,
    Addr,
    Bridge,
    Dumped,
    Fact,
    FdbEntry,
    Link,
    Neigh,
    NeighLimit,
    Nexthop,
    Port,
    PortView,
    Removed,
    Route,
    RouteDump,
    TcFilters,
    XdpXmit,
    XfrmPolicies,
)
from tna.netlink.factmsg import FactMsg
from tna.netlink.fdb import (
    NTF_EXT_LEARNED,
    NTF_EXT_LOCKED,
    NTF_STICKY,
    NUD_NOARP,
    NUD_PERMANENT,
    RTM_DELNEIGH,
    RTM_NEWNEIGH,
)
from tna.netlink.netconf import RTM_NEWNETCONF, SYSCTLS_ANNOUNCED, SysctlsAnnounced

NLMSG_DONE = 3  # carries no fact
RTM_NEWNEIGHTBL = 64
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEXTHOP, RTM_DELNEXTHOP = 104, 105

NLM_F_REPLACE = 0x100   # a notification: the route replaced the one of the same identity
NLM_F_APPEND = 0x800    # a notification: the route was added beside those of its identity
RTPROT_RA = 9           # a route learnt from a router advertisement


class NlMsg(Protocol):
    """What we use of a pyroute2 message."""

    def get(self, key: str, default: Any = None) -> Any: ...
    def __getitem__(self, key: str) -> Any: ...


def decoded(item: NlMsg | XdpXmit | TcFilters | RouteDump | Dumped | XfrmPolicies | FactMsg
            ) -> Iterator[Fact | SysctlsAnnounced]:
    """What the watcher queues (messages, and facts it derived itself) as
    facts, and SYSCTLS_ANNOUNCED: the daemon reads /proc/sys now."""
    if isinstance(item, FactMsg):  # first: FDB entries and routes, by the million
        yield item.fact
    elif isinstance(item, (XdpXmit, TcFilters, RouteDump, Dumped, XfrmPolicies)):
        yield item
    else:
        yield from facts(item)


def facts(msg: NlMsg) -> Iterator[Fact | SysctlsAnnounced]:
    """The facts one rtnetlink message states (none for what the model
    does not follow)."""
    kind = msg["header"]["type"]
    if kind == RTM_NEWNETCONF:
        yield SYSCTLS_ANNOUNCED
        return
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        if msg["family"] == AF_BRIDGE:  # a port's bridge view, not the device
            yield from _port_view(msg, kind == RTM_NEWLINK)
        else:
            yield _stated(link_from_msg(msg), kind == RTM_NEWLINK)
    elif kind in (RTM_NEWADDR, RTM_DELADDR):
        yield _stated(addr_from_msg(msg), kind == RTM_NEWADDR)
    elif kind in (RTM_NEWROUTE, RTM_DELROUTE):
        if (route := route_from_msg(msg)) is not None:
            yield _stated(route, kind == RTM_NEWROUTE)
    elif kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
        new = kind == RTM_NEWNEIGH
        entry = fdb_from_msg(msg) if msg["family"] == AF_BRIDGE else neigh_from_msg(msg)
        if entry is not None:
            yield _stated(entry, new)
    elif kind in (RTM_NEWNEXTHOP, RTM_DELNEXTHOP):
        yield _stated(nexthop_from_msg(msg), kind == RTM_NEWNEXTHOP)
    elif kind == RTM_NEWNEIGHTBL and (limit := msg.get("NDTA_THRESH3")) is not None:  # the table, not a device's
        yield NeighLimit(msg["family"], limit)


def moves_no_map(item: NlMsg | FactMsg | object) -> bool:
    """Whether a queued event can wait for the main loop without the
    running programs deciding wrongly meanwhile: a route that moves no guard
    (bpf_fib_lookup() reads the kernel's table itself), or a route gone (a
    guard it set only sends more to the kernel until it is lifted); an IP
    neighbour likewise, unless it turns STALE (tna_stale: the kernel would
    re-validate it at its next use) - a neighbour leaving STALE only sends
    more to the kernel until the map follows; an NLMSG_DONE.  Route events
    are queued as their facts (routemsg.decode_routes_fast()); what a reader
    queues as a fact of its own (XdpXmit, ...) moves a map."""
    if not isinstance(item, FactMsg):
        if not isinstance(item, nlmsg_base):
            return False
        kind = item["header"]["type"]
        ip_neigh = kind in (RTM_NEWNEIGH, RTM_DELNEIGH) and item["family"] in (AF_INET, AF_INET6)
        return kind == NLMSG_DONE or (ip_neigh and (kind == RTM_DELNEIGH or item["state"] != NUD_STALE))
    fact = item.fact
    if isinstance(fact, Removed):
        return isinstance(fact.fact, Route)
    return isinstance(fact, Route) and not fact.notable


def announced_stale(item: NlMsg | FactMsg | object) -> Neigh | None:
    """The IP neighbour a queued event says the kernel made STALE (what
    moves_no_map() leaves to tna_stale), else None."""
    if isinstance(item, nlmsg_base) and item["header"]["type"] == RTM_NEWNEIGH and item["state"] == NUD_STALE:
        return neigh_from_msg(item)
    return None


def _stated(fact: Link | Addr | Route | Neigh | FdbEntry | Nexthop, present: bool) -> Fact:
    return fact if present else Removed(fact)


def _port_view(msg: NlMsg, new: bool) -> Iterator[PortView]:
    """AF_BRIDGE link messages: the only notification of an STP state or
    port flag change; RTM_DELLINK means "no longer a port"."""
    if not new:
        yield PortView(msg["index"], None)
    elif (info := msg.get("IFLA_PROTINFO")) is not None:
        yield PortView(msg["index"], port_from_attrs(info))


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
        link_netnsid=msg.get("IFLA_LINK_NETNSID"),
        promiscuity=msg.get("IFLA_PROMISCUITY") or 0,
    )


def addr_from_msg(msg: NlMsg) -> Addr:
    return Addr(msg["index"], msg["family"], msg.get("IFA_ADDRESS") or "", msg["prefixlen"])


_ROUTE_ATTRS = frozenset(("RTA_TABLE", "RTA_DST", "RTA_SRC", "RTA_OIF", "RTA_GATEWAY", "RTA_MULTIPATH",
                          "RTA_METRICS", "RTA_NH_ID", "RTA_PRIORITY", "RTA_CACHEINFO"))


def route_from_msg(msg: NlMsg) -> Route | None:
    if msg["family"] not in (AF_INET, AF_INET6):
        return None
    # one pass over the attributes: a full table is a million messages, and
    # each msg.get() walks them all again
    attrs = {slot.name: slot for slot in msg["attrs"] if slot.name in _ROUTE_ATTRS}

    def get(name: str) -> Any:
        slot = attrs.get(name)
        return None if slot is None else slot.value  # decoded here, on demand
    # A route by nexthop object: its next hops are the object's.  With
    # nexthop_compat_mode=1 the message also carries a copy of them, which a
    # change to the object makes stale; leave it out so the route stays one
    # fact whatever the mode.
    nhid = get("RTA_NH_ID") or 0
    metrics = get("RTA_METRICS")
    return Route(
        family=msg["family"],
        table=get("RTA_TABLE") or msg["table"],
        dst=get("RTA_DST") or ("0.0.0.0" if msg["family"] == AF_INET else "::"),
        dst_len=msg["dst_len"],
        type=msg["type"],
        oif=None if nhid else get("RTA_OIF"),
        gateway=None if nhid else get("RTA_GATEWAY"),
        multipath=0 if nhid else len(get("RTA_MULTIPATH") or []),
        mtu=(metrics.get("RTAX_MTU") or 0) if metrics is not None else 0,
        nhid=nhid,
        tos=msg["tos"],
        priority=get("RTA_PRIORITY") or 0,
        src_len=msg["src_len"],
        src=get("RTA_SRC"),
        expires=msg["proto"] == RTPROT_RA or bool((get("RTA_CACHEINFO") or {}).get("rta_expires")),
        replace=bool(msg["header"].get("flags", 0) & NLM_F_REPLACE),
        append=bool(msg["header"].get("flags", 0) & NLM_F_APPEND),
    )


def nexthop_from_msg(msg: NlMsg) -> Nexthop:
    """NHA_GROUP as u32 words (tna/netlink/nexthop.py): id, weight, id, weight..."""
    return Nexthop(msg.get("NHA_ID") or 0, tuple((msg.get("NHA_GROUP") or ())[0::2]))


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
    return FdbEntry(bridge, msg.get("NDA_VLAN") or 0, mac.lower(), port, local, dynamic,
                    bool(msg["flags"] & NTF_STICKY))


def neigh_from_msg(msg: NlMsg) -> Neigh | None:
    if msg["family"] not in (AF_INET, AF_INET6):
        return None
    return Neigh(msg["ifindex"], msg["family"], msg.get("NDA_DST") or "", msg.get("NDA_LLADDR"), msg["state"])
