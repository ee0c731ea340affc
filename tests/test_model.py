"""The model and planner on recorded netlink messages (no root, no I/O).

tests/data/router_lab.nl was recorded from the router lab by
tests/record_netlink.py: a dump, then a few changes made with `ip`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from tna.bpf.abi import TNA_MP_GUARD_V4
from tna.model.config import AF_INET, AF_INET6, Model, Sysctls
from tna.synth.planner import plan

RECORDING = Path(__file__).parent / "data" / "router_lab.nl"
FORWARDING = Sysctls(ipv4_forward=True, ipv6_forward=True)


def _steps() -> dict[str, list]:
    marshal, steps, current = MarshalRtnl(), {}, None
    for line in RECORDING.read_text().splitlines():
        if line.startswith("# "):
            current = steps.setdefault(line[2:], [])
        elif line.strip():
            current.extend(marshal.parse(bytes.fromhex(line)))
    return steps


STEPS = _steps()


def model_after(last_step: str) -> Model:
    m = Model(sysctls=FORWARDING)
    for step, msgs in STEPS.items():
        for msg in msgs:
            m.apply(msg)
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
    assert not any(m.apply(msg) for msg in STEPS["dump"])


def test_new_interface_is_planned_once_up() -> None:
    m = model_after("add veth r-h3, up, address")
    p = plan(m)
    planned = {i.name for i in p.ifaces.values()}
    assert "r-h3" in planned
    assert {s.name: s.why for s in p.skipped.values()}["r-h3p"] == "down"


@pytest.mark.parametrize(("policy", "guard"), [(0, 0), (1, TNA_MP_GUARD_V4)])
def test_multipath_route_with_mtu(policy: int, guard: int) -> None:
    m = model_after("multipath route with an mtu")
    m.set_sysctls(Sysctls(True, True, ipv4_mp_hash_policy=policy, ipv6_mp_hash_policy=policy))
    assert m.route_mtu(AF_INET) == 1400
    assert m.route_mtu(AF_INET6) == 0
    assert m.multipath_guard() == guard


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
