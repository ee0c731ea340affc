"""Multipath, differentially: each flow leaves by the path plain Linux took.

For every flow we first observe which path the kernel alone uses, then run
the same flow through `tna`.  Policy 0 (the default, L3 + IPv6 flow label)
is computed exactly by bpf_fib_lookup(), so those flows are fast-pathed.
Under policy 1 the kernel reuses a hash the packet already carries (socket
txhash, NIC RSS) when it has one; such packets go to the kernel
(MULTIPATH_HASH), the rest are hashed on the L4 ports the fast path fills in.
"""

from __future__ import annotations

import subprocess

import pytest

from netns_labs.lab import EcmpLab, Tna, py, wait_for
from tests.conftest import host_xdp

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
            assert st["multipath_guarded"] == ["ipv4"]
            lab.run(lab.r, ["ip", "nexthop", "replace", "id", "60", "group", "6/7"])
            assert wait_for(lambda: (tna.status() or {}).get("multipath_guarded") == ["ipv4", "ipv6"], 30)
            before = tna.counters()
            assert held.paths() == linux
            after = tna.counters()
            assert after.get("MULTIPATH_HASH", 0) - before.get("MULTIPATH_HASH", 0) >= 2 * CONNECTIONS * SEGMENTS
        finally:
            assert tna.stop() == 0
            tna.close()
