"""Reading nft rules: one alternative of a rule being read (Alt), and the
matches on sets (SetMatches): pure, no I/O.

Named address sets, concatenations and port sets become IpSets (maps:
their element changes are map updates, tna/model/nftsets.py); a named set
matched by what has no map (an interface name, a `th` or DCCP/SCTP port)
becomes code, when its elements cannot change unannounced (constant()).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tna.model.ipset import IpSet, Member, SetMatch
from tna.model.iptables import Neg
from tna.model.nftables_text import Unsupported, counted, expires, ipset_of, nets, port_ranges
from tna.model.nftsets import CONCAT_L4, L4, concat_set_name, interval_members, nft_set_name, port_set_name

if TYPE_CHECKING:  # only for hints: nftables.py imports this module
    from tna.model.nftables import NftRules

MAX_SET_MEMBERS = 1 << 16  # a concatenation's or port set's port ranges, expanded (ipset stores ranges so too)
FAMILY_OF = {"ip": 4, "ip6": 6}


@dataclass
class Alt:
    """One alternative of a rule being read: its typed fields so far."""

    fields: dict[str, object] = field(default_factory=dict)
    sets: list[SetMatch] = field(default_factory=list)
    target: str | None = None
    goto: bool = False
    versions: frozenset[int] = frozenset((4, 6))

    def fork(self) -> Alt:
        return Alt(dict(self.fields), list(self.sets), self.target, self.goto, self.versions)


def element_value(e: object) -> object:
    """A set element's value: nft wraps one with a counter or timeout as
    {"elem": {"val": ...}}."""
    return e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e


def set_field(a: Alt, key: str, value: object, neg: bool) -> list[Alt]:
    if key in a.fields:
        raise Unsupported(f"a second {key} match")
    a.fields[key] = Neg(value, neg)
    return [a]


def imply_proto(a: Alt, num: int) -> None:
    """tcp/udp/icmp payload matches carry nft's implicit l4proto dependency."""
    cur = a.fields.get("proto")
    if cur is None:
        a.fields["proto"] = Neg(num)
    elif cur != Neg(num):
        raise Unsupported(f"protocol {num} after {cur}")


class SetMatches:
    """The set matches of _Ctx (tna/model/nftables.py): where the rule is,
    and the sets it may name."""

    family: str
    table: str
    handle: int
    out: NftRules
    set_json: dict[tuple[str, ...], dict]
    filled: set[tuple[str, str, str]]  # the sets rules add to from the packet path (set statements)
    anon: int

    def address(self, v: int, key: str, right: object, neg: bool, a: Alt) -> list[Alt]:
        if isinstance(right, str) and right.startswith("@"):
            a.sets.append(SetMatch(self.named_set(right[1:]), (key,), neg))
            return [a]
        prefixes = nets(right)
        if isinstance(right, str) or (isinstance(right, dict) and "prefix" in right):  # one prefix
            return set_field(a, key, prefixes[0], neg)
        self.anon += 1
        name = f"{nft_set_name(self.family, self.table, 'anon')}:{self.handle}:{self.anon}"
        self.out.sets[name] = IpSet(name, "hash:net", v, max(len(prefixes), 1),
                                    members=frozenset(Member(n) for n in prefixes))
        a.sets.append(SetMatch(name, (key,), neg))
        return [a]

    def named_set(self, name: str) -> str:
        """The IpSet of an address set (the name SetMatch uses)."""
        s = self.set_json.get((self.family, self.table, name))
        if s is None:
            raise Unsupported(f"set @{name} is not listed")
        full = nft_set_name(self.family, self.table, name)
        if full in self.out.sets:
            return full
        typ = s.get("type")
        if typ not in ("ipv4_addr", "ipv6_addr"):
            raise Unsupported(f"set @{name} of type {typ}")
        v, found = 4 if typ == "ipv4_addr" else 6, [n for e in s.get("elem", []) for n in nets(e)]
        interval = "interval" in s.get("flags", [])  # canonical members: what a commit's elements give too
        members = set(interval_members(found, v)) if interval else {Member(n) for n in found}
        self.out.sets[full] = ipset_of(s, full, "hash:net" if interval else "hash:ip", v, members, self.filled)
        return full

    def concat(self, parts: list, name: str, neg: bool, a: Alt) -> list[Alt]:
        """`ip saddr . tcp dport @s`: a hash:ip,port (hash:net,port with
        intervals) whose members carry the rule's protocol (the packet's
        protocol is the rule's: its tcp/udp match implies it)."""
        s = self.set_json.get((self.family, self.table, name))
        addr, port = (p.get("payload", {}) if isinstance(p, dict) else {} for p in [*parts, None, None][:2])
        if (len(parts) != 2 or s is None or addr.get("protocol") not in FAMILY_OF
                or addr.get("field") not in ("saddr", "daddr") or port.get("protocol") not in CONCAT_L4
                or port.get("field") not in ("sport", "dport") or s.get("type") not in (
                    ["ipv4_addr", "inet_service"], ["ipv6_addr", "inet_service"])):
            raise Unsupported(f"concatenation set @{name}")
        proto, v = L4[port["protocol"]], FAMILY_OF[addr["protocol"]]
        full = concat_set_name(nft_set_name(self.family, self.table, name), port["protocol"])
        if full not in self.out.sets:
            members = set()
            for e in s.get("elem", []):
                val = element_value(e)
                net, ports = val["concat"]
                for n in nets(net):
                    for lo, hi in port_ranges(ports):
                        if len(members) + hi - lo >= MAX_SET_MEMBERS:
                            raise Unsupported(f"set @{name}: more than {MAX_SET_MEMBERS} entries expanded")
                        members.update(Member(n, proto, p) for p in range(lo, hi + 1))
            self.out.sets[full] = ipset_of(s, full, "hash:net,port" if "interval" in s.get("flags", [])
                                           else "hash:ip,port", v, members, self.filled)
        imply_proto(a, proto)
        a.versions = a.versions & {v}
        dirs = tuple("src" if p["field"] in ("saddr", "sport") else "dst" for p in (addr, port))
        a.sets.append(SetMatch(full, dirs, neg))
        return [a]

    def port_set(self, l4: str, fld: str, name: str, neg: bool, a: Alt) -> list[Alt]:
        """`tcp dport @s`, s of type inet_service: a set per IP version
        (port_set_name()) whose members hold the whole address space, so
        that an element change is a map update.  Not `th`: the protocol
        is the member's."""
        s = self.set_json.get((self.family, self.table, name))
        if s is None or s.get("type") != "inet_service":
            raise Unsupported(f"set @{name} (not an inet_service set)")
        vals = [element_value(e) for e in s.get("elem", [])]
        ranges = [r for v in vals for r in port_ranges(v)]
        if sum(hi - lo + 1 for lo, hi in ranges) > MAX_SET_MEMBERS:
            raise Unsupported(f"set @{name}: more than {MAX_SET_MEMBERS} ports")
        kind = "hash:net,port" if "interval" in s.get("flags", []) else "hash:ip,port"
        d = "src" if fld == "sport" else "dst"
        for v in sorted(a.versions):
            full = port_set_name(nft_set_name(self.family, self.table, name), l4, v)
            if full not in self.out.sets:
                net = ipaddress.ip_network("0.0.0.0/0" if v == 4 else "::/0")
                members = {Member(net, L4[l4], p) for lo, hi in ranges for p in range(lo, hi + 1)}
                self.out.sets[full] = ipset_of(s, full, kind, v, members, self.filled)
            a.sets.append(SetMatch(full, (d, d), neg))
        return [a]

    def constant(self, name: str, *kind: str) -> dict | None:
        """The JSON of named set (kind: or "map") name whose elements become
        code, None if it is none: listed, without timeouts, and not filled
        by rules from the packet path (elements that change unannounced),
        nor counting its matches in the elements (code counts nothing)."""
        s = self.set_json.get((self.family, self.table, name, *kind))
        if s is None or expires(s) or counted(s) or (self.family, self.table, name) in self.filled:
            return None
        self.out.code_sets.add(nft_set_name(self.family, self.table, name))
        return s

    def ports(self, right: object) -> tuple[tuple[int, int], ...]:
        if isinstance(right, str) and right.startswith("@"):
            s = self.constant(right[1:])
            if s is None or s.get("type") != "inet_service":
                raise Unsupported(f"set {right} (not a constant inet_service set)")
            return tuple(r for e in s.get("elem", []) for r in port_ranges(e))
        return port_ranges(right)
