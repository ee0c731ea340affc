"""Property test of every table's chains through BPF_PROG_RUN: random raw,
mangle, filter and security tables and a native nftables table (base
chains at random hooks and priorities: ties with iptables' chains, with
conntrack's and the DNAT's; rules without a verdict; compiled for both IP
versions, as an inet table is), user chains entered by jumps and gotos,
-m mark, -m addrtype --dst-type, --ctstate/--ctstatus/--ctdir also in raw
(packets of no entry: conntrack calls them NEW, with status 0, or
INVALID, with none), targets TNA cannot apply: MARK, TCPMSS, CT
--notrack, LOG) x random packets (and, under TC, skb marks).  The
program's verdict, reason and counted rule path must be evaluate_hook()'s
over the kernel's order; where it says the kernel decides, the program
passes the packet with the matching reason.  Derandomized, without a
database: CI runs the same examples every time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from scapy.layers.l2 import Ether

from netns_labs.lab import RouterLab
from tests.harness import FirewallHarness
from tests.nft_tables import native
from tests.test_firewall_prog import FW_PATH_MAX, check, fw_packet, verdict_of
from tests.test_firewall_props import CT_STATES, PORTS, ct_state, neg, net, packets
from tna.bpf import abi
from tna.model.firewall import ACCEPT, KERNEL
from tna.model.hooks import FORWARD_HOOK, evaluate_hook, firewall_plan
from tna.model.iptables import BUILTIN_CHAINS, CT_STATUS, Table, parse_save

pytestmark = pytest.mark.root

# The chains of the FORWARD hook per table, and a user chain each table may use.
CHAINS = {"raw": ["PREROUTING"], "mangle": ["PREROUTING", "FORWARD", "POSTROUTING"], "filter": ["FORWARD"],
          "security": ["FORWARD"]}
MARKS = [0, 0x4000, 0x4001, 1]
UNAPPLIABLE = {"raw": ["CT --notrack", "LOG"], "mangle": ["MARK --set-xmark 0x4000/0x4000", "TCPMSS --set-mss 1200",
                                                          "LOG"],
               "filter": ["LOG"], "security": ["LOG"]}


@st.composite
def matches(draw: st.DrawFn, family: int, chain: str, ct: bool) -> str:
    """A rule's matches, in the order iptables-save prints them (iptables
    refuses -i in the built-in POSTROUTING, -o in PREROUTING; a user chain
    they reach may hold either: the kernel matches it against "")."""
    out = []
    if draw(st.integers(0, 3)) == 0:
        out.append(f"{draw(neg)}-s {draw(net(family))}")
    if draw(st.integers(0, 3)) == 0:
        out.append(f"{draw(neg)}-d {draw(net(family))}")
    ifaces = {"PREROUTING": ["-i"], "POSTROUTING": ["-o"]}.get(chain, ["-i", "-o"])
    if draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(["r-h1", "r-h2", "r-h+", "+", "eth0"]))
        out.append(f"{draw(neg)}{draw(st.sampled_from(ifaces))} {name}")
    proto = draw(st.sampled_from([None, None, "tcp", "tcp", "udp"]))
    if proto is not None:
        out.append(f"-p {proto}")
    if proto == "tcp" and draw(st.booleans()):
        out.append(draw(st.sampled_from(["-m tcp --tcp-flags SYN,RST SYN", "-m tcp --tcp-flags FIN,SYN,RST,ACK ACK",
                                         f"-m tcp --dport {draw(st.sampled_from(PORTS))}"])))
    if draw(st.integers(0, 3)) == 0:
        types = draw(st.lists(st.sampled_from(["LOCAL", "UNICAST", "THROW", "BROADCAST"]), min_size=1, max_size=2,
                              unique=True))
        out.append(f"-m addrtype {draw(neg)}--dst-type {','.join(types)}")
    if draw(st.integers(0, 2)) == 0:
        value = draw(st.sampled_from(["0x4000/0x4000", "0x1", "0x0/0xffff", "0x4001"]))
        out.append(f"-m mark {draw(neg)}--mark {value}")
    if ct and draw(st.integers(0, 2)) == 0:
        opts = []
        if draw(st.booleans()):
            states = draw(st.lists(st.sampled_from(CT_STATES), min_size=1, max_size=2, unique=True))
            opts.append(f"{draw(neg)}--ctstate {','.join(states)}")
        if draw(st.booleans()):
            status = draw(st.lists(st.sampled_from(list(CT_STATUS)), min_size=1, max_size=2, unique=True))
            opts.append(f"{draw(neg)}--ctstatus {','.join(status)}")
        if not opts or draw(st.integers(0, 2)) == 0:
            opts.append(f"--ctdir {draw(st.sampled_from(['ORIGINAL', 'REPLY']))}")
        out.append("-m conntrack " + " ".join(opts))
    return " ".join(out)


@st.composite
def table_text(draw: st.DrawFn, name: str, family: int, ct: bool) -> str:
    """One table: its built-in chains of the FORWARD hook, and maybe a user
    chain `u` they jump or go to."""
    user = draw(st.booleans())
    policy = {c: draw(st.sampled_from(["ACCEPT", "ACCEPT", "DROP"])) for c in CHAINS[name]}
    lines = [f"*{name}"] + [f":{c} {policy.get(c, 'ACCEPT')} [0:0]" for c in BUILTIN_CHAINS[name]]
    lines += [":u - [0:0]"] if user else []
    for chain in CHAINS[name] + (["u"] if user else []):
        for _ in range(draw(st.integers(0, 4))):
            where = ("FORWARD" if name in ("filter", "security") else "any") if chain == "u" else chain
            targets = ["ACCEPT", "DROP", "RETURN", *UNAPPLIABLE[name]]
            if user and chain != "u":
                targets += ["j u", "g u", "j u"]
            t = draw(st.sampled_from(targets))
            jump = f"-g {t[2:]}" if t.startswith("g ") else f"-j {t[2:] if t.startswith('j ') else t}"
            lines.append(" ".join(f"-A {chain} {draw(matches(family, where, ct))} {jump}".split()))
    return "\n".join([*lines, "COMMIT", ""])


# Where a native base chain may hook and at which priorities: iptables'
# own, conntrack's and the DNAT's (ties), and between them.
NATIVE_AT = {"prerouting": [-300, -250, -200, -150, -120, -100, -50, 0], "forward": [-10, 0, 0, 10, 50, 60],
             "postrouting": [-150, 0, 100, 150]}


@st.composite
def native_table(draw: st.DrawFn, family: int, ct: bool) -> Table:
    """A native nftables table "inet t": one to three base chains at random
    hooks and priorities, each maybe jumping to a regular chain `u`."""
    bases = draw(st.lists(st.sampled_from(list(NATIVE_AT)), min_size=1, max_size=3))
    hooks = {f"b{k}": (h, draw(st.sampled_from(NATIVE_AT[h]))) for k, h in enumerate(bases)}
    user = draw(st.booleans())
    lines = [f":{c} {draw(st.sampled_from(['ACCEPT', 'ACCEPT', 'DROP']))} [0:0]" for c in hooks]
    lines += [":u - [0:0]"] if user else []
    for chain in [*hooks, *(["u"] if user else [])]:
        where = {"prerouting": "PREROUTING", "postrouting": "POSTROUTING"}.get(hooks[chain][0], "FORWARD") \
            if chain in hooks else "any"
        for _ in range(draw(st.integers(0, 4))):
            jumps = ["j u"] if chain != "u" and user else []
            t = draw(st.sampled_from(["ACCEPT", "DROP", "RETURN", "", "LOG", *jumps]))
            jump = f"-j {t[2:] if t.startswith('j ') else t}" if t else ""  # none: a counter (CONTINUE)
            lines.append(" ".join(f"-A {chain} {draw(matches(family, where, ct))} {jump}".split()))
    return native("inet t", "\n".join(lines), hooks)  # type: ignore[arg-type]


@st.composite
def rule_sets(draw: st.DrawFn, family: int) -> dict[str, Table]:
    ct = draw(st.booleans())
    names = draw(st.lists(st.sampled_from(list(CHAINS)), min_size=0, max_size=4, unique=True))
    text = "".join(draw(table_text(n, family, ct)) for n in names)
    tables = parse_save(text)
    if not names or draw(st.booleans()):
        tables["inet t"] = draw(native_table(family, ct))
    if firewall_plan({family: tables})[0] is None:  # no rule a hook reaches
        tables.update(parse_save("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                                 "-A FORWARD -p udp -j DROP\nCOMMIT\n"))
    note(f"tables: {tables_text(tables)}")
    return tables


def tables_text(tables: dict[str, Table]) -> str:
    """The rules and where each base chain hooks, for the report."""
    return "; ".join(f"{t.name} {c.name} ({c.hook} {c.priority}, {c.policy}): " + ", ".join(r.text for r in c.rules)
                     for t in tables.values() for c in t.chains.values())


def expect(tables: dict[str, Table], family: int, tracked: bool, frame: bytes, short: bool, ct_flags: int,
           mark: int) -> tuple[str, str, Counter[tuple]]:
    if short:
        return "PASS", "FW_KERNEL", Counter()
    proto = frame[23] if family == 4 else frame[20]
    ctstate = ct_state(frame, family, ct_flags) if tracked and proto in (6, 17) else None
    # a forwarded IPv4 destination is UNICAST or THROW (hooks.py); IPv6: unknown
    routed = frozenset({"UNICAST", "THROW"}) if family == 4 else None
    pkt = replace(fw_packet(frame, ctstate=ctstate), mark=mark, dst_types=routed)
    trace: list[tuple[str, str, int]] = []
    decision = evaluate_hook(tables, FORWARD_HOOK, pkt, trace, stages=("raw",))  # before conntrack
    if decision == ACCEPT and tracked and proto not in (6, 17):
        return "PASS", "CT_PROTO", Counter()  # the conntrack kfuncs look up TCP and UDP only
    if decision == ACCEPT:
        trace.clear()
        decision = evaluate_hook(tables, FORWARD_HOOK, pkt, trace)
    if len(trace) > FW_PATH_MAX:
        decision = KERNEL
    verdict, reason = verdict_of(decision, ctstate)
    return verdict, reason, Counter((family, *t) for t in trace)


# each example compiles and loads a program: no shrinking (the rule set is
# reported whole, the packet by note()); the load dominates: few rule sets,
# many packets through each
SLOW = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


@pytest.mark.parametrize(("hook", "family"), [("xdp", 4), ("xdp", 6), ("tc", 4), ("tc", 6)])
@settings(max_examples=10, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=SLOW)
@given(data=st.data())
def test_program_decides_as_the_kernels_order(fwlab: RouterLab, hook: str, family: int,
                                              data: st.DataObject) -> None:
    rules = data.draw(rule_sets(family), label="rules")
    ct_flags = data.draw(st.sampled_from([0, abi.TNA_CT_CSUM]), label="ct_flags")
    # a native table is an inet one: compiled for the other version too
    other = {k: t for k, t in rules.items() if k == "inet t"}
    h = FirewallHarness(fwlab, hook, *((rules, other) if family == 4 else (other, rules)))
    try:
        h.set_state(ct_flags=ct_flags)
        tracked = h.fw.ct4 if family == 4 else h.fw.ct6
        for n, (frame, short) in enumerate(data.draw(st.lists(packets(family, fwlab), min_size=30, max_size=30),
                                                     label="packets")):
            mark = data.draw(st.sampled_from(MARKS), label=f"mark {n}") if hook == "tc" else 0
            note(f"packet {n}: {Ether(frame)!r} mark {mark:#x}")
            check(h, frame, *expect(rules, family, tracked, frame, short, ct_flags, mark), by_table=True, mark=mark)
    finally:
        h.close()
