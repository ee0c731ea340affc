"""Planner properties over random link sets (no root)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tna.bpf.abi import TNA_IF_CHECK_CSUM_PARTIAL
from tna.model.config import ARPHRD_ETHER, IFF_LOOPBACK, IFF_UP, Link, Model, Sysctls, TcFilters, XdpXmit
from tna.synth.planner import INGRESS_KINDS, LOCAL_STACK_KINDS, UNSHAPED_QDISCS, plan

KINDS = [None, "veth", "tun", "bridge", "vlan", "bond", "vxlan"]
QDISCS = ["noqueue", "mq", "pfifo_fast", "fq_codel", "htb", "tbf", None]


@st.composite
def models(draw: st.DrawFn) -> Model:
    n = draw(st.integers(0, 12))
    links = {}
    for index in range(1, n + 1):
        kind = draw(st.sampled_from(KINDS))
        flags = (IFF_UP if draw(st.booleans()) else 0) | (IFF_LOOPBACK if index == 1 and draw(st.booleans()) else 0)
        links[index] = Link(
            index=index, name=f"if{index}", kind=kind,
            mac=draw(st.sampled_from([None, f"02:00:00:00:00:{index:02x}"])),
            mtu=1500, flags=flags, arptype=draw(st.sampled_from([ARPHRD_ETHER, ARPHRD_ETHER, 772, 65534])),
            master=draw(st.sampled_from([None, None, None, 1])),
            qdisc=draw(st.sampled_from(QDISCS)),
        )
    m = Model(links=links, sysctls=Sysctls(draw(st.booleans()), draw(st.booleans())))
    for i in links:
        m.apply(XdpXmit(i, draw(st.booleans())))
        m.apply(TcFilters(i, draw(st.integers(0, 4)) == 0, draw(st.integers(0, 4)) == 0))
    return m


@given(models(), st.sampled_from(["auto", "xdp", "tc"]))
def test_plan_invariants(m: Model, mode: str) -> None:
    p = plan(m, mode)
    assert set(p.ifaces) | set(p.skipped) == set(m.links)
    assert not set(p.ifaces) & set(p.skipped)
    for ifindex, ip in p.ifaces.items():
        link = m.links[ifindex]
        assert m.sysctls.forwarding
        assert link.up and link.ethernet and not link.loopback and link.master is None
        assert link.kind in INGRESS_KINDS and ifindex not in m.ingress_filters
        assert ip.modules == ("router",)
        if mode == "auto":
            assert ip.hook == ("tc" if link.kind in LOCAL_STACK_KINDS else "xdp")
        else:
            assert ip.hook == mode
        # frames from a local stack may carry CHECKSUM_PARTIAL only matters under XDP
        assert bool(ip.flags & TNA_IF_CHECK_CSUM_PARTIAL) == (ip.hook == "xdp" and link.kind in LOCAL_STACK_KINDS)
    for ifindex in p.xdp_egress:
        link = m.links[ifindex]
        assert link.up and link.ethernet and link.master is None and link.qdisc in UNSHAPED_QDISCS
        assert m.xdp_xmit[ifindex]  # the kernel says it takes XDP frames now
        assert ifindex not in m.egress_filters  # a redirect would bypass them
    for ifindex in p.tc_egress:
        link = m.links[ifindex]
        assert link.up and link.ethernet and link.master is None


@given(models())
def test_overrides_win(m: Model) -> None:
    overrides = {link.name: "xdp" for link in m.links.values()}
    for ip in plan(m, "tc", overrides).ifaces.values():
        assert ip.hook == "xdp" and ip.hook_why == "per-interface override"
