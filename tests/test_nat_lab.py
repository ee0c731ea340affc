"""NAT of established connections on real traffic (issue #11 item 1): r
masquerades h1 (inside) towards h2 (outside) and forwards ports of its
outside address to a server on h1 (DNAT, with and without port
translation), behind a stateful FORWARD chain.  Every flow ends as with
Linux alone, and once established the fast path carries it, rewriting as
the kernel's NAT would (tests/test_nat_frames_lab.py compares the bytes).

Under XDP the hosts send with checksums complete (see test_conntrack_lab)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from netns_labs.lab import Host, RouterLab, _server, py, wait_for
from netns_labs.tna_proc import tna_running
from tests.test_conntrack_lab import MB
from tests.test_conntrack_lab import setup as conntrack_setup

pytestmark = pytest.mark.root

OUTSIDE4, OUTSIDE6 = "198.51.100.1", "2001:db8:2::1"  # r's outside addresses: what h2 sees and connects to
ELSEWHERE4 = "203.0.113.80"  # not r's: DNAT'd to h1, though r routes it to h1 as it is
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i r-h1 -j ACCEPT
-A FORWARD -i r-h2 -o r-h1 -d {inside} -p tcp -m tcp --dport 5201 -j ACCEPT
-A FORWARD -i r-h2 -o r-h1 -d {inside} -p udp -m udp --dport 5202 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i r-h2 -p tcp -m tcp --dport 5201 -j DNAT --to-destination {inside}
-A PREROUTING -i r-h2 -p tcp -m tcp --dport 8080 -j DNAT --to-destination {to}:5201
-A PREROUTING -i r-h2 -p udp -m udp --dport 8082 -j DNAT --to-destination {to}:5202
-A POSTROUTING -o r-h2 -j MASQUERADE
COMMIT
"""
RULES4 = RULES.format(inside="192.0.2.2", to="192.0.2.2")
RULES6 = RULES.format(inside="2001:db8:1::2", to="[2001:db8:1::2]")


def setup(lab: RouterLab, hook: str) -> None:
    conntrack_setup(lab, hook, RULES4, RULES6)


def transfer(lab: RouterLab, src: str, dst: str, addr: str, port: int, listen: int, nbytes: int) -> bool:
    """nbytes over TCP from src to addr:port, the server listening on listen
    in dst: whether both sides saw the same SHA-256."""
    server = _server(lab, dst, "tcp-server", str(listen))
    assert server.stdout is not None
    sent = lab.run(src, py("netns_labs.xfer", "tcp-client", addr, str(port), str(nbytes)),
                   cwd=lab.repo, timeout=120).stdout.split()
    got = server.stdout.readline().split()
    server.wait(timeout=10)
    return sent[:2] == got and int(sent[0]) == nbytes


def echo(lab: RouterLab, src: str, dst: str, addr: str, port: int, listen: int, count: int) -> int:
    """Datagrams echoed back intact, out of count sent from src to addr:port
    (the echo server in dst on listen)."""
    server = _server(lab, dst, "udp-echo", str(listen))
    out = lab.run(src, py("netns_labs.xfer", "udp-client", addr, str(port), str(count)), cwd=lab.repo, timeout=120)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    return int(out.stdout.split()[0])


def invalid_drops(lab: RouterLab) -> int:
    """Packets the INVALID rule dropped, both families."""
    return sum(int(lab.run(lab.r, [tool, "-L", "FORWARD", "-v", "-x", "-n"]).stdout.splitlines()[2].split()[0])
               for tool in ("iptables", "ip6tables"))


def exercise(lab: RouterLab) -> dict[str, object]:
    """Each NAT'd flow, and how it ended."""
    h1, h2 = lab.h1, lab.h2
    out: dict[str, object] = {}
    for v, (inside, outside, r_out) in (("4", (h1.ip4, h2.ip4, OUTSIDE4)), ("6", (h1.ip6, h2.ip6, OUTSIDE6))):
        out[f"tcp{v} masquerade"] = transfer(lab, h1.ns, h2.ns, outside, 5201, 5201, 20 * MB)
        out[f"tcp{v} dnat"] = transfer(lab, h2.ns, h1.ns, r_out, 5201, 5201, 20 * MB)
        out[f"tcp{v} dnat port"] = transfer(lab, h2.ns, h1.ns, r_out, 8080, 5201, 20 * MB)
        out[f"udp{v} masquerade"] = echo(lab, h1.ns, h2.ns, outside, 5202, 5202, 50)
        out[f"udp{v} dnat port"] = echo(lab, h2.ns, h1.ns, r_out, 8082, 5202, 50)
        out[f"tcp{v} inside unreachable"] = lab.run(  # no DNAT for it: h1's own address is not routed outside
            h2.ns, ["python3", "-c", f"import socket; socket.create_connection(({inside!r}, 5201), timeout=1)"],
            check=False).returncode == 0
    # a new connection the FORWARD chain only accepts once translated
    out["udp4 dnat elsewhere"] = echo(lab, h2.ns, h1.ns, ELSEWHERE4, 9999, 5202, 20)
    return out


EXPECTED = {f"{k}{v}{s}": want for v in ("4", "6") for k, s, want in (
    ("tcp", " masquerade", True), ("tcp", " dnat", True), ("tcp", " dnat port", True),
    ("udp", " masquerade", 50), ("udp", " dnat port", 50), ("tcp", " inside unreachable", False))}
EXPECTED["udp4 dnat elsewhere"] = 20


def test_nat_flows_end_as_with_linux_and_ride_the_fast_path(router_lab: RouterLab, hook: str) -> None:
    lab = router_lab
    setup(lab, hook)
    # h2 knows no route to the inside: only NAT'd traffic can work
    lab.run(lab.h2.ns, ["ip", "route", "del", "default"])
    lab.run(lab.h2.ns, ["ip", "-6", "route", "del", "default"])
    lab.run(lab.r, ["iptables", "-t", "nat", "-A", "PREROUTING", "-i", "r-h2", "-d", ELSEWHERE4, "-p", "udp",
                    "--dport", "9999", "-j", "DNAT", "--to-destination", f"{lab.h1.ip4}:5202"])
    lab.route(lab.r, f"{ELSEWHERE4}/32", via=lab.h1.ip4)
    lab.route(lab.h2.ns, f"{ELSEWHERE4}/32", via=OUTSIDE4)
    linux = exercise(lab)
    assert linux == EXPECTED
    linux_invalid = invalid_drops(lab)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        st = tna.status()
        assert st is not None and not st["disabled"], st
        before = tna.counters()
        ok = transfer(lab, lab.h2.ns, lab.h1.ns, OUTSIDE4, 8080, 5201, 50 * MB)
        c = tna.counters()
        assert exercise(lab) == linux
        total = tna.counters()
    assert ok
    # the transfer ran on the fast path after its handshake, until its close
    delta = {k: c.get(k, 0) - before.get(k, 0) for k in c}
    assert delta.get("FORWARDED", 0) > 10 * (sum(delta.values()) - delta.get("FORWARDED", 0)), delta
    assert not any(total.get(k) for k in ("NAT_STATE", "NAT_CHANGED", "NAT_REWRITE", "NAT_MASQ_OIF")), total
    # conntrack judged nothing of it INVALID: each close was a clean one
    assert invalid_drops(lab) == linux_invalid


def test_one_way_udp_through_masquerade_is_carried(router_lab: RouterLab, hook: str) -> None:
    """Each datagram of an unreplied entry is NEW to conntrack; the rules
    accept it and the fast path rewrites it with the entry's binding."""
    lab = router_lab
    setup(lab, hook)

    def stream(sport: int) -> tuple[list[str], list[str]]:
        flows = {"4": lab.h2.ip4, "6": lab.h2.ip6}
        sinks = {v: _server(lab, lab.h2.ns, "udp-sink", str(5206 + int(v)), "1.5", "4") for v in flows}
        senders = {v: lab.popen(lab.h1.ns, py("netns_labs.xfer", "udp-stream", addr, str(5206 + int(v)), str(sport),
                                              "4", "0.02"), stdout=subprocess.PIPE, text=True, cwd=lab.repo)
                   for v, addr in flows.items()}
        sent = [senders[v].communicate(timeout=60)[0].split() for v in flows]
        got = [sinks[v].communicate(timeout=30)[0].split() for v in flows]
        return sent, got

    sent, got = stream(40200)
    assert sent == got
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        sent, got = stream(40201)
        c = tna.counters("r-h1")
    assert sent == got, (sent, got)
    n = sum(int(s[0]) for s in sent)
    # the kernel saw each stream's first datagram (it creates the entry)
    assert c.get("FORWARDED", 0) >= n - 10, (n, c)
    out = lab.run(lab.r, ["conntrack", "-L", "-p", "udp", "--sport", "40201"]).stdout
    assert out.count("[UNREPLIED]") == 2 and f"dst={OUTSIDE4}" in out, out  # still one-way, masqueraded


def test_conntrack_entry_lives_through_a_quiet_dnat_flow(router_lab: RouterLab, hook: str) -> None:
    """With a 3 s established timeout, a DNAT'd flow that sends 4 s, pauses
    1.5 s and sends 2 s again keeps one entry (one id) to its close."""
    lab = router_lab
    setup(lab, hook)
    lab.sysctl(lab.r, "net.netfilter.nf_conntrack_tcp_timeout_established", 3)

    def entry() -> tuple[str, str] | None:
        out = lab.run(lab.r, ["conntrack", "-L", "-p", "tcp", "--dport", "8080", "-o", "id"], check=False).stdout
        fields = [line.split() for line in out.splitlines() if "dport=8080" in line]
        return (next(f for f in fields[0] if f.startswith("id=")), fields[0][3]) if fields else None

    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        server = _server(lab, lab.h1.ns, "tcp-server", "5201")
        client = lab.popen(lab.h2.ns, py("netns_labs.xfer", "tcp-phases", OUTSIDE4, "8080", "4", "1.5", "2"),
                           stdout=subprocess.PIPE, text=True, cwd=lab.repo)
        assert wait_for(lambda: entry() is not None, 30, 0.1)
        samples: list[tuple[str, str] | None] = []
        while client.poll() is None:  # through the pause, longer than the timeout
            samples.append(entry())
            time.sleep(0.5)
        sent = client.stdout.read() if client.stdout else ""
        got = server.stdout.readline() if server.stdout else ""
        server.wait(timeout=10)
        closed = entry()
        c = tna.counters()
    assert sent.split()[:2] == got.split()[:2], (sent, got)
    assert closed is not None and closed[1] == "TIME_WAIT", closed
    assert all(s is not None and s[0] == closed[0] for s in samples), (closed, samples)
    assert c.get("FORWARDED", 0) > 100, c


def test_masquerade_flow_routed_elsewhere_is_never_forwarded_with_its_old_binding(
        router_lab: RouterLab, hook: str) -> None:
    """A one-way flow masqueraded out of r-h2, then its route moves to
    r-h3: the kernel drops the next datagram and kills the entry
    (nf_nat_oif_changed()), the one after makes a new entry masqueraded on
    r-h3.  h3 never sees the old binding's source, with tna as without."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    lab = router_lab
    setup(lab, hook)
    h3 = lab.add_ns("h3")
    lab.veth(h3, "h3-r", lab.r, "r-h3")
    lab.addr(lab.r, "r-h3", "203.0.113.1/24")
    lab.addr(h3, "h3-r", "203.0.113.2/24")
    lab.addr(h3, "h3-r", "198.51.100.2/32")  # h2's address, reached the new way
    lab.run(lab.r, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "r-h3", "-j", "MASQUERADE"])
    host3 = Host(h3, "h3-r", "203.0.113.2", "", lab.mac(h3, "h3-r"))
    lab.neigh(lab.r, "r-h3", host3.ip4, host3.mac)
    if hook == "xdp":
        lab.run(h3, ["ethtool", "-K", "h3-r", "tx", "off"])
    mark = b"TNA-NAT-MOVE"

    def frame(sport: int, n: int) -> str:
        return bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / IP(src=lab.h1.ip4, dst=lab.h2.ip4, ttl=64) /
                     UDP(sport=sport, dport=5555) / Raw(mark + b"%04d" % n)).hex()

    def send(sport: int, first: int, count: int) -> None:
        lab.run(lab.h1.ns, py("netns_labs.xfer", "raw-send", lab.h1.dev,
                              ",".join(frame(sport, n) for n in range(first, first + count)), "1", "0.2"),
                cwd=lab.repo)

    def run(sport: int) -> list[tuple[str, int]]:
        """(source, index) of each datagram h3 received after the move."""
        lab.run(lab.r, ["ip", "route", "del", "198.51.100.2/32"], check=False)
        send(sport, 0, 4)
        assert wait_for(lambda: f"sport={sport}" in lab.run(lab.r, ["conntrack", "-L", "-p", "udp"]).stdout, 10)
        # of the 8 sent after the move the kernel drops the first: done at 7
        cap = lab.popen(h3, py("netns_labs.xfer", "raw-capture", "h3-r", mark.hex(), "7", "4"),
                        stdout=subprocess.PIPE, text=True, cwd=lab.repo)
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
        lab.run(lab.r, ["ip", "route", "add", "198.51.100.2/32", "via", "203.0.113.2", "dev", "r-h3"])
        send(sport, 4, 8)
        out, _ = cap.communicate(timeout=30)
        got = [bytes.fromhex(h) for h in out.split()]
        return [(str(IP(g[14:]).src), int(g.split(mark)[1][:4])) for g in got]

    linux = run(40400)
    assert linux and {src for src, _ in linux} == {"203.0.113.1"}, linux
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2", "r-h3"], [lab.h1, lab.h2, host3]) as tna:
        moved = run(40401)
        c = tna.counters("r-h1")
    assert moved and {src for src, _ in moved} == {"203.0.113.1"}, moved
    assert c.get("NAT_MASQ_OIF", 0) >= 1 and c.get("FORWARDED", 0) >= 1, c


def test_a_rule_on_the_dnat_destination_holds_the_flow_while_it_loads(router_lab: RouterLab, hook: str,
                                                                      tmp_path: Path) -> None:
    """h2's established UDP flow to r's port 8082, DNAT'd to h1:5202.  A
    DROP inserted for h1:5202 matches it only as the DNAT left it: while the
    programs for it load (paused before the attach), the old rules' program
    must pass the flow to the kernel (which drops it), not forward it by
    the address it arrived with."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    lab = router_lab
    setup(lab, hook)
    mark = b"TNA-NARROW-DNAT"
    h1, h2 = lab.h1, lab.h2

    def probe(n: int) -> str:
        return bytes(Ether(src=h2.mac, dst=lab.r_h2_mac) / IP(src=h2.ip4, dst=OUTSIDE4) / UDP(sport=40500, dport=8082)
                     / Raw(mark + b"%04d" % n)).hex()

    def send(ns: str, dev: str, frames: list[str]) -> None:
        lab.run(ns, py("netns_labs.xfer", "raw-send", dev, ",".join(frames), "1"), cwd=lab.repo)

    def through(first: int, count: int) -> set[int]:
        """Which of count probes h1 received."""
        cap = lab.popen(h1.ns, py("netns_labs.xfer", "raw-capture", h1.dev, mark.hex(), str(count), "2"),
                        stdout=subprocess.PIPE, text=True, cwd=lab.repo)
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
        send(h2.ns, h2.dev, [probe(n) for n in range(first, first + count)])
        out, _ = cap.communicate(timeout=30)
        return {int(bytes.fromhex(h).split(mark)[1][:4]) for h in out.split()}

    reply = bytes(Ether(src=h1.mac, dst=lab.r_h1_mac) / IP(src=h1.ip4, dst=h2.ip4) / UDP(sport=5202, dport=40500)
                  / Raw(b"reply")).hex()
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [h1, h2], module="tests.tna_paused",
                     env_extra={"TNA_PAUSE_DIR": str(tmp_path), "TNA_PAUSE_AT": "attach"}) as tna:
        assert through(0, 1) == {0}
        send(h1.ns, h1.dev, [reply])
        time.sleep(2.5)  # a reply, then a datagram 2 s on: ASSURED, carried
        assert wait_for(lambda: through(0, 1) == {0} and tna.counters("r-h2").get("FORWARDED", 0) > 0, 20, 0.5), \
            tna.output()
        (tmp_path / "arm").touch()
        lab.run(lab.r, ["iptables", "-I", "FORWARD", "-d", h1.ip4, "-p", "udp", "--dport", "5202", "-j", "DROP"])
        assert wait_for((tmp_path / "paused").exists, 30, 0.05), tna.output()
        assert wait_for(lambda: tna.held_flows() > 0 and tna.pass_reason() == 0, 20, 0.1), tna.output()
        before = tna.counters("r-h2")
        got = through(100, 4)
        after = tna.counters("r-h2")
        (tmp_path / "resume").touch()
    assert got == set(), got
    assert after.get("FW_CHANGED", 0) - before.get("FW_CHANGED", 0) == 4, (before, after)
    assert after.get("FORWARDED", 0) == before.get("FORWARDED", 0), (before, after)
