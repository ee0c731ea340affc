"""Bridging on real kernel traffic, in netns labs, with both hooks.

A bridge with three hosts (and, routed, an uplink and a second bridge);
`auto` puts TC on the bridge's veth ports, `xdp` forces XDP (the hosts'
veths get an XDP program so redirected frames are delivered).  Counters
prove which path frames took; the kernel's FDB proves its state stays true.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from netns_labs.lab import BridgeLab, Host, ping, py, tcp_transfer, udp_echo, wait_for
from netns_labs.tna_proc import host_xdp, tna_running

pytestmark = pytest.mark.root

PORTS = ["b-h1", "b-h2", "b-h3"]


def delta(after: dict[str, int], before: dict[str, int], reason: str) -> int:
    return after.get(reason, 0) - before.get(reason, 0)


@pytest.fixture
def bridged(hook: str) -> Iterator[tuple[BridgeLab, object]]:
    with BridgeLab() as lab, tna_running(lab, lab.b, hook, PORTS, lab.hosts) as tna:
        yield lab, tna


@pytest.fixture
def routed(hook: str) -> Iterator[tuple[BridgeLab, object]]:
    with BridgeLab(routed=True) as lab, tna_running(lab, lab.b, hook, [*PORTS, "b-h4", "b-h5"],
                                                     [*lab.hosts, lab.h4, lab.h5]) as tna:
        yield lab, tna


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_three_hosts_ping_each_other_on_the_fast_path(bridged, family):
    lab, tna = bridged
    pairs = [(a, b) for a in lab.hosts for b in lab.hosts if a != b]
    for a, b in pairs:  # the kernel learns every host (ARP/ND go through it)
        assert " 0% packet loss" in ping(lab, a.ns, getattr(b, family), 1).stdout
    before = tna.counters()
    for a, b in pairs:
        res = ping(lab, a.ns, getattr(b, family), 10)
        assert " 0% packet loss" in res.stdout and "DUP" not in res.stdout, res.stdout
    # each request and reply is bridged once by the fast path
    assert delta(tna.counters(), before, "FORWARDED") >= 2 * 10 * len(pairs) - 4


def test_tcp_and_udp_between_hosts(bridged, hook):
    lab, tna = bridged
    before = tna.counters()
    for src, dst in ((lab.h1, lab.h2), (lab.h3, lab.h1)):
        sent, received = tcp_transfer(lab, src.ns, dst.ns, dst.ip4, 8 << 20)
        assert sent == received
    assert udp_echo(lab, lab.h2.ns, lab.h3.ns, lab.h3.ip6, 200) == 200
    after = tna.counters()
    if hook == "auto":
        assert delta(after, before, "FORWARDED") > 500  # TC keeps GSO: few, large packets
    else:
        # XDP on a veth: a stack's segments carry CHECKSUM_PARTIAL and must go
        # through the kernel; the transfer stays intact
        assert delta(after, before, "CSUM_PARTIAL") > 1000


MARK = b"TNA-BRIDGE-MARK!"


def _frames(lab: BridgeLab) -> list[bytes]:
    """Frames from h1 to h2 as a bridge must pass them on unchanged."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
    from scapy.packet import Raw

    e = Ether(src=lab.h1.mac, dst=lab.h2.mac)
    udp4 = IP(src="192.0.2.11", dst="192.0.2.12") / UDP(sport=7, dport=9) / Raw(MARK)
    return [bytes(f) for f in (
        e / Dot1Q(vlan=7, prio=5) / udp4,
        e / Dot1AD(vlan=100) / Dot1Q(vlan=7) / udp4,
        e / udp4 / Raw(b"\0" * 8),  # Ethernet padding past the IP length
        e / IPv6(src="2001:db8:1::11", dst="2001:db8:1::12") / UDP(sport=7, dport=9) / Raw(MARK),
        Ether(src=lab.h1.mac, dst=lab.h2.mac, type=0x88B5) / Raw(MARK * 3),
    )]


def _send_and_capture(lab: BridgeLab, frames: list[bytes]) -> list[str]:
    cap = lab.popen(lab.h2.ns, py("netns_labs.xfer", "raw-capture", lab.h2.dev, MARK.hex(), str(len(frames))),
                    stdout=subprocess.PIPE, text=True, cwd=lab.repo)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    for f in frames:
        lab.run(lab.h1.ns, py("netns_labs.xfer", "raw-send", lab.h1.dev, f.hex(), "1"), cwd=lab.repo)
    out, _ = cap.communicate(timeout=20)
    return out.split()


@pytest.mark.parametrize("br_nf", [0, 1])
def test_frames_arrive_byte_for_byte_as_without_tna(hook, br_nf):
    """Tagged (802.1Q, QinQ), padded, IPv6 and non-IP frames: what h2
    receives through the fast path equals what it receives from Linux alone
    (with br_netfilter, Linux trims the padded IPv4 frame: so must TNA)."""
    with BridgeLab() as lab:
        lab.sysctl(lab.b, "net.bridge.bridge-nf-call-iptables", br_nf)
        lab.sysctl(lab.b, "net.bridge.bridge-nf-call-ip6tables", br_nf)
        # h2 answers the UDP frames with ICMP errors; resolving or re-probing
        # h1 for them (NUD: STALE -> DELAY -> PROBE, seconds later) makes h1
        # send h2 a unicast ARP reply or NA, which the fast path bridges and
        # counts.  Permanent neighbours: only the test's frames go h1 -> h2.
        for a, b in ((lab.h1, lab.h2), (lab.h2, lab.h1)):
            lab.neigh(a.ns, a.dev, b.ip4, b.mac)
            lab.neigh(a.ns, a.dev, b.ip6, b.mac)
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 1).stdout  # learn both
        frames = _frames(lab)
        linux = _send_and_capture(lab, frames)
        assert len(linux) == len(frames)
        with tna_running(lab, lab.b, hook, PORTS, lab.hosts) as tna:
            ping(lab, lab.h1.ns, lab.h2.ip4, 1)
            before = tna.counters("b-h1")
            fast = _send_and_capture(lab, frames)
            forwarded = delta(tna.counters("b-h1"), before, "FORWARDED")
        assert fast == linux
        assert forwarded == len(frames)


def test_a_host_moved_to_another_port_is_reachable_after_one_arp_exchange(bridged, hook):
    lab, tna = bridged
    h2 = lab.h2
    assert " 0% packet loss" in ping(lab, lab.h1.ns, h2.ip4, 3).stdout
    assert lab.fdb()[h2.mac] == "b-h2"
    # h2's address and MAC move to a new host h6 on a new port; h2 stays up
    lab.run(h2.ns, ["ip", "addr", "flush", "dev", h2.dev])
    lab.run(h2.ns, ["ip", "link", "set", h2.dev, "address", "02:00:00:00:66:02"])
    h6 = lab.host(6, "br0", f"{h2.ip4}/24", f"{h2.ip6}/64")
    lab.run(h6.ns, ["ip", "link", "set", h6.dev, "address", h2.mac])
    h6 = Host(h6.ns, h6.dev, h6.ip4, h6.ip6, h2.mac)
    if hook == "xdp":
        host_xdp(lab, h6.ns, h6.dev)
    tna.wait_attached(["b-h6"])
    # one ARP exchange from the moved host: the kernel moves the FDB entry
    lab.run(h6.ns, ["ip", "neigh", "flush", "all"])
    assert " 0% packet loss" in ping(lab, h6.ns, lab.h1.ip4, 1).stdout
    assert wait_for(lambda: lab.fdb().get(h2.mac) == "b-h6", 30)
    before = tna.counters()
    res = ping(lab, lab.h1.ns, h2.ip4, 10)
    assert " 0% packet loss" in res.stdout, res.stdout
    assert delta(tna.counters(), before, "FORWARDED") >= 18  # to and from the new port


def _fdb_size(tna) -> int:
    return tna.status()["bridges"]["br0"]["fdb"]


def test_fdb_delete_and_port_removal_take_effect_at_once(bridged):
    lab, tna = bridged
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    size = _fdb_size(tna)
    before = after = None
    for _ in range(5):
        lab.run(lab.b, ["bridge", "fdb", "del", lab.h2.mac, "dev", "b-h2", "master"], check=False)
        if not wait_for(lambda: _fdb_size(tna) == size - 1, 10):
            continue  # h2 spoke and was learned again before the count showed the delete: again
        before = tna.counters()
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 1).stdout
        after = tna.counters()
        if delta(after, before, "BR_UNKNOWN_DST") >= 1:  # the kernel flooded the request
            break
        # else h2 spoke (an ARP probe, IPv6 ND) between the delete and the
        # ping, and the kernel learned it again, as it may on a busy machine
    else:
        pytest.fail(f"an echo request to a deleted FDB entry was never flooded: {before} -> {after}")
    assert delta(after, before, "BR_LEARN") >= 1        # and learned h2 again from the reply
    # a port leaving the bridge: its hosts are gone for Linux and for TNA
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h3.ip4, 3).stdout
    lab.run(lab.b, ["ip", "link", "set", "b-h3", "nomaster"])
    assert wait_for(lambda: "b-h3" not in tna.status()["ifaces"], 30)
    before = tna.counters()
    assert "100% packet loss" in ping(lab, lab.h1.ns, lab.h3.ip4, 3).stdout
    assert delta(tna.counters(), before, "FORWARDED") == 0


def test_stp_blocking_port_forwards_nothing(hook):
    """A loop: h7's own bridge (a hub: ageing 0, no STP) has two links into
    br0, whose kernel STP blocks one.  Frames h7 floods arrive on both;
    only the forwarding port may pass them on (a fast-pathed copy from the
    blocking port would show as a duplicate reply)."""
    with BridgeLab() as lab:
        lab.run(lab.b, ["ip", "link", "set", "br0", "type", "bridge", "stp_state", "1", "forward_delay", "200",
                        "hello_time", "100"])
        h7 = lab.add_ns("h7")
        lab.run(h7, ["ip", "link", "add", "hub", "type", "bridge", "ageing_time", "0"])
        for end in ("a", "b"):
            lab.veth(h7, f"h7{end}", lab.b, f"b-h7{end}")
            lab.run(lab.b, ["ip", "link", "set", f"b-h7{end}", "master", "br0"])
            lab.run(h7, ["ip", "link", "set", f"h7{end}", "master", "hub"])
        lab.run(h7, ["ip", "link", "set", "hub", "up"])
        lab.addr(h7, "hub", "192.0.2.17/24")

        def states() -> dict[str, str]:
            out = lab.run(lab.b, ["bridge", "link", "show"]).stdout
            return {f[1].split("@")[0].rstrip(":"): f[f.index("state") + 1] for f in map(str.split, out.splitlines())}
        assert wait_for(lambda: sorted(states()[p] for p in ("b-h7a", "b-h7b")) == ["blocking", "forwarding"]
                        and states()["b-h1"] == "forwarding", timeout=60)
        blocking = next(p for p in ("b-h7a", "b-h7b") if states()[p] == "blocking")
        hosts = [*lab.hosts, Host(h7, "h7a", "", "", ""), Host(h7, "h7b", "", "", "")]
        with tna_running(lab, lab.b, hook, [*PORTS, "b-h7a", "b-h7b"], hosts) as tna:
            assert tna.status()["bridges"]["br0"]["ports"][blocking]["state"] == "blocking"
            text = lab.run(lab.b, py("tna", "status"), cwd=lab.repo).stdout
            assert "bridge br0: accelerated" in text and f"port {blocking:<12} blocking" in text, text
            res = ping(lab, lab.h1.ns, "192.0.2.17", 20)
            assert " 0% packet loss" in res.stdout and "DUP" not in res.stdout, res.stdout
            on_blocking = tna.counters(blocking)
            assert on_blocking.get("FORWARDED", 0) == 0
            assert on_blocking.get("BR_PORT_STATE", 0) >= 20  # every reply's flooded copy
            # h1's requests: bridged, except one per refresh interval, which
            # with STP is forward_delay / 16 (2 s here: STP may shorten ageing)
            on_h1 = tna.counters("b-h1")
            assert on_h1.get("FORWARDED", 0) + on_h1.get("BR_REFRESH", 0) >= 20
            assert on_h1.get("FORWARDED", 0) >= 10


def test_fdb_entries_stay_alive_under_a_fast_path_flow(hook):
    """ageing_time 2 s; a 5.5 s ping flow through the fast path.  The kernel
    never sees the flow's frames, yet its entries must not age out: one frame
    per source MAC and refresh interval goes through the kernel.  Once the
    flow stops, the kernel ages them out and the map follows."""
    ageing, pings = 2, 550  # the flow (10 ms apart) outlives the ageing time more than twice
    with BridgeLab(ageing_s=ageing) as lab, tna_running(lab, lab.b, hook, PORTS, lab.hosts) as tna:
        lab.neigh(lab.h1.ns, lab.h1.dev, lab.h2.ip4, lab.h2.mac)  # no ARP: only the flow's frames
        lab.neigh(lab.h2.ns, lab.h2.dev, lab.h1.ip4, lab.h1.mac)
        for h in (lab.h1, lab.h2):
            # router solicitations back off 4, 8, 16, 32 s...: one in the
            # silence below would keep the host's entry alive
            lab.sysctl(h.ns, f"net.ipv6.conf.{h.dev}.router_solicitations", 0)
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 2).stdout
        before, t0 = tna.counters(), time.monotonic()
        flow = lab.popen(lab.h1.ns, ["ping", "-q", "-c", str(pings), "-i", "0.01", lab.h2.ip4],
                         stdout=subprocess.PIPE, text=True)
        missing = []
        end = time.monotonic() + pings / 100
        while time.monotonic() < end:
            fdb = lab.fdb()
            missing += [m for m in (lab.h1.mac, lab.h2.mac) if m not in fdb]
            size = _fdb_size(tna)  # the map with both: they age out once the flow stops
            time.sleep(0.5)
        out, _ = flow.communicate(timeout=30)
        after, elapsed = tna.counters(), time.monotonic() - t0
        assert " 0% packet loss" in out, out
        assert missing == []
        assert delta(after, before, "BR_UNKNOWN_DST") == 0
        # the daemon may mirror the warm-up's learning late on a busy machine:
        # then the flow's first frame per MAC is the kernel's to learn from
        assert delta(after, before, "BR_LEARN") <= 2, (before, after)
        # two MACs, each through the kernel at most once per refresh interval
        # (ageing / 16; at least once, or missing would list it): a busy
        # machine only stretches elapsed, and lowers no bound
        refreshed, forwarded = delta(after, before, "BR_REFRESH"), delta(after, before, "FORWARDED")
        print(f"{refreshed} refreshes in {elapsed:.1f} s")
        assert 2 <= refreshed <= 2 * (elapsed * 16 / ageing + 1), (refreshed, elapsed)
        # the rest of the flow's requests and replies: the fast path (but
        # what a hold passed: a lease the starved daemon failed to renew, or
        # netlink news the busy daemon had not taken yet)
        held = sum(delta(after, before, r) for r in ("LEASE_EXPIRED", "PENDING", "RESYNC"))
        assert forwarded >= 2 * pings - refreshed - held, (forwarded, refreshed, held)
        # silence: the kernel ages the entries out, and the map with it
        assert wait_for(lambda: _fdb_size(tna) <= size - 2, timeout=30)
        assert lab.h2.mac not in lab.fdb()


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_routing_between_bridges_and_an_uplink(routed, family):
    lab, tna = routed
    paths = [(lab.h1, lab.h4), (lab.h4, lab.h1), (lab.h1, lab.h5), (lab.h5, lab.h2), (lab.h4, lab.h5)]
    for a, b in paths:  # neighbours resolved by the kernel
        ping(lab, a.ns, getattr(b, family), 1)
    before = tna.counters()
    for a, b in paths:
        res = ping(lab, a.ns, getattr(b, family), 10)
        assert " 0% packet loss" in res.stdout, res.stdout
    assert delta(tna.counters(), before, "FORWARDED") >= 2 * 10 * len(paths) - 4


def test_routed_tcp_and_udp(routed, hook):
    lab, tna = routed
    before = tna.counters()
    for src, dst in ((lab.h1, lab.h4), (lab.h5, lab.h1), (lab.h4, lab.h5)):
        sent, received = tcp_transfer(lab, src.ns, dst.ns, dst.ip6, 4 << 20)
        assert sent == received
    assert udp_echo(lab, lab.h2.ns, lab.h5.ns, lab.h5.ip4, 200) == 200
    after = tna.counters()
    key = "FORWARDED" if hook == "auto" else "CSUM_PARTIAL"
    assert delta(after, before, key) > 500


def test_a_capture_on_the_bridge_sees_its_frames_as_without_tna(routed):
    """`tcpdump -i br0` makes br0 promiscuous: the kernel then also hands
    every frame it bridges up br0 (br_handle_frame_finish(): local_rcv), and
    a capture there sees what br0 routes.  While br0 is promiscuous its
    frames are the kernel's (a port flag: a map update), after that the
    fast path's again."""
    lab, tna = routed
    h1, h2, h4 = lab.h1, lab.h2, lab.h4
    for dst in (h2.ip4, h4.ip4):
        assert " 0% packet loss" in ping(lab, h1.ns, dst, 1).stdout
    pattern = ("-p", MARK.hex())
    cap = lab.popen(lab.b, py("netns_labs.xfer", "promisc-capture", "br0", MARK.hex(), "1000", "3"),
                    stdout=subprocess.PIPE, text=True, cwd=lab.repo)
    try:
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"

        def promisc_seen() -> bool:
            before = tna.counters()
            ping(lab, h1.ns, h2.ip4, 1, *pattern)
            return delta(tna.counters(), before, "BR_PROMISC") > 0
        assert wait_for(promisc_seen, 30, 0.2)
        assert tna.status()["bridges"]["br0"]["promiscuous"]
        before = tna.counters()
        for dst in (h2.ip4, h4.ip4):
            res = ping(lab, h1.ns, dst, 5, *pattern)
            assert " 0% packet loss" in res.stdout, res.stdout
        after = tna.counters()
        out, _ = cap.communicate(timeout=30)
    finally:
        cap.kill()
        cap.wait()
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    seen = [Ether(bytes.fromhex(line))[IP] for line in out.split()]
    pairs = [(p.src, p.dst) for p in seen]
    for pair in ((h1.ip4, h2.ip4), (h2.ip4, h1.ip4), (h1.ip4, h4.ip4)):  # bridged both ways, routed in
        assert pairs.count(pair) >= 5, pairs
    assert delta(after, before, "FORWARDED") == 0

    def fast_again() -> bool:
        before = tna.counters()
        ping(lab, h1.ns, h2.ip4, 2)
        return delta(tna.counters(), before, "FORWARDED") >= 2
    assert wait_for(fast_again, 30, 0.2)


def test_a_macvlan_on_the_bridge_makes_it_promiscuous_for_the_fast_path_too(bridged):
    """A macvlan brought up on br0 puts its address on the bridge, which
    filters no unicast addresses: the kernel makes br0 promiscuous
    (__dev_set_rx_mode()), and says so in no link message of its own."""
    lab, tna = bridged
    assert not tna.status()["bridges"]["br0"]["promiscuous"]
    lab.run(lab.b, ["ip", "link", "add", "mv0", "link", "br0", "type", "macvlan", "mode", "bridge"])
    lab.run(lab.b, ["ip", "link", "set", "mv0", "up"])
    assert "promiscuity 1" in lab.run(lab.b, ["ip", "-d", "link", "show", "br0"]).stdout
    assert wait_for(lambda: tna.status()["bridges"]["br0"]["promiscuous"], 30, 0.5)
