"""Multipath, differentially: each flow leaves by the path plain Linux took.

For every flow we first observe which path the kernel alone uses, then run
the same flow through `tna`.  Policy 0 (the default, L3 + IPv6 flow label)
is computed exactly by bpf_fib_lookup(), so those flows are fast-pathed.
Under policy 1 the kernel reuses a hash the packet already carries (socket
txhash, NIC RSS) when it has one; such packets go to the kernel
(MULTIPATH_HASH), the rest are hashed on the L4 ports the fast path fills in.
Crafted probes cover the other protocols and policies 2 and 3, where what
bpf_fib_lookup() cannot be given (inner headers, ...) goes to the kernel
(MULTIPATH_POLICY).
"""

from __future__ import annotations

import subprocess

import pytest

from netns_labs.lab import EcmpLab, py, wait_for
from netns_labs.tna_proc import Tna, host_xdp

pytestmark = pytest.mark.root

SPORTS = range(40000, 40016)
FLOWS = [(dst, src, sport) for dst, src in ((EcmpLab.DST4, "192.0.2.2"), (EcmpLab.DST6, "2001:db8:1::2"))
         for sport in SPORTS]


def _rx(lab: EcmpLab) -> dict[str, int]:
    return {dev: lab.ipr(lab.h2).get_links(lab.ifindex(lab.h2, dev))[0].get("IFLA_STATS64")["rx_packets"]
            for dev in ("h2-a", "h2-b")}


def _paths(lab: EcmpLab) -> dict[tuple[str, str, int], str]:
    """The device each flow arrived on at h2 (5 packets per flow)."""
    out = {}
    for dst, src, sport in FLOWS:
        before = _rx(lab)
        lab.run(lab.h1, py("netns_labs.xfer", "udp-send", dst, "9", str(sport), "5"), cwd=lab.repo)
        after = _rx(lab)
        got = [dev for dev in after if after[dev] - before[dev] >= 5]
        assert len(got) == 1, (dst, sport, before, after)
        out[(dst, src, sport)] = got[0]
    return out


@pytest.mark.parametrize("hook", ["auto", "xdp"])
@pytest.mark.parametrize("policy", [0, 1])
def test_flows_take_the_kernels_path(hook, policy):
    with EcmpLab() as lab:
        for family in ("ipv4", "ipv6"):
            lab.sysctl(lab.r, f"net.{family}.fib_multipath_hash_policy", policy)
        if hook == "xdp":
            for ns, dev in ((lab.h1, "h1-r"), (lab.h2, "h2-a"), (lab.h2, "h2-b")):
                host_xdp(lab, ns, dev)
        linux = _paths(lab)
        assert set(linux.values()) == {"h2-a", "h2-b"}, "the lab should spread these flows"
        tna = Tna(lab, lab.r, "--hook", hook)
        try:
            tna.wait_attached(["r-h1", "r-a", "r-b"])
            before = tna.counters()
            assert _paths(lab) == linux
            after = tna.counters()
            fast = after.get("FORWARDED", 0) - before.get("FORWARDED", 0)
            guarded = after.get("MULTIPATH_HASH", 0) - before.get("MULTIPATH_HASH", 0)
            if hook == "auto" and policy == 0:
                assert fast >= 5 * len(FLOWS)
            if hook == "auto" and policy == 1:
                assert guarded > 0  # these flows carry the sender's hash
            if hook == "xdp":  # stack-sent UDP: CHECKSUM_PARTIAL goes to the kernel first
                assert after.get("CSUM_PARTIAL", 0) - before.get("CSUM_PARTIAL", 0) >= 5 * len(FLOWS)
        finally:
            assert tna.stop() == 0
            tna.close()


# --- routes by nexthop object, net.ipv4.nexthop_compat_mode=0 -----------------
# Route messages then name the nexthop object only (RTA_NH_ID), and a group's
# changes reach no route message at all.  Under policy 1 a TCP socket's own tx
# hash picks each connection's path, so only the kernel knows it: each held
# connection must keep, through tna, the path it took with Linux alone.

CONNECTIONS, SEGMENTS = 12, 6
NH_DST = {EcmpLab.DST4: "192.0.2.2", EcmpLab.DST6: "2001:db8:1::2"}
GROUPS = {EcmpLab.DST4: ("10", "1/2"), EcmpLab.DST6: ("60", "6/7")}


def _nexthop_routes(lab: EcmpLab) -> None:
    lab.sysctl(lab.r, "net.ipv4.nexthop_compat_mode", 0)  # covers IPv6 too
    for nhid, gw, dev in (("1", "198.51.100.2", "r-a"), ("2", "198.51.100.130", "r-b"),
                          ("6", "2001:db8:a::2", "r-a"), ("7", "2001:db8:b::2", "r-b")):
        lab.run(lab.r, ["ip", "nexthop", "add", "id", nhid, "via", gw, "dev", dev])
    for dst, (group, members) in GROUPS.items():
        lab.run(lab.r, ["ip", "nexthop", "add", "id", group, "group", members])
        lab.run(lab.r, ["ip", "route", "replace", "203.0.113.0/24" if dst == EcmpLab.DST4 else "2001:db8:f::/64",
                        "nhid", group])


class _Held:
    """CONNECTIONS TCP connections per destination from h1, held open."""

    def __init__(self, lab: EcmpLab) -> None:
        self.lab = lab
        srv = lab.popen(lab.h2, py("netns_labs.xfer", "tcp-server", "5001", str(2 * CONNECTIONS)), cwd=lab.repo,
                        stdout=subprocess.PIPE, text=True)
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        self.clients: dict[str, subprocess.Popen] = {}
        for dst in NH_DST:
            c = lab.popen(lab.h1, py("netns_labs.xfer", "tcp-hold", dst, "5001", str(CONNECTIONS), str(SEGMENTS)),
                          cwd=lab.repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert c.stdout is not None
            # both ends' sockets time out, so each line comes (or EOF does)
            assert c.stdout.readline().strip() == "ready", "tcp-hold did not connect"
            self.clients[dst] = c

    def paths(self) -> dict[tuple[str, int], str]:
        """The device each connection's segments arrived on at h2."""
        out = {}
        for dst, c in self.clients.items():
            for i in range(CONNECTIONS):
                before = _rx(self.lab)
                assert c.stdin is not None and c.stdout is not None
                c.stdin.write(f"{i}\n")
                c.stdin.flush()
                assert c.stdout.readline().split() == ["sent", str(i)]
                after = _rx(self.lab)
                got = [dev for dev in after if after[dev] - before[dev] >= SEGMENTS]
                assert len(got) == 1, (dst, i, before, after)
                out[(dst, i)] = got[0]
        return out


def test_tcp_connections_by_nexthop_group_keep_the_kernels_path(hook):
    with EcmpLab() as lab:
        _nexthop_routes(lab)
        if hook == "xdp":
            for ns, dev in ((lab.h1, "h1-r"), (lab.h2, "h2-a"), (lab.h2, "h2-b")):
                host_xdp(lab, ns, dev)
            lab.run(lab.h1, ["ethtool", "-K", "h1-r", "tx", "off"])  # complete checksums: fast-pathable
        held = _Held(lab)
        linux = held.paths()
        for dst in NH_DST:
            assert {dev for (d, _), dev in linux.items() if d == dst} == {"h2-a", "h2-b"}, linux
        # IPv6's group is a single next hop when tna starts and becomes two
        # again while it runs (hash-threshold: the same hash, the same path)
        lab.run(lab.r, ["ip", "nexthop", "replace", "id", "60", "group", "6"])
        tna = Tna(lab, lab.r, "--hook", hook)
        try:
            st = tna.wait_attached(["r-h1", "r-a", "r-b"])
            assert st["multipath"] == {"ipv4": 1}
            lab.run(lab.r, ["ip", "nexthop", "replace", "id", "60", "group", "6/7"])
            assert wait_for(lambda: (tna.status() or {}).get("multipath") == {"ipv4": 1, "ipv6": 1}, 30)
            before = tna.counters()
            assert held.paths() == linux
            after = tna.counters()
            assert after.get("MULTIPATH_HASH", 0) - before.get("MULTIPATH_HASH", 0) >= 2 * CONNECTIONS * SEGMENTS
        finally:
            assert tna.stop() == 0
            tna.close()
PROBE = b"TNA-ECMP-PROBE"
N = 16  # variants per class: the one field that class varies


def _probes(lab: EcmpLab) -> list[tuple[str, bytes]]:
    """(class, frame) from h1 to r: per class, N frames that differ only in
    the field the kernel may hash for that class (ports, SPI, inner header,
    flow label, destination), each with its index after PROBE."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
    from scapy.layers.l2 import GRE, Ether
    from scapy.layers.sctp import SCTP
    from scapy.packet import Packet, Raw

    eth = Ether(src=lab.mac(lab.h1, "h1-r"), dst=lab.mac(lab.r, "r-h1"))
    v4 = {"src": "192.0.2.2", "dst": EcmpLab.DST4}
    v6 = {"src": "2001:db8:1::2", "dst": EcmpLab.DST6}

    def spi(i: int) -> bytes:
        return (0x1000 + 0x01010101 * i).to_bytes(4, "big")

    def ah(i: int) -> bytes:  # next header UDP, length 4 (12-byte ICV), SPI, sequence, ICV
        return bytes([17, 4, 0, 0]) + spi(i) + (1).to_bytes(4, "big") + bytes(12)

    def in4(i: int) -> Packet:
        return IP(src=f"192.0.2.{10 + i}", dst=f"203.0.113.{100 + i}") / UDP(sport=7, dport=9)

    def in6(i: int) -> Packet:
        return IPv6(src=f"2001:db8:1::{10 + i:x}", dst=f"2001:db8:f::{100 + i:x}") / UDP(sport=7, dport=9)

    classes = {
        "udp4": lambda i: IP(**v4) / UDP(sport=40000 + i, dport=9),
        "tcp4": lambda i: IP(**v4) / TCP(sport=40000 + i, dport=80, flags="A"),
        "sctp4": lambda i: IP(**v4) / SCTP(sport=40000 + i, dport=80),
        "esp4": lambda i: IP(proto=50, **v4) / Raw(spi(i) + (1).to_bytes(4, "big")),
        "ah4": lambda i: IP(proto=51, **v4) / Raw(ah(i)) / UDP(sport=7, dport=9),
        "icmp4": lambda i: IP(**v4) / ICMP(id=i + 1),
        "gre4": lambda i: IP(**v4) / GRE(proto=0x0800) / in4(i),
        "ipip4": lambda i: IP(proto=4, **v4) / in4(i),
        "6in4": lambda i: IP(proto=41, **v4) / in6(i),
        "frag4": lambda i: IP(flags="MF", **v4) / UDP(sport=40000 + i, dport=9),
        "dst4": lambda i: IP(src="192.0.2.2", dst=f"203.0.113.{1 + i}") / UDP(sport=7, dport=9),
        "udp6": lambda i: IPv6(**v6) / UDP(sport=40000 + i, dport=9),
        "tcp6": lambda i: IPv6(**v6) / TCP(sport=40000 + i, dport=80, flags="A"),
        "sctp6": lambda i: IPv6(**v6) / SCTP(sport=40000 + i, dport=80),
        "esp6": lambda i: IPv6(nh=50, **v6) / Raw(spi(i) + (1).to_bytes(4, "big")),
        "ah6": lambda i: IPv6(nh=51, **v6) / Raw(ah(i)) / UDP(sport=7, dport=9),
        "icmp6": lambda i: IPv6(**v6) / ICMPv6EchoRequest(id=i + 1),
        "gre6": lambda i: IPv6(**v6) / GRE(proto=0x86DD) / in6(i),
        "ip6ip6": lambda i: IPv6(nh=41, **v6) / in6(i),
        "4in6": lambda i: IPv6(nh=4, **v6) / in4(i),
        "frag6": lambda i: IPv6(**v6) / IPv6ExtHdrFragment(m=1) / UDP(sport=40000 + i, dport=9),
        "label6": lambda i: IPv6(fl=0x1111 * (i + 1), **v6) / UDP(sport=7, dport=9),
        "label-icmp6": lambda i: IPv6(fl=0x1111 * (i + 1), **v6) / ICMPv6EchoRequest(id=1),
        "dst6": lambda i: IPv6(src="2001:db8:1::2", dst=f"2001:db8:f::{1 + i:x}") / UDP(sport=7, dport=9),
    }
    out = []
    for name, make in classes.items():
        for i in range(N):
            out.append((name, bytes(eth / make(i) / Raw(PROBE + len(out).to_bytes(2, "big")))))
    return out


def _probe_paths(lab: EcmpLab, frames: list[bytes]) -> dict[int, str]:
    """Probe index -> the h2 device it arrived on; each must arrive once
    (one capture on both devices ends when every probe has come: a copy
    counts too, so one sent twice shows as another one lost)."""
    cap = lab.popen(lab.h2, py("netns_labs.xfer", "raw-capture", "h2-a,h2-b", PROBE.hex(), str(len(frames)), "6"),
                    stdout=subprocess.PIPE, text=True, cwd=lab.repo)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    lab.run(lab.h1, py("netns_labs.xfer", "raw-send", "h1-r", ",".join(f.hex() for f in frames), "1", "0.001"),
            cwd=lab.repo)
    got: dict[int, str] = {}
    out, _ = cap.communicate(timeout=60)
    for dev, line in (row.split() for row in out.splitlines()):
        at = line.index(PROBE.hex()) + len(PROBE.hex())
        idx = int(line[at:at + 4], 16)
        assert idx not in got, (idx, dev, got.get(idx))
        got[idx] = dev
    return got


# Classes the kernel spreads over both next hops under each policy: the
# probes exercise what that policy hashes (so a path taken from the wrong
# fields shows).  Policy 3 is run with every field of fib_multipath_hash_fields.
SPREAD = {
    0: {"dst4", "dst6", "label6", "label-icmp6"},
    1: {"udp4", "tcp4", "sctp4", "esp4", "ah4", "udp6", "tcp6", "sctp6", "esp6"},
    2: {"gre4", "ipip4", "6in4", "gre6", "ip6ip6", "4in6", "label6", "label-icmp6", "dst4", "dst6"},
    3: {"udp4", "esp4", "ipip4", "6in4", "udp6", "esp6", "ip6ip6", "4in6", "label6"},
}


@pytest.mark.parametrize("hook", ["auto", "xdp"])
@pytest.mark.parametrize(("policy", "rules"), [(0, False), (0, True), (1, False), (2, False), (3, False)])
def test_every_probe_leaves_by_the_kernels_next_hop(hook, policy, rules):
    """Crafted probes of every protocol class (TCP, UDP, SCTP, ESP, AH, ICMP,
    GRE, IPIP, IPv6-in-IPv4/IPv6, IPv4-in-IPv6, fragments, flow labels, L3
    only) under each hash policy: with tna each leaves by the next hop Linux
    alone chose, whether the fast path carries it or passes it.  `rules`: a
    fib rule on the protocol, which makes the kernel dissect packets before
    the lookup and hash ICMPv6 from that."""
    with EcmpLab() as lab:
        for family in ("ipv4", "ipv6"):
            lab.sysctl(lab.r, f"net.{family}.fib_multipath_hash_policy", policy)
            lab.sysctl(lab.r, f"net.{family}.fib_multipath_hash_fields", "0x0fff")
        if rules:
            for fam in ("-4", "-6"):
                lab.run(lab.r, ["ip", fam, "rule", "add", "ipproto", "tcp", "lookup", "main", "pref", "100"])
        if hook == "xdp":
            for ns, dev in ((lab.h1, "h1-r"), (lab.h2, "h2-a"), (lab.h2, "h2-b")):
                host_xdp(lab, ns, dev)
        probes = _probes(lab)
        frames = [f for _, f in probes]
        linux = _probe_paths(lab, frames)
        assert len(linux) == len(frames)
        for name in SPREAD[policy]:
            assert {linux[i] for i, (c, _) in enumerate(probes) if c == name} == {"h2-a", "h2-b"}, name
        tna = Tna(lab, lab.r, "--hook", hook)
        try:
            tna.wait_attached(["r-h1", "r-a", "r-b"])
            before = tna.counters("r-h1")
            fast = _probe_paths(lab, frames)
            after = tna.counters("r-h1")
        finally:
            assert tna.stop() == 0
            tna.close()
        lost = sorted({probes[i][0] for i in linux if i not in fast})
        wrong = sorted({probes[i][0] for i in linux if fast.get(i, linux[i]) != linux[i]})
        assert not wrong and not lost, f"{wrong} left by another next hop, {lost} lost ({after})"
        if policy in (0, 2) or (policy == 1 and hook == "auto"):
            assert after.get("FORWARDED", 0) - before.get("FORWARDED", 0) >= N  # not all passed
