"""BPF_PROG_RUN cases of the pass cache (passcache.c.j2), both hooks: a flow
the firewall passed after its lookups goes straight to the kernel for
pass_cache_jiffies with the same reason, then is looked up again; it is only
ever a pass, never remembered for a packet's own bytes, and exact to the
packet fields a verdict reads."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import RouterLab, wait_for
from tests.harness import FirewallHarness
from tests.test_firewall_prog import CT, CT_LOG, V4, F, check
from tna.bpf import abi

pytestmark = pytest.mark.root

LIFETIME_S = 2


@pytest.fixture(autouse=True)
def one_cpu() -> Iterator[None]:
    """The cache is per CPU and a test run executes on the caller's CPU: a
    migration between two runs would read the other CPU's table."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    yield
    os.sched_setaffinity(0, cpus)


@pytest.fixture(scope="module", params=["xdp", "tc"])
def harnesses(request: pytest.FixtureRequest, fwlab: RouterLab) -> Iterator[dict[str, FirewallHarness]]:
    made = {name: FirewallHarness(fwlab, request.param, rules) for name, rules in (("ct", CT), ("log", CT_LOG))}
    yield made
    for h in made.values():
        h.close()


def frame(lab: RouterLab, sport: int, dport: int = 4000) -> bytes:
    return bytes(V4(lab, dst="198.51.100.7") / UDP(sport=sport, dport=dport) / Raw(b"x"))


def entry(lab: RouterLab, sport: int, status: str) -> list[str]:
    """A fresh conntrack entry h1:sport -> 198.51.100.7:4000 with status; its match."""
    match = ["-p", "udp", "-s", lab.h1.ip4, "-d", "198.51.100.7", "--sport", str(sport), "--dport", "4000"]
    lab.run(lab.r, ["conntrack", "-D", *match], check=False)
    lab.run(lab.r, ["conntrack", "-I", *match, "--timeout", "60", "--status", status])
    return match


@pytest.mark.parametrize("cache_s", [LIFETIME_S, 0], ids=["cache", "no-cache"])
def test_a_passed_flow_stays_passed_for_the_lifetime(harnesses: dict[str, FirewallHarness], fwlab: RouterLab,
                                                     cache_s: float) -> None:
    """A not yet assured entry: CT_STATE, remembered.  Assured meanwhile,
    the flow is still passed (the lookups that would carry it skipped)
    until the lifetime ends, then carried; without the cache at once."""
    h, lab = harnesses["ct"], fwlab
    h.set_state(pass_cache_s=cache_s)
    try:
        match = entry(lab, 4011, "SEEN_REPLY")
        check(h, frame(lab, 4011), "PASS", "CT_STATE", Counter())
        entry(lab, 4011, "SEEN_REPLY,ASSURED")
        seen: list[str] = []

        def carried() -> bool:
            _, reason, _, _ = h.run_fw(frame(lab, 4011))
            seen.append(reason)
            return reason == "FORWARDED"
        assert wait_for(carried, 30, 0.1), seen
        assert set(seen[:-1]) <= {"CT_STATE"}, seen  # a pass, with the remembered reason, until carried
        if cache_s:
            assert seen[0] == "CT_STATE", seen
        else:
            assert seen == ["FORWARDED"], seen
    finally:
        h.set_state()
        lab.run(lab.r, ["conntrack", "-D", *match], check=False)


def test_an_invalid_packet_is_not_remembered(harnesses: dict[str, FirewallHarness], fwlab: RouterLab) -> None:
    """A bad checksum on an assured flow is INVALID to conntrack: that
    packet goes to the kernel, the next good one is carried at once."""
    h, lab = harnesses["ct"], fwlab
    h.set_state(pass_cache_s=3600, ct_flags=abi.TNA_CT_CSUM)
    match = entry(lab, 4012, "SEEN_REPLY,ASSURED")
    try:
        bad = Ether(frame(lab, 4012))
        bad[UDP].chksum ^= 0x0101
        check(h, bytes(bad), "PASS", "CT_STATE", Counter())
        check(h, frame(lab, 4012), "REDIRECT", "FORWARDED", Counter({(4, F, 2): 1}))
    finally:
        h.set_state()
        lab.run(lab.r, ["conntrack", "-D", *match], check=False)


def test_the_key_is_the_flow(harnesses: dict[str, FirewallHarness], fwlab: RouterLab) -> None:
    """A LOG rule sends port 53 to the kernel (remembered, passed again);
    another port of the same hosts is decided by the chain: the policy
    drops it."""
    h, lab = harnesses["log"], fwlab
    h.set_state(pass_cache_s=3600)
    try:
        for _ in range(2):
            check(h, frame(lab, 4013, 53), "PASS", "FW_KERNEL", Counter())
        check(h, frame(lab, 4013, 54), "DROP", "FW_DROP", Counter({(4, F, 0): 1}))
    finally:
        h.set_state()


def test_a_hit_needs_no_route_lookup(harnesses: dict[str, FirewallHarness], fwlab: RouterLab) -> None:
    """A hit is answered before the router prepares its FIB lookup (the
    per-CPU scratch it zeroes and fills): what the kernel will do in full
    is not done first.  The flow the chain decides does prepare it."""
    h, lab = harnesses["log"], fwlab
    scratch = h.obj.map("tna_router_scratch")
    marker = b"\xa5" * scratch.value_size
    h.set_state(pass_cache_s=3600)
    try:
        check(h, frame(lab, 4014, 53), "PASS", "FW_KERNEL", Counter())  # remembered
        scratch.update(b"\0\0\0\0", marker)
        check(h, frame(lab, 4014, 53), "PASS", "FW_KERNEL", Counter())  # a hit, the same verdict and reason
        assert scratch.lookup(b"\0\0\0\0")[os.sched_getaffinity(0).pop()] == marker
        check(h, frame(lab, 4014, 54), "DROP", "FW_DROP", Counter({(4, F, 0): 1}))
        assert scratch.lookup(b"\0\0\0\0")[os.sched_getaffinity(0).pop()] != marker
    finally:
        h.set_state()
