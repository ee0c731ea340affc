"""nft's reverse-path check on the fast path (firewall.c.j2 fw_rpf()):
firewalld's IPv6 `fib saddr . mark . iif oif missing drop`
(filter_PREROUTING) and, for IPv4, the nftables wiki's `fib saddr . iif oif
missing drop` no longer send every packet to the kernel. A TCP transfer from
a container to the outside is carried while the route back to its source
leaves by its input device; a source routed elsewhere (spoofed) is dropped
by the kernel as with Linux alone; and where bpf_fib_lookup() could choose
another route than the kernel's lookup (two IPv6 routes for the source's
prefix at one metric, an IPv6 route that expires, any ip rule) the packets
go to the kernel, delivered the same; an IPv4 multipath route back does not
(nft's IPv4 check accepts any of its next hops)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from netns_labs.hostlab import CLOSED_PORT, HostLab
from netns_labs.lab import _server, py, wait_for
from netns_labs.nft_rulesets import LAN
from netns_labs.tna_proc import Tna, tna_running

pytestmark = pytest.mark.root

PORT = 5301  # a TCP service of the outside that the containers may reach (the lab's outside refuses them)
PACED_S = 1.5  # 64 KiB every 10 ms: ~150 writes, at least one segment each
CARRIED = 50   # segments a transfer's fast path carries (or its kernel path takes) at least
WIKI_RPF = """table ip rpf {
    chain prerouting {
        type filter hook prerouting priority filter; policy accept;
        fib saddr . iif oif missing counter drop
    }
}
"""
_SEND = """
import socket, sys
with socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind((sys.argv[1], 0))
    for i in range(5):
        s.sendto(b"spoofed", (sys.argv[2], int(sys.argv[3])))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[HostLab]:
    with HostLab(LAN) as lab:
        lab.load_ruleset("nft/firewalld")
        lab.run(lab.host, ["nft", "-f", "-"], input=WIKI_RPF)
        lab.run(lab.out.ns, ["ip6tables", "-I", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "ACCEPT"])
        yield lab


@pytest.fixture(scope="module")
def tna(lab: HostLab) -> Iterator[Tna]:
    with tna_running(lab, lab.host, "auto", lab.ports, [*lab.containers, lab.out]) as t:
        def settled() -> bool:
            """Routes known (until then the check is doubted) and the bridge
            routing (until then frames to its MAC are the kernel's)."""
            st = t.status() or {}
            br = st.get("bridges", {}).get(lab.bridges[0], {})
            return st.get("routes_loading") == [] and br.get("routed") and br.get("fdb_mirrored", 0) > 0
        assert wait_for(settled, 60, 0.2), t.status()
        yield t


def _transfer(lab: HostLab, tna: Tna, family: int) -> dict[str, int]:
    """A paced TCP transfer c1 -> the outside (IPv4: masqueraded) for
    PACED_S, byte for byte; what it added to each reason's count.  (Paced:
    its first segments wait for the daemon to mark the entry (CT_SYNC),
    however long that takes on a loaded machine, the rest are the test's.)"""
    before = tna.counters()
    dst = lab.out.ip6 if family == 6 else lab.out.ip4
    server = _server(lab, lab.out.ns, "tcp-server", str(PORT))
    try:
        sent = lab.run(lab.c1.ns, py("netns_labs.xfer", "tcp-phases", dst, str(PORT), str(PACED_S)),
                       cwd=lab.repo).stdout.split()
        assert server.stdout is not None
        received = server.stdout.readline().split()
    finally:
        server.kill()
    assert sent[:2] == received and int(sent[0]) > 0, (sent, received)
    after = tna.counters()
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _all_to_the_kernel(added: dict[str, int]) -> None:
    """No packet forwarded by the fast path (the firewall's FW_KERNEL, or
    conntrack's window check, which the passed segments put behind)."""
    assert added.get("FORWARDED", 0) == 0 and sum(added.values()) > CARRIED, added


@pytest.mark.parametrize("family", [4, 6])
def test_carried_through_the_reverse_path_check(lab: HostLab, tna: Tna, family: int) -> None:
    added = _transfer(lab, tna, family)
    assert added.get("FORWARDED", 0) > CARRIED and added.get("FW_KERNEL", 0) < added["FORWARDED"] / 10, added


@pytest.mark.parametrize("family", [4, 6])
def test_a_spoofed_source_is_dropped_by_the_kernel(lab: HostLab, tna: Tna, family: int) -> None:
    """An outside address sent from a container: routed back via the uplink,
    so the check drops it; with tna too, on the kernel path."""
    spoofed = "2001:db8:f::50/128" if family == 6 else "203.0.113.50/32"
    dst = lab.out.ip6 if family == 6 else lab.out.ip4
    lab.run(lab.c1.ns, ["ip", "addr", "add", spoofed, "dev", "eth0", *(["nodad"] if family == 6 else [])])
    sink = _server(lab, lab.out.ns, "udp-sink", str(CLOSED_PORT + 1), "2")
    try:
        lab.run(lab.c1.ns, [sys.executable, "-c", _SEND, spoofed.split("/")[0], dst, str(CLOSED_PORT + 1)])
        text, _ = sink.communicate(timeout=30)
        assert int(text.split()[0]) == 0
    finally:
        lab.run(lab.c1.ns, ["ip", "addr", "del", spoofed, "dev", "eth0"])


def test_two_ipv6_routes_at_the_source_prefix_send_it_to_the_kernel(lab: HostLab, tna: Tna) -> None:
    """A second route for the containers' prefix at the same metric (another
    device): the kernel's lookup takes the first, bpf_fib_lookup() may
    prefer the input device, so the fast path does not judge the check
    until the route is gone."""
    extra = ["2001:db8:c::/64", "dev", lab.bridges[1], "metric", "256"]
    lab.run(lab.host, ["ip", "-6", "route", "append", *extra])
    try:
        _all_to_the_kernel(_transfer(lab, tna, 6))
        assert (tna.status() or {}).get("rpf_doubt") == ["ipv6"]
        text = lab.run(lab.host, py("tna", "status"), cwd=lab.repo).stdout
        assert "`fib saddr . iif` checks of ipv6 on the kernel path" in text, text
    finally:
        lab.run(lab.host, ["ip", "-6", "route", "del", *extra])
    assert _transfer(lab, tna, 6).get("FORWARDED", 0) > CARRIED


def test_an_expiring_ipv6_route_sends_it_to_the_kernel(lab: HostLab, tna: Tna) -> None:
    """A route with an expiry (as RAs install them; this one no packet uses):
    once expired, bpf_fib_lookup() skips it while nft's lookup still takes it
    until the garbage collector removes it."""
    extra = ["2001:db8:77::/64", "dev", lab.bridges[1]]
    lab.run(lab.host, ["ip", "-6", "route", "add", *extra, "expires", "300"])
    try:
        _all_to_the_kernel(_transfer(lab, tna, 6))
    finally:
        lab.run(lab.host, ["ip", "-6", "route", "del", *extra])
    assert _transfer(lab, tna, 6).get("FORWARDED", 0) > CARRIED


def test_an_ipv4_multipath_route_back_keeps_it_carried(lab: HostLab, tna: Tna) -> None:
    """The route back to c1 with two next hops (both by its bridge, so that
    the kernel delivers whichever it picks): nft's IPv4 check accepts any
    next hop of the route, and the one bpf_fib_lookup() picks is one of
    them, so the fast path still judges it."""
    extra = [f"{lab.c1.ip4}/32", "nexthop", "dev", lab.bridges[0], "nexthop", "dev", lab.bridges[0]]
    lab.run(lab.host, ["ip", "route", "add", *extra])
    try:
        added = _transfer(lab, tna, 4)
        assert added.get("FORWARDED", 0) > CARRIED and added.get("FW_KERNEL", 0) < added["FORWARDED"] / 10, added
        assert (tna.status() or {}).get("multipath", {}).get("ipv4") is not None  # the route is multipath
    finally:
        lab.run(lab.host, ["ip", "route", "del", f"{lab.c1.ip4}/32"])


@pytest.mark.parametrize("family", [4, 6])
def test_an_ip_rule_sends_it_to_the_kernel(lab: HostLab, tna: Tna, family: int) -> None:
    """Any ip rule of the family (this one never matches): the kernel's
    lookup runs the rules with the mark and lo as input device,
    bpf_fib_lookup() with others.  The namespace keeps the flag for its
    life: these tests are last."""
    src = "2001:db8:99::/64" if family == 6 else "10.99.0.0/16"
    lab.run(lab.host, ["ip", f"-{family}", "rule", "add", "from", src, "lookup", "100", "pref", "100"])
    _all_to_the_kernel(_transfer(lab, tna, family))
