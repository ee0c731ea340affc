"""Hypothesis: the bridge module against a reference model of the Linux
bridge's decision (br_handle_frame_finish(), should_deliver(),
br_dev_queue_push_xmit(), br_netfilter's validation), on random frames and
random port state, for both hooks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from netns_labs.lab import BridgeLab
from tests.harness import BridgeHarness
from tna.bpf import abi

pytestmark = pytest.mark.root

FWD, ISO, LOCKED = abi.PORT_FLAGS["FORWARDING"], abi.PORT_FLAGS["ISOLATED"], abi.PORT_FLAGS["LOCKED"]
NF4 = abi.PORT_FLAGS["NF_IP4"]
UNKNOWN = "02:00:00:00:0e:0e"

port_flags = st.sampled_from([FWD, FWD, FWD, 0, FWD | ISO, FWD | LOCKED, FWD | NF4])


def expected(in_flags: int, out_flags: int, src: str, dst: str, kind: str, l2len: int, mtu: int,
             lab: BridgeLab) -> str:
    """The reason the bridge module must give (FORWARDED: bridge it)."""
    br_mac = lab.mac(lab.b, "br0")
    fdb = {lab.h1.mac: "b-h1", lab.h2.mac: "b-h2", lab.h3.mac: "b-h3"}
    if not in_flags & FWD:
        return "BR_PORT_STATE"
    if in_flags & LOCKED:
        return "BR_PORT_POLICY"
    if int(dst[:2], 16) & 1:
        return "BR_LINK_LOCAL" if dst.startswith("01:80:c2:00:00:0") else "BR_MULTICAST"
    if fdb.get(src) != "b-h1":
        return "BR_LEARN"
    if dst == br_mac:
        return "BR_LOCAL"  # the ports here do not route
    if dst not in fdb:
        return "BR_UNKNOWN_DST"
    if fdb[dst] == "b-h1":
        return "BR_SAME_PORT"
    if kind == "arp":
        return "ARP"
    if in_flags & NF4 and kind == "ipv4-bad-csum":
        return "IP_INVALID"
    if not out_flags & FWD:
        return "BR_PORT_STATE"
    if in_flags & out_flags & ISO:
        return "BR_PORT_POLICY"
    if l2len > mtu + 18:
        return "BR_MTU"
    return "FORWARDED"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bridge_matches_reference_model(bh: BridgeHarness, blab: BridgeLab, data: st.DataObject) -> None:
    lab = blab
    in_flags, out_flags = data.draw(port_flags), data.draw(port_flags)
    hosts = [lab.h1.mac, lab.h2.mac, lab.h3.mac]
    src = data.draw(st.sampled_from([*hosts, UNKNOWN, lab.mac(lab.b, "br0")]))
    dst = data.draw(st.sampled_from([*hosts, UNKNOWN, lab.mac(lab.b, "br0"), "ff:ff:ff:ff:ff:ff",
                                     "01:00:5e:00:00:01", "01:80:c2:00:00:00", "01:80:c2:00:00:0e"]))
    kind = data.draw(st.sampled_from(["ipv4", "ipv4-bad-csum", "arp", "tagged", "other"]))
    size = data.draw(st.integers(0, 200))
    mtu = data.draw(st.sampled_from([1500, 100, 150, 200]))

    bh.port("b-h1", in_flags)
    for dev in ("b-h2", "b-h3"):
        bh.port(dev, out_flags, mtu=mtu)
    for host, dev in zip(hosts, ("b-h1", "b-h2", "b-h3"), strict=True):
        bh.fdb(host, dev, flags=abi.FDB_DYNAMIC, refreshed=bh.now())
    bh.fdb(lab.mac(lab.b, "br0"), "br0", flags=abi.FDB_LOCAL)

    e = Ether(src=src, dst=dst)
    payload = Raw(b"q" * size)
    if kind.startswith("ipv4"):
        ip = IP(src=lab.h1.ip4, dst=lab.h2.ip4, chksum=0x1234 if kind == "ipv4-bad-csum" else None)
        frame = bytes(e / ip / UDP(sport=5, dport=6) / payload)
    elif kind == "arp":
        frame = bytes(e / ARP(psrc=lab.h1.ip4, pdst=lab.h2.ip4))
    elif kind == "tagged":
        frame = bytes(e / Dot1Q(vlan=9) / IP(dst="192.0.2.9") / UDP() / payload)
    else:
        frame = bytes(Ether(src=src, dst=dst, type=0x88B5) / payload)
    frame = frame.ljust(60, b"\0")

    reason = expected(in_flags, out_flags, src, dst, kind, len(frame), mtu, lab)
    verdict, got, out = bh.run(frame)
    assert (verdict, got) == ("REDIRECT" if reason == "FORWARDED" else "PASS", reason)
    if reason == "FORWARDED":
        assert out == frame or (in_flags & NF4 and kind == "ipv4" and frame.startswith(out))
