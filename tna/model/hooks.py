"""Which tables' chains the kernel runs for a packet, in its order, and
what of them the fast path evaluates (pure, no I/O).

For a forwarded packet (nf_hook priorities: raw -300, conntrack -200,
mangle -150, nat -100, filter 0, security 50):

  raw PREROUTING -> conntrack -> mangle PREROUTING -> nat PREROUTING ->
  routing -> mangle FORWARD -> filter FORWARD -> security FORWARD ->
  mangle POSTROUTING -> nat POSTROUTING

and for one to this box the same up to routing, then mangle INPUT ->
filter INPUT -> security INPUT.  A packet must be accepted by every chain;
a DROP anywhere is final (later chains count nothing).  nat chains only
ever judge a connection's first packet, which the fast path never carries
(an established connection's binding is applied by nat.c.j2).

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
from dataclasses import replace

from tna.model.firewall import ACCEPT, Firewall, FwChain, Packet, evaluate
from tna.model.ipset import IpSet
from tna.model.iptables import Rule, Table

Hook = tuple[tuple[str, str], ...]
FORWARD_HOOK: Hook = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("mangle", "FORWARD"),
                      ("filter", "FORWARD"), ("security", "FORWARD"), ("mangle", "POSTROUTING"))
INPUT_HOOK: Hook = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("mangle", "INPUT"), ("filter", "INPUT"),
                    ("security", "INPUT"))
# The groups the generated code runs: before conntrack, before a DNAT is
# applied (the received destination), after it (the routed packet).
BEFORE_CONNTRACK = {("raw", "PREROUTING")}
BEFORE_DNAT = {("mangle", "PREROUTING")}
TABLES = ("raw", "mangle", "nat", "filter", "security")


def stage_group(table: str, chain: str) -> str:
    """Where a built-in chain runs in the generated code: "raw", "pre" or "routed"."""
    if (table, chain) in BEFORE_CONNTRACK:
        return "raw"
    return "pre" if (table, chain) in BEFORE_DNAT else "routed"


def _changes_nothing(table: Table | None, chain: str) -> bool:
    """No such chain, or one without rules that accepts: not evaluated (the
    fast path keeps no count of its policy, for any table)."""
    base = table.chains.get(chain) if table is not None else None
    return base is None or (not base.rules and base.policy == ACCEPT)


def evaluate_hook(tables: dict[str, Table], hook: Hook, pkt: Packet,
                  trace: list[tuple[str, str, int]] | None = None, sets: Mapping[str, IpSet] | None = None) -> str:
    """evaluate() over every chain of the hook in the kernel's order: ACCEPT
    if all accept, else the first other verdict.  trace collects (table,
    chain, rule index) of every rule applied, index 0 for a policy; sets:
    the ipsets' members, by name."""
    trace = [] if trace is None else trace
    for name, chain in hook:
        table = tables.get(name)
        if table is None or _changes_nothing(table, chain):
            continue
        seen: list[tuple[str, int]] = []
        here = pkt
        if chain == "PREROUTING" and here.oif is not None:
            # not routed yet; and a DNAT may still change the destination:
            # the fast path knows the type of the routed one only
            here = replace(here, oif=None, dst_types=None)
        if chain == "POSTROUTING":
            here = replace(here, iif="")  # ip_output() gives the hook no input device
        if name == "raw":
            here = replace(here, ctstate="INVALID")  # no entry looked up yet
        verdict = evaluate(table, chain, here, seen, sets)
        trace += [(name, c, i) for c, i in seen]
        if verdict != ACCEPT:
            return verdict
    return ACCEPT


_CONNTRACK = {"conntrack", "state", "CT", "NOTRACK", "CONNMARK", "connmark", "connlimit", "helper"}


def _uses_conntrack(rule: Rule) -> bool:
    """The rule makes the kernel track its family (xt_conntrack and friends
    register conntrack's hooks in the namespace)."""
    # unsupported entries read "-m NAME", "-j NAME" or "NAME --option"
    return rule.uses_ct or any(u.removeprefix("-m ").removeprefix("-j ").split(" ")[0] in _CONNTRACK
                                           for u in rule.unsupported)


def _closure(table: Table, start: str) -> tuple[FwChain, ...]:
    """Chains reachable from start, each after every chain it jumps to."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for rule in table.chains[name].rules:
            if rule.jump and rule.expressible:
                visit(rule.target)
        order.append(name)
    visit(start)
    return tuple(FwChain(n, table.chains[n].policy, tuple(table.chains[n].rules), table.name) for n in order)


def _hook_chains(tables: dict[str, Table], hook: Hook) -> tuple[FwChain, ...] | None:
    """The chains to evaluate for a hook, None if all accept everything (a
    user chain two built-in chains use appears once, after the first)."""
    out: list[FwChain] = []
    for name, chain in hook:
        table = tables.get(name)
        if table is not None and not _changes_nothing(table, chain):
            out += [c for c in _closure(table, chain) if c not in out]
    return tuple(out) or None


def _assigns_helper(rule: Rule) -> bool:
    """The rule gives connections a helper (raw `-j CT --helper`), or tests
    one (`-m helper`: something assigns them): expectations may exist."""
    return (rule.target == "CT" and "--helper" in rule.target_args) or "-m helper" in rule.text


def firewall_plan(tables: dict[int, dict[str, Table]]) -> tuple[Firewall | None, str | None]:
    """(what the fast path evaluates, None) or (None, why all traffic must
    stay on the kernel path)."""
    chains: dict[int, tuple[FwChain, ...] | None] = {}
    inputs: dict[int, tuple[FwChain, ...] | None] = {}
    tracked: set[int] = set()
    for version, ts in tables.items():
        for name, table in ts.items():
            if name not in TABLES and not table.empty:
                return None, f"the IPv{version} {name} table has rules (not modelled)"
            # a nat table needs conntrack, even without rules
            if name == "nat" or any(_uses_conntrack(r) for c in table.chains.values() for r in c.rules):
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
    natted = {v for v, ts in tables.items() if "nat" in ts and not ts["nat"].empty}
    return Firewall(chains.get(4), chains.get(6), tuple(patterns), None if 4 in natted else inputs.get(4),
                    None if 6 in natted else inputs.get(6), 4 in tracked, 6 in tracked,
                    nat4=4 in natted, nat6=6 in natted,
                    ct_helpers=any(_assigns_helper(r) for ts in tables.values() for t in ts.values()
                                   for c in t.chains.values() for r in c.rules)), None
