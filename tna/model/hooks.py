"""Which base chains the kernel runs for a packet, in its order, and what
of them the fast path evaluates (pure, no I/O).

Every base chain of a family - iptables' built-in chains at the kernel's
fixed priorities (NF_IP_PRI_*: raw -300, mangle -150, filter 0, security
50), native nftables chains at their own - runs by hook, then priority;
conntrack looks the packet up at -200, the DNAT happens at -100 (whatever
a nat chain's own priority: nf_nat calls them from its hook there), the
SNAT at 100.  A forwarded packet passes prerouting, routing, forward,
postrouting; one to this box prerouting, routing, input.  So for iptables
alone:

  raw PREROUTING -> conntrack -> mangle PREROUTING -> nat PREROUTING ->
  routing -> mangle FORWARD -> filter FORWARD -> security FORWARD ->
  mangle POSTROUTING -> nat POSTROUTING

A packet must be accepted by every base chain; a DROP anywhere is final
(later chains count nothing).  nat chains (iptables' nat table, nft
chains of type nat) only ever judge a connection's first packet, which
the fast path never carries (an established connection's binding is
applied by nat.c.j2); they make conntrack track the family.  route chains
hook output only, which neither path passes.

The generated code runs the chains in four groups (stage): prerouting
below -200 ("raw": before conntrack), up to -100 ("pre": the received
destination), above -100 ("dnat": the DNAT'd destination, still no output
device), and the rest ("routed").  Equal priorities run in registration
order (nf_hook_entries_grow() puts a new hook before those of its
priority), which `nft -j list ruleset` does not say: chains that all accept give the same verdict and
counts in any order, so that is decided; any other verdict of one of
them is the kernel's (which chain counted what would differ).  For the
same reason a prerouting chain at exactly -200 of a family conntrack
tracks, one at exactly -100 of a family with NAT rules, and a postrouting
chain at 100 or later of such a family (it sees the SNAT'd source, which
the fast path does not compute) send whatever reaches them to the kernel
(BaseChain.kernel says why).

raw PREROUTING runs before conntrack has looked the packet up: a
--ctstate match there sees no entry, which xt_conntrack calls INVALID
(and a --ctstatus/--ctdir match never matches; iptables.py leaves those to
the kernel anyway).  The generated code runs it before conntrack.c.j2
touches the entry, so a packet raw drops refreshes nothing.

The destination's type (-m addrtype --dst-type, IPv4): inet_addr_type()
looks the address up in the local table alone, whatever the ip rules.
For a packet the fast path forwards with the kernel's default rules
(fib_has_custom_rules unset), routing consulted the local table first, so
no local, broadcast, blackhole, ... route there covers it: UNICAST, or
THROW if someone put a throw route in the local table - the code treats
it as either, and a rule that tells the two apart goes to the kernel.  An
address of the box (INPUT) is LOCAL while no local route was added from
user space (fib_has_custom_local_routes: its own /32 local route is the
longest match).  In PREROUTING of a forwarded packet the type is unknown
(a DNAT may follow); IPv6 types (ipv6_addr_type() and a route lookup) are
not modelled: those rules send what they could match to the kernel.

The mark (-m mark): a packet the fast path decides has the mark it
arrived with, since every target that sets one (MARK, CONNMARK
--restore-mark, TPROXY, ...) is a target TNA cannot apply, and a rule with
one keeps the traffic it could match on the kernel path.  Under TC the
program reads the skb's mark itself; under XDP no skb exists yet, and the
one the kernel builds starts with mark 0 (a frame from a veth peer in the
same namespace is the exception: its skb keeps the sender's mark, so while
a rule reads the mark the planner puts such a veth on TC: Link.peer_here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import groupby

from tna.model.firewall import ACCEPT, KERNEL, Firewall, FwChain, Packet, evaluate
from tna.model.ipset import IpSet
from tna.model.iptables import Rule, Table

# The hooks a packet passes, in order (nf_hook points): forwarded, to the box.
Hook = tuple[str, ...]
FORWARD_HOOK: Hook = ("prerouting", "forward", "postrouting")
INPUT_HOOK: Hook = ("prerouting", "input")
TABLES = ("raw", "mangle", "nat", "filter", "security")
# iptables' built-in chains register at the kernel's fixed priorities
# (NF_IP_PRI_*); nat is never evaluated (see above)
PRIORITY = {"raw": -300, "mangle": -150, "filter": 0, "security": 50}
CONNTRACK, NAT_DST, NAT_SRC = -200, -100, 100  # NF_IP_PRI_CONNTRACK, _NAT_DST, _NAT_SRC


@dataclass(frozen=True)
class BaseChain:
    """One base chain where it runs: its hook and priority, the group of
    the generated code that runs it ("raw": before conntrack, "pre": before
    a DNAT, "dnat": prerouting after it, "routed": the rest), whether it
    shares its priority with another base chain that changes something
    (tie), and why its packets must be the kernel's (kernel, or None)."""

    table: str
    chain: str
    hook: str
    priority: int
    stage: str
    tie: bool = False
    kernel: str | None = None


def _stage(hook: str, priority: int) -> str:
    if hook != "prerouting":
        return "routed"
    if priority < CONNTRACK:
        return "raw"
    return "pre" if priority <= NAT_DST else "dnat"


def _ambiguous(hook: str, priority: int, tracked: bool, natted: bool) -> str | None:
    """Why a chain at this place has no exact order against conntrack or
    NAT in the generated code (None: it has).  Equal priorities run in
    registration order, which `nft -j list ruleset` does not say."""
    if hook == "prerouting" and priority == CONNTRACK and tracked:
        return f"prerouting priority {CONNTRACK}: before or after conntrack (registration order)"
    if hook == "prerouting" and priority == NAT_DST and natted:
        return f"prerouting priority {NAT_DST}: before or after the DNAT (registration order)"
    if hook == "postrouting" and priority >= NAT_SRC and natted:
        return f"postrouting priority {priority}: sees the SNAT'd source, which the fast path does not compute"
    return None


def _native(table: Table) -> bool:
    """A native nftables table: its base chains say where they hook."""
    return any(c.hook is not None for c in table.chains.values())


def _tracked_natted(tables: dict[str, Table]) -> tuple[bool, bool]:
    """Whether conntrack tracks the family (a rule uses it, a nat table or
    nat chain exists) and whether NAT may bind its connections (rules in
    one)."""
    nat_chains = [c for t in tables.values() for c in t.chains.values() if c.kind == "nat" and c.hook]
    natted = ("nat" in tables and not tables["nat"].empty) or any(c.rules for c in nat_chains)
    tracked = ("nat" in tables or bool(nat_chains)
               or any(_uses_conntrack(r) for t in tables.values() for c in t.chains.values() for r in c.rules))
    return tracked, natted


def base_chains(tables: dict[str, Table], hook: Hook) -> tuple[BaseChain, ...]:
    """The filter base chains a packet on this path passes that change
    something, in the kernel's order: by hook, then priority.  nat chains
    judge only a connection's first packet (never the fast path's); route
    chains exist in output alone, which no packet here passes."""
    tracked, natted = _tracked_natted(tables)
    found: list[BaseChain] = []
    for tname, table in tables.items():
        for cname, c in table.chains.items():
            if c.hook is not None:
                where, prio = c.hook, c.priority or 0
                if c.kind != "filter":
                    continue
            elif tname in PRIORITY and not _native(table) and c.policy is not None:
                where, prio = cname.lower(), PRIORITY[tname]
            else:
                continue
            if where in hook and not _changes_nothing(table, cname):
                found.append(BaseChain(tname, cname, where, prio, _stage(where, prio),
                                       kernel=_ambiguous(where, prio, tracked, natted)))
    found.sort(key=lambda b: (hook.index(b.hook), b.priority))
    out: list[BaseChain] = []
    for _, same in groupby(found, key=lambda b: (b.hook, b.priority)):
        group = list(same)
        out += [replace(b, tie=len(group) > 1) for b in group]
    return tuple(out)


def _changes_nothing(table: Table | None, chain: str) -> bool:
    """No such chain, or one without rules that accepts: not evaluated (the
    fast path keeps no count of its policy, for any table)."""
    base = table.chains.get(chain) if table is not None else None
    return base is None or (not base.rules and base.policy == ACCEPT)


def evaluate_hook(tables: dict[str, Table], hook: Hook, pkt: Packet,
                  trace: list[tuple[str, str, int]] | None = None, sets: Mapping[str, IpSet] | None = None,
                  stages: tuple[str, ...] | None = None) -> str:
    """evaluate() over every base chain of the path in the kernel's order:
    ACCEPT if all accept, else the first other verdict; chains that share
    a priority run in an order the fast path cannot know, so any other
    verdict of one of them is the kernel's.  trace collects (table, chain,
    rule index) of every rule applied, index 0 for a policy; sets: the
    ipsets' members, by name; stages: only the chains of those groups."""
    trace = [] if trace is None else trace
    for b in base_chains(tables, hook):
        if stages is not None and b.stage not in stages:
            continue
        if b.kernel is not None:
            return KERNEL
        seen: list[tuple[str, int]] = []
        here = pkt
        if b.hook == "prerouting" and here.oif is not None:
            # not routed yet; and a DNAT may still change the destination:
            # the fast path knows the type of the routed one only
            here = replace(here, oif=None, dst_types=None)
        if b.hook == "postrouting":
            here = replace(here, iif="")  # ip_output() gives the hook no input device
        if b.stage == "raw":
            here = replace(here, ctstate="INVALID")  # no entry looked up yet
        verdict = evaluate(tables[b.table], b.chain, here, seen, sets)
        trace += [(b.table, c, i) for c, i in seen]
        if verdict != ACCEPT:
            return KERNEL if b.tie else verdict
    return ACCEPT


# nftables: ct statements and matches TNA leaves to the kernel, notrack, flow add, synproxy
_CONNTRACK = {"conntrack", "state", "CT", "NOTRACK", "CONNMARK", "connmark", "connlimit", "helper",
              "connbytes", "connlabel", "CONNSECMARK", "SYNPROXY", "ct", "notrack", "flow", "synproxy"}
# nftables (and iptables-nft's compat) forms of a helper: assigned, tested, expected
_NFT_HELPER = ("ct helper", "ct expectation", "xt target CT", "xt match helper")


def _uses_conntrack(rule: Rule) -> bool:
    """The rule makes the kernel track its family (xt_conntrack and friends
    register conntrack's hooks in the namespace)."""
    # unsupported entries read "-m NAME", "-j NAME" or "NAME --option"
    return rule.uses_ct or any(u.removeprefix("-m ").removeprefix("-j ").removeprefix("xt match ")
                                .removeprefix("xt target ").split(" ")[0] in _CONNTRACK for u in rule.unsupported)


def _closure(table: Table, base: BaseChain) -> tuple[FwChain, ...]:
    """Chains reachable from a base chain, each after every chain it jumps
    to; the base chain says where it runs."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for rule in table.chains[name].rules:
            if rule.jump and rule.expressible:
                visit(rule.target)
        order.append(name)
    visit(base.chain)
    return tuple(FwChain(n, table.chains[n].policy, tuple(table.chains[n].rules), table.name,
                         *((base.hook, base.stage, base.tie, base.kernel) if n == base.chain else ()))
                 for n in order)


def _hook_chains(tables: dict[str, Table], hook: Hook) -> tuple[FwChain, ...] | None:
    """The chains to evaluate for a hook, None if all accept everything (a
    user chain two base chains use appears once, after the first)."""
    out: list[FwChain] = []
    for b in base_chains(tables, hook):
        out += [c for c in _closure(tables[b.table], b) if c not in out]
    return tuple(out) or None


def _assigns_helper(rule: Rule) -> bool:
    """The rule gives connections a helper (raw `-j CT --helper`), or tests
    one (`-m helper`: something assigns them): expectations may exist."""
    return ((rule.target == "CT" and "--helper" in rule.target_args) or "-m helper" in rule.text
            or any(u.startswith(_NFT_HELPER) for u in rule.unsupported))


def firewall_plan(tables: dict[int, dict[str, Table]]) -> tuple[Firewall | None, str | None]:
    """(what the fast path evaluates, None) or (None, why all traffic must
    stay on the kernel path)."""
    chains: dict[int, tuple[FwChain, ...] | None] = {}
    inputs: dict[int, tuple[FwChain, ...] | None] = {}
    tracked: set[int] = set()
    for version, ts in tables.items():
        for name, table in ts.items():
            if name not in TABLES and not _native(table) and not table.empty:
                return None, f"the IPv{version} {name} table has rules (not modelled)"
            if table.vanishing and _tracked_natted({name: table})[0]:
                # its end, unannounced, may end conntrack's or NAT's hooks for the family
                return None, f"the table {name} goes with its owner's socket (flags owner) and uses conntrack or NAT"
        if _tracked_natted(ts)[0]:
            tracked.add(version)
        chains[version] = _hook_chains(ts, FORWARD_HOOK)
        inputs[version] = _hook_chains(ts, INPUT_HOOK)
    used = [cs for cs in (chains.get(4), chains.get(6), inputs.get(4), inputs.get(6)) if cs]
    patterns = sorted({str(m.value) for cs in used for c in cs for r in c.rules
                       for m in (r.iif, r.oif) if m is not None})
    if not used and not tracked:
        return None, None
    # NAT rules may send a new connection to one of the box's addresses
    # elsewhere (PREROUTING): no INPUT early drop for that family
    natted = {v for v, ts in tables.items() if _tracked_natted(ts)[1]}
    return Firewall(chains.get(4), chains.get(6), tuple(patterns), None if 4 in natted else inputs.get(4),
                    None if 6 in natted else inputs.get(6), 4 in tracked, 6 in tracked,
                    nat4=4 in natted, nat6=6 in natted,
                    ct_helpers=any(_assigns_helper(r) for ts in tables.values() for t in ts.values()
                                   for c in t.chains.values() for r in c.rules)), None
