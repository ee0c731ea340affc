"""The FORWARD chain on real traffic.  A rule set in the router lab's r,
probes of every kind sent from h1 as raw frames, and what reaches h2:

- Linux alone against the reference semantics (tna/model/firewall.py):
  pins down the specification;
- `tna run` (both hooks) with the stateless part of the same rule set
  compiled into the fast path: the same packets arrive, the drops happen in
  the fast path, and a rule TNA cannot express keeps its traffic on the
  kernel path."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path

import pytest

from netns_labs.lab import RouterLab, py, tcp_transfer, wait_for
from netns_labs.tna_proc import Tna, tna_running
from tna.model.firewall import ACCEPT, DROP, KERNEL, Packet, evaluate
from tna.model.iptables import parse_save

pytestmark = pytest.mark.root

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:blk - [0:0]
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -s 192.0.2.0/25 ! -d 198.51.100.7/32 -i r-h+ -p tcp -m multiport --dports 22,80,8000:8100 -j ACCEPT
-A FORWARD -p udp -m udp --dport 6000 -j RETURN
-A FORWARD -j blk
-A FORWARD -p udp -m udp --sport 53 --dport 1024:65535 -j ACCEPT
-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j DROP
-A FORWARD -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A FORWARD -p udp -m multiport --ports 5000:5010 -j ACCEPT
-A FORWARD -o r-h2 -p tcp -m tcp --dport 9000 -j ACCEPT
-A FORWARD -p udp -m comment --comment "last resort" ! --dport 6000 -j ACCEPT
-A blk -s 192.0.2.64/26 -j DROP
-A blk -p udp -m udp --dport 7777 -j RETURN
-A blk -p udp -m udp --dport 7000:7999 -j DROP
-A blk -j RETURN
COMMIT
"""
MARK = b"TNA-FW-PROBE"
SYN, ACK = 0x02, 0x10


def probes() -> list[Packet]:
    out = []
    for src in ("192.0.2.2", "192.0.2.70", "192.0.2.200"):
        for dst in ("198.51.100.2", "198.51.100.7"):
            def p(proto: int, sport: int | None = None, dport: int | None = None, src: str = src,
                  dst: str = dst, **kw: object) -> Packet:
                return Packet(ip_address(src), ip_address(dst), "r-h1", "r-h2", proto, sport, dport,
                              ctstate="NEW", **kw)  # type: ignore[arg-type]
            for dport in (22, 80, 7999, 8000, 8100, 8101, 9000, 443):
                out += [p(6, 40000, dport, tcp_flags=SYN), p(6, 40000, dport, tcp_flags=ACK)]
            for sport, dport in ((53, 1024), (53, 1023), (53, 65535), (1000, 5000), (1000, 5010), (5011, 1000),
                                 (1000, 7777), (1000, 7000), (1000, 7999), (1000, 8000), (1000, 6000)):
                out.append(p(17, sport, dport))
            out += [p(1, icmp_type=8, icmp_code=0), p(1, icmp_type=13, icmp_code=0)]
    return out


def frame(lab: RouterLab, pkt: Packet, n: int) -> bytes:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    l4 = {6: lambda: TCP(sport=pkt.sport, dport=pkt.dport, flags=pkt.tcp_flags, seq=1000 + n),
          17: lambda: UDP(sport=pkt.sport, dport=pkt.dport),
          1: lambda: ICMP(type=pkt.icmp_type, code=pkt.icmp_code, id=n)}[pkt.proto]()
    ip = IP(src=str(pkt.src), dst=str(pkt.dst), ttl=64)
    return bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / ip / l4 / Raw(MARK + b"%04d" % n))


def send_probes(lab: RouterLab, pkts: list[Packet], wait: float = 1) -> set[int]:
    """Indexes of the probes that reached h2 (see send_frames)."""
    return send_frames(lab, [frame(lab, p, n) for n, p in enumerate(pkts)], wait)


def send_frames(lab: RouterLab, frames: list[bytes], wait: float = 1) -> set[int]:
    """Indexes of the frames (each holding MARK and its index, as frame()
    makes them) that reached h2, sent from h1 once each (see arrivals)."""
    return {int(f.split(MARK)[1][:4]) for f in arrivals(lab, frames, wait)}


def arrivals(lab: RouterLab, frames: list[bytes], wait: float = 1) -> list[bytes]:
    """The frames holding MARK that reached h2 (as h2 got them) when h1
    sent each of frames once: all of them, or those that came within wait
    seconds of the last one sent (a forwarded frame takes microseconds; the
    sender's start-up is not in the wait)."""
    cap = lab.popen(lab.h2.ns, py("netns_labs.xfer", "raw-capture", lab.h2.dev, MARK.hex(), str(len(frames)), "60"),
                    stdout=subprocess.PIPE, text=True, cwd=lab.repo)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    lab.run(lab.h1.ns, py("netns_labs.xfer", "raw-send", lab.h1.dev, ",".join(f.hex() for f in frames), "1"),
            cwd=lab.repo)
    try:
        out, _ = cap.communicate(timeout=wait)
    except subprocess.TimeoutExpired:  # some did not come: what did (each line is flushed as it is)
        cap.terminate()
        out, _ = cap.communicate(timeout=30)
    return [bytes.fromhex(h) for h in out.split()]


def _attached_since(log: str, iface: str, t0: float) -> bool:
    try:
        attached_after(log, iface, t0)
        return True
    except AssertionError:
        return False


def attached_after(log: str, iface: str, t0: float) -> float:
    """When the daemon logged the first attach to iface after t0."""
    for line in log.splitlines():
        if f" {iface}: " in line and "program" in line and "attached" in line:
            when = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if when >= t0:
                return when
    raise AssertionError(f"no attach to {iface} after {t0}:\n{log}")


def setup(lab: RouterLab, rules: str) -> None:
    lab.neigh(lab.r, "r-h2", "198.51.100.7", lab.h2.mac)  # the second destination lives on h2 too
    lab.run(lab.h2.ns, ["ip", "addr", "add", "198.51.100.7/32", "dev", lab.h2.dev])
    lab.run(lab.r, ["iptables-restore"], input=rules)
    # h2 answers nothing (TCP resets, ICMP errors are rate-limited: their
    # number varies), so every packet r sees is a probe
    lab.run(lab.h2.ns, ["iptables", "-P", "OUTPUT", "DROP"])


def test_reference_semantics_match_the_kernel(router_lab: RouterLab) -> None:
    lab = router_lab
    setup(lab, RULES)
    table = parse_save(RULES)["filter"]
    pkts = probes()
    expect = {n: evaluate(table, "FORWARD", p) for n, p in enumerate(pkts)}
    assert set(expect.values()) == {ACCEPT, DROP}  # every probe is decidable: no KERNEL here
    arrived = send_probes(lab, pkts)
    wrong = {n: (pkts[n], expect[n]) for n in expect if (n in arrived) != (expect[n] == ACCEPT)}
    assert not wrong, wrong


# the stateless part, plus a LOG rule that only TCP SYNs to port 443 reach
STATELESS = RULES.replace("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n", "").replace(
    "-A FORWARD -j blk\n", "-A FORWARD -j blk\n-A FORWARD -p tcp -m tcp --dport 443 --tcp-flags SYN SYN -j LOG\n")


# Rule sets the fast path decides with one lookup each (tna/model/firewall.py
# RuleSet): nested source prefixes, protocol+port lists, destination+port
# pairs, in a user chain and in FORWARD, between rules compiled as code.
SETS = "".join([
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:blk - [0:0]\n",
    "-A FORWARD -j blk\n",
    "-A FORWARD -p tcp -m multiport --dports 22,80,443 -j ACCEPT\n",
    *(f"-A FORWARD -p tcp -m tcp --dport {8000 + i} -j ACCEPT\n" for i in range(50)),
    "-A FORWARD -p udp -m udp --dport 53 -j ACCEPT\n",
    *(f"-A FORWARD -d 198.51.100.{2 if i % 2 else 7}/32 -p udp -m udp --sport {1000 + i} -j DROP\n"
      for i in range(20)),
    "-A FORWARD -p udp -j ACCEPT\n",
    *(f"-A blk -s 192.0.2.{i}/32 -j DROP\n" for i in range(100, 200)),
    "-A blk -s 192.0.2.64/26 -j DROP\n-A blk -s 192.0.2.128/25 -j DROP\n-A blk -s 192.0.2.96/27 -j DROP\n",
    "-A blk -p tcp -m tcp --dport 8040 -j DROP\n",
    "COMMIT\n"])


def set_probes() -> list[Packet]:
    out = []
    for src in ("192.0.2.2", "192.0.2.70", "192.0.2.97", "192.0.2.100", "192.0.2.150", "192.0.2.230"):
        for dst in ("198.51.100.2", "198.51.100.7"):
            def p(proto: int, sport: int, dport: int, src: str = src, dst: str = dst) -> Packet:
                return Packet(ip_address(src), ip_address(dst), "r-h1", "r-h2", proto, sport, dport,
                              tcp_flags=SYN if proto == 6 else None, ctstate="NEW")
            out += [p(6, 40000, d) for d in (22, 80, 443, 444, 8000, 8040, 8049, 8050)]
            out += [p(17, s, d) for s, d in ((1000, 53), (1001, 9), (1002, 9), (1019, 9), (1020, 9), (53, 1))]
    return out


def kernel_counters(lab: RouterLab) -> dict[tuple[str, int], int]:
    """(chain, rule index or 0 for the policy) -> packets, from iptables-save -c."""
    table = parse_save(lab.run(lab.r, ["iptables-save", "-c"]).stdout)["filter"]
    out = {(c.name, 0): c.counters[0] for c in table.chains.values() if c.policy}
    out |= {(r.chain, r.index): r.counters[0] for c in table.chains.values() for r in c.rules}
    return out


@pytest.mark.parametrize("rules,make_probes", [(STATELESS, probes), (SETS, set_probes)], ids=["code", "sets"])
def test_fast_path_filters_like_the_kernel(router_lab: RouterLab, hook: str, rules: str,
                                           make_probes: Callable[[], list[Packet]]) -> None:
    lab = router_lab
    setup(lab, rules)
    table = parse_save(rules)["filter"]
    pkts = make_probes()
    traces: dict[int, list[tuple[str, int]]] = {n: [] for n in range(len(pkts))}
    expect = {n: evaluate(table, "FORWARD", p, traces[n]) for n, p in enumerate(pkts)}
    assert {ACCEPT, DROP} <= set(expect.values())
    linux = send_probes(lab, pkts)
    linux_counts = kernel_counters(lab)
    lab.run(lab.r, ["iptables", "-Z"])
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2), tna.output()
        before = tna.counters("r-h1")
        fast = send_probes(lab, pkts)
        after = tna.counters("r-h1")
        counts = json.loads(lab.run(lab.r, py("tna", "stats", "--rules", "--json"), cwd=lab.repo).stdout)
        source = Path(tna.status()["ifaces"]["r-h1"]["source"]).read_text()
    assert fast == linux
    # per rule: what the fast path applied is what the reference says it
    # applies to the probes it decides; with the kernel's share, the sum is
    # what Linux alone counted
    expect_fast = Counter(step for n, t in traces.items() if expect[n] != KERNEL for step in t)
    got_fast = {(r["chain"], r["index"]): r["fast_path"]["packets"] for r in counts if r["family"] == 4}
    assert {k: v for k, v in got_fast.items() if v} == dict(expect_fast)
    got_total = {(r["chain"], r["index"]): r["fast_path"]["packets"] + r["kernel"]["packets"]
                 for r in counts if r["family"] == 4}
    assert got_total == {k: v for k, v in linux_counts.items() if k in got_total}
    moved = {r: after.get(r, 0) - before.get(r, 0) for r in ("FORWARDED", "FW_DROP", "FW_KERNEL")}
    if rules == SETS:  # decided by lookups, not one `if` per rule
        assert source.count("bpf_map_lookup_elem(&fw4_set") == 3, source
    assert moved == {"FORWARDED": sum(v == ACCEPT for v in expect.values()),
                     "FW_DROP": sum(v == DROP for v in expect.values()),
                     "FW_KERNEL": sum(v == KERNEL for v in expect.values())}, moved


BLOCKLIST = "".join(f"-A blk -s 203.0.113.{i % 250}/32 -p udp -m udp --dport {1000 + i} -j DROP\n"
                    for i in range(10_000))


@pytest.mark.parametrize("extra", ["", BLOCKLIST], ids=["small", "10k-rules"])
def test_rule_changes_take_effect_at_once(router_lab: RouterLab, hook: str, extra: str) -> None:
    """A DROP rule added while traffic is fast-pathed is in effect once the
    new program is attached (the commit event makes everything pass to the
    kernel until then), also behind a 10,000-rule blocklist; then the fast
    path itself drops what the rule matches.  How long the daemon takes is
    measured (printed here; netns_labs/bench.py, docs/benchmarks.md), not
    asserted: the daemon may hear of a commit late while busy
    (docs/datapath.md), and a loaded machine compiles slowly."""
    lab = router_lab
    setup(lab, STATELESS.replace("-A blk -j RETURN\n", extra + "-A blk -j RETURN\n"))
    pkts = [Packet(ip_address("192.0.2.2"), ip_address("198.51.100.2"), "r-h1", "r-h2", 17, 1000, 2000 + i)
            for i in range(4)]
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2)
        assert send_probes(lab, pkts) == {0, 1, 2, 3}  # the last-resort rule accepts them
        reaction = []
        for i, p in enumerate(pkts):
            t0 = time.time()
            lab.run(lab.r, ["iptables", "-I", "FORWARD", "-p", "udp", "--dport", str(p.dport), "-j", "DROP"])
            assert wait_for(lambda t0=t0: _attached_since(tna.output(), "r-h1", t0), 60, 0.05), tna.output()
            assert send_probes(lab, pkts) == set(range(i + 1, len(pkts)))
            reaction.append(attached_after(tna.output(), "r-h1", t0) - t0)
        # each in the compiled rule set (read once: 10,000 rules' counters take seconds)
        compiled = json.loads(lab.run(lab.r, py("tna", "stats", "--rules", "--json"), cwd=lab.repo).stdout)
        assert all(any(r["text"].endswith(f"--dport {p.dport} -j DROP") for r in compiled) for p in pkts)
        print(f"rule change -> program attached: {[round(r, 3) for r in reaction]} s")

        def fast_path_drops_all() -> bool:
            """Every probe dropped (by whichever path); True once it was the
            fast path (the hold ends just after the last attach)."""
            before = tna.counters("r-h1")
            assert send_probes(lab, pkts) == set()
            return tna.counters("r-h1").get("FW_DROP", 0) - before.get("FW_DROP", 0) == len(pkts)
        assert wait_for(fast_path_drops_all, 60, 0.5), tna.output()


@pytest.mark.parametrize("family", [4, 6])
def test_early_drop_of_a_flood_the_input_chain_blocks(router_lab: RouterLab, hook: str, family: int) -> None:
    """`iptables -A INPUT -p udp --dport 9999 -j DROP` (ip6tables too): a UDP
    flood to the box is dropped at the hook (counted per rule), while a TCP
    service on the box stays reachable through the kernel."""
    lab = router_lab
    tool, box = ("iptables", "192.0.2.1") if family == 4 else ("ip6tables", "2001:db8:1::1")
    lab.run(lab.r, [tool, "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "DROP"])
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2), tna.output()
        before = tna.counters("r-h1")
        flood = lab.popen(lab.h1.ns, py("netns_labs.xfer", "udp-send", box, "9999", "4321", "20000"),
                          cwd=lab.repo)
        sent, received = tcp_transfer(lab, lab.h1.ns, lab.r, box, 4 << 20)
        assert sent == received
        assert flood.wait(timeout=60) == 0
        after = tna.counters("r-h1")
        rules = json.loads(lab.run(lab.r, py("tna", "stats", "--rules", "--json"), cwd=lab.repo).stdout)
        text = lab.run(lab.r, py("tna", "status"), cwd=lab.repo).stdout
    assert f"iptables compiled into the fast path: INPUT v{family} 1 rules" in text, text
    assert after.get("FW_INPUT_DROP", 0) - before.get("FW_INPUT_DROP", 0) == 20000
    drop = next(r for r in rules if r["chain"] == "INPUT" and r["index"] == 1 and r["family"] == family)
    assert drop["fast_path"]["packets"] == 20000 and drop["kernel"]["packets"] == 0


def test_truncated_l4_header_is_left_to_the_kernel(router_lab: RouterLab, hook: str) -> None:
    """A UDP header cut short by the IP length (the rest is Ethernet
    padding): iptables drops it when a udp match is reached ("hotdrop");
    the fast path must not read ports out of the padding."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    lab = router_lab
    setup(lab, STATELESS)
    ip = IP(src=lab.h1.ip4, dst=lab.h2.ip4, proto=17, len=24) / Raw(b"\x03\xe8\x07\xd0")  # ports only
    frame = (bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / ip) + b"\x00\x08\x00\x00" + MARK).ljust(60, b"\0")
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2)
        before = tna.counters("r-h1")
        lab.run(lab.h1.ns, py("netns_labs.xfer", "raw-send", lab.h1.dev, frame.hex(), "3"), cwd=lab.repo)
        after = tna.counters("r-h1")
    assert after.get("FW_KERNEL", 0) - before.get("FW_KERNEL", 0) == 3
    assert after.get("FORWARDED", 0) == before.get("FORWARDED", 0)


V4_ONLY = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
           "-A FORWARD -p udp -m udp --dport 7 -j ACCEPT\nCOMMIT\n")


def test_an_ipv4_route_via_an_ipv6_gateway_is_judged_by_the_ipv4_rules(router_lab: RouterLab, hook: str) -> None:
    """An IPv4 route whose gateway is an IPv6 address (`via inet6`, as BGP
    unnumbered installs them): bpf_fib_lookup() answers it with family
    AF_INET6 and the gateway in ipv6_dst.  The packet is IPv4 all the same,
    and FORWARD's IPv4 chain decides it: port 7 accepted, port 9 dropped by
    the policy, as with Linux alone (no IPv6 rule would have dropped it)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    lab = router_lab
    lab.run(lab.r, ["ip", "route", "add", "203.0.113.0/24", "via", "inet6", lab.h2.ip6, "dev", "r-h2"])
    lab.run(lab.r, ["iptables-restore"], input=V4_ONLY)
    lab.run(lab.h2.ns, ["iptables", "-P", "OUTPUT", "DROP"])
    frames = [bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / IP(src=lab.h1.ip4, dst="203.0.113.9", ttl=64) /
                    UDP(sport=4000 + n, dport=dport) / Raw(MARK + b"%04d" % n)) for n, dport in enumerate((7, 9))]
    assert send_frames(lab, frames * 3) == {0}  # Linux alone (each frame is sent three times over)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2)
        before = tna.counters("r-h1")
        assert send_frames(lab, frames * 3) == {0}
        after = tna.counters("r-h1")
    carried = after.get("FORWARDED", 0) - before.get("FORWARDED", 0)
    dropped = after.get("FW_DROP", 0) - before.get("FW_DROP", 0)
    assert (carried, dropped) == (3, 3), after


def decided_by_the_fast_path(lab: RouterLab, tna: Tna, pkts: list[Packet], expect: dict[int, str]) -> bool:
    """The probes get the verdicts expect says whichever path decides them
    (also while the daemon catches up with a change); True once every one
    was the fast path's."""
    before = tna.counters("r-h1")
    assert send_probes(lab, pkts) == {n for n, v in expect.items() if v == ACCEPT}
    after = tna.counters("r-h1")
    moved = (after.get("FW_DROP", 0) - before.get("FW_DROP", 0), after.get("FORWARDED", 0) - before.get("FORWARDED", 0))
    return moved == (sum(v == DROP for v in expect.values()), sum(v == ACCEPT for v in expect.values()))


# rules joining the blocklist set of SETS in one commit: one (the set's maps
# and the counters have room: no new program), and more than the counters'
# room (new programs, the maps made anew)
JOINING = {"one-rule": ["-s 192.0.2.2/32"],
           "outgrowing": ["-s 192.0.2.2/32", *(f"-s 203.0.113.{i}/32" for i in range(120))]}


@pytest.mark.parametrize("joining", list(JOINING), ids=list(JOINING))
def test_a_rule_joining_or_leaving_a_set_changes_its_map(router_lab: RouterLab, hook: str, joining: str) -> None:
    """Rules inserted into a set of rules (blk's sources) and deleted again:
    while the maps have room, the running programs stay (no verifier run:
    the set's map entries and the rule counters are rewritten under the
    commit's hold); either way, after each commit the fast path decides
    every probe as the kernel's new rules do, and counts each probe on the
    rule that matched it."""
    lab = router_lab
    setup(lab, SETS)
    pkts = set_probes()
    new = JOINING[joining]
    insert = "".join(f"-I blk 3 {m} -j DROP\n" for m in reversed(new))
    delete = "".join(f"-D blk {m} -j DROP\n" for m in new)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2), tna.output()
        progs = {i: tna.status()["ifaces"][i]["prog_id"] for i in ("r-h1", "r-h2")}
        for change, present in ((insert, True), (delete, False)):
            lab.run(lab.r, ["iptables-restore", "--noflush"], input=f"*filter\n{change}COMMIT\n")
            table = parse_save(lab.run(lab.r, ["iptables-save"]).stdout)["filter"]
            traces: dict[int, list[tuple[str, int]]] = {n: [] for n in range(len(pkts))}
            expect = {n: evaluate(table, "FORWARD", p, traces[n]) for n, p in enumerate(pkts)}
            assert KERNEL not in expect.values()
            assert (expect[0] == DROP) == present  # the first probe comes from 192.0.2.2

            assert wait_for(lambda e=expect: decided_by_the_fast_path(lab, tna, pkts, e), 60, 0.5), tna.output()

            def fast_counts() -> Counter[tuple[str, int]]:
                rows = json.loads(lab.run(lab.r, py("tna", "stats", "--rules", "--json"), cwd=lab.repo).stdout)
                return Counter({(r["chain"], r["index"]): r["fast_path"]["packets"] for r in rows
                                if r["family"] == 4})
            before = fast_counts()
            send_probes(lab, pkts)
            assert fast_counts() - before == Counter(step for t in traces.values() for step in t)
            kept = {i: tna.status()["ifaces"][i]["prog_id"] == progs[i] for i in progs}
            assert kept == dict.fromkeys(progs, joining == "one-rule" or not present), (kept, tna.output())
            progs = {i: tna.status()["ifaces"][i]["prog_id"] for i in progs}


def test_each_rules_total_is_what_linux_counts_through_rule_changes(router_lab: RouterLab, hook: str) -> None:
    """`tna stats --rules`: each rule's kernel counter plus the fast path's
    count is what Linux alone counts, whichever path decided each probe -
    through a rule inserted as code (new programs), one joining a set of
    rules (the programs kept), an iptables-restore of the same table
    (every rule made anew: the kernel's counters restart, and so does the
    fast path's count) and `iptables -Z` (the same, whatever the rules the
    kernel counted 0)."""
    lab = router_lab
    setup(lab, SETS)
    pkts = set_probes()
    table = parse_save(SETS)["filter"]
    traces: dict[int, list[tuple[str, int]]] = {n: [] for n in range(len(pkts))}
    expect = {n: evaluate(table, "FORWARD", p, traces[n]) for n, p in enumerate(pkts)}
    text = {(c.name, 0): f"policy {c.policy}" for c in table.chains.values() if c.policy}
    text |= {(r.chain, r.index): r.text for c in table.chains.values() for r in c.rules}
    per_round = Counter(text[step] for t in traces.values() for step in t)
    rounds = 0
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        def decided() -> bool:
            nonlocal rounds
            rounds += 1
            return decided_by_the_fast_path(lab, tna, pkts, expect)

        def totals() -> Counter[str]:
            rows = json.loads(lab.run(lab.r, py("tna", "stats", "--rules", "--json"), cwd=lab.repo).stdout)
            return +Counter({r["text"]: r["kernel"]["packets"] + r["fast_path"]["packets"] for r in rows
                             if r["family"] == 4})
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2), tna.output()
        for change, rule in ((None, ""), ("code", "-I FORWARD 1 -p icmp -j DROP"),
                             ("set", "-I blk 3 -s 203.0.113.9/32 -j DROP"), ("restore", ""), ("zero", "")):
            progs = {i: tna.status()["ifaces"][i]["prog_id"] for i in ("r-h1", "r-h2")}
            if change == "restore":
                lab.run(lab.r, ["iptables-restore"], input=lab.run(lab.r, ["iptables-save"]).stdout)
                rounds = 0
            elif change == "zero":
                lab.run(lab.r, ["iptables", "-Z"])
                rounds = 0
            elif change:
                lab.run(lab.r, ["iptables-restore", "--noflush"], input=f"*filter\n{rule}\nCOMMIT\n")
            assert wait_for(decided, 60, 0.5), tna.output()
            assert totals() == +Counter({t: n * rounds for t, n in per_round.items()}), (change, tna.output())
            kept = {i: tna.status()["ifaces"][i]["prog_id"] == progs[i] for i in progs}
            if change in ("code", "set"):
                assert kept == dict.fromkeys(progs, change == "set"), (change, kept)
