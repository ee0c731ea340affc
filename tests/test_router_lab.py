"""The router on real kernel traffic, in a netns lab, with both hooks.

`auto` puts TC on the router's veths (their peers are local stacks); `xdp`
forces XDP, with an XDP program on the hosts' veths so redirected frames can
be delivered (as on a NIC).  Counters prove which path packets took.
"""

from __future__ import annotations

import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from netns_labs.lab import RouterLab, ping, py, tcp_transfer, udp_echo, wait_for
from netns_labs.tna_proc import Tna, host_xdp, tna_running

pytestmark = pytest.mark.root


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_ping_takes_fast_path(accelerated, family):
    lab, tna = accelerated
    before = tna.counters().get("FORWARDED", 0)
    res = ping(lab, lab.h1.ns, getattr(lab.h2, family), 20)
    assert " 0% packet loss" in res.stdout, res.stdout
    # 20 requests + 20 replies, each forwarded once by the fast path
    assert tna.counters().get("FORWARDED", 0) - before >= 40


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_tcp_transfer_both_directions(accelerated, hook, family):
    lab, tna = accelerated
    before = tna.counters()
    for src, dst, host in ((lab.h1.ns, lab.h2.ns, lab.h2), (lab.h2.ns, lab.h1.ns, lab.h1)):
        sent, received = tcp_transfer(lab, src, dst, getattr(host, family), 8 << 20)
        assert sent == received
    after = tna.counters()
    forwarded = after.get("FORWARDED", 0) - before.get("FORWARDED", 0)
    if hook == "auto":
        # TC keeps GSO: few, large packets, all on the fast path
        assert forwarded > 100
    else:
        # XDP on a veth: segments from a stack carry CHECKSUM_PARTIAL and must
        # go to the kernel (only the kernel still knows); the transfer is intact
        partial = after.get("CSUM_PARTIAL", 0) - before.get("CSUM_PARTIAL", 0)
        assert partial > 1000


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_udp_echo(accelerated, hook, family):
    lab, tna = accelerated
    before = tna.counters()
    assert udp_echo(lab, lab.h1.ns, lab.h2.ns, getattr(lab.h2, family), 200) == 200
    after = tna.counters()
    key = "FORWARDED" if hook == "auto" else "CSUM_PARTIAL"
    assert after.get(key, 0) - before.get(key, 0) >= 400


@pytest.mark.parametrize(("family", "expect"), [("ip4", "Time to live exceeded"), ("ip6", "Time exceeded")])
def test_ttl_one_gets_time_exceeded(accelerated, family, expect):
    lab, tna = accelerated
    res = ping(lab, lab.h1.ns, getattr(lab.h2, family), 2, "-t", "1")
    assert expect in res.stdout, res.stdout
    assert tna.counters().get("TTL", 0) >= 2


@pytest.mark.parametrize(("family", "size", "expect"), [
    ("ip4", 1450, "Frag needed and DF set (mtu = 1400)"),
    ("ip6", 1450, "Packet too big: mtu=1400"),
])
def test_too_big_gets_icmp(accelerated, family, size, expect):
    lab, tna = accelerated
    lab.run(lab.r, ["ip", "link", "set", "r-h2", "mtu", "1400"])
    # the MTU change reaches tna; the fast path must hand big packets over
    res = ping(lab, lab.h1.ns, getattr(lab.h2, family), 2, "-M", "do", "-s", str(size))
    assert expect in res.stdout, res.stdout
    assert tna.counters().get("FRAG_NEEDED", 0) >= 1
    small = ping(lab, lab.h1.ns, getattr(lab.h2, family), 3, "-s", "1000")
    assert " 0% packet loss" in small.stdout


def test_route_change_takes_effect_on_next_packet(accelerated):
    lab, tna = accelerated
    lab.addr(lab.h2.ns, "lo", "203.0.113.5/32")
    lab.route(lab.r, "203.0.113.0/24", via=lab.h2.ip4)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, "203.0.113.5", 3).stdout
    lab.run(lab.r, ["ip", "route", "replace", "blackhole", "203.0.113.0/24"])
    assert " 100% packet loss" in ping(lab, lab.h1.ns, "203.0.113.5", 3).stdout
    assert tna.counters().get("BLACKHOLE", 0) >= 3
    lab.run(lab.r, ["ip", "route", "replace", "unreachable", "203.0.113.0/24"])
    assert "Unreachable" in ping(lab, lab.h1.ns, "203.0.113.5", 2).stdout
    lab.route(lab.r, "203.0.113.0/24", via=lab.h2.ip4)
    before = tna.counters().get("FORWARDED", 0)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, "203.0.113.5", 3).stdout
    assert tna.counters().get("FORWARDED", 0) - before >= 6


def test_interface_added_while_running_is_accelerated(accelerated, hook):
    lab, tna = accelerated
    h3 = lab.add_ns("h3")
    lab.veth(h3, "h3-r", lab.r, "r-h3")
    lab.addr(h3, "h3-r", "203.0.113.2/24")
    lab.addr(lab.r, "r-h3", "203.0.113.1/24")
    lab.route(h3, "default", via="203.0.113.1")
    if hook == "xdp":
        host_xdp(lab, h3, "h3-r")
    tna.wait_attached(["r-h1", "r-h2", "r-h3"])
    assert wait_for(lambda: " 0% packet loss" in ping(lab, lab.h1.ns, "203.0.113.2", 2).stdout, 30)
    assert wait_for(lambda: tna.status()["ifaces"]["r-h3"]["reasons"].get("FORWARDED", {}).get("packets", 0) > 0,
                    30, 0.5)


def test_link_down_and_up(accelerated):
    lab, tna = accelerated
    lab.run(lab.r, ["ip", "link", "set", "r-h2", "down"])
    assert wait_for(lambda: "r-h2" not in tna.status()["ifaces"], 30, 0.2)
    assert "100% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 2).stdout
    lab.run(lab.r, ["ip", "link", "set", "r-h2", "up"])
    tna.wait_attached(["r-h1", "r-h2"])
    assert wait_for(lambda: " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 2).stdout, 30)


def test_forwarding_switched_off_and_on(accelerated):
    lab, tna = accelerated
    lab.sysctl(lab.r, "net.ipv4.ip_forward", 0)
    lab.sysctl(lab.r, "net.ipv6.conf.all.forwarding", 0)
    assert wait_for(lambda: not tna.status()["ifaces"], 30, 0.2)
    assert "100% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 2).stdout
    lab.sysctl(lab.r, "net.ipv4.ip_forward", 1)
    lab.sysctl(lab.r, "net.ipv6.conf.all.forwarding", 1)
    tna.wait_attached(["r-h1", "r-h2"])
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout


def test_a_sysctl_change_decides_the_next_packet(accelerated):
    """Linux applies rp_filter and ip_forward at the write; the fast path
    must not forward what it then drops, not even until a poll: the kernel
    announces both (RTM_NEWNETCONF) and the datapath holds at once."""
    lab, tna = accelerated
    for sysctl, src in (("net.ipv4.conf.all.rp_filter", "198.51.100.77"),  # strict: its way back is not r-h1
                        ("net.ipv4.ip_forward", lab.h1.ip4)):
        rx = _h2_rx(lab)
        lab.sysctl(lab.r, sysctl, 1 if "rp_filter" in sysctl else 0)
        _spoof(lab, src)  # 20 frames, at once
        time.sleep(0.5)
        assert _h2_rx(lab) - rx <= 2, f"{sysctl}: forwarded after the change (neighbour noise: 2)"
    lab.sysctl(lab.r, "net.ipv4.ip_forward", 1)
    lab.sysctl(lab.r, "net.ipv4.conf.all.rp_filter", 0)
    tna.wait_attached(["r-h1", "r-h2"])
    assert wait_for(lambda: " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 2).stdout, 30)


@pytest.mark.parametrize(("family", "dst", "via", "expect"), [
    ("ip4", "203.0.113.5", "198.51.100.2", "Frag needed and DF set (mtu = 1400)"),
    ("ip6", "2001:db8:3::5", "2001:db8:2::2", "Packet too big: mtu=1400"),
])
def test_route_mtu_is_honoured(accelerated, family, dst, via, expect):
    """An (unlocked) route MTU: forwarding honours it, bpf_fib_lookup() would not."""
    lab, tna = accelerated
    lab.addr(lab.h2.ns, "lo", dst + ("/32" if family == "ip4" else "/128"))
    prefix = "203.0.113.0/24" if family == "ip4" else "2001:db8:3::/64"
    lab.run(lab.r, ["ip", "route", "add", prefix, "via", via, "mtu", "1400"])
    assert wait_for(lambda: " 0% packet loss" in ping(lab, lab.h1.ns, dst, 1).stdout, 30)
    res = ping(lab, lab.h1.ns, dst, 2, "-M", "do", "-s", "1450")
    assert expect in res.stdout, res.stdout
    assert tna.counters().get("ROUTE_MTU", 0) >= 1


def _h2_rx(lab) -> int:
    return lab.ipr(lab.h2.ns).get_links(lab.ifindex(lab.h2.ns, lab.h2.dev))[0].get("IFLA_STATS64")["rx_packets"]


def _spoof(lab, src: str, count: int = 20) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    frame = bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / IP(src=src, dst=lab.h2.ip4) / UDP(dport=9999))
    lab.run(lab.h1.ns, py("netns_labs.xfer", "raw-send", lab.h1.dev, frame.hex(), str(count)), cwd=lab.repo)


@pytest.mark.parametrize(("mode", "src", "reason"), [
    (0, "198.51.100.1", "LOCAL_SOURCE"),   # the router's own address: a martian source, always
    (1, "198.51.100.77", "RP_FILTER"),     # strict: its route back is not via r-h1
    (2, "203.0.113.7", "RP_FILTER"),       # loose: no route back at all
])
def test_spoofed_sources_are_dropped_like_linux(accelerated, mode, src, reason):
    lab, tna = accelerated
    lab.sysctl(lab.r, "net.ipv4.conf.all.rp_filter", mode)
    time.sleep(2)  # the daemon polls sysctls every second and reloads the ports
    rx = _h2_rx(lab)
    _spoof(lab, src)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
    assert _h2_rx(lab) - rx <= 10 + 2, "spoofed packets reached h2"  # 5 pings (+ neighbour noise)
    assert tna.counters().get(reason, 0) >= 20
    assert tna.counters().get("FORWARDED", 0) >= 10


# fib_validate_source() checks sources in full (a reverse route lookup) even
# with rp_filter 0 once the namespace has had any ip rule (added, or deleted:
# the flag never clears) or a local route added from user space: Linux then
# drops a source whose way back is a local or broadcast route.
RULE = ["ip", "rule", "add", "from", "203.0.113.0/24", "lookup", "100", "pref", "100"]
FULL_CHECK = {  # trigger: (commands before tna starts, commands once it runs)
    "rule": ([], [RULE]),
    "rule-deleted-before-start": ([RULE, ["ip", "rule", "del", "pref", "100"]], []),
    "local-route": ([], [["ip", "route", "add", "local", "203.0.113.240/28", "dev", "lo"]]),
}


@pytest.mark.parametrize("trigger", FULL_CHECK)
def test_full_source_check_like_linux(router_lab, hook, trigger):
    lab = router_lab
    before, after = FULL_CHECK[trigger]
    for cmd in before:
        lab.run(lab.r, cmd)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        for cmd in after:
            lab.run(lab.r, cmd)
        linux_forwards = {
            "192.0.2.255": False,                          # r-h1's subnet broadcast
            "203.0.113.241": trigger != "local-route",     # inside the local route
            "203.0.113.7": True,                           # no route back: fine with rp_filter 0
        }
        reached, decided = {}, {}
        for src, forwards in linux_forwards.items():
            passed, rx = tna.counters().get("SOURCE_CHECK", 0), _h2_rx(lab)
            _spoof(lab, src)
            assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 2).stdout
            if forwards:
                wait_for(lambda rx=rx: _h2_rx(lab) - rx >= 20 + 2)
            reached[src] = _h2_rx(lab) - rx - 2 > 10  # 20 sent, minus the pings (+ neighbour noise)
            decided[src] = tna.counters().get("SOURCE_CHECK", 0) - passed >= 20
        assert reached == linux_forwards
        assert all(decided.values()), decided  # the kernel decided each of them
        # ordinary sources stay on the fast path, checked by the reverse lookup
        forwarded = tna.counters().get("FORWARDED", 0)
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 20).stdout
        assert tna.counters().get("FORWARDED", 0) - forwarded >= 40


def _realm_packets(lab, realm: int) -> int:
    """Packets forwarded to routes of this realm (/proc/net/rt_acct: 256 x
    {o_bytes, o_packets, i_bytes, i_packets}, one table for all namespaces)."""
    raw = subprocess.run(["ip", "netns", "exec", lab.r, "cat", "/proc/net/rt_acct"], capture_output=True,
                         check=True).stdout
    return struct.unpack_from("4I", raw, 16 * realm)[1]


def test_realms_are_counted_like_linux(accelerated):
    """While a route has a realm the kernel counts what it forwards there;
    fast-pathed packets would escape the count, so they go to the kernel."""
    lab, tna = accelerated
    lab.run(lab.r, ["ip", "route", "add", f"{lab.h2.ip4}/32", "dev", "r-h2", "realm", "5"])
    counted, passed = _realm_packets(lab, 5), tna.counters().get("REALM", 0)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 10).stdout
    assert _realm_packets(lab, 5) - counted >= 10
    assert tna.counters().get("REALM", 0) - passed >= 10
    lab.run(lab.r, ["ip", "route", "del", f"{lab.h2.ip4}/32"])  # no realms left: the fast path again
    forwarded = tna.counters().get("FORWARDED", 0)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 10).stdout
    assert tna.counters().get("FORWARDED", 0) - forwarded >= 20


def test_jumbo_mtu_still_settable_and_forwarded(accelerated):
    """Attaching TNA must not stop an admin from raising MTUs (a non-frags XDP
    program caps them, on a veth even for its peer); jumbo frames that arrive
    in several XDP buffers go to the kernel."""
    lab, tna = accelerated
    for ns, dev in ((lab.h1.ns, lab.h1.dev), (lab.r, "r-h1"), (lab.r, "r-h2"), (lab.h2.ns, lab.h2.dev)):
        lab.run(ns, ["ip", "link", "set", dev, "mtu", "9000"])
    assert wait_for(lambda: " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3, "-s", "8000").stdout, 30)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip6, 3, "-s", "8000").stdout
    assert all(i["attached"] for i in tna.status()["ifaces"].values())
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout


def test_tc_egress_policy_is_never_bypassed(accelerated):
    """An admin's tc egress filter on r-h2 (here: drop everything) applies to
    kernel-forwarded packets; an XDP redirect would skip it, so r-h2 stops
    being an XDP egress while it is there.  (TC redirects pass through it.)"""
    lab, tna = accelerated
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    lab.run(lab.r, py("netns_labs.progs", "tc-drop", "r-h2", "egress", "1"), cwd=lab.repo)
    assert wait_for(lambda: not tna.status()["ifaces"]["r-h2"]["xdp_egress"], 30, 0.1)
    assert " 100% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
    lab.run(lab.r, py("netns_labs.progs", "tc-clear", "r-h2", "egress", "1"), cwd=lab.repo)
    assert wait_for(lambda: " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout, 30)


@contextmanager
def _foreign_tcx(lab: RouterLab, dev: str, point: str) -> Iterator[None]:
    """Another tool's tcx program on r's dev (here: dropping everything)."""
    holder = lab.popen(lab.r, py("netns_labs.progs", "tcx", dev, point, "drop"), cwd=lab.repo,
                       stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "attached\n"
        yield
    finally:
        holder.terminate()
        holder.wait(30)


@pytest.mark.parametrize("started", ["before", "after"])
def test_a_foreign_tcx_egress_program_is_never_bypassed(router_lab, hook, started):
    """A tcx egress program (Cilium's, say) on r-h2 sees kernel-forwarded
    packets; an XDP redirect would skip it.  Attaching one announces
    nothing: the daemon finds it at its dump, or at its next poll."""
    lab = router_lab
    with ExitStack() as stack:
        if started == "before":
            stack.enter_context(_foreign_tcx(lab, "r-h2", "egress"))
            if hook == "xdp":  # so that r-h2 could be an XDP egress (tna_running would insist it becomes one)
                host_xdp(lab, lab.h2.ns, lab.h2.dev)
            tna = Tna(lab, lab.r, "--hook", hook)
            stack.callback(tna.close)
            stack.callback(tna.stop)
            tna.wait_attached(["r-h1", "r-h2"])
        else:
            tna = stack.enter_context(tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]))
            assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
            stack.enter_context(_foreign_tcx(lab, "r-h2", "egress"))
        assert wait_for(lambda: not tna.status()["ifaces"]["r-h2"]["xdp_egress"], 30, 0.1)
        assert " 100% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout


@pytest.mark.parametrize("started", ["before", "after"])
def test_a_foreign_tcx_ingress_program_is_never_bypassed(router_lab, hook, started):
    """A tcx ingress program on r-h1 must see every packet, as without TNA,
    whose XDP program runs before it and whose tcx one is first in line:
    TNA leaves r-h1."""
    lab = router_lab
    with ExitStack() as stack:
        if started == "before":
            stack.enter_context(_foreign_tcx(lab, "r-h1", "ingress"))
            tna = stack.enter_context(tna_running(lab, lab.r, hook, ["r-h2"], [lab.h1, lab.h2]))
        else:
            tna = stack.enter_context(tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]))
            stack.enter_context(_foreign_tcx(lab, "r-h1", "ingress"))
        assert wait_for(lambda: "r-h1" in tna.status()["skipped"], 30, 0.1)
        assert "tc ingress filters" in tna.status()["skipped"]["r-h1"]
        assert " 100% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout


def test_a_device_whose_foreign_tcx_program_went_away_returns_to_the_fast_path(router_lab, hook):
    """Detaching a tcx program announces nothing either: the poll that saw
    it come sees it go, and r-h1 is accelerated again."""
    lab = router_lab
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        with _foreign_tcx(lab, "r-h1", "ingress"):
            assert wait_for(lambda: "r-h1" in tna.status()["skipped"], 30, 0.1)
        tna.wait_attached(["r-h1", "r-h2"])
        assert wait_for(lambda: " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout, 30)


def test_tc_ingress_policy_is_never_bypassed(accelerated):
    """An admin's tc ingress filter on r-h1 placed after TNA's (here: drop
    everything) must see every packet, as without TNA: TNA leaves r-h1."""
    lab, tna = accelerated
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    lab.run(lab.r, py("netns_labs.progs", "tc-drop", "r-h1", "ingress", "500"), cwd=lab.repo)
    assert wait_for(lambda: "r-h1" in tna.status()["skipped"], 30, 0.1)
    assert "tc ingress filters" in tna.status()["skipped"]["r-h1"]
    assert " 100% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    lab.run(lab.r, py("netns_labs.progs", "tc-clear", "r-h1", "ingress", "500"), cwd=lab.repo)
    tna.wait_attached(["r-h1", "r-h2"])
    assert wait_for(lambda: " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout, 30)


# what an IKE daemon installs on a VPN gateway for h1's and h2's networks,
# before any SA is negotiated: Linux drops the plaintext it forwards
XFRM_CASES = {
    # forwarded packets from h1 must have come through the tunnel
    "fwd-ipv4": (["policy", "add", "src", "192.0.2.0/24", "dst", "198.51.100.0/24", "dir", "fwd", "tmpl",
                  "src", "203.0.113.1", "dst", "203.0.113.2", "proto", "esp", "mode", "tunnel"], "ip4"),
    # forwarded packets to h2 must leave through the tunnel (no SA: dropped)
    "out-ipv6": (["policy", "add", "src", "2001:db8:1::/64", "dst", "2001:db8:2::/64", "dir", "out", "tmpl",
                  "src", "2001:db8:3::1", "dst", "2001:db8:3::2", "proto", "esp", "mode", "tunnel"], "ip6"),
    # no policy, but what none covers is blocked
    "default-block": (["policy", "setdefault", "fwd", "block"], "ip4"),
}


@pytest.mark.parametrize("case", XFRM_CASES)
def test_ipsec_policies_are_never_bypassed(accelerated, case):
    """An IPsec VPN gateway: the kernel checks forwarded packets against the
    xfrm policies (decrypted only, encrypted, or blocked) where
    bpf_fib_lookup() checks nothing, so the fast path would forward them in
    the clear.  With the policy the family goes to the kernel, which drops
    them here as Linux alone does; once the policies are gone, it is carried."""
    lab, tna = accelerated
    cmd, family = XFRM_CASES[case]
    dst = lab.h2.ip4 if family == "ip4" else lab.h2.ip6
    assert " 0% packet loss" in ping(lab, lab.h1.ns, dst, 2).stdout
    lab.run(lab.r, ["ip", "xfrm", *cmd])
    try:
        assert wait_for(lambda: tna.status()["xfrm"], 30, 0.1)
        assert tna.status()["xfrm_blocking_defaults"] == (["fwd"] if case == "default-block" else [])
        before = tna.counters().get("XFRM", 0)
        assert " 100% packet loss" in ping(lab, lab.h1.ns, dst, 3).stdout
        assert tna.counters().get("XFRM", 0) - before >= 3
    finally:
        lab.run(lab.r, ["ip", "xfrm", "policy", "flush"])
        lab.run(lab.r, ["ip", "xfrm", "policy", "setdefault", "fwd", "accept"], check=False)
    assert wait_for(lambda: not tna.status()["xfrm"], 30, 0.1)
    carried = tna.counters().get("FORWARDED", 0)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, dst, 3).stdout
    assert tna.counters().get("FORWARDED", 0) - carried >= 3
