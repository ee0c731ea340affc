"""Members of native nftables address sets, and element changes applied to them: pure data.

An nftables address set with `flags interval` matches an address when one
of its intervals holds it (nft_rbtree: disjoint intervals), so its members
are kept in one canonical form, the prefix cover of the union of its
intervals (interval_members()), whether they come from `nft -j list` or
from a commit's element changes (apply_elements()).  The kernel announces
an interval as two boundary elements, its first address and (flagged as
an end) the first address after it, or, for one that runs to the last
address, its first address flagged "open"; libnftables adds an end at
address 0 that closes nothing.  A change that does not fit what the set
holds (an add that overlaps, a delete of what is not there: the set in
hand is not the kernel's) gives None: the caller reads the set again.

A concatenation set `ADDR . inet_service` without intervals is a
hash:ip,port per protocol of the rules that match it (`ip saddr . tcp
dport @s`: concat_set_name()), each element one address and port.  A port
set (`tcp dport @s`, type inet_service) is one per protocol and IP version
(port_set_name()) whose members hold the whole address space: a hash:ip,port
without intervals, a hash:net,port with them, each port one member.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import groupby, pairwise

from tna.model.ipset import IpSet, Member

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
# the transport protocols whose ports nft matches (payload `tcp dport`, ...)
L4 = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "dccp": 33}
# those whose port a hash:*,port map reads as nft does (ip_set_getport.c's:
# a DCCP packet's port is 0 there, an SCTP packet without its whole 12-byte
# header has none; nft reads either's from the first 4 bytes; a TCP or UDP
# header too short for ipset is one the fast path leaves to the kernel)
CONCAT_L4 = {k: v for k, v in L4.items() if k not in ("dccp", "sctp")}


def _escaped(name: str) -> str:
    return name.replace("%", "%25").replace(":", "%3A").replace(" ", "%20")


def nft_set_name(family: str, table: str, name: str) -> str:
    """The IpSet name of set name of table (family, table): "nft:<family>
    <table>:<name>", the table's and the set's names escaped, so that
    ':'-separated suffixes (concat_set_name(), anonymous sets) name no
    other set (the kernel allows any character in those names)."""
    return f"nft:{family} {_escaped(table)}:{_escaped(name)}"


def concat_set_name(base: str, l4: str) -> str:
    """The IpSet of concatenation set base as the rules matching l4's port
    use it (its members carry the protocol)."""
    return f"{base}:{l4}"


def port_set_name(base: str, l4: str, version: int) -> str:
    """The IpSet of port set base as the rules matching l4's port of IP
    version's packets use it."""
    return f"{base}:{l4}:{version}"


def _port_mirror(name: str) -> bool:
    return name.endswith((":4", ":6")) and name[:-2].rsplit(":", 1)[-1] in CONCAT_L4


def mirrors(base: str, names: Iterable[str]) -> list[str]:
    """The IpSets among names that mirror nftables set base: base itself,
    its concatenation's (one per protocol), or its ports' (one per protocol
    and IP version)."""
    def suffix(n: str) -> str:
        return n[len(base) + 1:]
    return [n for n in names if n == base or (n.startswith(base + ":") and (
        suffix(n) in CONCAT_L4 or suffix(n) in {f"{p}:{v}" for p in CONCAT_L4 for v in (4, 6)}))]


@dataclass(frozen=True)
class SetElement:
    """One element a commit added to or deleted from a set (as the kernel
    announced it: a key, in an interval set a boundary)."""

    set: str      # the IpSet's name: nft_set_name()
    add: bool
    key: bytes    # the address, network byte order
    end: bool = False   # the first address after an interval
    open: bool = False  # an interval that runs to the last address


def _width(version: int) -> int:
    return 32 if version == 4 else 128


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Disjoint, merged [first, last] ranges covering ranges, in order."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def _ranges(nets: Iterable[Net]) -> list[tuple[int, int]]:
    return _merge((int(n.network_address), int(n.broadcast_address)) for n in nets)


def _members(ranges: Iterable[tuple[int, int]], version: int) -> frozenset[Member]:
    addr = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return frozenset(Member(n) for lo, hi in ranges
                     for n in ipaddress.summarize_address_range(addr(lo), addr(hi)))  # type: ignore[arg-type]


def interval_members(nets: Iterable[Net], version: int) -> frozenset[Member]:
    """The canonical members of an interval set holding nets."""
    return _members(_ranges(nets), version)


def _intervals(run: Sequence[SetElement], width: int) -> list[tuple[int, int]] | None:
    """The [first, last] intervals one run of boundary elements spells."""
    out, start = [], None
    # at one address an end comes before a start: [a, b) then [b, c)
    for e in sorted(run, key=lambda e: (int.from_bytes(e.key, "big"), not e.end)):
        k = int.from_bytes(e.key, "big")
        if e.end:
            if start is None:
                if k:
                    return None  # an end of an interval this change did not open
                continue
            if k <= start:
                return None
            out.append((start, k - 1))
            start = None
        elif start is not None:
            return None  # a start whose interval never ended
        elif e.open:
            out.append((k, (1 << width) - 1))
        else:
            start = k
    return None if start is not None else out


def _union(cur: list[tuple[int, int]], new: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
    both = sorted(cur + new)
    if any(b[0] <= a[1] for a, b in pairwise(both)):
        return None  # the kernel refuses an overlap: the set in hand is not the kernel's
    return _merge(both)


def _minus(cur: list[tuple[int, int]], gone: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
    starts = [lo for lo, _ in cur]
    cuts: dict[int, list[tuple[int, int]]] = {}
    for lo, hi in gone:
        i = bisect_right(starts, lo) - 1
        if i < 0 or hi > cur[i][1]:
            return None  # a delete of what the set in hand does not hold
        cuts.setdefault(i, []).append((lo, hi))
    out = []
    for i, (first, last) in enumerate(cur):
        for lo, hi in sorted(cuts.get(i, ())):
            if lo < first:
                return None  # two deletes of one address
            if first < lo:
                out.append((first, lo - 1))
            first = hi + 1
        if first <= last:
            out.append((first, last))
    return out


def apply_elements(s: IpSet, elements: Sequence[SetElement]) -> IpSet | None:
    """s after a commit's element changes (in their order), or None when
    they do not fit s.  s is a set as nftables_text.ipset_of() made it: an address set
    (hash:ip without intervals, hash:net with) or a concatenation's
    hash:ip,port."""
    if s.timeout or s.counters or s.unmodelled or s.packet_filled or s.code_too or \
            any(mirrors(e.set, (s.name,)) != [s.name] for e in elements):
        return None
    # maxelem is max(declared size, members) (ipset_of()): the size is
    # known only while the members are fewer
    if len(s.members) >= s.maxelem:
        return None
    if _port_mirror(s.name):
        out = _ports(s, elements)
    elif s.type == "hash:ip,port":
        out = _pairs(s, elements)
    elif s.type in ("hash:ip", "hash:net") and all(len(e.key) == _width(s.family) // 8 for e in elements):
        out = _addresses(s, elements)
    else:
        return None
    return None if out is None else replace(s, members=out, maxelem=max(s.maxelem, len(out)))


def apply_commits(elements: Iterable[SetElement], sets: dict[str, IpSet]) -> dict[str, IpSet] | None:
    """The sets a run of commits' elements changed, as they are after them
    (every mirror of each set named); None if an element names a set not
    in sets or does not fit it (then the rules are read whole)."""
    by_set: dict[str, list[SetElement]] = {}
    for e in elements:
        by_set.setdefault(e.set, []).append(e)
    updated = {}
    for base, changed in by_set.items():
        if not (names := mirrors(base, sets)):
            return None
        for name in names:
            if (new := apply_elements(sets[name], changed)) is None:
                return None
            updated[name] = new
    return updated


def _addresses(s: IpSet, elements: Sequence[SetElement]) -> frozenset[Member] | None:
    width = _width(s.family)
    members = set(s.members)
    ranges = _ranges(m.net for m in s.members) if s.type == "hash:net" else []
    for add, group in groupby(elements, key=lambda e: e.add):
        run = list(group)
        if s.type == "hash:ip":
            if any(e.end or e.open for e in run):
                return None
            nets = {Member(ipaddress.ip_network((int.from_bytes(e.key, "big"), width))) for e in run}
            if len(nets) != len(run) or (nets & members if add else nets - members):
                return None
            members = members | nets if add else members - nets
            continue
        intervals = _intervals(run, width)
        if intervals is None:
            return None
        changed = _union(ranges, intervals) if add else _minus(ranges, intervals)
        if changed is None:
            return None
        ranges = changed
    return frozenset(members) if s.type == "hash:ip" else _members(ranges, s.family)


def _ports(s: IpSet, elements: Sequence[SetElement]) -> frozenset[Member] | None:
    """A port set's elements: 2-byte keys (big-endian), as ports, or with
    intervals (hash:net,port) as their boundaries."""
    if any(len(e.key) != 2 for e in elements):
        return None
    proto = CONCAT_L4[s.name[:-2].rsplit(":", 1)[-1]]
    net = ipaddress.ip_network("0.0.0.0/0" if s.family == 4 else "::/0")
    ports = {m.port for m in s.members}
    ranges = _merge((p, p) for p in ports if p is not None)
    for add, group in groupby(elements, key=lambda e: e.add):
        run = list(group)
        if s.type == "hash:ip,port":
            new = {int.from_bytes(e.key, "big") for e in run}
            if any(e.end or e.open for e in run) or len(new) != len(run) or (new & ports if add else new - ports):
                return None  # an add of what is there, a delete of what is not: not the kernel's set
            ports = ports | new if add else ports - new
            continue
        intervals = _intervals(run, 16)
        changed = None if intervals is None else _union(ranges, intervals) if add else _minus(ranges, intervals)
        if changed is None:
            return None
        ranges = changed
    if s.type != "hash:ip,port":
        ports = {p for lo, hi in ranges for p in range(lo, hi + 1)}
    return frozenset(Member(net, proto, p) for p in ports)


def _pairs(s: IpSet, elements: Sequence[SetElement]) -> frozenset[Member] | None:
    """A concatenation's elements: the address, then the port in a 32-bit
    register (big-endian, zero-padded: as nft_payload loads it; a key padded
    otherwise matches no packet, which this model cannot say)."""
    width, proto = _width(s.family), CONCAT_L4.get(s.name.rsplit(":", 1)[1])
    alen = width // 8
    members = set(s.members)
    for e in elements:
        if proto is None or len(e.key) != alen + 4 or e.end or e.open or e.key[alen + 2:] != bytes(2):
            return None
        m = Member(ipaddress.ip_network((int.from_bytes(e.key[:alen], "big"), width)), proto,
                   int.from_bytes(e.key[alen:alen + 2], "big"))
        if (m in members) == e.add:
            return None  # an add of what is there, a delete of what is not: not the kernel's set
        if e.add:
            members.add(m)
        else:
            members.discard(m)
    return frozenset(members)
