"""One-way UDP through a stateful FORWARD chain, on real traffic (issue #11
item 4): conntrack calls every packet of an entry that has seen no reply
NEW, so `ESTABLISHED,RELATED -j ACCEPT` never takes it, the rule for its
port does.  With tna the stream is carried, the entry lives exactly as
with Linux alone (refreshed to nf_conntrack_udp_timeout, still UNREPLIED),
the receiver gets the same bytes; a rule set that accepts only established
traffic stops the stream with tna as it does without."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from netns_labs.lab import RouterLab, _server, py, wait_for
from netns_labs.tna_proc import Tna, tna_running
from tests.test_conntrack_lab import RULES4, RULES6, setup

pytestmark = pytest.mark.root

UNREPLIED_S = 2  # nf_conntrack_udp_timeout for these tests: a stream of 0.1 s gaps outlives it many times over
SECONDS, GAP = 5, 0.1
# the stateful chain without its service rules: only established traffic passes
ESTABLISHED_ONLY = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""


def entry(lab: RouterLab, family: str, sport: int) -> tuple[str, int, bool] | None:
    """(id, timeout, unreplied) of the stream's conntrack entry, if any."""
    out = lab.run(lab.r, ["conntrack", "-L", "-f", family, "-p", "udp", "--sport", str(sport), "-o", "id"],
                  check=False).stdout
    lines = [line.split() for line in out.splitlines() if line.startswith("udp")]
    if not lines:
        return None
    fields = lines[0]
    return next(f for f in fields if f.startswith("id=")), int(fields[2]), "[UNREPLIED]" in fields


def streams(lab: RouterLab, sport: int, seconds: float = SECONDS, gap: float = GAP) -> dict[str, tuple]:
    """A one-way stream h1 -> h2 per IP version (at once), sampling its
    conntrack entry every 0.3 s: family -> (sent, received, samples)."""
    flows = {"ipv4": (lab.h2.ip4, 5206), "ipv6": (lab.h2.ip6, 5207)}
    # done 1.5 s after the last datagram, or once the stream's time passed with none
    sinks = {f: _server(lab, lab.h2.ns, "udp-sink", str(port), "1.5", str(seconds)) for f, (_, port) in flows.items()}
    senders = {f: lab.popen(lab.h1.ns, py("netns_labs.xfer", "udp-stream", addr, str(port), str(sport),
                                          str(seconds), str(gap)), stdout=subprocess.PIPE, text=True, cwd=lab.repo)
               for f, (addr, port) in flows.items()}
    samples: dict[str, list] = {f: [] for f in flows}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.3):
            for f in flows:
                samples[f].append(entry(lab, f, sport))
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        sent = {f: p.communicate(timeout=seconds + 60)[0].split() for f, p in senders.items()}
    finally:
        stop.set()
        sampler.join()
    got = {f: s.communicate(timeout=30)[0].split()[-2:] for f, s in sinks.items()}
    return {f: (sent[f], got[f], samples[f][:-1]) for f in flows}  # the last sample may follow the end


def test_one_way_stream_is_carried_and_its_entry_lives_as_with_linux(router_lab: RouterLab, hook: str) -> None:
    lab = router_lab
    setup(lab, hook)
    lab.sysctl(lab.r, "net.netfilter.nf_conntrack_udp_timeout", UNREPLIED_S)

    def check(runs: dict[str, tuple]) -> None:
        for family, (sent, got, samples) in runs.items():
            assert int(sent[0]) > SECONDS / GAP / 2 and sent == got, (family, sent, got)
            # one entry all along (a new one would have a new id), never
            # answered, refreshed to the unreplied timeout by every packet
            first = samples[0]
            assert first is not None, (family, samples)
            assert all(s is not None and s[0] == first[0] and s[2] and 0 < s[1] <= UNREPLIED_S
                       for s in samples), (family, samples)

    check(streams(lab, 40200))
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        time.sleep(1.2)  # the daemon polls sysctls every second
        runs = streams(lab, 40201)
        c = tna.counters("r-h1")
    check(runs)
    sent = sum(int(s[0]) for s, _, _ in runs.values())
    # the kernel saw each stream's first datagram (it creates the entry);
    # the fast path carried the rest
    assert c.get("FORWARDED", 0) >= sent - 4 and c.get("CT_NEW", 0) >= 2, (sent, c)


def test_established_only_rules_do_not_forward_a_one_way_stream(router_lab: RouterLab, hook: str) -> None:
    """The entries exist (made while the service rules accepted the first
    datagrams), then the rules accept only ESTABLISHED: each later datagram
    is NEW, dropped by the policy, by Linux and by tna alike."""
    lab = router_lab
    setup(lab, hook)
    lab.sysctl(lab.r, "net.netfilter.nf_conntrack_udp_timeout", 60)

    def dropped(sport: int, tna: Tna | None = None) -> dict[str, tuple]:
        def restore(rules4: str, rules6: str, compiled: int) -> None:
            lab.run(lab.r, ["iptables-restore"], input=rules4)
            lab.run(lab.r, ["ip6tables-restore"], input=rules6)
            if tna is not None:  # until the daemon has compiled both in (FORWARD and the chains it jumps to)
                assert wait_for(lambda: all(((tna.state() or {}).get("firewall") or {}).get("chains", {})
                                            .get(f"FORWARD v{v}") == compiled for v in (4, 6)), 60, 0.2), tna.output()
                # and every commit's hold is over: a reconcile may have read both
                # tables before the second commit's own re-read ends its hold
                assert wait_for(lambda: tna.pass_reason() == 0, 60, 0.1), tna.output()
        restore(RULES4, RULES6, 9)
        for addr, port in ((lab.h2.ip4, 5206), (lab.h2.ip6, 5207)):
            lab.run(lab.h1.ns, py("netns_labs.xfer", "udp-send", addr, str(port), str(sport), "2"), cwd=lab.repo)
        restore(ESTABLISHED_ONLY, ESTABLISHED_ONLY, 2)
        runs = streams(lab, sport, 3, 0.05)
        for family, (sent, got, samples) in runs.items():
            assert int(sent[0]) > 20 and got[0] == "0", (family, sent, got)
            assert all(s is not None and s[2] for s in samples), (family, samples)  # still there, unreplied
        return runs

    dropped(40202)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        time.sleep(1.2)
        runs = dropped(40203, tna)
        c = tna.counters("r-h1")
    sent = sum(int(s[0]) for s, _, _ in runs.values())
    # never forwarded; dropped by the fast path itself (a packet in a hold the
    # daemon's publication ends a moment later is dropped by the kernel)
    assert c.get("FORWARDED", 0) == 0, (sent, c)
    assert c.get("FW_DROP", 0) >= sent // 2 and c.get("FW_DROP", 0) + c.get("FW_CHANGED", 0) >= sent - 4, (sent, c)
