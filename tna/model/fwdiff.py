"""Which packets a rule change can concern: the traffic a narrowed hold
keeps on the kernel path while programs for the new rules load (pure).

Chains are walked in order, and a rule whose matches do not hold for a
packet does nothing to it: no verdict, no count, no jump.  So between two
rule sets that differ only in rules inserted into or deleted from chains
(same base chains, policies, interface patterns, sets, conntrack and NAT),
a packet that none of those rules could match meets the same rules in the
same order and gets the same verdict and the same counts under both: the
programs built for the old rules may go on deciding it.  What a changed
rule could match is over-approximated by its plain fields (family,
protocol, source and destination prefixes, port ranges); a field it
negates, or matches through a set, is taken as "any".  A chain seen by a
rule's fields as the packet arrives (raw, before DNAT) or as PREROUTING's
DNAT left it: the datapath tests both (firewall.c.j2).

  held_traffic(old, new) -> tuple[HeldFlow, ...] | None   (None: hold all)
"""

from __future__ import annotations

import ipaddress
import operator
from dataclasses import dataclass, fields
from difflib import SequenceMatcher

from tna.model.firewall import Firewall, FwChain
from tna.model.iptables import PROTOCOLS, Neg, Rule

HELD_MAX = 16  # TNA_FW_HOLD_MAX: more changed rules than this hold everything
PATHS = (("fwd4", 4), ("fwd6", 6), ("in4", 4), ("in6", 6))
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, order=True)
class HeldFlow:
    """Packets a changed rule could match: family 4 or 6; proto 0: any;
    src/dst None: any; ports (lo, hi), (0, 65535): any."""

    family: int
    proto: int = 0
    src: Net | None = None
    dst: Net | None = None
    sport: tuple[int, int] = (0, 65535)
    dport: tuple[int, int] = (0, 65535)

    @property
    def everything(self) -> bool:
        return (self.proto, self.src, self.dst, self.sport, self.dport) == (0, None, None, (0, 65535), (0, 65535))

    def __str__(self) -> str:
        """As `tna status` names it: "IPv4 udp 192.0.2.0/25 -> 198.51.100.2 dport 9"."""
        proto = [next((n for n, v in PROTOCOLS.items() if v == self.proto), str(self.proto))] if self.proto else []
        nets = [str(n.network_address if n.prefixlen == n.max_prefixlen else n) if n else "any"
                for n in (self.src, self.dst)]
        ports = [f"{name} {lo}" + (f"-{hi}" if hi != lo else "")
                 for name, (lo, hi) in (("sport", self.sport), ("dport", self.dport)) if (lo, hi) != (0, 65535)]
        return " ".join([f"IPv{self.family}", *proto, f"{nets[0]} -> {nets[1]}", *ports])


def _plain(m: Neg | None) -> object | None:
    """A match's value where it narrows (not negated), else None."""
    return None if m is None or m.neg else m.value


def _span(ranges: object) -> tuple[int, int]:
    assert isinstance(ranges, tuple)
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def could_match(rule: Rule, family: int) -> HeldFlow:
    """The packets of family the rule's plain fields let through (a
    superset of those it matches)."""
    proto = _plain(rule.proto)
    src, dst = _plain(rule.src), _plain(rule.dst)
    sport, dport = _plain(rule.sport), _plain(rule.dport)
    return HeldFlow(family, proto if isinstance(proto, int) else 0,
                    src if isinstance(src, Net) and src.version == family else None,
                    dst if isinstance(dst, Net) and dst.version == family else None,
                    _span(sport) if sport else (0, 65535), _span(dport) if dport else (0, 65535))


# what Rule's equality compares but its place (an attrgetter: a copy of each rule without it took ~15x as long)
_WHAT_IT_DOES = operator.attrgetter(*(f.name for f in fields(Rule) if f.compare and f.name != "index"))


def _key(rule: Rule) -> object:
    """What a rule does, whatever its place (as Firewall compares it)."""
    return (rule.text, rule.expressible) if rule.handle is None else _WHAT_IT_DOES(rule)


def _shape(c: FwChain) -> tuple:
    return c.table, c.name, c.policy, c.hook, c.stage, c.tie, c.kernel


def _changed_rules(old: FwChain, new: FwChain) -> list[Rule] | None:
    """The rules only one side has, in a diff of the two sequences; None:
    more than HELD_MAX (a restore of the whole set, say)."""
    a, b = [_key(r) for r in old.rules], [_key(r) for r in new.rules]
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    a, b = a[head:len(a) - tail], b[head:len(b) - tail]
    if abs(len(a) - len(b)) > HELD_MAX or min(len(a), len(b)) > 4 * HELD_MAX:
        return None
    changed: list[Rule] = []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            changed += old.rules[head + i1:head + i2] + new.rules[head + j1:head + j2]
    return changed if len(changed) <= HELD_MAX else None


def _path_changes(old: tuple[FwChain, ...] | None, new: tuple[FwChain, ...] | None) -> list[Rule] | None:
    """The rules inserted or deleted along one path; None if anything else
    differs.  A user chain only one side has is reached through a jump or
    goto to it, a changed rule itself."""
    if old is None or new is None:
        return None if old is not new else []
    if [_shape(c) for c in old if c.hook] != [_shape(c) for c in new if c.hook]:
        return None  # base chains, their order, policies or places
    before = {(c.table, c.name): c for c in old}
    changed: list[Rule] = []
    for c in new:
        o = before.get((c.table, c.name))
        if o is None:
            continue
        rules = _changed_rules(o, c) if _shape(o) == _shape(c) else None
        if rules is None:
            return None
        changed += rules
    return changed


def held_traffic(old: Firewall | None, new: Firewall | None) -> tuple[HeldFlow, ...] | None:
    """What programs built for old may not decide once new is the kernel's
    (rules inserted into or deleted from chains only), at most HELD_MAX
    flows; None: every packet (anything else changed, or too much)."""
    if old is None or new is None:
        return None if old is not new else ()
    if (old.ifaces, old.ct4, old.ct6, old.ipsets, old.nat4, old.nat6, old.ct_helpers) != (
            new.ifaces, new.ct4, new.ct6, new.ipsets, new.nat4, new.nat6, new.ct_helpers):
        return None
    held: set[HeldFlow] = set()
    for attr, family in PATHS:
        changed = _path_changes(getattr(old, attr), getattr(new, attr))
        if changed is None:
            return None
        held |= {could_match(r, family) for r in changed}
        if len(held) > HELD_MAX or any(h.everything for h in held):
            return None
    return tuple(sorted(held, key=repr))
