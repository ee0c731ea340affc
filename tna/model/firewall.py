"""What a chain of any table decides for a packet: the reference semantics of
iptables evaluation (pure, no I/O).

This is the specification the firewall module's generated code must match
(tests compare the two), and it defines "could this rule touch the packet":
a rule TNA cannot express decides nothing itself, it sends every packet it
could match to the kernel.

  evaluate(table, "FORWARD", pkt) -> ACCEPT | DROP | KERNEL

Chains are walked as the kernel walks them (ipt_do_table()): rules in
order, a jump pushes the position, RETURN or the end of a user chain pops
it, the end of a built-in chain applies its policy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from tna.model.ipset import IpSet, SetShape, sets_hold
from tna.model.iptables import Neg, Rule, Table

ACCEPT, DROP, KERNEL = "ACCEPT", "DROP", "KERNEL"
CONTINUE = "CONTINUE"  # a rule's target: no verdict (a counter, iptables' rule without -j)
_CONTINUE = "_CONTINUE"  # a walk's end: the caller goes on
PORT_PROTOS = {6, 17, 132, 136}  # tcp, udp, sctp, udplite: ports at the start of L4


@dataclass(frozen=True)
class Packet:
    """What filter rules can look at (a packet the fast path could handle:
    not a fragment, headers complete)."""

    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    iif: str
    oif: str | None            # None on INPUT
    proto: int
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    # conntrack's state for the packet (NEW, ESTABLISHED, RELATED, INVALID,
    # UNTRACKED), or the states it could be when the fast path cannot know
    # which (no entry: NEW or INVALID); NEW is also a packet of a UDP entry
    # that has seen no reply, in its original direction
    ctstate: str | frozenset[str] | None = None
    l4len: int | None = None   # what the IP length leaves for L4 (None: enough for every header)
    mark: int = 0  # skb->mark (hooks.py: 0 for every packet the fast path decides)
    # the entry's status bits (CT_STATUS) and the packet's direction, where it
    # has one; a packet of no entry yet that conntrack calls NEW has status 0
    ctstatus: int = 0
    ctdir: str = "ORIGINAL"
    # the types the kernel's local table could give the destination
    # (-m addrtype, inet_addr_type(); several where the fast path cannot
    # tell which), None where it cannot know (hooks.py)
    dst_types: frozenset[str] | None = None
    # nft's `fib saddr . iif oif`: whether the route back to the source
    # leaves by the input device, None where the fast path cannot know
    rpf: bool | None = None


def iface_matches(pattern: str, name: str | None) -> bool:
    """iptables interface match: exact, or a prefix with a trailing '+'.
    No device (None) is ipt_do_table()'s nulldevname "": only `+` matches it."""
    name = name or ""
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _ports_match(ranges: object, port: int | None) -> bool:
    assert isinstance(ranges, tuple)
    return port is not None and any(lo <= port <= hi for lo, hi in ranges)


def _one(m: Neg | None, test: bool) -> bool:
    return True if m is None else test != m.neg


NO_ENTRY = {"INVALID", "UNTRACKED"}  # no conntrack entry attached to the packet


def _conntrack(rule: Rule, pkt: Packet, could: bool) -> bool:
    """The rule's conntrack match over the states the packet could have: it
    holds for all of them, or (could) for at least one.  As xt_conntrack:
    the state first; without an entry a rule with a state match matches on
    that alone, one without never does; with one, the direction and (any
    bit of) the status too."""
    if pkt.ctstate is None:
        return False
    states = frozenset({pkt.ctstate}) if isinstance(pkt.ctstate, str) else pkt.ctstate

    def holds(state: str) -> bool:
        if rule.ctstate is not None and (state in rule.ctstate.value) == rule.ctstate.neg:  # type: ignore[operator]
            return False
        if state in NO_ENTRY:
            return rule.ctstate is not None
        return ((rule.ctdir is None or rule.ctdir == pkt.ctdir)
                and _one(rule.ctstatus, rule.ctstatus is not None and bool(pkt.ctstatus & rule.ctstatus.value)))  # type: ignore[operator]
    return any(map(holds, states)) if could else all(map(holds, states))


def _dst_type(m: Neg, types: frozenset[str] | None, could: bool) -> bool:
    """--dst-type over the types the destination could have (IPv4: the one
    type inet_addr_type() gives is one of them)."""
    if types is None:
        return could
    holds = [(t in m.value) != m.neg for t in types]  # type: ignore[operator]
    return any(holds) if could else all(holds)


def _rpf(m: Neg, via_iif: bool | None, could: bool) -> bool:
    """`fib saddr . iif oif exists` (missing: neg) for a packet whose route
    back does (via_iif) or does not leave by its input device."""
    return could if via_iif is None else via_iif != m.neg


def rule_matches(rule: Rule, pkt: Packet, could: bool = False, sets: Mapping[str, IpSet] | None = None) -> bool:
    """Whether the rule's expressible matches hold for pkt (the caller deals
    with what is not expressible); could: whether they may hold, for a
    packet whose conntrack state is one of several; sets: the members of
    the ipsets the rules match on, by name."""
    def tcp_flags() -> bool:
        assert rule.tcp_flags is not None
        mask, comp = rule.tcp_flags.value  # type: ignore[misc]
        return pkt.tcp_flags is not None and pkt.tcp_flags & mask == comp

    def icmp() -> bool:
        assert rule.icmp_type is not None
        t, code = rule.icmp_type.value  # type: ignore[misc]
        return pkt.icmp_type == t and (code is None or pkt.icmp_code == code)

    ports_ok = pkt.proto in PORT_PROTOS
    return (
        _one(rule.src, rule.src is not None and pkt.src in rule.src.value)  # type: ignore[operator]
        and _one(rule.dst, rule.dst is not None and pkt.dst in rule.dst.value)  # type: ignore[operator]
        and _one(rule.iif, rule.iif is not None and iface_matches(str(rule.iif.value), pkt.iif))
        and _one(rule.oif, rule.oif is not None and iface_matches(str(rule.oif.value), pkt.oif))
        and _one(rule.proto, rule.proto is not None and rule.proto.value in (0, pkt.proto))
        and _one(rule.sport, rule.sport is not None and ports_ok and _ports_match(rule.sport.value, pkt.sport))
        and _one(rule.dport, rule.dport is not None and ports_ok and _ports_match(rule.dport.value, pkt.dport))
        and _one(rule.ports, rule.ports is not None and ports_ok
                 and (_ports_match(rule.ports.value, pkt.sport) or _ports_match(rule.ports.value, pkt.dport)))
        and _one(rule.tcp_flags, rule.tcp_flags is not None and pkt.proto == 6 and tcp_flags())
        and _one(rule.icmp_type, rule.icmp_type is not None and pkt.proto in (1, 58) and icmp())
        and _one(rule.fragment, False)  # packets TNA handles are never fragments
        and _one(rule.mark, rule.mark is not None and pkt.mark & rule.mark.value[1] == rule.mark.value[0])  # type: ignore[index]
        and (not rule.uses_ct or _conntrack(rule, pkt, could))
        and (rule.dst_type is None or _dst_type(rule.dst_type, pkt.dst_types, could))
        and (rule.rpf is None or _rpf(rule.rpf, pkt.rpf, could))
        and (not rule.sets or sets_hold(rule.sets, pkt, sets))
    )


def evaluate(table: Table, chain: str, pkt: Packet, trace: list[tuple[str, int]] | None = None,
             sets: Mapping[str, IpSet] | None = None) -> str:
    """ACCEPT or DROP as the kernel would decide, or KERNEL when a rule TNA
    cannot express could be reached and could match.  trace collects the
    (chain, rule index) of every rule applied, index 0 for a policy: what
    iptables' counters count."""
    trace = [] if trace is None else trace
    verdict = _walk(table, chain, pkt, 0, trace, sets)
    if verdict == _CONTINUE:
        policy = table.chains[chain].policy
        trace.append((chain, 0))
        return policy if policy in (ACCEPT, DROP) else KERNEL
    return verdict


def _walk(table: Table, chain: str, pkt: Packet, depth: int, trace: list[tuple[str, int]],
          sets: Mapping[str, IpSet] | None) -> str:
    if depth > 32:  # the kernel refuses loops; deeper than this is not ours
        return KERNEL
    for rule in table.chains[chain].rules:
        if not rule_matches(rule, pkt, could=True, sets=sets):
            continue
        if not rule.expressible or not rule_matches(rule, pkt, sets=sets):
            # its own matches hold (or are all it has that TNA knows): what it
            # adds (another match, LOG, REJECT, ...) is the kernel's to judge;
            # so is a state match that holds for only some possible states
            return KERNEL
        trace.append((chain, rule.index))
        if rule.target == CONTINUE:  # counted, the next rule follows
            continue
        if rule.target in (ACCEPT, DROP):
            return rule.target
        if rule.target == "RETURN":
            return _CONTINUE
        verdict = _walk(table, rule.target, pkt, depth + 1, trace, sets)
        if verdict != _CONTINUE or rule.goto:
            # -g pushes no return position: the end of its chain ends this one
            return verdict
    return _CONTINUE


# --- what the fast path may take over ----------------------------------------

@dataclass(frozen=True)
class FwChain:
    name: str
    policy: str | None          # ACCEPT/DROP for a built-in chain, None for a user chain
    rules: tuple[Rule, ...]
    table: str = "filter"
    # a base chain: its hook, the group of the generated code that runs it,
    # whether it shares its priority with another, why the kernel must
    # judge its packets (hooks.BaseChain); None for a chain jumped to
    hook: str | None = None
    stage: str | None = None
    tie: bool = False
    kernel: str | None = None

    @cached_property
    def parts(self) -> list[Rule | RuleSet]:
        """The rules as code and sets (segments()), worked out once."""
        return segments(self.rules)


@dataclass(frozen=True, eq=False)
class Firewall:
    """The chains the fast path evaluates for a forwarded packet (fwd) and
    one to this box (in), per IP version: every table's, each chain after
    the chains it jumps to, the built-in chains in the order the kernel
    runs them (hooks.py; None: no filtering for that version), and the
    interface patterns they use (bit k of an interface's mask: pattern k)."""

    fwd4: tuple[FwChain, ...] | None  # FORWARD per IP version
    fwd6: tuple[FwChain, ...] | None
    ifaces: tuple[str, ...]  # patterns of the FORWARD and INPUT rules, sorted
    in4: tuple[FwChain, ...] | None = None  # INPUT per IP version: drops applied early, at the hook
    in6: tuple[FwChain, ...] | None = None
    ct4: bool = False           # conntrack tracks IPv4 (a rule uses it): only its
    ct6: bool = False           # established connections are fast-pathed
    ipsets: tuple[SetShape, ...] = ()  # the ipsets mirrored (members: map contents)
    nat4: bool = False          # a nat table has rules: entries may carry a NAT binding
    nat6: bool = False
    ct_helpers: bool = False    # a helper may expect a connection: no-entry packets are the kernel's

    # Compared often (model, plans, attached programs) and 10,000 rules deep:
    # an iptables rule by its text, which says all it does, and whether the
    # fast path may decide it (a set's options alone can make it the
    # kernel's: ipset.resolve()); an nft rule (a handle) by all its fields:
    # its text names a named set or verdict map whose elements may be code
    # (`sctp dport @svc`, `ip saddr vmap @blk`: one Rule per element).
    @cached_property
    def _identity(self) -> tuple:
        chains = tuple(tuple((c.table, c.name, c.policy, c.hook, c.stage, c.tie, c.kernel,
                              tuple((r.text, r.expressible) if r.handle is None else r for r in c.rules))
                             for c in cs) if cs else None
                       for cs in (self.fwd4, self.fwd6, self.in4, self.in6))
        return chains, self.ifaces, self.ct4, self.ct6, self.ipsets, self.nat4, self.nat6, self.ct_helpers

    @cached_property
    def _hash(self) -> int:
        return hash(self._identity)

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Firewall) and self._hash == other._hash
                                 and self._identity == other._identity)

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def checks_rpf(self) -> bool:
        """Does a forwarded packet's rule use nft's `fib saddr . iif` check?"""
        return any(r.rpf is not None for cs in (self.fwd4, self.fwd6) if cs for c in cs for r in c.rules)

    @cached_property
    def reads_mark(self) -> bool:
        """Does a rule match on the skb's mark (-m mark)?"""
        return any(r.mark is not None for cs in (self.fwd4, self.fwd6, self.in4, self.in6) if cs
                   for c in cs for r in c.rules)

    def iface_masks(self, names: dict[int, str]) -> dict[int, int]:
        """ifindex -> the patterns its name matches, as bits."""
        return {i: sum(1 << k for k, pattern in enumerate(self.ifaces) if iface_matches(pattern, name))
                for i, name in names.items()}

    @property
    def nodev_mask(self) -> int:
        """The patterns a hook with no device there matches (`+`)."""
        return sum(1 << k for k, pattern in enumerate(self.ifaces) if iface_matches(pattern, None))


SET_MIN = 4               # shorter runs of set-able rules stay code: cheaper than a lookup
SET_PORTS_MAX = 16        # port values one rule may add to a set (multiport lists, small ranges)


@dataclass(frozen=True)
class RuleSet:
    """Consecutive rules of one chain that one lookup can decide: each
    matches exact values of the same fields (protocol, source port,
    destination port, one address) and a prefix of at most one address,
    none negated, and all share one terminal target (ACCEPT, DROP, RETURN).
    The first that matches is the longest-prefix entry's smallest rule
    index among the entries covering it, so order needs no code.

    fields: of ("proto", "sport", "dport", "src", "dst"), in key order: exact
    fields first, the one that may be a prefix (lpm) last."""

    target: str
    fields: tuple[str, ...]
    lpm: str | None
    rules: tuple[Rule, ...]


def _set_shape(rule: Rule) -> tuple[str, tuple[str, ...]] | None:
    """(target, fields) if the rule can be part of a RuleSet."""
    if not rule.expressible or rule.goto or rule.target not in (ACCEPT, DROP, "RETURN"):
        return None
    if rule.sets or any(getattr(rule, f) is not None for f in ("iif", "oif", "ports", "tcp_flags", "icmp_type",
                                                                "fragment", "ctstate", "ctstatus", "ctdir", "mark",
                                                                "dst_type", "rpf")):
        return None
    fields = tuple(f for f in ("proto", "sport", "dport", "src", "dst") if getattr(rule, f) is not None)
    if any(getattr(rule, f).neg for f in fields):
        return None
    if rule.proto is not None and rule.proto.value == 0:
        return None
    for f in ("sport", "dport"):
        m = getattr(rule, f)
        if m is not None and sum(hi - lo + 1 for lo, hi in m.value) > SET_PORTS_MAX:
            return None
    return rule.target, fields


def _partial(rule: Rule, field: str) -> bool:
    m = getattr(rule, field)
    return m is not None and m.value.prefixlen < m.value.max_prefixlen


def segments(rules: tuple[Rule, ...]) -> list[Rule | RuleSet]:
    """A chain's rules as code (Rule) and lookups (RuleSet, at least SET_MIN
    rules), in order."""
    out: list[Rule | RuleSet] = []
    run: list[Rule] = []
    partial = {"src": False, "dst": False}  # some rule of the run has a shorter prefix there

    def flush() -> None:
        if len(run) >= SET_MIN:
            target, fields = _set_shape(run[0])  # type: ignore[misc]
            lpm = next((f for f in ("src", "dst") if partial[f]), None)
            if lpm is None and fields and fields[-1] in ("src", "dst"):
                lpm = fields[-1]
            order = tuple(f for f in fields if f != lpm) + ((lpm,) if lpm else ())
            out.append(RuleSet(target, order, lpm, tuple(run)))
        else:
            out.extend(run)
        run.clear()
        partial.update(src=False, dst=False)

    run_shape = None
    for rule in rules:
        shape = _set_shape(rule)
        src, dst = partial["src"] or _partial(rule, "src"), partial["dst"] or _partial(rule, "dst")
        if not (shape is not None and run and shape == run_shape and not (src and dst)):
            flush()
            src, dst = _partial(rule, "src"), _partial(rule, "dst")
            run_shape = shape
        if shape is None:
            out.append(rule)
        else:
            run.append(rule)
            partial.update(src=src, dst=dst)
    flush()
    return out


def code_size(chains: tuple[FwChain, ...]) -> int:
    """Rules compiled as code: what compile time grows with."""
    return sum(len(c.parts) for c in chains)
