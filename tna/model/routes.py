"""The routing tables as the guards need them: compact, incremental, pure.

The fast path reads routes through bpf_fib_lookup(); the daemon needs only
two aggregates per family (the smallest route MTU metric, whether a
multipath route exists), a count, whether a route makes nft's reverse-path
lookup differ (a TOS, a source prefix, an expiry), and for IPv6 whether a
prefix holds several routes of one metric.  So only the routes that can
move a guard (an MTU metric, several next hops, a nexthop object, a TOS, a
source prefix, an expiry) are kept, keyed by the identity the kernel
replaces and deletes by; the rest are counted (IPv6's per prefix and
metric, by hash).

A dump streams in after the daemon has attached (a full table takes
minutes to decode here): while a family's dump is under way its guards are
conservative (Linux's smallest possible route MTU, "a multipath route may
exist") and its route events wait, to be applied in order once the dump is
done (an event may be older than the dump record it would override).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from dataclasses import replace as with_

AF_INET = 2
AF_INET6 = 10
FAMILIES = (AF_INET, AF_INET6)
# The smallest route MTU forwarding may use while a family's routes are not
# all known: IPv4 honours any metric (ip_dst_mtu_maybe_forward()), IPv6
# forwarding raises it to IPV6_MIN_MTU (ip6_forward()).
UNKNOWN_MTU = {AF_INET: 1, AF_INET6: 1280}


@dataclass(frozen=True)
class Route:
    family: int
    table: int
    dst: str
    dst_len: int
    type: int
    oif: int | None
    gateway: str | None
    multipath: int = 0  # number of next hops when > 1 (RTA_MULTIPATH)
    mtu: int = 0        # the route's own MTU metric (RTAX_MTU), 0 if none
    nhid: int = 0       # the nexthop object it uses (RTA_NH_ID), 0 if none
    tos: int = 0
    priority: int = 0   # RTA_PRIORITY (IPv6: the metric)
    src_len: int = 0    # IPv6: a source prefix (`from`): the route is in a subtree of dst
    src: str | None = None  # RTA_SRC: that prefix
    # IPv6: the route expires (RTA_CACHEINFO rta_expires) or may start to
    # without a notification (learnt from an RA: rt6_route_rcv() sets it)
    expires: bool = field(default=False, compare=False)
    # a notification that replaced the route of the same identity (NLM_F_REPLACE)
    replace: bool = field(default=False, compare=False)
    # a notification of a route added beside those of its identity (NLM_F_APPEND)
    append: bool = field(default=False, compare=False)

    @property
    def key(self) -> tuple[int, int, str, int, int, int]:
        """What the kernel finds a route by to replace or delete it (fib
        alias: table, prefix, tos, priority; IPv6: table, prefix, metric)."""
        return (self.family, self.table, self.dst, self.dst_len, self.tos, self.priority)

    @property
    def notable(self) -> bool:
        """Whether the route can move a guard."""
        return bool(self.mtu or self.multipath > 1 or self.nhid or self.tos or self.src_len or self.expires)


@dataclass(frozen=True)
class RouteDump:
    """A family's route dump starts (done False: its routes are unknown
    until it ends) or ends."""

    family: int
    done: bool


@dataclass(frozen=True)
class Dumped:
    """A route as the dump states it (events about it may be older)."""

    route: Route


class RouteTable:
    """Routes by identity, kept only when notable; counted per family.
    Iterating yields the notable routes; len() is the number of routes."""

    def __init__(self) -> None:
        self._notable: dict[tuple, list[Route]] = {}  # key -> variants (`ip route append`)
        self._count: Counter[int] = Counter()
        self._mtus: dict[int, Counter[int]] = {f: Counter() for f in FAMILIES}
        self._multipath: Counter[int] = Counter()   # family -> routes with several next hops
        self._unlike: Counter[int] = Counter()      # family -> routes with a TOS, a source prefix, an expiry
        self._by_nh: dict[int, Counter[int]] = {}    # nhid -> family -> routes using it
        self._pending: dict[int, list[tuple[str, object]]] = {}  # family -> events held during its dump
        # family -> hash of each route key its dump stated, kept while it loads: a
        # held event about a dumped route must not count it twice
        self._dumped: dict[int, set[int]] = {}
        # IPv6 routes of the main and local tables by hash of (table, prefix,
        # metric): the hash of the one route there (device, gateway, type),
        # or the set of them where there are several (`ip -6 route append`,
        # RAs of several routers), and how many keys have several: the
        # kernel chooses among those by rules bpf_fib_lookup() does not
        # repeat (firewall.c.j2 fw_rpf())
        self._variants6: dict[int, int | set[int]] = {}
        self._shared6 = 0

    def __len__(self) -> int:
        return sum(self._count.values())

    def __iter__(self) -> Iterator[Route]:
        return (r for variants in self._notable.values() for r in variants)

    def count(self, family: int) -> int:
        return self._count[family]

    def loading(self, family: int) -> bool:
        """Whether family's dump is under way (its guards conservative)."""
        return family in self._pending

    # --- facts ----------------------------------------------------------------

    def dump(self, mark: RouteDump) -> bool:
        """A dump starts (the family's routes are forgotten: a restarted dump
        states them all again) or ends (the events it held apply now).  True
        when the guards may have changed."""
        f = mark.family
        if not mark.done:
            for r in [r for r in self if r.family == f]:
                self._forget(r.key, r)
            self._count[f] = 0
            if f == AF_INET6:
                self._variants6.clear()
                self._shared6 = 0
            self._pending.setdefault(f, [])
            self._dumped[f] = set()
            return True
        seen = self._dumped.pop(f, set())
        for op, arg in self._pending.pop(f, []):
            if isinstance(arg, Route):
                # the dump may have read a route before or after a held event
                # about it: the events, in order, have the last word
                h = hash(arg.key)
                if op == "add" and (f == AF_INET6 or arg.append) and not arg.replace:
                    # a key may hold several routes (IPv6, `ip route append`): only
                    # this very route, dumped, was counted already
                    if hash(arg) in seen:
                        continue
                    seen.add(h)
                    self._do(op, arg, f)
                    continue
                if op == "del":
                    if h not in seen:
                        continue  # never counted
                    seen.discard(h)
                    seen.discard(hash(arg))  # added again later: counted again
                else:
                    if (h in seen) != arg.replace:
                        arg = with_(arg, replace=h in seen)  # counted already / not yet
                    seen.add(h)
            self._do(op, arg, f)
        return True

    def dumped(self, route: Route) -> bool:
        """A route of the dump: applied at once (the guards stay conservative)."""
        seen = self._dumped.setdefault(route.family, set())
        seen.add(hash(route.key))
        if route.family == AF_INET6:
            # the route itself: an IPv6 key often holds several (dump()); an
            # IPv4 append held meanwhile is taken for a second route, which at
            # worst keeps a guard on (a million IPv4 hashes more would not be)
            seen.add(hash(route))
        return self._add(route) and not self.loading(route.family)

    def event(self, route: Route, present: bool) -> bool:
        """RTM_NEWROUTE / RTM_DELROUTE: True if a guard aggregate changed."""
        op = "add" if present else "del"
        if self.loading(route.family):
            self._pending[route.family].append((op, route))
            return False
        return self._do(op, route, route.family)

    def drop_nexthop(self, nhid: int) -> bool:
        """The kernel deleted nexthop object nhid and, unannounced, its routes."""
        changed = False
        for f in FAMILIES:
            if self.loading(f):
                self._pending[f].append(("drop_nh", nhid))
            else:
                changed |= self._drop_nh(nhid, f)
        return changed

    # --- what the guards read -----------------------------------------------

    def smallest_mtu(self, family: int) -> int:
        """Smallest route MTU metric in family, 0 if none sets one."""
        if self.loading(family):
            return UNKNOWN_MTU[family]
        return min(self._mtus[family], default=0)

    def has_multipath(self, family: int, nexthops: dict) -> bool:
        """Whether the kernel may choose among next hops for some route of
        family: several next hops of its own, or a nexthop object that is a
        group or not (yet) known (nexthops: Model.nexthops)."""
        if self.loading(family) or self._multipath[family]:
            return True
        return any(users[family] and ((nh := nexthops.get(nhid)) is None or len(nh.group) > 1)
                   for nhid, users in self._by_nh.items())

    def has_unlike(self, family: int) -> bool:
        """Whether some route of family (or, while its routes load, maybe)
        makes nft's reverse-path lookup and bpf_fib_lookup() disagree: a TOS
        (the datapath's lookup passes none), a source prefix (an IPv6
        subtree: not counted per prefix here), an expiry (IPv6: bpf's lookup
        skips an expired route, the kernel's takes it until the garbage
        collector removes it)."""
        return self.loading(family) or self._unlike[family] > 0

    def shares_prefix6(self) -> bool:
        """Whether an IPv6 prefix of the main or local table may have several
        routes of one metric (not multipath: separate routes), among which
        nft's lookup takes the first and bpf_fib_lookup()'s prefers the input
        device (and the router preference); link-local and multicast
        prefixes aside (one per device, and never looked up for a forwarded
        packet's source)."""
        return self.loading(AF_INET6) or self._shared6 > 0

    # --- bookkeeping ----------------------------------------------------------

    def _do(self, op: str, arg: object, family: int) -> bool:
        if op == "drop_nh":
            assert isinstance(arg, int)
            return self._drop_nh(arg, family)
        assert isinstance(arg, Route)
        return self._add(arg) if op == "add" else self._remove(arg)

    def _add(self, route: Route) -> bool:
        variants = self._notable.get(route.key)
        shared = self._share(route, 1)
        if route.replace:
            if not variants:  # a boring route was replaced
                return self._insert(route, count=False) or shared
            self._forget(route.key, variants[0])  # the kernel replaces the key's first alias
            self._insert(route, count=False)
            return True
        if variants and route in variants:  # stated again (a dump record, a replayed event)
            return shared
        return self._insert(route, count=True) or shared

    def _insert(self, route: Route, count: bool) -> bool:
        if count:
            self._count[route.family] += 1
        if not route.notable:
            return False
        self._notable.setdefault(route.key, []).append(route)
        self._account(route, 1)
        return True

    def _remove(self, route: Route) -> bool:
        self._count[route.family] = max(self._count[route.family] - 1, 0)
        shared = self._share(route, -1)
        variants = self._notable.get(route.key)
        # a deletion states the whole route; one that matches no known variant
        # (one next hop of an IPv6 multipath route) keeps them: at worst a guard stays on
        if not variants or route not in variants:
            return shared
        self._forget(route.key, route)
        return True

    def _drop_nh(self, nhid: int, family: int) -> bool:
        gone = [r for r in self if r.nhid == nhid and r.family == family]
        for r in gone:
            self._count[r.family] = max(self._count[r.family] - 1, 0)
            self._share(r, -1)
            self._forget(r.key, r)
        return bool(gone)

    def _share(self, route: Route, sign: int) -> bool:
        """Route added (1; a replacement: the key's one route, or one more of
        several) or deleted (-1) at its IPv6 key; True when the key starts
        or stops holding several routes.  A route stated again is no other."""
        if route.family != AF_INET6 or route.table not in (254, 255) or _per_device6(route):
            return False
        h = hash((route.table, route.dst, route.dst_len, route.priority))
        v = hash((route.oif, route.gateway, route.type, route.multipath, route.nhid, route.src_len))
        cur = self._variants6.get(h)
        if sign > 0:
            if cur is None or cur == v or (route.replace and isinstance(cur, int)):
                self._variants6[h] = v
                return False
            if isinstance(cur, set):
                cur.add(v)
                return False
            self._variants6[h] = {cur, v}
            self._shared6 += 1
            return True
        if isinstance(cur, set):
            cur.discard(v)
            if len(cur) > 1:
                return False
            self._variants6[h] = cur.pop()
            self._shared6 -= 1
            return True
        if cur == v:
            del self._variants6[h]
        return False

    def _forget(self, key: tuple, route: Route) -> None:
        variants = self._notable[key]
        stored = variants.pop(variants.index(route))  # as added: an equal deletion may not state its expiry
        if not variants:
            del self._notable[key]
        self._account(stored, -1)

    def _account(self, route: Route, sign: int) -> None:
        """Add (sign 1) or remove (-1) route's share of the aggregates."""
        if route.mtu:
            _bump(self._mtus[route.family], route.mtu, sign)
        if route.multipath > 1:
            _bump(self._multipath, route.family, sign)
        if route.tos or route.src_len or route.expires:
            _bump(self._unlike, route.family, sign)
        if route.nhid:
            users = self._by_nh.setdefault(route.nhid, Counter())
            _bump(users, route.family, sign)
            if not users:
                del self._by_nh[route.nhid]


def _bump(counter: Counter, key: int, sign: int) -> None:
    counter[key] += sign
    if counter[key] <= 0:
        del counter[key]


def _per_device6(route: Route) -> bool:
    """A link-local (fe80::/10) or multicast (ff00::/8) prefix: every device
    has its own."""
    dst = route.dst.lower()
    return (route.dst_len >= 10 and dst.startswith(("fe8", "fe9", "fea", "feb"))) or \
        (route.dst_len >= 8 and dst.startswith("ff"))
