"""What `tna status` shows, as the daemon publishes it (state.json): a pure
function of the model, the plan and what is attached."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Protocol

from tna.model.config import AF_INET, AF_INET6, Model
from tna.model.firewall import Firewall, FwChain
from tna.model.ipset import IpSet
from tna.model.ipset import status as ipset_status
from tna.model.iptables import Rule
from tna.synth.fwgen import rule_refs
from tna.synth.planner import IfacePlan, Plan, bridge_skip_reason

STP_STATES = {0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking"}


class Running(Protocol):
    """An attached program (deploy's Attached)."""

    plan: IfacePlan
    prog_id: int
    source: Any


@functools.lru_cache(maxsize=2)
def _rules_json(fw: Firewall | None) -> list[dict[str, Any]]:
    """The counted rules for `tna stats --rules`, once per rule set."""
    return [dict(vars(r)) for r in rule_refs(fw)]  # asdict() is 10x slower


def _bridges(m: Model, p: Plan | None, fdb_map: tuple[Mapping[int, int], int]) -> dict[str, Any]:
    out = {}
    mirrored, capacity = fdb_map
    for br in m.links.values():
        if br.bridge is None:
            continue
        ports = {link.name: {"state": STP_STATES.get(link.port.state, str(link.port.state)),
                             "accelerated": p is not None and link.index in p.ports}
                 for link in m.links.values() if link.master == br.index and link.port is not None}
        accelerated = p is not None and br.index in p.bridges
        skipped = p.skipped.get(br.index) if p is not None and not accelerated else None
        out[br.name] = {
            "accelerated": accelerated,
            # a bridge fit for the fast path that is not on it is left alone by configuration
            "why_not": bridge_skip_reason(br) or (skipped and skipped.why),
            "routed": p is not None and br.index in p.l3_bridges,
            "fdb": m.fdb_per_bridge.get(br.index, 0),
            # entries in tna_fdb (the rest, when it is full, take the kernel path)
            "fdb_mirrored": mirrored.get(br.index, 0) if accelerated else 0,
            "fdb_capacity": capacity,  # of the map all bridges share
            "ageing_s": br.bridge.ageing_cs / 100,
            # its frames are the kernel's meanwhile (BR_PROMISC): a capture on it
            "promiscuous": br.promiscuity > 0,
            "ports": ports,
        }
    return out


def _kernel_why(rule: Rule, family: int, chain: FwChain) -> list[str]:
    """Why the traffic the rule could match goes to the kernel, if always:
    its chain has no exact place in the kernel's order (hooks.py), what
    TNA cannot apply, or a destination type it never knows
    (fw_dst_types() in firewall.c.j2)."""
    if chain.kernel is not None:
        return [chain.kernel]
    if not rule.expressible:
        return [*rule.unsupported, *(f"-m set {m.name} (not mirrored)" for m in rule.sets if m.shape is None)]
    if rule.dst_type is not None and chain.hook == "prerouting":
        return ["--dst-type in PREROUTING of a forwarded packet (a DNAT may follow)"]
    if rule.dst_type is not None and family == 6:
        return ["--dst-type of IPv6 (not known to the fast path)"]
    return []


def _kernel_rules(fw: Firewall) -> list[dict[str, Any]]:
    """The rules whose traffic always goes to the kernel, each with why."""
    out, seen = [], set()
    for family, chains in ((4, fw.fwd4), (6, fw.fwd6), (4, fw.in4), (6, fw.in6)):
        for c in chains or ():
            if (family, c.table, c.name) not in seen:
                seen.add((family, c.table, c.name))
                out += [{"family": family, "table": c.table, "chain": c.name, "index": r.index, "text": r.text,
                         "why": why} for r in c.rules if (why := _kernel_why(r, family, c))]
    return out


def _firewall(fw: Firewall | None, sets: Mapping[str, IpSet], stale: Mapping[str, float]) -> dict[str, Any] | None:
    """Rules compiled into the fast path per hook (every table's chains
    it passes), the rules that keep traffic on the kernel path, the
    families conntrack tracks, and the ipsets; None if no filtering."""
    if fw is None:
        return None
    return {"chains": {name: sum(len(c.rules) for c in chains) for name, chains in
                       (("FORWARD v4", fw.fwd4), ("FORWARD v6", fw.fwd6), ("INPUT v4", fw.in4),
                        ("INPUT v6", fw.in6)) if chains},
            "kernel_rules": _kernel_rules(fw),
            "conntrack": [f for f, on in (("ipv4", fw.ct4), ("ipv6", fw.ct6)) if on],
            "ipsets": ipset_status((r for cs in (fw.fwd4, fw.fwd6, fw.in4, fw.in6) for c in cs or () for r in c.rules),
                                   fw.ipsets, sets, stale)}


def describe(m: Model, p: Plan | None, attached: Mapping[int, Running], *, pid: int, mode: str,
             disabled: str | None, failed: Mapping[int, str],
             fdb_map: tuple[Mapping[int, int], int] = ({}, 0),
             ipset_stale: Mapping[str, float] | None = None, renumbered: int = 0,
             carried: Mapping[int, tuple[int, int]] | None = None) -> dict[str, Any]:
    """fdb_map: the FDB map's entries per bridge, and its capacity;
    ipset_stale: per set, how late a change keeping its header is seen;
    renumbered: programs kept for new rules so far (Datapath.renumbered);
    carried: counter id -> what to add to the running programs' counts
    for the rule's fast-path total (RuleCounts.published())."""
    ifaces = {}
    if p is not None:
        for ifindex, att in attached.items():
            ip = att.plan
            ifaces[ip.name] = {
                "ifindex": ifindex, "hook": ip.hook, "hook_why": ip.hook_why,
                "modules": list(ip.modules), "prog_id": att.prog_id, "source": str(att.source),
                "xdp_egress": ifindex in p.xdp_egress,
            }
    return {
        "pid": pid,
        "bridges": _bridges(m, p, fdb_map),
        "mode": mode,
        "disabled": disabled,
        "forwarding": {"ipv4": m.sysctls.ipv4_forward, "ipv6": m.sysctls.ipv6_forward},
        "ifaces": ifaces,
        "skipped": {s.name: s.why for s in (p.skipped.values() if p else [])},
        "failed": {m.links[i].name if i in m.links else str(i): why for i, why in failed.items()},
        "routes": len(m.routes),
        # families whose route dump is under way (their guards conservative meanwhile)
        "routes_loading": [n for f, n in ((AF_INET, "ipv4"), (AF_INET6, "ipv6")) if m.routes.loading(f)],
        "route_mtu": {"ipv4": m.route_mtu(AF_INET), "ipv6": m.route_mtu(AF_INET6)},  # the ROUTE_MTU guard
        "nexthops": len(m.nexthops),
        # the hash policy of each family with multipath routes (docs/datapath.md
        # says which packets go to the kernel under which policy)
        "multipath": {n: policy for f, n in ((AF_INET, "ipv4"), (AF_INET6, "ipv6"))
                      if (policy := m.multipath_policies().get(f)) is not None},
        # families whose routes could make bpf_fib_lookup() and nft's `fib
        # saddr . iif` disagree: that check goes to the kernel there
        "rpf_doubt": [n for f, n in ((AF_INET, "ipv4"), (AF_INET6, "ipv6")) if f in m.rpf_doubt()],
        # families IPsec policies may cover: their forwarded packets go to the kernel (XFRM)
        "xfrm": [n for f, n in ((AF_INET, "ipv4"), (AF_INET6, "ipv6")) if f in m.xfrm.families],
        "xfrm_blocking_defaults": list(m.xfrm.blocking_defaults),  # "unknown": unreadable
        "firewall_rules": _rules_json(m.firewall),
        "renumbered": renumbered,  # a change: counter ids of a running program name other rules now
        "carried": {str(i): list(c) for i, c in sorted((carried or {}).items())},
        "firewall": _firewall(m.firewall, m.ipsets, ipset_stale or {}),
        "neighbours": len(m.neighs),
    }
