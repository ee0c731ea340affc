"""Planner properties over random link sets (no root)."""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from socket import AF_INET6

from hypothesis import given
from hypothesis import strategies as st

from tna.bpf.abi import PORT_FLAGS, TNA_IF_CHECK_CSUM_PARTIAL
from tna.model.config import (
    ARPHRD_ETHER,
    IFF_LOOPBACK,
    IFF_UP,
    Addr,
    Bridge,
    Link,
    Model,
    Port,
    Sysctls,
    TcFilters,
    XdpXmit,
)
from tna.model.iptables import parse_save
from tna.snapshot import plan_filtering
from tna.synth.planner import IFF_LOWER_UP, INGRESS_KINDS, LOCAL_STACK_KINDS, UNSHAPED_QDISCS, plan

KINDS = [None, "veth", "tun", "bridge", "vlan", "bond", "vxlan"]
QDISCS = ["noqueue", "mq", "pfifo_fast", "fq_codel", "htb", "tbf", None]


@st.composite
def models(draw: st.DrawFn) -> Model:
    n = draw(st.integers(0, 12))
    links = {}
    for index in range(1, n + 1):
        kind = draw(st.sampled_from(KINDS))
        flags = (IFF_UP | IFF_LOWER_UP if draw(st.booleans()) else 0)
        flags |= IFF_LOOPBACK if index == 1 and draw(st.booleans()) else 0
        master = draw(st.sampled_from([None, None, None, 1, 2]))
        links[index] = Link(
            index=index, name=f"if{index}", kind=kind,
            mac=draw(st.sampled_from([None, f"02:00:00:00:00:{index:02x}"])),
            mtu=1500, flags=flags, arptype=draw(st.sampled_from([ARPHRD_ETHER, ARPHRD_ETHER, 772, 65534])),
            master=master,
            qdisc=draw(st.sampled_from(QDISCS)),
            bridge=Bridge(vlan_filtering=draw(st.booleans())) if kind == "bridge" else None,
            port=Port(state=draw(st.integers(0, 4))) if master is not None and draw(st.integers(0, 5)) else None,
        )
    m = Model(links=links, sysctls=Sysctls(draw(st.booleans()), draw(st.booleans())))
    for i in links:
        if draw(st.integers(0, 2)) == 0:
            m.addrs.add(Addr(i, 2, f"192.0.2.{i}", 24))
    for i in links:
        m.apply(XdpXmit(i, draw(st.booleans())))
        m.apply(TcFilters(i, draw(st.integers(0, 4)) == 0, draw(st.integers(0, 4)) == 0))
    return m


@given(models(), st.sampled_from(["auto", "xdp", "tc"]))
def test_plan_invariants(m: Model, mode: str) -> None:
    p = plan(m, mode)
    assert set(p.ifaces) | set(p.skipped) == set(m.links)
    assert not set(p.ifaces) & set(p.skipped)
    assert set(p.ports) == {i for i in p.ifaces if m.links[i].master is not None}
    for ifindex, ip in p.ifaces.items():
        link = m.links[ifindex]
        assert link.up and link.ethernet and not link.loopback
        assert link.kind in INGRESS_KINDS and ifindex not in m.ingress_filters
        if link.master is None:
            assert m.sysctls.forwarding
            assert ip.modules in (("router",), ("fdb", "router"))
        else:
            bridge = m.links[link.master]
            assert bridge.bridge is not None and not bridge.bridge.vlan_filtering and link.port is not None
            routed = bridge.index in p.l3_bridges
            assert ip.modules[:2] == ("fdb", "bridge") and ("router" in ip.modules) == routed
            assert routed == (bridge.up and m.sysctls.forwarding)
            forwarding = bool(p.ports[ifindex].flags & PORT_FLAGS["FORWARDING"])
            assert forwarding == (link.port.state == 3 and bridge.up)
        if mode == "auto":
            assert ip.hook == ("tc" if link.kind in LOCAL_STACK_KINDS else "xdp")
        else:
            assert ip.hook == mode
        # frames from a local stack may carry CHECKSUM_PARTIAL only matters under XDP
        assert bool(ip.flags & TNA_IF_CHECK_CSUM_PARTIAL) == (ip.hook == "xdp" and link.kind in LOCAL_STACK_KINDS)
    for ifindex in p.xdp_egress:
        link = m.links[ifindex]
        assert link.up and link.ethernet and link.qdisc in UNSHAPED_QDISCS
        assert m.xdp_xmit[ifindex]  # the kernel says it takes XDP frames now
        assert ifindex not in m.egress_filters  # a redirect would bypass them
    for ifindex in p.tc_egress:
        link = m.links[ifindex]
        assert link.up and link.ethernet


@given(models())
def test_overrides_win(m: Model) -> None:
    overrides = {link.name: "xdp" for link in m.links.values()}
    for ip in plan(m, "tc", overrides).ifaces.values():
        assert ip.hook == "xdp" and ip.hook_why == "per-interface override"


@given(models(), st.lists(st.sampled_from(["if1", "if2", "if1?", "if*", "nomatch", "if[3-5]"]), max_size=3))
def test_ignored_interfaces_are_left_alone(m: Model, ignore: list[str]) -> None:
    p0, p = plan(m), plan(m, ignore=ignore)
    alone = {i for i, link in m.links.items()
             if any(fnmatchcase(link.name, g) or (link.master in m.links and fnmatchcase(m.links[link.master].name, g))
                    for g in ignore)}
    for i in alone:
        assert "left alone by configuration (ignore = " in p.skipped[i].why
    # nothing of theirs is planned: no program, no egress into them, no bridge state mirrored
    assert set(p.ifaces) == set(p0.ifaces) - alone
    assert not alone & (p.xdp_egress | p.tc_egress | set(p.ports) | p.bridges | set(p.l3_bridges))
    assert p.xdp_egress == p0.xdp_egress - alone and p.tc_egress == p0.tc_egress - alone


def _bridged() -> Model:
    def link(index: int, name: str, kind: str | None, master: int | None = None) -> Link:
        return Link(index, name, kind, f"02:00:00:00:00:{index:02x}", 1500, IFF_UP | IFF_LOWER_UP, ARPHRD_ETHER,
                    master=master, qdisc="noqueue", bridge=Bridge() if kind == "bridge" else None,
                    port=Port(state=3) if master is not None else None)
    m = Model(links={2: link(2, "br0", "bridge"), 3: link(3, "eth1", None, 2), 4: link(4, "eth2", None, 2),
                     5: link(5, "wg0", None), 6: link(6, "eth9", None)}, sysctls=Sysctls(True, True))
    for i in m.links:
        m.apply(XdpXmit(i, True))
    return m


def test_ignore_reason_names_the_glob() -> None:
    p = plan(_bridged(), ignore=["eth9", "wg*"])
    assert p.skipped[5].why == "left alone by configuration (ignore = wg*)"
    assert p.skipped[6].why == "left alone by configuration (ignore = eth9)"
    assert {3, 4} <= set(p.ifaces) and 2 in p.bridges


def test_an_ignored_bridge_leaves_its_ports_alone() -> None:
    p = plan(_bridged(), ignore=["br*"])
    assert p.skipped[2].why == "left alone by configuration (ignore = br*)"
    assert p.skipped[3].why == p.skipped[4].why == "master br0 is left alone by configuration (ignore = br*)"
    assert not p.bridges and not p.l3_bridges and not p.ports
    assert set(p.ifaces) == {5, 6} and all(ip.modules == ("router",) for ip in p.ifaces.values())


def test_an_ignored_port_keeps_its_bridge_accelerated() -> None:
    p = plan(_bridged(), ignore=["eth2"])
    assert 4 in p.skipped and 4 not in p.ports and 4 not in p.xdp_egress | p.tc_egress
    assert 3 in p.ports and p.bridges == {2} and 2 in p.l3_bridges



MARK_RULES = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{}COMMIT\n"


def _veths(rules: str) -> Model:
    """v2's peer is in this namespace, v3's in the one of netnsid 0; rules: FORWARD's."""
    def veth(index: int, netnsid: int | None) -> Link:
        return Link(index, f"v{index}", "veth", f"02:00:00:00:00:{index:02x}", 1500, IFF_UP | IFF_LOWER_UP,
                    ARPHRD_ETHER, qdisc="noqueue", link_netnsid=netnsid)
    fw, why = plan_filtering({4: parse_save(MARK_RULES.format(rules)), 6: parse_save("")}, {})
    assert fw is not None, why
    return Model(links={2: veth(2, None), 3: veth(3, 0)}, sysctls=Sysctls(True, True), firewall=fw)


def test_a_veth_whose_peer_is_here_is_not_xdp_while_the_rules_read_the_mark() -> None:
    """Its frames keep the sender's skb mark, which XDP cannot see: TC
    (forced XDP and a per-interface override overruled), and the hook says
    why; a peer in another namespace (the mark scrubbed) or rules that read
    no mark leave the hook as chosen."""
    reads = _veths("-A FORWARD -m mark --mark 0x1 -j DROP\n")
    for p in (plan(reads, "xdp"), plan(reads, "tc", {"v2": "xdp", "v3": "xdp"})):
        assert (p.ifaces[2].hook, p.ifaces[3].hook) == ("tc", "xdp")
        assert "its veth peer is in this namespace" in p.ifaces[2].hook_why
        assert not p.ifaces[2].flags & TNA_IF_CHECK_CSUM_PARTIAL  # a TC program screens nothing
    assert {ip.hook for ip in plan(_veths("-A FORWARD -p udp -j DROP\n"), "xdp").ifaces.values()} == {"xdp"}


def test_a_port_whose_rp_filter_is_not_read_yet_is_checked_strictly() -> None:
    """A device can come between two reads of /proc/sys (its own netconf
    announcement may precede its link message): until its rp_filter is
    read, the fast path proves sources as strict mode does and leaves the
    rest to the kernel, whatever the mode turns out to be."""
    from tna.bpf.abi import TNA_IF_RP_LOOSE, TNA_IF_RP_STRICT
    from tna.synth.planner import rp_filter_flags

    m = _bridged()
    m.addrs.add(Addr(5, 2, "192.0.2.5", 24))
    assert rp_filter_flags(m, 5) == TNA_IF_RP_STRICT
    assert m.set_rp_filter(5, 2) and rp_filter_flags(m, 5) == TNA_IF_RP_LOOSE
    assert m.set_rp_filter(5, 0) and rp_filter_flags(m, 5) == 0
    assert not m.set_rp_filter(6, 1)  # unread counted as strict already: nothing to re-plan


def _nf_bridged(sysctls: Sysctls) -> Model:
    m = _bridged()
    br = m.links[2]
    m.apply(replace(br, bridge=replace(br.bridge, nf_call_iptables=True, nf_call_ip6tables=True)))
    m.set_sysctls(sysctls)
    return m


def test_a_bridges_own_nf_call_switches_need_br_netfilter() -> None:
    """`ip link set br0 type bridge nf_call_iptables 1` does nothing while
    br_netfilter is not loaded (its hooks are not registered): the frames
    are bridged untouched, padding kept.  Loaded, it validates and trims."""
    nf = PORT_FLAGS["NF_IP4"] | PORT_FLAGS["NF_IP6"]
    assert plan(_nf_bridged(Sysctls(True, True, br_netfilter=False))).ports[3].flags & nf == 0
    assert plan(_nf_bridged(Sysctls(True, True))).ports[3].flags & nf == nf


def test_bridged_ipv6_goes_to_the_kernel_where_br_netfilter_would_drop_it() -> None:
    """Booted with ipv6.disable=1, br_netfilter drops every bridged IPv6
    frame it is asked to filter (br_nf_pre_routing()): those are the
    kernel's; without IPv6 filtering nothing is."""
    assert _nf_bridged(Sysctls(True, True, br_nf_ip6tables=True, ipv6=False)).bridged_to_kernel() == {AF_INET6}
    assert _nf_bridged(Sysctls(True, True, br_nf_ip6tables=True)).bridged_to_kernel() == set()
