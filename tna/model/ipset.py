"""ipsets and `-m set --match-set` matches: pure data, no I/O.

The semantics are the kernel's (xt_set.c, ip_set_core.c ip_set_test(),
ip_set_hash_gen.h): a set test is false when the rule gives fewer direction
flags than the set has dimensions or the set's family is not the packet's;
for the hash types with nets the most specific entry equal to the packet's
fields decides (the cidrs are tried longest first), and a `nomatch` entry
makes the test false, unless the rule says --return-nomatch, which inverts
what the entry says (a nomatch entry then matches, a plain one does not)
for the types with nomatch entries only.  hash:net,iface tries only the
longest net any entry has: its entry for the packet's interface decides,
and without one nothing matches (hash_netiface4_data_equal() counts the
net as found before it compares the interface).  `! --match-set` negates
the result.

Which sets the fast path may mirror (mirror_problem()): only the hash types
below, and only sets whose answer the daemon can follow with the commands it
sees: an entry with a timeout expires silently; a set with counters is
updated by every match (unless the rule says ! --update-counters), which
the fast path would have to do too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for hints: iptables.py imports this module
    from tna.model.firewall import Packet
    from tna.model.iptables import Rule, Table

# the types mirrored, by their number of dimensions (direction flags used)
DIMENSIONS = {"hash:ip": 1, "hash:net": 1, "hash:ip,port": 2, "hash:net,port": 2, "hash:net,iface": 2}
PORT_TYPES = {"hash:ip,port", "hash:net,port"}
# the types with IPSET_TYPE_NOMATCH: only their tests --return-nomatch inverts (ip_set_test())
NOMATCH_TYPES = {"hash:net", "hash:net,port", "hash:net,iface"}
SET_MAP_MAX = 1 << 20  # entries one set's map may hold (no prealloc: memory only for entries present)
# ip_set_getport.c get_port(): the header each port protocol must have whole
# (else no match): TCP, UDP, SCTP, UDPLITE; ICMP and ICMPv6 (either family)
# give type << 8 | code
_PORT_HEADER = {6: 20, 17: 8, 132: 12, 136: 8}
_ICMPS = {1, 58}


@dataclass(frozen=True)
class Member:
    """One element as the kernel lists it (ranges are stored expanded)."""

    net: ipaddress.IPv4Network | ipaddress.IPv6Network  # a host for hash:ip (or its netmask)
    proto: int | None = None    # hash:*,port
    port: int | None = None     # hash:*,port: the port, or ICMP type << 8 | code
    iface: str | None = None    # hash:net,iface
    nomatch: bool = False
    physdev: bool = False       # hash:net,iface: a bridge port name (br_netfilter's)
    wildcard: bool = False      # hash:net,iface: the name is a prefix


@dataclass(frozen=True)
class IpSet:
    name: str
    type: str                   # "hash:net", ...
    family: int                 # 4 or 6
    maxelem: int
    timeout: bool = False       # created with a timeout: entries expire silently
    counters: bool = False      # each match updates the entry's counters
    unmodelled: str | None = None  # a create option whose meaning is not modelled (bitmask, ...)
    packet_filled: bool = False  # nftables: a rule's set statement adds to it from the packet path, unannounced
    code_too: bool = False      # nftables: other rules compile its elements as code (a change is a re-read)
    members: frozenset[Member] = frozenset()  # not read for a set whose rules are the kernel's
    elements: int | None = None  # what the kernel says it holds (None: len(members))


@dataclass(frozen=True)
class SetShape:
    """What code and maps need of a set (members are map contents)."""

    name: str
    type: str
    family: int
    capacity: int               # entries of its map


@dataclass(frozen=True)
class SetMatch:
    """One `--match-set NAME FLAGS` with its options; shape and family are
    filled by resolve() for a set the fast path mirrors (None: the kernel
    decides the rule)."""

    name: str
    dirs: tuple[str, ...]       # "src" / "dst" per dimension
    neg: bool = False
    return_nomatch: bool = False
    update_counters: bool = True
    counter_test: bool = False  # --packets-*/--bytes-*: reads the entry's counters
    shape: SetShape | None = None
    family: int = 0             # the rule's IP version


def parse_option(tokens: list[str], i: int, neg: bool, sets: list[SetMatch]) -> int | None:
    """The set-match option at tokens[i] (neg: it followed `!`) into sets;
    the index after it, or None if it is not an option of the set match."""
    tok = tokens[i]
    if tok == "--match-set":
        sets.append(SetMatch(tokens[i + 1], tuple(tokens[i + 2].split(",")), neg))
        return i + 3
    if not sets:
        return None
    if tok == "--return-nomatch":
        sets[-1] = replace(sets[-1], return_nomatch=True)
        return i + 1
    if tok == "--update-counters":
        sets[-1] = replace(sets[-1], update_counters=not neg)
        return i + 1
    if tok == "--update-subcounters":  # list:set members only: nothing for the types mirrored
        return i + 1
    if tok in ("--packets-eq", "--packets-lt", "--packets-gt", "--bytes-eq", "--bytes-lt", "--bytes-gt"):
        sets[-1] = replace(sets[-1], counter_test=True)
        return i + 2
    return None


def mirror_problem(s: IpSet | None, m: SetMatch) -> str | None:
    """Why the fast path cannot decide match m on set s (None: it can)."""
    if s is None:
        return "the set cannot be read"
    if s.type not in DIMENSIONS:
        return f"type {s.type} is not mirrored"
    if s.unmodelled:
        return f"option {s.unmodelled} is not modelled"
    if s.timeout:
        return "entries with a timeout expire without a command the daemon sees"
    if s.packet_filled:
        return "a rule's set statement adds entries from the packet path, announced to no one"
    if m.counter_test:
        return "it tests the entries' counters"
    if s.counters and m.update_counters:
        return "each match updates the set's counters (the rule lacks ! --update-counters)"
    if any(e.physdev or e.wildcard for e in s.members):
        return "physdev or wildcard interface entries are not mirrored"
    if s.type == "hash:net,iface" and _hidden_interface(s.members):
        return "a longer net lacks an interface a shorter one has (the trie would fall back to the shorter)"
    if len(s.members) > capacity(s):
        return f"{len(s.members)} entries: a set's map holds at most {capacity(s)}"
    return None


def _hidden_interface(members: Iterable[Member]) -> bool:
    """Whether a net inside another lacks one of the outer net's interfaces:
    there the kernel answers no match (only the longest net is tried), the
    trie of (ifindex, net) the outer net's entry."""
    ifaces: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, set[str | None]] = {}
    for e in members:
        ifaces.setdefault(e.net, set()).add(e.iface)
    plens = sorted({n.prefixlen for n in ifaces})
    for n, inner in ifaces.items():
        for p in plens:
            if p >= n.prefixlen:
                break
            if not ifaces.get(n.supernet(new_prefix=p), set()) <= inner:
                return True
    return False


def capacity(s: IpSet) -> int:
    """A set's map entries: the kernel refuses more than maxelem, and the
    daemon writes a change's adds before its deletes, so twice that is
    never outgrown (no prealloc: what it costs is the entries present);
    beyond SET_MAP_MAX a set stays on the kernel path."""
    return max(1, min(2 * s.maxelem, SET_MAP_MAX))


def used_sets(tables: Mapping[int, Mapping[str, Table]]) -> set[str]:
    """Names of the sets the rules match on or change (-j SET: read to know
    their type, packet_filled())."""
    return {m.name for ts in tables.values() for t in ts.values() for c in t.chains.values()
            for r in c.rules for m in r.sets} | (set(_set_targets(tables)) - {None})


# what an iptables-nft rule read natively says of an xt SET target: not its set
XT_SET_TARGET = "xt target SET"
_FILLING_OPTIONS = ("--add-set", "--del-set", "--map-set")


def _set_targets(tables: Mapping[int, Mapping[str, Table]]) -> list[str | None]:
    """The sets rules' SET targets name (None: one whose set is not known)."""
    out: list[str | None] = []
    for ts in tables.values():
        for t in ts.values():
            for c in t.chains.values():
                for r in c.rules:
                    if r.target == "SET":
                        args = r.target_args
                        out += [args[i + 1] for i, a in enumerate(args[:-1]) if a in _FILLING_OPTIONS]
                    elif XT_SET_TARGET in r.unsupported:
                        out.append(None)
    return out


def packet_filled(tables: Mapping[int, Mapping[str, Table]], sets: Mapping[str, IpSet]) -> set[str] | None:
    """The sets a rule's SET target adds to or deletes from (in any table of
    either family: ipset names are global); None: any set may be, because
    a SET target names a list:set (it changes its members), a set that
    cannot be read, or one the rules read natively do not name."""
    named = _set_targets(tables)
    if any(n is None or (s := sets.get(n)) is None or s.type not in DIMENSIONS for n in named):
        return None
    return {n for n in named if n is not None}


def resolve(tables: Mapping[int, Mapping[str, Table]], sets: Mapping[str, IpSet],
            unwritable: Mapping[str, str] | None = None
            ) -> tuple[dict[int, dict[str, Table]], tuple[SetShape, ...]]:
    """The tables with every set match resolved: a mirrorable one gets its
    set's shape, any other makes its rule the kernel's (the reason in the
    rule's unsupported list, shown by `tna status`); so does a set whose
    map could not be written (unwritable: name -> error).  Also the shapes
    of the sets mirrored, by name: part of what the programs are compiled
    for."""
    from tna.model.iptables import Table  # iptables.py imports this module

    shapes: dict[str, SetShape] = {}
    out: dict[int, dict[str, Table]] = {}
    filled = packet_filled(tables, sets)
    for version, ts in tables.items():
        out[version] = {}
        for tname, t in ts.items():
            new = Table(tname, vanishing=t.vanishing)
            for cname, c in t.chains.items():
                rules = []
                for r in c.rules:
                    if r.sets:
                        matches, why = [], []
                        for m in r.sets:
                            s = sets.get(m.name)
                            problem = mirror_problem(s, m) or (
                                f"its map could not be written ({error})"
                                if (error := (unwritable or {}).get(m.name)) else None) or (
                                "a rule's SET target changes it from the packet path, announced to no one"
                                if filled is None or m.name in filled else None)
                            if problem is None and s is not None:
                                shape = shapes.setdefault(s.name, SetShape(s.name, s.type, s.family, capacity(s)))
                                m = replace(m, shape=shape, family=version)
                            else:
                                why.append(f"-m set {m.name}: {problem}")
                            matches.append(m)
                        r = replace(r, sets=tuple(matches), unsupported=r.unsupported + tuple(why))
                    rules.append(r)
                new.chains[cname] = replace(c, rules=rules)  # a base chain keeps its hook, priority and type
            out[version][tname] = new
    return out, tuple(shapes[n] for n in sorted(shapes))


def _port(pkt: Packet, src: bool) -> tuple[int, int] | None:
    """(proto, port) as ip_set_get_ip4_port()/ip6 read them: ports of the
    port protocols, type and code of ICMP, 0 for any other; None where the
    kernel reads none (the set test is false)."""
    if pkt.proto in _PORT_HEADER:
        if pkt.l4len is not None and pkt.l4len < _PORT_HEADER[pkt.proto]:
            return None
        port = pkt.sport if src else pkt.dport
        return pkt.proto, port or 0
    if pkt.proto in _ICMPS:
        return pkt.proto, ((pkt.icmp_type or 0) << 8) | (pkt.icmp_code or 0)
    if pkt.proto == 0 and pkt.src.version == 4:  # "protocol <= 0": not even port 0
        return None
    return pkt.proto, 0


def _entry(s: IpSet, m: SetMatch, pkt: Packet) -> Member | None:
    """The most specific entry equal to the packet's fields, None if none."""
    src = m.dirs[0] == "src"
    addr = pkt.src if src else pkt.dst
    second = m.dirs[1] == "src" if len(m.dirs) > 1 else False
    proto_port = _port(pkt, second) if s.type in PORT_TYPES else None
    if s.type in PORT_TYPES and proto_port is None:
        return None
    iface = (pkt.iif if second else pkt.oif) if s.type == "hash:net,iface" else None
    if s.type == "hash:net,iface":  # the longest net decides, whatever its interfaces
        nets = [e.net for e in s.members if addr in e.net]
        longest = max(nets, key=lambda n: n.prefixlen, default=None)
        return next((e for e in s.members if e.net == longest and not e.physdev and e.iface == iface), None)
    best: Member | None = None
    for e in s.members:
        if addr not in e.net or (best is not None and e.net.prefixlen <= best.net.prefixlen):
            continue
        if proto_port is not None and (e.proto, e.port) != proto_port:
            continue
        best = e
    return best


def set_test(s: IpSet, m: SetMatch, pkt: Packet) -> bool:
    """Whether match m holds for pkt (negation included)."""
    hit = False
    if len(m.dirs) >= DIMENSIONS.get(s.type, 1) and s.family == pkt.src.version:
        e = _entry(s, m, pkt)
        if e is not None:
            hit = not e.nomatch if s.type not in NOMATCH_TYPES else e.nomatch == m.return_nomatch
    return hit != m.neg


def sets_hold(matches: Iterable[SetMatch], pkt: Packet, sets: Mapping[str, IpSet] | None) -> bool:
    """The mirrored set matches of a rule all hold (the others are the
    kernel's to judge: they do not count here)."""
    for m in matches:
        if m.shape is None:
            continue
        s = sets.get(m.name) if sets is not None else None
        if s is None or not set_test(s, m, pkt):
            return False
    return True


def status(rules: Iterable[Rule], shapes: tuple[SetShape, ...], sets: Mapping[str, IpSet],
           stale: Mapping[str, float] | None = None) -> dict[str, dict]:
    """Per set the rules match on: its type and entries, whether the fast
    path mirrors it (else why its rules stay on the kernel path), and how
    late (s, beyond a poll) a change keeping its header is seen (stale:
    the reader's stale_s)."""
    mirrored = {s.name for s in shapes}
    out: dict[str, dict] = {}
    for r in rules:
        for m in r.sets:
            s = sets.get(m.name)
            entry = out.setdefault(m.name, {"type": s.type if s else None, "family": s.family if s else None,
                                            "entries": (len(s.members) if s.elements is None else s.elements)
                                            if s else 0,
                                            "mirrored": m.name in mirrored, "kernel_path": [],
                                            "stale_s": round((stale or {}).get(m.name, 0.0), 1)})
            prefix = f"-m set {m.name}: "
            entry["kernel_path"] += [u[len(prefix):] for u in r.unsupported
                                     if u.startswith(prefix) and u[len(prefix):] not in entry["kernel_path"]]
    return out
