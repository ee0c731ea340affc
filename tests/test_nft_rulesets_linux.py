"""The real tools' native nftables rule sets (tests/data/rulesets/nft/,
netns_labs/nft_rulesets.py) load on this kernel and do what each tool
intends, on Linux alone: the lab's outcomes (masquerade, published ports,
direct access and isolation), and what only some of them do: the router's
blocked set (and `nft add element` to it), firewalld's allowed service, its
`reject with icmpx` and its IPv6 reverse-path check, fw4's SYN-flood
limit and MSS clamping, Docker's counters. This proves the fixtures are
real before TNA is judged with them. One lab per bridge naming, shared by
the module."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from netns_labs.hostlab import CLOSED_PORT, TCP_PORT, UPLINK4, UPLINK6, HostLab
from netns_labs.lab import _server, ping, tcp_transfer
from netns_labs.nft_rulesets import DOCKER, LAN, NFT_RULESETS, unload
from netns_labs.rulesets import RuleSet
from netns_labs.transparency import real_traffic

pytestmark = pytest.mark.root

Loader = Callable[[str], HostLab]


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loader]:
    """loaded("nft/NAME"): the module's lab for that rule set's bridges, reset
    and with only that rule set loaded."""
    bridges = {rs.name: rs.bridges for rs in NFT_RULESETS}
    with HostLab(DOCKER) as docker_lab, HostLab(LAN) as lan_lab:
        labs = {DOCKER: docker_lab, LAN: lan_lab}

        def load(name: str) -> HostLab:
            lab = labs[bridges[name]]
            unload(lab)
            lab.load_ruleset(name)
            return lab
        yield load


@pytest.mark.parametrize("rs", NFT_RULESETS, ids=lambda rs: rs.name)
def test_ruleset_does_what_the_tool_intends(loaded: Loader, rs: RuleSet) -> None:
    lab = loaded(rs.name)
    assert real_traffic(lab) == rs.expect


def _counters(lab: HostLab, family: str, table: str) -> dict[str, int]:
    """Packets per rule comment (or chain, for rules without one) of a table's counters."""
    listing = json.loads(lab.run(lab.host, ["nft", "-j", "list", "table", family, table]).stdout)
    got: dict[str, int] = {}
    for item in listing["nftables"]:
        rule = item.get("rule")
        for expr in rule["expr"] if rule else ():
            if "counter" in expr:
                key = rule.get("comment", rule["chain"])
                got[key] = got.get(key, 0) + expr["counter"]["packets"]
    return got


def _in_ns(lab: HostLab, ns: str, code: str, *args: str) -> str:
    """What a Python snippet run in ns prints."""
    return lab.run(ns, [sys.executable, "-c", code, *args], timeout=30).stdout.strip()


def test_router_blocked_set_drops_listed_sources(loaded: Loader) -> None:
    """Sources in the interval sets are dropped on the WAN, others not; an
    `nft add element` blocks the next packets, `delete element` lets them
    through again; the drop rule counts."""
    lab = loaded("nft/router-wiki")
    out = lab.out.ns
    for cidr in ("203.0.113.70/32", "2001:db8:bad::1/128"):
        lab.addr(out, "lo", cidr)
    try:
        assert ping(lab, out, UPLINK4, 2, "-I", "203.0.113.70").returncode != 0
        assert ping(lab, out, UPLINK6, 2, "-I", "2001:db8:bad::1").returncode != 0
        assert ping(lab, out, UPLINK4, 2, "-I", lab.out.ip4).returncode == 0
        assert ping(lab, out, UPLINK6, 2, "-I", lab.out.ip6).returncode == 0
        assert _counters(lab, "inet", "filter")["prerouting"] >= 4
        lab.run(lab.host, ["nft", "add", "element", "inet", "filter", "blocked", f"{{ {lab.out.ip4} }}"])
        assert ping(lab, out, UPLINK4, 2, "-I", lab.out.ip4).returncode != 0
        lab.run(lab.host, ["nft", "delete", "element", "inet", "filter", "blocked", f"{{ {lab.out.ip4} }}"])
        assert ping(lab, out, UPLINK4, 2, "-I", lab.out.ip4).returncode == 0
    finally:
        lab.run(out, ["ip", "addr", "del", "203.0.113.70/32", "dev", "lo"])
        lab.run(out, ["ip", "addr", "del", "2001:db8:bad::1/128", "dev", "lo"])


_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("connected")
except OSError as e:
    print(e.errno)
"""


def test_firewalld_allows_ssh_and_rejects_the_rest(loaded: Loader) -> None:
    """The public zone's ssh service is reachable from outside over IPv4 and
    IPv6; another port is rejected with admin-prohibited (an ICMP error at
    once: EHOSTUNREACH for IPv4, EACCES for IPv6), not dropped."""
    lab = loaded("nft/firewalld")
    for addr in (UPLINK4, UPLINK6):
        sent, received = tcp_transfer(lab, lab.out.ns, lab.host, addr, 1 << 16, 22)
        assert sent == received
    server = _server(lab, lab.host, "tcp-server", str(CLOSED_PORT))  # listening, yet not allowed
    try:
        for addr, err in ((UPLINK4, errno.EHOSTUNREACH), (UPLINK6, errno.EACCES)):
            assert _in_ns(lab, lab.out.ns, _CONNECT, addr, str(CLOSED_PORT)) == str(err), addr
    finally:
        server.kill()


_SEND6 = """
import socket, sys
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
    s.bind((sys.argv[1], 0))
    for i in range(5):
        s.sendto(b"spoofed", (sys.argv[2], int(sys.argv[3])))
"""


def test_firewalld_rpf_drops_a_spoofed_ipv6_source(loaded: Loader) -> None:
    """A container sending from an address the host routes via the uplink is
    dropped by `fib saddr . mark . iif oif missing drop`; the same datagrams
    pass once the host routes that address back via the container's bridge."""
    lab = loaded("nft/firewalld")
    spoofed, port = "2001:db8:f::50", CLOSED_PORT + 1
    lab.run(lab.c1.ns, ["ip", "addr", "add", f"{spoofed}/128", "dev", "eth0", "nodad"])

    def received() -> int:
        sink = _server(lab, lab.out.ns, "udp-sink", str(port), "2")
        _in_ns(lab, lab.c1.ns, _SEND6, spoofed, lab.out.ip6, str(port))
        text, _ = sink.communicate(timeout=30)
        return int(text.split()[0])
    try:
        assert received() == 0
        lab.run(lab.host, ["ip", "-6", "route", "add", f"{spoofed}/128", "dev", lab.bridges[0]])
        assert received() == 5
    finally:
        lab.run(lab.host, ["ip", "-6", "route", "del", f"{spoofed}/128"], check=False)
        lab.run(lab.c1.ns, ["ip", "addr", "del", f"{spoofed}/128", "dev", "eth0"])


_MSS = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(sys.argv[1])))
    srv.listen()
    srv.settimeout(30)
    print("ready", flush=True)
    conn, _ = srv.accept()
    with conn:
        print(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), flush=True)
"""


def _mss_seen(lab: HostLab) -> int:
    """The MSS the outside's server uses for a connection from c1."""
    port = str(TCP_PORT + 10)
    server = lab.popen(lab.out.ns, [sys.executable, "-c", _MSS, port], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    _in_ns(lab, lab.c1.ns, f"import socket; socket.create_connection(('{lab.out.ip4}', {port}), timeout=5).close()")
    mss, _ = server.communicate(timeout=30)
    return int(mss)


def test_fw4_clamps_mss_to_the_route_mtu(loaded: Loader) -> None:
    """With a 1400-byte route MTU towards wan, fw4's mtu_fix rewrites the
    SYN's MSS (1460) to what that MTU allows (1360, less TCP options at the
    server); the wiki router, on the same route, does not."""
    route = ["ip", "route", "replace", "default", "via", "198.51.100.2"]
    for name, clamped in (("nft/router-wiki", False), ("nft/fw4", True)):
        lab = loaded(name)
        lab.run(lab.host, [*route, "mtu", "1400"])
        try:
            mss = _mss_seen(lab)
        finally:
            lab.run(lab.host, route)
        assert (mss <= 1360) == clamped, (name, mss)


_SYNS = """
import socket, sys, time
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
src_mac, dst_mac, src, dst, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (not in Python): room for every reset
s.bind(("out0", 0x0800))
frames = [bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / TCP(sport=20000 + i, dport=22, flags="S"))
          for i in range(n)]
for f in frames:
    s.send(f)
s.settimeout(0.2)
resets, end = 0, time.monotonic() + 2
while time.monotonic() < end:
    try:
        pkt = Ether(s.recv(2048))
    except TimeoutError:
        continue
    if TCP in pkt and pkt[IP].src == dst and pkt[TCP].flags.R:
        resets += 1
print(resets)
"""


def test_fw4_syn_flood_limits_new_connections(loaded: Loader) -> None:
    """1,000 SYNs at once to a port the wan may not reach: handle_reject
    answers (TCP reset) those syn_flood lets through, its burst of 50 and
    what 25/second adds while they arrive, and drops the rest; with the
    chain emptied, every one is answered."""
    lab = loaded("nft/fw4")
    n = 1000

    def resets() -> int:
        return int(_in_ns(lab, lab.out.ns, _SYNS, lab.out.mac, lab.host_mac, lab.out.ip4, UPLINK4, str(n)))
    assert 50 <= resets() < n // 2
    lab.run(lab.host, ["nft", "flush", "chain", "inet", "fw4", "syn_flood"])
    assert resets() == n


def test_docker_29_counts_dnat_masquerade_and_direct_access_drops(loaded: Loader) -> None:
    """Docker's counters see its published port's DNAT, the containers'
    masquerade and the raw drop of direct access to a published container."""
    lab = loaded("nft/docker-29")
    for src, dst, addr in ((lab.out.ns, lab.c1.ns, UPLINK4), (lab.c1.ns, lab.out.ns, lab.out.ip4)):
        sent, received = tcp_transfer(lab, src, dst, addr, 1 << 16, TCP_PORT)
        assert sent == received
    assert ping(lab, lab.out.ns, lab.c1.ip4, 2).returncode != 0
    counters = _counters(lab, "ip", "docker-bridges")
    assert counters["DNAT"] >= 1 and counters["MASQUERADE"] >= 1 and counters["DROP DIRECT ACCESS"] >= 2
    assert counters["UNPUBLISHED PORT DROP"] == 0  # the raw drop came first
