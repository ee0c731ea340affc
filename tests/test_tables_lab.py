"""raw, mangle, filter and security tables on real traffic (both hooks, both
families), as real hosts write them:

- raw PREROUTING drops a spoofed source (h2's prefix arriving from h1)
  before conntrack: the fast path drops it and counts the rule;
- mangle FORWARD clamps the MSS of SYNs to the path MTU (TCPMSS): the SYNs
  go to the kernel and arrive with the MSS option Linux writes, the
  established ACKs of the connection are carried;
- filter FORWARD as kube-proxy writes it (KUBE-FORWARD: the masquerade
  mark accepted before the conntrack accept);
- security FORWARD drops UDP to one address: the fast path drops it after
  filter accepted it; it accepts the replies of assured TCP connections
  (--ctstatus, --ctdir: the entry's, which the fast path reads).

Under XDP the hosts send with checksums complete (as in
test_conntrack_lab.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import RouterLab, py, tcp_transfer, wait_for
from netns_labs.tna_proc import tna_running
from tests.test_firewall_lab import MARK, arrivals

pytestmark = pytest.mark.root

RULES = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -s {h2net} -i r-h1 -j DROP
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -i r-h1 -o r-h2 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD {kube_ct}
COMMIT
*security
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d {alt} -p udp -j DROP
-A FORWARD -p tcp -m conntrack --ctstatus ASSURED --ctdir REPLY -j ACCEPT
COMMIT
"""
FAMILY = {4: {"tool": "iptables", "h2net": "198.51.100.0/24", "spoof": "198.51.100.66", "alt": "198.51.100.7",
              "hlen": 40},
          6: {"tool": "ip6tables", "h2net": "2001:db8:2::/64", "spoof": "2001:db8:2::66", "alt": "2001:db8:2::7",
              "hlen": 60}}
KUBE_CT = ('-m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED '
           "-j ACCEPT")
MTU = 1400  # of the path to h2: the MSS of a SYN is clamped to it less the headers
PROBES = 8


@pytest.fixture
def tables_lab(router_lab: RouterLab, hook: str, family: int) -> Iterator[RouterLab]:
    lab, f = router_lab, FAMILY[family]
    lab.neigh(lab.r, "r-h2", f["alt"], lab.h2.mac)
    lab.run(lab.h2.ns, ["ip", "addr", "add", f"{f['alt']}/{32 if family == 4 else 128}", "dev", lab.h2.dev])
    for ns, dev in ((lab.r, "r-h2"), (lab.h2.ns, lab.h2.dev)):
        lab.run(ns, ["ip", "link", "set", dev, "mtu", str(MTU)])
    if hook == "xdp":
        for h in (lab.h1, lab.h2):
            lab.run(h.ns, ["ethtool", "-K", h.dev, "tx", "off"])
    lab.run(lab.r, [f"{f['tool']}-restore"], input=RULES.format(**f, kube_ct=KUBE_CT))
    yield lab


def probes(lab: RouterLab, family: int, base: int) -> dict[str, list[bytes]]:
    """Frames h1 sends, by kind, each holding MARK and its index (base +
    n): SYNs with an MSS option of 1460 and data (TCPMSS rewrites such a
    SYN's option in place), UDP from a spoofed source, UDP to the address
    security FORWARD drops."""
    f = FAMILY[family]
    me, h2 = (lab.h1.ip4, lab.h2.ip4) if family == 4 else (lab.h1.ip6, lab.h2.ip6)

    def frame(src: str, dst: str, l4: object, n: int) -> bytes:
        ip = IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)
        return bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / ip / l4 / Raw(MARK + b"%04d" % n))
    syn = [frame(me, h2, TCP(sport=40000 + base + n, dport=5300, flags="S", seq=7, options=[("MSS", 1460)]),
                 base + n) for n in range(PROBES)]
    spoofed = [frame(f["spoof"], h2, UDP(sport=1000, dport=9), base + PROBES + n) for n in range(PROBES)]
    secured = [frame(me, f["alt"], UDP(sport=1000, dport=9), base + 2 * PROBES + n) for n in range(PROBES)]
    return {"syn": syn, "spoofed": spoofed, "secured": secured}


def mss(frame: bytes) -> int:
    return dict(Ether(frame)[TCP].options)["MSS"]


def sent_back(lab: RouterLab, family: int, base: int) -> dict[str, list[bytes]]:
    """What of each kind of probe reached h2, as h2 got it, in sending order."""
    kinds = probes(lab, family, base)
    got = sorted(arrivals(lab, [fr for frames in kinds.values() for fr in frames]), key=_index)
    return {kind: [g for g in got if (_index(g) - base) // PROBES == k] for k, kind in enumerate(kinds)}


def _index(frame: bytes) -> int:
    return int(frame.split(MARK)[1][:4])


@pytest.mark.parametrize("family", [4, 6])
def test_every_table_applies_where_the_kernel_does(tables_lab: RouterLab, hook: str, family: int) -> None:
    lab, f = tables_lab, FAMILY[family]
    h2 = lab.h2.ip4 if family == 4 else lab.h2.ip6
    linux = sent_back(lab, family, 0)
    assert linux["spoofed"] == [] and linux["secured"] == []
    assert len(linux["syn"]) == PROBES and {mss(s) for s in linux["syn"]} == {MTU - f["hlen"]}
    lab.run(lab.r, [f["tool"], "-t", "raw", "-Z"])
    lab.run(lab.r, [f["tool"], "-t", "security", "-Z"])
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2), tna.output()
        before = tna.counters()
        ingress = {d: tna.counters(d) for d in ("r-h1", "r-h2")}
        fast = sent_back(lab, family, 100)
        probed = tna.counters()
        sent, received = tcp_transfer(lab, lab.h1.ns, lab.h2.ns, h2, 20 << 20)
        after = tna.counters()
        forwarded = {d: tna.counters(d).get("FORWARDED", 0) - ingress[d].get("FORWARDED", 0) for d in ingress}
        rules = json.loads(lab.run(lab.r, py("tna", "stats", "--rules", "--json"), cwd=lab.repo).stdout)
        text = lab.run(lab.r, py("tna", "status"), cwd=lab.repo).stdout
    assert fast["spoofed"] == [] and fast["secured"] == []
    # the SYNs went to the kernel, which rewrote them as it did alone
    assert {mss(s) for s in fast["syn"]} == {MTU - f["hlen"]} and len(fast["syn"]) == PROBES
    assert [_without_ports(s) for s in fast["syn"]] == [_without_ports(s) for s in linux["syn"]]
    moved = {r: probed.get(r, 0) - before.get(r, 0) for r in ("FW_DROP", "FW_KERNEL")}
    assert moved == {"FW_DROP": 2 * PROBES, "FW_KERNEL": PROBES}, moved
    by_rule = {(r["table"], r["chain"], r["index"]): r for r in rules if r["family"] == family}
    for key in (("raw", "PREROUTING", 1), ("security", "FORWARD", 1)):
        assert by_rule[key]["fast_path"]["packets"] == PROBES and by_rule[key]["kernel"]["packets"] == 0, key
    # the connection: its SYNs (one each way) clamped by the kernel, the rest
    # carried, accepted by the conntrack rule after the mark rule
    assert sent == received
    carried = after.get("FORWARDED", 0) - probed.get("FORWARDED", 0)
    kernel = sum(after.get(r, 0) - probed.get(r, 0) for r in ("FW_KERNEL", "CT_NEW", "CT_STATE"))
    # CT_SYNC lasts until the daemon's conntrack thread has marked the entry:
    # as long as a busy machine keeps that thread waiting (CI: ~100 segments)
    synced = after.get("CT_SYNC", 0) - probed.get("CT_SYNC", 0)
    assert carried > 10 * kernel and carried > synced, (after, probed)
    assert by_rule["filter", "KUBE-FORWARD", 2]["fast_path"]["packets"] > carried // 2
    assert by_rule["filter", "KUBE-FORWARD", 1]["fast_path"]["packets"] == 0  # no mark: 0 on every carried packet
    assert by_rule["mangle", "FORWARD", 1]["fast_path"]["packets"] == 0  # TCPMSS: the kernel's
    # every carried reply (entering at r-h2) matched the status rule, every
    # carried packet the other way reached the policy
    assert by_rule["security", "FORWARD", 2]["fast_path"]["packets"] == forwarded["r-h2"] > 0
    assert by_rule["security", "FORWARD", 0]["fast_path"]["packets"] == forwarded["r-h1"] > 0
    assert f"kernel path for what IPv{family} mangle FORWARD rule 1 could match (-j TCPMSS)" in text, text


def _without_ports(frame: bytes) -> bytes:
    """A probe SYN as h2 got it, less what differs between two runs: the
    source port, the index in its data, and the checksum covering them."""
    pkt = Ether(frame)
    pkt[TCP].sport, pkt[TCP].chksum = 0, 0
    return bytes(pkt).split(MARK)[0]
