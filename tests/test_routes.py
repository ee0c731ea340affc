"""The compact route bookkeeping (tna/model/routes.py) through Model.apply (no root)."""

from __future__ import annotations

from dataclasses import replace

from tna.model.config import AF_INET, AF_INET6, Model, Nexthop, Removed, Sysctls
from tna.model.routes import UNKNOWN_MTU, Dumped, Route, RouteDump
from tna.netlink.sysctls import read_sysctls

POLICY1 = Sysctls(True, True, ipv4_mp_hash_policy=1, ipv6_mp_hash_policy=1)


def r4(dst: str, **kw: object) -> Route:
    base = {"family": AF_INET, "table": 254, "dst": dst, "dst_len": 24, "type": 1, "oif": 2,
            "gateway": "192.0.2.2"}
    return Route(**{**base, **kw})  # type: ignore[arg-type]


def r6(dst: str, **kw: object) -> Route:
    base = {"family": AF_INET6, "table": 254, "dst": dst, "dst_len": 48, "type": 1, "oif": 2,
            "gateway": "2001:db8::2", "priority": 1024}
    return Route(**{**base, **kw})  # type: ignore[arg-type]


def model(*facts: object) -> Model:
    m = Model(sysctls=POLICY1)
    for f in facts:
        m.apply(f)  # type: ignore[arg-type]
    return m


def test_only_notable_routes_are_kept_the_rest_counted() -> None:
    m = model(*(r4(f"10.0.{i}.0") for i in range(100)), r4("10.1.0.0", mtu=1400),
              r6("2001:db8:1::", multipath=2))
    assert len(m.routes) == 102 and m.routes.count(AF_INET) == 101
    assert {r.dst for r in m.routes} == {"10.1.0.0", "2001:db8:1::"}
    assert (m.route_mtu(AF_INET), m.route_mtu(AF_INET6)) == (1400, 0)
    assert m.multipath_policies() == {AF_INET6: 1}


def test_a_boring_route_changes_no_guard() -> None:
    m = model(r4("10.1.0.0", mtu=1400))
    assert not m.apply(r4("10.0.0.0"))
    assert not m.apply(Removed(r4("10.0.0.0")))
    assert len(m.routes) == 1


def test_the_smallest_mtu_follows_adds_and_deletes() -> None:
    m = model(r4("10.1.0.0", mtu=1400), r4("10.2.0.0", mtu=1300), r4("10.3.0.0", mtu=1300))
    assert m.route_mtu(AF_INET) == 1300
    assert m.apply(Removed(r4("10.2.0.0", mtu=1300)))
    assert m.route_mtu(AF_INET) == 1300  # 10.3/24 still has it
    m.apply(Removed(r4("10.3.0.0", mtu=1300)))
    assert m.route_mtu(AF_INET) == 1400
    m.apply(Removed(r4("10.1.0.0", mtu=1400)))
    assert m.route_mtu(AF_INET) == 0 and len(m.routes) == 0


def test_replace_is_exact_by_identity() -> None:
    """`ip route replace` announces the new route only (NLM_F_REPLACE): the
    old one of the same table, prefix, tos and priority is gone."""
    m = model(r4("10.1.0.0", mtu=1400))
    assert m.apply(r4("10.1.0.0", gateway="192.0.2.3", replace=True))
    assert m.route_mtu(AF_INET) == 0 and len(m.routes) == 1
    m.apply(r4("10.1.0.0", mtu=1200, replace=True))
    assert m.route_mtu(AF_INET) == 1200 and len(m.routes) == 1
    # another priority is another route
    m.apply(r4("10.1.0.0", priority=10, mtu=1500))
    m.apply(r4("10.1.0.0", priority=10, replace=True))
    assert m.route_mtu(AF_INET) == 1200 and len(m.routes) == 2


def test_a_deletion_that_matches_nothing_known_keeps_the_guard() -> None:
    """One next hop of an IPv6 multipath route deleted: the rest may remain."""
    m = model(r6("2001:db8:1::", multipath=3, gateway=None))
    m.apply(Removed(r6("2001:db8:1::")))
    assert m.multipath_policies() == {AF_INET6: 1}
    m.apply(Removed(r6("2001:db8:1::", multipath=3, gateway=None)))
    assert m.multipath_policies() == {}


def test_multipath_via_a_group_and_nexthop_deletion() -> None:
    m = model(Nexthop(1), Nexthop(2), Nexthop(10, (1,)), r4("10.1.0.0", nhid=10, oif=None, gateway=None))
    assert m.multipath_policies() == {}                        # a group of one
    assert not m.apply(r4("10.2.0.0"))
    m.apply(Nexthop(10, (1, 2)))
    assert m.multipath_policies() == {AF_INET: 1}              # no route message says so
    m.apply(r6("2001:db8:1::", nhid=99, oif=None, gateway=None))
    assert m.multipath_policies() == {AF_INET: 1, AF_INET6: 1}  # an unknown object may be a group
    assert m.apply(Removed(Nexthop(10, (1, 2))))
    assert m.multipath_policies() == {AF_INET6: 1} and m.routes.count(AF_INET) == 1
    m.apply(Removed(Nexthop(99)))
    assert m.multipath_policies() == {} and len(m.routes) == 1


def test_guards_are_conservative_while_a_family_loads() -> None:
    m = model(RouteDump(AF_INET, False), RouteDump(AF_INET6, False))
    assert (m.route_mtu(AF_INET), m.route_mtu(AF_INET6)) == (UNKNOWN_MTU[AF_INET], UNKNOWN_MTU[AF_INET6])
    assert m.multipath_policies() == {AF_INET: 1, AF_INET6: 1}
    assert not m.apply(Dumped(r4("10.1.0.0", mtu=1400)))     # no reconcile per record
    assert m.apply(RouteDump(AF_INET, True))
    assert m.route_mtu(AF_INET) == 1400 and m.multipath_policies() == {AF_INET6: 1}
    assert m.route_mtu(AF_INET6) == 1280 and m.routes.loading(AF_INET6)


def test_events_during_a_dump_apply_after_it_in_order() -> None:
    """A dump record may be newer or older than an event about the same
    route: the event, applied after the dump, has the last word."""
    gone, kept = r4("10.1.0.0", mtu=1400), r4("10.2.0.0", mtu=1300)
    m = model(RouteDump(AF_INET, False))
    assert not m.apply(Removed(gone))        # held
    m.apply(Dumped(gone))                    # the dump read it before the deletion
    m.apply(Dumped(kept))
    m.apply(kept)                            # its add event, older than the record
    m.apply(RouteDump(AF_INET, True))
    assert [r.dst for r in m.routes] == ["10.2.0.0"] and m.route_mtu(AF_INET) == 1300


def test_a_restarted_dump_forgets_what_the_interrupted_one_stated() -> None:
    m = model(RouteDump(AF_INET, False), Dumped(r4("10.1.0.0", mtu=1400)), Dumped(r4("10.0.0.0")),
              RouteDump(AF_INET, False), Dumped(r4("10.0.0.0")), RouteDump(AF_INET, True))
    assert m.route_mtu(AF_INET) == 0 and len(m.routes) == 1


def test_identical_notable_route_stated_twice_is_one() -> None:
    route = r4("10.1.0.0", mtu=1400)
    m = model(route)
    assert not m.apply(route)
    assert not m.apply(replace(route, replace=False))
    assert len(list(m.routes)) == 1


def test_held_events_do_not_count_a_dumped_route_twice() -> None:
    a, b, c, d, e = (r4(f"10.0.{i}.0") for i in range(5))
    m = model(RouteDump(AF_INET, False), a, Removed(c), d, Removed(d), e,
              Dumped(a), Dumped(b), Dumped(e), RouteDump(AF_INET, True))
    assert len(m.routes) == 3                 # a, b, e
    m.apply(Removed(a))
    assert len(m.routes) == 2


def doubt6(m: Model) -> bool:
    return AF_INET6 in m.rpf_doubt()


def test_ipv6_routes_sharing_a_prefix_and_metric_doubt_the_reverse_path_check() -> None:
    """`ip -6 route append` of a second device route (or RAs of two routers)
    puts two separate routes at one prefix and metric: the kernel's lookups
    choose among them by rules bpf_fib_lookup() does not repeat, so nft's
    `fib saddr . iif` is not exact then; a route stated again, another
    metric, another table, link-local prefixes and a deletion are followed."""
    a, b = r6("2001:db8:5::", gateway=None, oif=2), r6("2001:db8:5::", gateway=None, oif=3)
    m = model(a, r6("2001:db8:6::"))
    assert not doubt6(m)
    assert not m.apply(a)  # stated again (a dump record): still one route
    assert not m.apply(replace(a, priority=100)) and not doubt6(m)  # another metric: the lower wins in both
    assert not m.apply(replace(a, table=100)) and not doubt6(m)  # another table: no rule reads it
    for dev in (2, 3, 4):  # every device's fe80::/64
        m.apply(r6("fe80::", dst_len=64, gateway=None, oif=dev, priority=256))
    assert not doubt6(m)
    assert m.apply(b) and doubt6(m)
    assert not m.apply(Removed(r6("2001:db8:5::", gateway=None, oif=9)))  # not one of them
    assert doubt6(m)
    assert m.apply(Removed(b)) and not doubt6(m)
    assert m.apply(b) and m.apply(replace(a, oif=4, replace=True)) is not None and doubt6(m)
    m.apply(RouteDump(AF_INET6, done=False))
    assert doubt6(m)  # loading: unknown
    m.apply(Dumped(a))
    m.apply(RouteDump(AF_INET6, done=True))
    assert not doubt6(m)


def test_the_reverse_path_check_is_doubted_with_multipath_a_vrf_or_ignored_linkdown_routes() -> None:
    assert model(r6("2001:db8:1::", multipath=2)).rpf_doubt() == {AF_INET6}
    assert model(r4("10.1.0.0", multipath=2)).rpf_doubt() == set()  # IPv4's check takes any next hop
    assert Model(sysctls=replace(POLICY1, ipv6_ignore_linkdown=True)).rpf_doubt() == {AF_INET6}
    assert Model(sysctls=replace(POLICY1, ipv4_ignore_linkdown=True)).rpf_doubt() == {AF_INET}
    assert Model(sysctls=replace(POLICY1, ipv6_accept_ra=True)).rpf_doubt() == {AF_INET6}
    assert model(r4("10.1.0.0"), r4("10.1.0.0", oif=3)).rpf_doubt() == set()  # IPv4: one fib_lookup() for both
    m = model(r4("10.1.0.0", tos=0x10))
    assert m.rpf_doubt() == {AF_INET}
    assert m.apply(Removed(r4("10.1.0.0", tos=0x10))) and m.rpf_doubt() == set()
    assert Model(sysctls=POLICY1).rpf_doubt() == set()


def test_a_second_ipv6_route_held_during_the_dump_is_not_taken_for_the_dumped_one() -> None:
    """An IPv6 key holds several routes: an add held while the dump runs is
    the dumped route stated again only if it is that very route; deleted
    and added again, it counts again."""
    a, b = r6("2001:db8:5::", gateway=None, oif=2), r6("2001:db8:5::", gateway=None, oif=3)
    m = model(RouteDump(AF_INET6, done=False), Dumped(a), b, a)  # b, a: events held by the dump
    m.apply(RouteDump(AF_INET6, done=True))
    assert doubt6(m) and m.routes.count(AF_INET6) == 2
    m = model(RouteDump(AF_INET6, done=False), Dumped(a), Removed(a), a)
    m.apply(RouteDump(AF_INET6, done=True))
    assert m.routes.count(AF_INET6) == 1 and not doubt6(m)


def test_ipv6_routes_with_a_source_prefix_or_an_expiry_doubt_the_check() -> None:
    """bpf_fib_lookup() skips an expired route that nft's lookup still takes
    (until the garbage collector); source-specific routes sit in subtrees
    this bookkeeping does not key."""
    expiring = r6("2001:db8:7::", expires=True)
    m = model(expiring)
    assert doubt6(m)
    assert m.apply(Removed(r6("2001:db8:7::"))) and not doubt6(m)  # the deletion need not say it expired
    assert doubt6(model(r6("2001:db8:8::", src_len=64)))
    # two source-specific routes that differ in their source prefix only: both are kept
    s1, s2 = r6("::", dst_len=0, src_len=56, src="2001:db8:a::"), r6("::", dst_len=0, src_len=56, src="2001:db8:b::")
    m = model(s1, s2)
    assert m.apply(Removed(s1)) is not None and doubt6(m)
    assert m.apply(Removed(s2)) and not doubt6(m)


def test_an_ipv4_append_held_during_the_dump_is_a_second_route() -> None:
    a, b = r4("10.1.0.0", tos=0x10), r4("10.1.0.0", tos=0x10, gateway="192.0.2.3", append=True)
    m = model(RouteDump(AF_INET, done=False), Dumped(a), b)
    m.apply(RouteDump(AF_INET, done=True))
    m.apply(Removed(b))
    assert m.rpf_doubt() == {AF_INET} and m.routes.count(AF_INET) == 1  # a is still there


def test_route_sysctls_left_unread_doubt_the_check() -> None:
    """Without a rule that uses the check, the daemon does not read the
    per-device sysctls it needs each second: stated as set, so a rule that
    appears is judged by the kernel until a poll has read them."""
    assert Model(sysctls=read_sysctls(route_checks=False)).rpf_doubt() == {AF_INET, AF_INET6}
