"""The model and planner on recorded netlink messages (no root, no I/O).

tests/data/router_lab.nl was recorded from the router lab by
tests/record_netlink.py: a dump, then a few changes made with `ip`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tna.bpf.abi import PORT_FLAGS
from tna.model.config import AF_INET, AF_INET6, Model, Sysctls
from tna.netlink.decode import facts
from tna.netlink.nexthop import Marshal
from tna.synth.planner import plan

DATA = Path(__file__).parent / "data"
FORWARDING = Sysctls(ipv4_forward=True, ipv6_forward=True)


def _steps(lab: str) -> dict[str, list]:
    """Recorded steps, each as the facts its messages state."""
    marshal, steps, current = Marshal(), {}, None
    for line in (DATA / f"{lab}_lab.nl").read_text().splitlines():
        if line.startswith("# "):
            current = steps.setdefault(line[2:], [])
        elif line.strip():
            current.extend(f for msg in marshal.parse(bytes.fromhex(line)) for f in facts(msg))
    return steps


STEPS = _steps("router")
BRIDGE_STEPS = _steps("bridge")


def model_after(last_step: str, steps: dict[str, list] = STEPS) -> Model:
    m = Model(sysctls=FORWARDING)
    for step, stated in steps.items():
        for fact in stated:
            m.apply(fact)
        if step == last_step:
            return m
    raise KeyError(last_step)


def names(m: Model) -> set[str]:
    return {link.name for link in m.links.values()}


def test_dump_builds_the_router() -> None:
    m = model_after("dump")
    assert names(m) == {"lo", "r-h1", "r-h2"}
    r_h1 = next(link for link in m.links.values() if link.name == "r-h1")
    assert r_h1.kind == "veth" and r_h1.up and r_h1.ethernet
    assert r_h1.link_netnsid is not None and not r_h1.peer_here  # its peer h1-r is in h1's namespace
    assert {a.address for a in m.addrs} >= {"192.0.2.1", "198.51.100.1", "2001:db8:1::1", "2001:db8:2::1"}
    assert {n.dst for n in m.neighs.values() if n.state == 0x80} == {
        "192.0.2.2", "198.51.100.2", "2001:db8:1::2", "2001:db8:2::2"}
    p = plan(m)
    assert {i.name: i.hook for i in p.ifaces.values()} == {"r-h1": "tc", "r-h2": "tc"}
    assert {s.name: s.why for s in p.skipped.values()} == {"lo": "loopback"}
    assert {m.links[i].name for i in p.tc_egress} == {"r-h1", "r-h2"}
    assert p.xdp_egress == frozenset()  # no device reported as taking XDP frames


def test_replaying_the_dump_changes_nothing() -> None:
    m = model_after("dump")
    assert not any(m.apply(fact) for fact in STEPS["dump"])


def test_new_interface_is_planned_once_up() -> None:
    m = model_after("add veth r-h3, up, address")
    p = plan(m)
    planned = {i.name for i in p.ifaces.values()}
    assert "r-h3" in planned
    assert {s.name: s.why for s in p.skipped.values()}["r-h3p"] == "down"


@pytest.mark.parametrize("policy", [0, 1, 2, 3])
def test_multipath_route_with_mtu(policy: int) -> None:
    m = model_after("multipath route with an mtu")
    m.set_sysctls(Sysctls(True, True, ipv4_mp_hash_policy=policy, ipv6_mp_hash_policy=policy))
    assert m.route_mtu(AF_INET) == 1400
    assert m.route_mtu(AF_INET6) == 0
    assert m.multipath_policies() == {AF_INET: policy}


def test_stale_neighbour_is_tracked_and_dropped_with_its_link() -> None:
    m = model_after("neighbour goes stale")
    assert {n.dst for n in m.stale_neighbours()} == {"198.51.100.9"}
    m = model_after("r-h2 down")
    assert m.stale_neighbours() == set()
    p = plan(m)
    assert "r-h2" not in {i.name for i in p.ifaces.values()}
    assert "r-h2" not in {m.links[i].name for i in p.tc_egress}


def test_deleted_interfaces_leave_the_model() -> None:
    m = model_after("delete r-h3")
    assert names(m) == {"lo", "r-h1", "r-h2"}
    assert not any(a.index not in m.links for a in m.addrs)


def test_forwarding_off_plans_nothing() -> None:
    m = model_after("dump")
    m.set_sysctls(Sysctls())
    p = plan(m)
    assert p.ifaces == {}
    assert all("forwarding is disabled" in s.why for s in p.skipped.values() if s.name != "lo")


# --- the bridge lab (tests/data/bridge_lab.nl) -------------------------------

def bridge_after(step: str) -> tuple[Model, dict[str, int]]:
    m = model_after(step, BRIDGE_STEPS)
    return m, {link.name: i for i, link in m.links.items()}


def test_dump_builds_the_bridge_ports_and_fdb() -> None:
    m, idx = bridge_after("dump")
    br = m.links[idx["br0"]]
    assert br.bridge is not None and not br.bridge.vlan_filtering and br.bridge.ageing_cs == 30000
    for port in ("b-h1", "b-h2", "b-h3"):
        link = m.links[idx[port]]
        assert link.master == br.index and link.port is not None and link.port.state == 3
        # each port's own MAC is a local (permanent) entry of the bridge
        assert m.fdb[(br.index, 0, link.mac)].local
    # the bridge's own address, and no device "self" entries (33:33:..., 01:00:5e:...)
    assert m.fdb[(br.index, 0, br.mac)].local
    assert not any(int(mac[:2], 16) & 1 for _, _, mac in m.fdb)
    p = plan(m)
    assert {m.links[i].name for i in p.ports} == {"b-h1", "b-h2", "b-h3"}
    # with forwarding on, frames to the bridge's MAC are routed
    assert all(ip.modules == ("fdb", "bridge", "router") for ip in p.ifaces.values())
    assert set(p.l3_bridges) == {br.index}
    assert all(pp.flags & PORT_FLAGS["ROUTER"] and pp.bridge_mac == br.mac for pp in p.ports.values())
    # ... as long as the bridge's address is a local FDB entry
    entry = m.fdb[(br.index, 0, br.mac)]
    m.fdb[(br.index, 0, br.mac)] = replace(entry, local=False, port=idx["b-h2"])
    assert not any(pp.flags & PORT_FLAGS["ROUTER"] for pp in plan(m).ports.values())
    m.fdb[(br.index, 0, br.mac)] = entry
    m.set_sysctls(Sysctls())
    assert all(ip.modules == ("fdb", "bridge") for ip in plan(m).ifaces.values())
    assert "its ports carry the fast path" in p.skipped[br.index].why


def test_static_entry_then_deleted() -> None:
    m, idx = bridge_after("static fdb entry")
    e = m.fdb[(idx["br0"], 0, "02:00:00:00:00:aa")]
    assert e.port == idx["b-h1"] and not e.local and not e.dynamic
    m, _ = bridge_after("fdb del")
    assert (idx["br0"], 0, "02:00:00:00:00:aa") not in m.fdb


def test_stp_state_and_port_flags_arrive_as_af_bridge_messages() -> None:
    m, idx = bridge_after("b-h2 learning")
    assert m.links[idx["b-h2"]].port.state == 2
    p = plan(m)
    assert not p.ports[idx["b-h2"]].flags & PORT_FLAGS["FORWARDING"]
    assert p.ports[idx["b-h1"]].flags & PORT_FLAGS["FORWARDING"]
    m, _ = bridge_after("b-h3 isolated")
    assert plan(m).ports[idx["b-h3"]].flags & PORT_FLAGS["ISOLATED"]


def test_a_port_leaving_keeps_its_link_and_drops_its_entries() -> None:
    m, idx = bridge_after("b-h3 leaves")
    link = m.links[idx["b-h3"]]  # AF_BRIDGE RTM_DELLINK: no longer a port, still a device
    assert link.master is None and link.port is None
    assert not any(e.port == link.index for e in m.fdb.values())
    assert idx["b-h3"] not in plan(m).ports


def test_ageing_time_change() -> None:
    m, idx = bridge_after("ageing 10 s")
    assert m.links[idx["br0"]].bridge.ageing_cs == 1000
    assert plan(m).ports[idx["b-h1"]].hold_cs == 1000
    # with STP, a topology change may age entries after forward_delay
    br = m.links[idx["br0"]]
    m.links[br.index] = replace(br, bridge=replace(br.bridge, stp=True, forward_delay_cs=400))
    assert plan(m).ports[idx["b-h1"]].hold_cs == 400


def test_vlan_filtering_bridge_stays_on_the_kernel_path() -> None:
    m, idx = bridge_after("dump")
    br = m.links[idx["br0"]]
    m.links[br.index] = replace(br, bridge=replace(br.bridge, vlan_filtering=True))
    p = plan(m)
    assert p.ports == {} and p.bridges == frozenset()
    assert "filters VLANs" in p.skipped[idx["b-h1"]].why


# --- nexthop objects (tests/data/nexthop_lab.nl: nexthop_compat_mode 0, -------
# --- nexthop_compat_lab.nl: 1); the model must not depend on the mode ---------

NEXTHOP_STEPS = {mode: _steps(f"nexthop{suffix}") for mode, suffix in ((0, ""), (1, "_compat"))}


@pytest.mark.parametrize("compat", [0, 1])
@pytest.mark.parametrize(("step", "guarded"), [
    ("dump", set()),                                             # a group of one: one path
    ("IPv6 route by a resilient group of two", {AF_INET6}),
    ("group 10 gets a second member", {AF_INET, AF_INET6}),      # no route message says so
    ("nexthop 2 deleted", {AF_INET6}),                           # group 10 is back to one
    ("group 60 deleted", set()),                                 # its route went with it, unannounced
])
def test_routes_by_nexthop_object(compat: int, step: str, guarded: set[int]) -> None:
    m = model_after(step, NEXTHOP_STEPS[compat])
    m.set_sysctls(Sysctls(True, True, ipv4_mp_hash_policy=1, ipv6_mp_hash_policy=1))
    assert m.multipath_policies() == dict.fromkeys(guarded, 1)
    by_nhid = {r.nhid: r.dst for r in m.routes if r.nhid}
    assert by_nhid == ({10: "203.0.113.0"} if step in ("dump", "group 60 deleted")
                       else {10: "203.0.113.0", 60: "2001:db8:f::"})


@pytest.mark.parametrize("compat", [0, 1])
def test_nexthop_dump_replayed_changes_nothing(compat: int) -> None:
    steps = NEXTHOP_STEPS[compat]
    m = model_after("dump", steps)
    assert set(m.nexthops) == {1, 2, 10} and m.nexthops[10].group == (1,)
    assert not any(m.apply(fact) for fact in steps["dump"])


def test_a_route_is_the_same_fact_whatever_the_compat_mode() -> None:
    """Mode 1 copies the group's next hops into route messages (and re-sends
    them when the group is replaced): the route stays one fact."""
    models = [model_after("group 10 gets a second member", NEXTHOP_STEPS[c]) for c in (0, 1)]
    by_nhid = [{r for r in m.routes if r.nhid} for m in models]
    assert by_nhid[0] == by_nhid[1] and len(by_nhid[0]) == 2
