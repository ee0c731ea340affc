"""Property test of `-m set` through BPF_PROG_RUN: random ipsets of every
mirrored type (nets inside nets, nomatch entries, protocols and ports, ICMP
type/code, interfaces; sometimes of the other family, sometimes with a
timeout: not mirrored) x random rules matching on them (direction flags,
`!`, --return-nomatch, other matches) x random packets.  The program's
verdict, reason and counted rule path must be evaluate()'s with the same
sets.  Derandomized, without a database.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from scapy.layers.l2 import Ether

from netns_labs.lab import RouterLab
from tests.harness import FirewallHarness
from tests.test_firewall_prog import FW_PATH_MAX, check, fw_packet, table, verdict_of
from tests.test_firewall_props import DST, ICMP_TYPES, PORTS, PREFIXES, SRC, matches, packets
from tna.model.firewall import KERNEL, evaluate
from tna.model.ipset import IpSet, Member, resolve
from tna.model.iptables import parse_save

pytestmark = pytest.mark.root

TYPES = ["hash:ip", "hash:net", "hash:ip,port", "hash:net,port", "hash:net,iface"]
NAMES = {t: f"s-{t.replace(':', '.').replace(',', '_')}" for t in TYPES}  # characters C names cannot hold


@st.composite
def members(draw: st.DrawFn, type_: str, family: int) -> Member:
    addr = draw(st.sampled_from(SRC[family] + DST[family]))
    host = 32 if family == 4 else 128
    bits = host if type_.startswith("hash:ip") else draw(st.sampled_from(PREFIXES[family]))
    net = ipaddress.ip_network(f"{addr}/{bits}", strict=False)
    proto = port = iface = None
    if type_.endswith(",port"):
        icmp = 1 if family == 4 else 58
        proto = draw(st.sampled_from([6, 17, icmp, 47, 132]))
        port = (draw(st.sampled_from(ICMP_TYPES[family])) << 8 | draw(st.integers(0, 1)) if proto == icmp
                else 0 if proto == 47 else draw(st.sampled_from(PORTS)))
    elif type_ == "hash:net,iface":
        iface = draw(st.sampled_from(["r-h1", "r-h2", "r-hx"]))
    return Member(net, proto, port, iface, nomatch=type_ != "hash:ip" and draw(st.integers(0, 3)) == 0)


@st.composite
def ipsets(draw: st.DrawFn, family: int) -> dict[str, IpSet]:
    out = {}
    for t in TYPES:
        fam = family if draw(st.integers(0, 7)) else 10 - family  # sometimes the other family's
        # one element per key, as the kernel keeps them (nomatch is the element's flag)
        entries = frozenset(draw(st.lists(members(t, fam), min_size=0, max_size=12,
                                          unique_by=lambda m: (m.net, m.proto, m.port, m.iface))))
        out[NAMES[t]] = IpSet(NAMES[t], t, fam, 65536, timeout=draw(st.integers(0, 9)) == 0, members=entries)
    return out


@st.composite
def set_rule(draw: st.DrawFn, family: int) -> str:
    name = NAMES[draw(st.sampled_from(TYPES))]
    dirs = ",".join(draw(st.lists(st.sampled_from(["src", "dst"]), min_size=1, max_size=2)))
    opts = draw(st.sampled_from(["", "", " --return-nomatch", " ! --update-counters"]))
    inv = draw(st.sampled_from(["", "", "! "]))
    other = draw(matches(family, False)) if draw(st.booleans()) else ""
    verdict = draw(st.sampled_from(["ACCEPT", "DROP", "DROP", "RETURN"]))
    return " ".join(f"-A FORWARD {other} -m set {inv}--match-set {name} {dirs}{opts} -j {verdict}".split())


@st.composite
def rule_sets(draw: st.DrawFn, family: int) -> str:
    body = [draw(set_rule(family)) for _ in range(draw(st.integers(1, 5)))]
    return table(draw(st.sampled_from(["ACCEPT", "DROP"])), "".join(f"{r}\n" for r in body))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("hook", ["xdp", "tc"])
# each example compiles and loads a program, which dominates: few rule sets,
# many packets through each
@settings(max_examples=8, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_program_decides_sets_as_evaluate(fwlab: RouterLab, hook: str, family: int, data: st.DataObject) -> None:
    rules = data.draw(rule_sets(family), label="rules")
    sets = data.draw(ipsets(family), label="sets")
    resolved = resolve({family: parse_save(rules)}, sets)[0][family]["filter"]
    h = FirewallHarness(fwlab, hook, *((rules, "") if family == 4 else ("", rules)), ipsets=sets)
    try:
        for n in range(36):
            frame, short = data.draw(packets(family, fwlab), label=f"packet {n}")
            note(f"packet {n}: {Ether(frame)!r}")
            if short:
                check(h, frame, "PASS", "FW_KERNEL", Counter())
                continue
            trace: list[tuple[str, int]] = []
            # the L4 length decides whether a set reads an SCTP packet's ports
            l4len = int.from_bytes(frame[16:18], "big") - 20 if family == 4 else int.from_bytes(frame[18:20], "big")
            decision = evaluate(resolved, "FORWARD", replace(fw_packet(frame), l4len=l4len), trace, sets=sets)
            if len(trace) > FW_PATH_MAX:
                decision = KERNEL
            check(h, frame, *verdict_of(decision), Counter((family, c, i) for c, i in trace))
    finally:
        h.close()
