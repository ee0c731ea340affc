"""BPF_PROG_RUN table tests of the bridge module (with the fdb and router
modules, as on a port of a routed bridge), for both hooks: input frame,
expected verdict, reason and output bytes.  The maps are written here as the
daemon would; bpf_fib_lookup() answers from the lab's real kernel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.ppp import PPPoE
from scapy.packet import Packet, Raw

from netns_labs.lab import BridgeLab
from tests.harness import BridgeHarness, pseudo_fold
from tna.bpf import abi

pytestmark = pytest.mark.root

FWD, ISO, LOCKED = abi.PORT_FLAGS["FORWARDING"], abi.PORT_FLAGS["ISOLATED"], abi.PORT_FLAGS["LOCKED"]
ROUTER, NF4, NF6 = abi.PORT_FLAGS["ROUTER"], abi.PORT_FLAGS["NF_IP4"], abi.PORT_FLAGS["NF_IP6"]
NFVLAN, NFPPPOE = abi.PORT_FLAGS["NF_VLAN"], abi.PORT_FLAGS["NF_PPPOE"]
OTHER = "02:00:00:00:0f:0f"  # a MAC the FDB does not have


@pytest.fixture
def br(bh: BridgeHarness, blab: BridgeLab) -> BridgeHarness:
    """Every test starts from the same maps: all ports forwarding, the routed
    bridges' L3 side, and the hosts' MACs where the kernel learned them."""
    for dev in ("b-h1", "b-h2", "b-h3"):
        bh.port(dev, FWD | ROUTER)
    bh.port("b-h5", FWD | ROUTER, bridge="br1")
    bh.l3("br0")
    bh.l3("br1")
    for host, dev in ((blab.h1, "b-h1"), (blab.h2, "b-h2"), (blab.h3, "b-h3")):
        bh.fdb(host.mac, dev, flags=abi.FDB_DYNAMIC, refreshed=bh.now())
    bh.fdb(blab.h5.mac, "b-h5", bridge="br1", flags=abi.FDB_DYNAMIC, refreshed=bh.now())
    bh.fdb(blab.mac(blab.b, "br0"), "br0", flags=abi.FDB_LOCAL)
    bh.unfdb(OTHER)
    return bh


def l2(lab: BridgeLab, src: str | None = None, dst: str | None = None) -> Ether:
    return Ether(src=src or lab.h1.mac, dst=dst or lab.h2.mac)


def v4(lab: BridgeLab, **kw: object) -> Packet:
    return l2(lab) / IP(src=lab.h1.ip4, dst=lab.h2.ip4, **kw) / UDP(sport=1000, dport=2000) / Raw(b"x" * 32)


def v6(lab: BridgeLab) -> Packet:
    return l2(lab) / IPv6(src=lab.h1.ip6, dst=lab.h2.ip6) / UDP(sport=1000, dport=2000) / Raw(b"x" * 32)


@dataclass
class Case:
    name: str
    build: Callable[[BridgeLab], Packet | bytes]
    reason: str
    ports: dict[str, int] | None = None  # tna_ports flags to set before the run

    @property
    def verdict(self) -> str:
        return "REDIRECT" if self.reason == "FORWARDED" else "PASS"


CASES = [
    Case("known unicast IPv4", v4, "FORWARDED"),
    Case("known unicast IPv6", v6, "FORWARDED"),
    Case("non-IP payload", lambda lab: l2(lab) / Raw(b"\x88\xb5" + b"y" * 50), "FORWARDED"),
    Case("802.1Q tagged: bridged as payload", lambda lab: l2(lab) / Dot1Q(vlan=7) / IP(dst="192.0.2.99") / UDP(),
         "FORWARDED"),
    Case("tagged, bridge-nf-filter-vlan-tagged", lambda lab: l2(lab) / Dot1Q(vlan=7) / IP() / UDP(), "BR_NETFILTER",
         {"b-h1": FWD | NFVLAN}),
    Case("PPPoE, bridge-nf-filter-pppoe-tagged", lambda lab: l2(lab) / PPPoE() / Raw(b"z" * 40), "BR_NETFILTER",
         {"b-h1": FWD | NFPPPOE}),
    Case("broadcast", lambda lab: l2(lab, dst="ff:ff:ff:ff:ff:ff") / IP() / UDP(), "BR_MULTICAST"),
    Case("multicast", lambda lab: l2(lab, dst="01:00:5e:00:00:fb") / IP(dst="224.0.0.251") / UDP(),
         "BR_MULTICAST"),
    Case("STP BPDU", lambda lab: Ether(src=lab.h1.mac, dst="01:80:c2:00:00:00", type=0x26) / Raw(b"\x42" * 40),
         "BR_LINK_LOCAL"),
    Case("LLDP", lambda lab: Ether(src=lab.h1.mac, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"l" * 40),
         "BR_LINK_LOCAL"),
    Case("unknown source: kernel learns", lambda lab: l2(lab, src=OTHER) / IP() / UDP(), "BR_LEARN"),
    Case("source known on another port: a move", lambda lab: l2(lab, src=lab.h3.mac) / IP() / UDP(), "BR_LEARN"),
    Case("source is the bridge's own address",
         lambda lab: l2(lab, src=lab.mac(lab.b, "br0")) / IP() / UDP(), "BR_LEARN"),
    Case("unknown destination: kernel floods", lambda lab: l2(lab, dst=OTHER) / IP() / UDP(), "BR_UNKNOWN_DST"),
    Case("destination behind the ingress port", lambda lab: l2(lab, dst=lab.h1.mac) / IP() / UDP(),
         "BR_SAME_PORT"),
    Case("unicast ARP", lambda lab: l2(lab) / ARP(op=2, psrc=lab.h1.ip4, pdst=lab.h2.ip4), "ARP"),
    Case("ingress port learning (STP)", v4, "BR_PORT_STATE", {"b-h1": 0}),
    Case("egress port blocking (STP)", v4, "BR_PORT_STATE", {"b-h2": 0}),
    Case("ingress port locked", v4, "BR_PORT_POLICY", {"b-h1": FWD | LOCKED}),
    Case("both ports isolated", v4, "BR_PORT_POLICY", {"b-h1": FWD | ISO, "b-h2": FWD | ISO}),
    Case("only the ingress isolated", v4, "FORWARDED", {"b-h1": FWD | ISO}),
    Case("to the bridge, bridge does not route", lambda lab: l2(lab, dst=lab.mac(lab.b, "br0")) / IP() / UDP(),
         "BR_LOCAL", {"b-h1": FWD}),
    # br_netfilter validates IP like ip_rcv() and drops what fails
    Case("bad IPv4 checksum, no br_netfilter", lambda lab: v4(lab, chksum=0x1234), "FORWARDED"),
    Case("bad IPv4 checksum, br_netfilter", lambda lab: v4(lab, chksum=0x1234), "IP_INVALID", {"b-h1": FWD | NF4}),
    Case("IPv4 options, br_netfilter", lambda lab: v4(lab, options=[IPOption_RR()]), "IP_OPTIONS",
         {"b-h1": FWD | NF4}),
    Case("IPv4 tot_len beyond the frame, br_netfilter", lambda lab: v4(lab, len=500), "IP_INVALID",
         {"b-h1": FWD | NF4}),
    Case("IPv6 hop-by-hop, br_netfilter",
         lambda lab: l2(lab) / IPv6(src=lab.h1.ip6, dst=lab.h2.ip6) / IPv6ExtHdrHopByHop() / UDP(), "IP_OPTIONS",
         {"b-h1": FWD | NF6}),
    Case("clean IPv4, br_netfilter", v4, "FORWARDED", {"b-h1": FWD | NF4}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bridge_table(br: BridgeHarness, blab: BridgeLab, case: Case) -> None:
    for dev, flags in (case.ports or {}).items():
        br.port(dev, flags)
    frame = bytes(case.build(blab))
    verdict, reason, out = br.run(frame)
    assert (verdict, reason) == (case.verdict, case.reason)
    if reason == "FORWARDED":
        assert out == frame  # bridging never touches the frame


def test_short_frame_is_padded_through_untouched(br: BridgeHarness, blab: BridgeLab) -> None:
    """Without br_netfilter the bridge forwards Ethernet padding as is; with
    it, ip_rcv-like validation trims the frame to the IP length."""
    frame = bytes(l2(blab) / IP(src=blab.h1.ip4, dst=blab.h2.ip4) / UDP()) + b"\0" * 18
    assert br.run(frame) == ("REDIRECT", "FORWARDED", frame)
    br.port("b-h1", FWD | NF4)
    verdict, reason, out = br.run(frame)
    assert (verdict, reason, out) == ("REDIRECT", "FORWARDED", frame[:-18])


def test_egress_mtu(br: BridgeHarness, blab: BridgeLab) -> None:
    """is_skb_forwardable(): up to mtu + 18 bytes of frame."""
    frame = bytes(l2(blab) / IP(src=blab.h1.ip4, dst=blab.h2.ip4) / UDP() / Raw(b"m" * 100))
    br.port("b-h2", FWD, mtu=len(frame) - 18)
    assert br.run(frame)[:2] == ("REDIRECT", "FORWARDED")
    br.port("b-h2", FWD, mtu=len(frame) - 19)
    assert br.run(frame)[:2] == ("PASS", "BR_MTU")


def test_egress_mtu_under_br_netfilter(br: BridgeHarness, blab: BridgeLab) -> None:
    """br_netfilter's post-routing (br_nf_dev_queue_xmit()) holds the IP
    packet to the egress MTU, not the frame to mtu + 18: larger IPv4 is
    fragmented or, with DF, dropped; larger IPv6 dropped.  The kernel's."""
    for build, nf in ((lambda: IP(src=blab.h1.ip4, dst=blab.h2.ip4, flags="DF"), NF4),
                      (lambda: IPv6(src=blab.h1.ip6, dst=blab.h2.ip6), NF6)):
        frame = bytes(l2(blab) / build() / UDP() / Raw(b"m" * 100))
        ip_len = len(frame) - 14
        br.port("b-h1", FWD | nf)
        br.port("b-h2", FWD, mtu=ip_len)
        assert br.run(frame)[:2] == ("REDIRECT", "FORWARDED")
        br.port("b-h2", FWD, mtu=ip_len - 1)
        assert br.run(frame)[:2] == ("PASS", "BR_MTU")
        br.port("b-h1", FWD)  # no br_netfilter: the frame limit
        assert br.run(frame)[:2] == ("REDIRECT", "FORWARDED")
    br.port("b-h2", FWD)


def test_an_invalid_source_address_is_the_kernels(br: BridgeHarness, blab: BridgeLab) -> None:
    """br_handle_frame() drops a frame whose source is not a valid unicast
    address, whatever the FDB says (a static entry for a multicast MAC can
    be added)."""
    for src in ("01:00:5e:00:00:01", "00:00:00:00:00:00"):
        br.fdb(src, "b-h1", flags=0)
        try:
            assert br.run(bytes(l2(blab, src=src) / IP() / UDP()))[:2] == ("PASS", "BR_LEARN")
        finally:
            br.unfdb(src)


@pytest.mark.parametrize("ethertype", [0x8902, 0x88E3], ids=["CFM", "MRP"])
def test_cfm_and_mrp_frames_are_the_kernels(br: BridgeHarness, blab: BridgeLab, ethertype: int) -> None:
    """br_process_frame_type(): a port's CFM endpoint or MRP instance takes
    such frames, unicast ones too."""
    frame = bytes(Ether(src=blab.h1.mac, dst=blab.h2.mac, type=ethertype) / Raw(b"c" * 50))
    assert br.run(frame)[:2] == ("PASS", "BR_LINK_LOCAL")


def test_an_egress_port_of_another_bridge_is_never_used(br: BridgeHarness, blab: BridgeLab) -> None:
    """A port that moved to another bridge while an FDB entry of the first
    still names it: the kernel's bridge no longer has it."""
    br.port("b-h2", FWD, bridge="br1")
    try:
        assert br.run(bytes(v4(blab)))[:2] == ("PASS", "BR_PORT_UNKNOWN")
    finally:
        br.port("b-h2", FWD)


def test_learned_source_is_handed_to_the_kernel_once_per_interval(br: BridgeHarness, blab: BridgeLab) -> None:
    """The kernel renews a learned entry from every frame it sees; one frame
    per refresh interval through the kernel keeps the entry alive."""
    br.port("b-h1", FWD, refresh_jiffies=br.hz * 60)
    br.fdb(blab.h1.mac, "b-h1", flags=abi.FDB_DYNAMIC, refreshed=br.now() - br.hz * 61)
    frame = bytes(v4(blab))
    assert br.run(frame)[:2] == ("PASS", "BR_REFRESH")
    entry = br.fdb_entry(blab.h1.mac)
    assert entry is not None and abs(entry.refreshed - br.now()) < br.hz
    assert br.run(frame)[:2] == ("REDIRECT", "FORWARDED")
    # static entries never age: nothing to renew
    br.fdb(blab.h1.mac, "b-h1", flags=0, refreshed=0)
    assert br.run(frame)[:2] == ("REDIRECT", "FORWARDED")


def test_a_moved_source_takes_its_entry_out_of_the_map_until_the_daemon_writes_the_new_port(
        br: BridgeHarness, blab: BridgeLab) -> None:
    """h2's MAC arrives at b-h1: the kernel, learning from b-h1, moves h2's
    entry there as it takes the frame; until the daemon hears of it, a frame
    to h2 must not go to b-h2.  The program drops the entry from tna_fdb
    (frames to h2 then go to the kernel) unless the kernel will not move it:
    a port that does not learn, a sticky entry, the bridge's own address."""
    moved = bytes(Ether(src=blab.h2.mac, dst=blab.h3.mac) / IP(src=blab.h2.ip4, dst=blab.h3.ip4) / UDP())
    to_h2 = bytes(v4(blab))
    br.port("b-h1", FWD | ROUTER)  # not learning
    assert br.run(moved)[:2] == ("PASS", "BR_LEARN")
    assert br.fdb_entry(blab.h2.mac) is not None and br.run(to_h2)[:2] == ("REDIRECT", "FORWARDED")
    br.port("b-h1", FWD | ROUTER | abi.PORT_FLAGS["LEARNING"])
    br.fdb(blab.h2.mac, "b-h2", flags=abi.FDB_DYNAMIC | abi.FDB_STICKY, refreshed=br.now())
    assert br.run(moved)[:2] == ("PASS", "BR_LEARN")
    assert br.fdb_entry(blab.h2.mac) is not None  # sticky: the kernel keeps it on b-h2
    br.fdb(blab.h2.mac, "b-h2", flags=abi.FDB_DYNAMIC, refreshed=br.now())
    assert br.run(moved)[:2] == ("PASS", "BR_LEARN")
    assert br.fdb_entry(blab.h2.mac) is None
    assert br.run(to_h2)[:2] == ("PASS", "BR_UNKNOWN_DST")  # the kernel, which knows the new port
    br.fdb(blab.h2.mac, "b-h2", flags=0)  # a static entry: the kernel moves it too (not sticky)
    assert br.run(moved)[:2] == ("PASS", "BR_LEARN") and br.fdb_entry(blab.h2.mac) is None
    bridge_mac = blab.mac(blab.b, "br0")
    assert br.run(bytes(Ether(src=bridge_mac, dst=blab.h3.mac) / IP() / UDP()))[:2] == ("PASS", "BR_LEARN")
    assert br.fdb_entry(bridge_mac) is not None  # the bridge's own: never moved


def test_missing_or_reassigned_port_entry(br: BridgeHarness, blab: BridgeLab) -> None:
    br.unport("b-h2")
    assert br.run(bytes(v4(blab)))[:2] == ("PASS", "BR_PORT_UNKNOWN")
    br.port("b-h2")
    assert br.run(bytes(v4(blab)))[:2] == ("REDIRECT", "FORWARDED")
    # the FDB entry still names b-h2's slot, which now holds another port
    br.obj.map(abi.MAP_PORTS).update(br.slot("b-h2").to_bytes(4, "little"),
                                     bytes(abi.TnaPort(ifindex=br.idx["b-h3"], flags=FWD)))
    assert br.run(bytes(v4(blab)))[:2] == ("PASS", "BR_PORT_UNKNOWN")
    br.unport("b-h1")
    assert br.run(bytes(v4(blab)))[:2] == ("PASS", "BR_PORT_UNKNOWN")


def test_routed_out_of_the_bridge(br: BridgeHarness, blab: BridgeLab) -> None:
    """To the bridge's MAC: the router serves it on br0, as Linux would."""
    pkt = Ether(src=blab.h1.mac, dst=blab.mac(blab.b, "br0")) / IP(src=blab.h1.ip4, dst=blab.h4.ip4, ttl=9) / UDP()
    verdict, reason, out = br.run(bytes(pkt))
    assert (verdict, reason) == ("REDIRECT", "FORWARDED")
    expect = pkt.copy()
    expect[Ether].src, expect[Ether].dst = blab.mac(blab.b, "b-h4"), blab.h4.mac
    expect[IP].ttl = 8
    del expect[IP].chksum
    assert out == bytes(Ether(bytes(expect)))


def test_routed_into_another_bridge_through_its_fdb(br: BridgeHarness, blab: BridgeLab) -> None:
    pkt = Ether(src=blab.h1.mac, dst=blab.mac(blab.b, "br0")) / IP(src=blab.h1.ip4, dst=blab.h5.ip4, ttl=9) / UDP()
    verdict, reason, out = br.run(bytes(pkt))
    assert (verdict, reason) == ("REDIRECT", "FORWARDED")
    assert Ether(out)[Ether].src == blab.mac(blab.b, "br1") and Ether(out)[Ether].dst == blab.h5.mac
    assert Ether(out)[IP].ttl == 8
    # the FDB does not know h5: br_dev_xmit() would flood
    br.unfdb(blab.h5.mac, bridge="br1")
    assert br.run(bytes(pkt))[:2] == ("PASS", "BR_UNKNOWN_DST")
    # a qdisc or tc egress filter on br1 must see routed packets
    br.fdb(blab.h5.mac, "b-h5", bridge="br1", flags=abi.FDB_DYNAMIC, refreshed=br.now())
    br.l3("br1", flags=0)
    assert br.run(bytes(pkt))[:2] == ("PASS", "EGRESS_UNSUPPORTED")


def test_checksum_partial_under_xdp(blab: BridgeLab) -> None:
    """XDP on a veth port: a stack's CHECKSUM_PARTIAL segment must go to the
    kernel (a redirected XDP frame would arrive with a half checksum)."""
    h = BridgeHarness(blab, "xdp", flags=abi.TNA_IF_CHECK_CSUM_PARTIAL)
    try:
        h.port("b-h1", FWD)
        h.port("b-h2", FWD)
        h.fdb(blab.h1.mac, "b-h1")
        h.fdb(blab.h2.mac, "b-h2")
        pkt = l2(blab) / IP(src=blab.h1.ip4, dst=blab.h2.ip4) / TCP(sport=1, dport=2) / Raw(b"p" * 20)
        pkt[TCP].chksum = pseudo_fold(IP(bytes(pkt[IP])))
        assert h.run(bytes(pkt))[:2] == ("PASS", "CSUM_PARTIAL")
        del pkt[TCP].chksum  # a complete checksum
        assert h.run(bytes(Ether(bytes(pkt))))[:2] == ("REDIRECT", "FORWARDED")
    finally:
        h.close()
