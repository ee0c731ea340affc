"""Model -> per-interface plan: which hook, which modules, or why not.

Pure functions.  A plan's *shape* (hook + modules) selects the C program;
its per-interface values (ifindex, MAC, flags) go into .rodata at load; the
egress sets go into maps.  Nothing here depends on routes or neighbours:
those are read live by bpf_fib_lookup() or synchronised into maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from tna.bpf.abi import PORT_FLAGS, TNA_IF_CHECK_CSUM_PARTIAL, TNA_IF_L2_EGRESS, TNA_IF_RP_LOOSE, TNA_IF_RP_STRICT
from tna.model.config import BR_STATE_FORWARDING, Link, Model
from tna.model.firewall import Firewall

IFF_LOWER_UP = 0x10000

HOOK_MODES = ("auto", "xdp", "tc")

# Kinds whose frames come from a local network stack: TC keeps their skb
# (GSO, CHECKSUM_PARTIAL); XDP would cost their peers TSO.
LOCAL_STACK_KINDS = {"veth", "tun"}
# Kinds we attach to.  None is a physical NIC (no IFLA_INFO_KIND).
INGRESS_KINDS = {None, "veth", "tun"}
# Kinds a TC redirect may send to (the egress device does its own L2 work).
TC_EGRESS_KINDS = {None, "veth", "tun", "vlan"}
# Root qdiscs that do not shape: an XDP redirect bypasses the qdisc, so any
# other root qdisc keeps that egress on the kernel path.
UNSHAPED_QDISCS = {None, "noqueue", "pfifo_fast", "mq", "fq_codel"}


@dataclass(frozen=True)
class IfacePlan:
    ifindex: int
    name: str
    hook: str                   # "xdp" or "tc"
    hook_why: str
    modules: tuple[str, ...]
    mac: str
    flags: int
    firewall: Firewall | None = None  # compiled into the program with the firewall module

    @property
    def shape(self) -> tuple[str, tuple[str, ...]]:
        return self.hook, self.modules


@dataclass(frozen=True)
class PortPlan:
    """A tna_ports entry: an accelerated bridge port."""

    bridge: int
    flags: int
    mtu: int
    hold_cs: int    # a learned FDB entry may age out this long after the kernel saw its MAC
    bridge_mac: str
    l3_flags: int   # the bridge's rp_filter flags, for frames the router takes


@dataclass(frozen=True)
class L3Bridge:
    """A tna_l3br entry: a bridge with an L3 side (router ingress/egress)."""

    ifindex: int
    mac: str
    flags: int


# Skipped.kind: a short, stable class of why (the metrics' label; why is free text)
SKIP_KINDS = ("ignored", "loopback", "not_ethernet", "down", "bridge_device", "unsupported_kind",
              "bridge_not_accelerated", "port_state_unknown", "tc_ingress_filters", "forwarding_disabled")


@dataclass(frozen=True)
class Skipped:
    ifindex: int
    name: str
    why: str
    kind: str  # one of SKIP_KINDS


@dataclass(frozen=True)
class Plan:
    ifaces: dict[int, IfacePlan]
    skipped: dict[int, Skipped]
    xdp_egress: frozenset[int]   # -> tna_devmap
    tc_egress: frozenset[int]    # -> tna_egress
    ports: dict[int, PortPlan]   # -> tna_ports
    l3_bridges: dict[int, L3Bridge]  # -> tna_l3br
    bridges: frozenset[int]      # bridges whose FDB goes to tna_fdb


def bridge_skip_reason(bridge: Link | None) -> str | None:
    """Why a bridge's ports are not accelerated, None if they are."""
    if bridge is None or bridge.bridge is None:
        return "enslaved to a device that is not a bridge (not supported)"
    if not bridge.ethernet:
        return f"bridge {bridge.name} has no Ethernet address"
    if bridge.bridge.vlan_filtering:
        # not modelled: the lab kernel lacks CONFIG_BRIDGE_VLAN_FILTERING, so
        # it could not be tested; the kernel path is exact
        return f"bridge {bridge.name} filters VLANs (vlan_filtering 1 is not accelerated)"
    return None


def _skip_reason(link: Link, model: Model) -> tuple[str, str] | None:
    """(kind, why) an interface is left alone, None if it is accelerated."""
    if link.loopback:
        return "loopback", "loopback"
    if not link.ethernet:
        return "not_ethernet", "not an Ethernet device"
    if not link.up:
        return "down", "down"
    if link.kind == "bridge":
        return "bridge_device", "a bridge device: its ports carry the fast path"
    if link.kind not in INGRESS_KINDS:
        return "unsupported_kind", f"device kind {link.kind!r} is not supported"
    if link.master is not None:
        if (why := bridge_skip_reason(model.links.get(link.master))) is not None:
            return "bridge_not_accelerated", why
        if link.port is None:
            return "port_state_unknown", "bridge port state unknown"
    if link.index in model.ingress_filters:
        return "tc_ingress_filters", "others' tc ingress filters or tcx programs are attached (they see every packet)"
    if link.master is None and not model.sysctls.forwarding:
        return "forwarding_disabled", "forwarding is disabled (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding)"
    return None


def _matching(name: str, ignore: Sequence[str]) -> str | None:
    return next((g for g in ignore if fnmatchcase(name, g)), None)


def left_alone(link: Link, model: Model, ignore: Sequence[str]) -> str | None:
    """Why the configuration's ignore globs leave link alone, None if they do not: its name
    matches, or its master's (a bridge left alone is plain Linux, its ports included)."""
    if (glob := _matching(link.name, ignore)) is not None:
        return f"left alone by configuration (ignore = {glob})"
    master = model.links.get(link.master) if link.master is not None else None
    if master is not None and (glob := _matching(master.name, ignore)) is not None:
        return f"master {master.name} is left alone by configuration (ignore = {glob})"
    return None


def choose_hook(link: Link, mode: str, overrides: Mapping[str, str]) -> tuple[str, str]:
    """(hook, why) for an interface we accelerate."""
    if link.name in overrides:
        return overrides[link.name], "per-interface override"
    if mode != "auto":
        return mode, f"hook mode {mode}"
    if link.kind in LOCAL_STACK_KINDS:
        return "tc", f"{link.kind}: its peer is a local stack (TC keeps TSO and checksum offload)"
    return "xdp", "frames come from a wire"


def xdp_egress_ok(link: Link, model: Model) -> bool:
    """Can an XDP_REDIRECT into this device deliver, exactly as the kernel
    would send?  It bypasses the qdisc and tc egress, so neither may do
    anything; and the kernel must say it transmits XDP frames now (a veth
    only while its peer runs XDP or GRO: otherwise they would vanish)."""
    return (link.up and link.ethernet and link.qdisc in UNSHAPED_QDISCS
            and link.index not in model.egress_filters and model.xdp_xmit.get(link.index, False))


def tc_egress_ok(link: Link) -> bool:
    return link.up and link.ethernet and link.kind in TC_EGRESS_KINDS


def routes_through(link: Link, model: Model) -> bool:
    """Does the router serve this interface?  Forwarding needs no address on
    the ingress side (an IPv6 link-local next hop, or none at all)."""
    return link.up and model.sysctls.forwarding


def port_plan(link: Link, bridge: Link, model: Model) -> PortPlan:
    """The bridge's view of a port, as tna_ports flags."""
    assert link.port is not None and bridge.bridge is not None
    p, br, sc = link.port, bridge.bridge, model.sysctls
    bits = {
        "FORWARDING": p.state == BR_STATE_FORWARDING and link.up and bool(link.flags & IFF_LOWER_UP)
        and bridge.up,
        "ISOLATED": p.isolated, "HAIRPIN": p.hairpin, "LOCKED": p.locked or p.mab, "LEARNING": p.learning,
        "NEIGH_SUPPRESS": p.neigh_suppress,
        "NF_IP4": sc.br_nf_iptables or (sc.br_netfilter and br.nf_call_iptables),
        "NF_IP6": sc.br_nf_ip6tables or (sc.br_netfilter and br.nf_call_ip6tables),
        "NF_VLAN": sc.br_nf_vlan, "NF_PPPOE": sc.br_nf_pppoe,
        # frames to the bridge's address are the router's while that address
        # is a local FDB entry (an admin could point it at a port)
        "ROUTER": routes_through(bridge, model) and bridge.mac is not None
        and getattr(model.fdb.get((bridge.index, 0, bridge.mac)), "local", False),
        "BR_PROMISC": bridge.promiscuity > 0,
    }
    flags = sum(PORT_FLAGS[name] for name, on in bits.items() if on)
    assert bridge.mac is not None  # bridge_skip_reason() checked it
    return PortPlan(bridge.index, flags, link.mtu, br.hold_cs, bridge.mac, rp_filter_flags(model, bridge.index))


def l3_bridge(bridge: Link, model: Model) -> L3Bridge:
    """A routed bridge, as a route's egress: may a routed packet leave
    through its FDB (the bridge device's own qdisc and tc egress filters
    would be bypassed otherwise, and so would a capture on it: a
    promiscuous bridge is taken for one)?"""
    assert bridge.mac is not None
    ok = bridge.qdisc in UNSHAPED_QDISCS and bridge.index not in model.egress_filters and not bridge.promiscuity
    return L3Bridge(bridge.index, bridge.mac, TNA_IF_L2_EGRESS if ok else 0)


def rp_filter_flags(model: Model, index: int) -> int:
    """fib_validate_source(): strict (1) needs the route back via this port;
    loose (2) any unicast route back, except that a port without an IPv4
    address falls through to the strict outcome."""
    mode = model.rp_filter_of(index)
    if mode == 1 or (mode == 2 and not model.has_ipv4(index)):
        return TNA_IF_RP_STRICT
    if mode == 2:
        return TNA_IF_RP_LOOSE
    return 0


def plan(model: Model, mode: str = "auto", overrides: Mapping[str, str] | None = None,
         ignore: Sequence[str] = ()) -> Plan:
    """ignore: globs of interfaces left alone.  Such an interface gets no program and is no
    egress of a redirect either: all its traffic, both ways, is the kernel's."""
    if mode not in HOOK_MODES:
        raise ValueError(f"hook mode must be one of {HOOK_MODES}")
    overrides = overrides or {}
    ifaces: dict[int, IfacePlan] = {}
    skipped: dict[int, Skipped] = {}
    ports: dict[int, PortPlan] = {}
    alone = {i: why for i, link in model.links.items() if (why := left_alone(link, model, ignore))}
    bridges = {i: link for i, link in model.links.items()
               if link.bridge is not None and bridge_skip_reason(link) is None and i not in alone}
    l3 = {i: l3_bridge(br, model) for i, br in bridges.items() if routes_through(br, model)}
    # the router resolves a route into a bridge through its FDB
    router_modules = ("fdb", "router") if any(b.flags & TNA_IF_L2_EGRESS for b in l3.values()) else ("router",)
    if model.firewall is not None:
        router_modules = ("firewall", *router_modules)
    for link in model.links.values():
        skip = ("ignored", alone[link.index]) if link.index in alone else _skip_reason(link, model)
        if skip is not None:
            skipped[link.index] = Skipped(link.index, link.name, skip[1], skip[0])
            continue
        hook, hook_why = choose_hook(link, mode, overrides)
        if hook == "xdp" and link.peer_here and model.firewall is not None and model.firewall.reads_mark:
            hook, hook_why = "tc", (f"{hook_why} overruled: its veth peer is in this namespace, so its frames "
                                    "keep their sender's mark, which the rules read and XDP cannot see")
        flags = TNA_IF_CHECK_CSUM_PARTIAL if hook == "xdp" and link.kind in LOCAL_STACK_KINDS else 0
        if link.master is not None:
            bridge = bridges[link.master]
            ports[link.index] = port_plan(link, bridge, model)
            modules = ("fdb", "bridge") + (router_modules if bridge.index in l3 else ())
        else:
            flags |= rp_filter_flags(model, link.index)
            modules = router_modules
        assert link.mac is not None  # link.ethernet checked it
        modules = tuple(dict.fromkeys(modules))
        ifaces[link.index] = IfacePlan(link.index, link.name, hook, hook_why, modules, link.mac, flags,
                                       model.firewall if "firewall" in modules else None)
    return Plan(
        ifaces=ifaces,
        skipped=skipped,
        xdp_egress=frozenset(i for i, link in model.links.items() if xdp_egress_ok(link, model) and i not in alone),
        tc_egress=frozenset(i for i, link in model.links.items() if tc_egress_ok(link) and i not in alone),
        ports=ports,
        l3_bridges=l3,
        bridges=frozenset(bridges),
    )
