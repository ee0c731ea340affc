"""Model -> per-interface plan: which hook, which modules, or why not.

Pure functions.  A plan's *shape* (hook + modules) selects the C program;
its per-interface values (ifindex, MAC, flags) go into .rodata at load; the
egress sets go into maps.  Nothing here depends on routes or neighbours:
those are read live by bpf_fib_lookup() or synchronised into maps.
"""

from __future__ import annotations

from dataclasses import dataclass

from tna.bpf.abi import TNA_IF_CHECK_CSUM_PARTIAL, TNA_IF_RP_LOOSE, TNA_IF_RP_STRICT
from tna.model.config import Link, Model

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

    @property
    def shape(self) -> tuple[str, tuple[str, ...]]:
        return self.hook, self.modules


@dataclass(frozen=True)
class Skipped:
    ifindex: int
    name: str
    why: str


@dataclass(frozen=True)
class Plan:
    ifaces: dict[int, IfacePlan]
    skipped: dict[int, Skipped]
    xdp_egress: frozenset[int]   # -> tna_devmap
    tc_egress: frozenset[int]    # -> tna_egress


def _skip_reason(link: Link, model: Model) -> str | None:
    if link.loopback:
        return "loopback"
    if not link.ethernet:
        return "not an Ethernet device"
    if not link.up:
        return "down"
    if link.master is not None:
        master = model.links.get(link.master)
        return f"enslaved to {master.name if master else link.master} (not accelerated yet)"
    if link.kind not in INGRESS_KINDS:
        return f"device kind {link.kind!r} is not supported"
    if link.index in model.ingress_filters:
        return "others' tc ingress filters are attached (they must see every packet)"
    if not model.sysctls.forwarding:
        return "forwarding is disabled (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding)"
    return None


def choose_hook(link: Link, mode: str, overrides: dict[str, str]) -> tuple[str, str]:
    """(hook, why) for an interface we accelerate."""
    if link.name in overrides:
        return overrides[link.name], "per-interface override"
    if mode != "auto":
        return mode, f"--hook {mode}"
    if link.kind in LOCAL_STACK_KINDS:
        return "tc", f"{link.kind}: its peer is a local stack (TC keeps TSO and checksum offload)"
    return "xdp", "frames come from a wire"


def xdp_egress_ok(link: Link, model: Model) -> bool:
    """Can an XDP_REDIRECT into this device deliver, exactly as the kernel
    would send?  It bypasses the qdisc and tc egress, so neither may do
    anything; and the kernel must say it transmits XDP frames now (a veth
    only while its peer runs XDP or GRO: otherwise they would vanish)."""
    return (link.up and link.ethernet and link.master is None and link.qdisc in UNSHAPED_QDISCS
            and link.index not in model.egress_filters and model.xdp_xmit.get(link.index, False))


def tc_egress_ok(link: Link) -> bool:
    return link.up and link.ethernet and link.master is None and link.kind in TC_EGRESS_KINDS


def rp_filter_flags(model: Model, index: int) -> int:
    """fib_validate_source(): strict (1) needs the route back via this port;
    loose (2) any unicast route back, except that a port without an IPv4
    address falls through to the strict outcome."""
    mode = model.rp_filter.get(index, 0)
    if mode == 1 or (mode == 2 and not model.has_ipv4(index)):
        return TNA_IF_RP_STRICT
    if mode == 2:
        return TNA_IF_RP_LOOSE
    return 0


def plan(model: Model, mode: str = "auto", overrides: dict[str, str] | None = None) -> Plan:
    if mode not in HOOK_MODES:
        raise ValueError(f"hook mode must be one of {HOOK_MODES}")
    overrides = overrides or {}
    ifaces: dict[int, IfacePlan] = {}
    skipped: dict[int, Skipped] = {}
    for link in model.links.values():
        why = _skip_reason(link, model)
        if why is not None:
            skipped[link.index] = Skipped(link.index, link.name, why)
            continue
        hook, hook_why = choose_hook(link, mode, overrides)
        flags = TNA_IF_CHECK_CSUM_PARTIAL if hook == "xdp" and link.kind in LOCAL_STACK_KINDS else 0
        flags |= rp_filter_flags(model, link.index)
        assert link.mac is not None  # link.ethernet checked it
        ifaces[link.index] = IfacePlan(link.index, link.name, hook, hook_why, ("router",), link.mac, flags)
    return Plan(
        ifaces=ifaces,
        skipped=skipped,
        xdp_egress=frozenset(i for i, link in model.links.items() if xdp_egress_ok(link, model)),
        tc_egress=frozenset(i for i, link in model.links.items() if tc_egress_ok(link)),
    )
