"""Every netfilter table in the kernel's order (tna/model/hooks.py): which
chains judge a packet, gotos, the mark and conntrack status/direction
matches, what stays on the kernel path, what `tna status` says of it, and
that the generated C compiles.  No root."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest

from tna.model.firewall import ACCEPT, DROP, KERNEL, Packet
from tna.model.hooks import FORWARD_HOOK, INPUT_HOOK, base_chains, evaluate_hook, firewall_plan
from tna.model.iptables import BUILTIN_CHAINS, CT_STATUS, ParseError, Table, parse_save
from tna.status import _firewall
from tna.synth import compile as tna_compile
from tna.synth.render import render


def save(**tables: str) -> str:
    """iptables-save text: per table (policies ACCEPT unless a rule line
    ':CHAIN POLICY' says otherwise), its extra lines."""
    out = []
    for name, body in tables.items():
        lines = body.strip().splitlines()
        declared = {ln.split()[0][1:] for ln in lines if ln.startswith(":")}
        heads = [f":{c} ACCEPT [0:0]" for c in BUILTIN_CHAINS[name] if c not in declared]
        out += [f"*{name}", *heads, *[ln for ln in lines if ln.startswith(":")],
                *[ln for ln in lines if not ln.startswith(":")], "COMMIT"]
    return "\n".join(out) + "\n"


def tables(**kw: str) -> dict[str, Table]:
    return parse_save(save(**kw))


def ack(src: str = "192.0.2.2", dst: str = "198.51.100.2", flags: int = 0x10, **kw: object) -> Packet:
    """A TCP segment of an established connection, forwarded eth1 -> eth2."""
    return Packet(ip_address(src), ip_address(dst), **{"iif": "eth1", "oif": "eth2", "proto": 6, "sport": 1000,
                  "dport": 80, "tcp_flags": flags, "ctstate": "ESTABLISHED", **kw})  # type: ignore[arg-type]


def test_a_drop_in_an_earlier_table_is_final_and_counts_nothing_later() -> None:
    ts = tables(raw="-A PREROUTING -s 192.0.2.66/32 ! -i br0 -j DROP",
                mangle="-A FORWARD -d 198.51.100.9/32 -j DROP",
                filter=":FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT",
                security="-A FORWARD -d 198.51.100.7/32 -j DROP")
    trace: list[tuple[str, str, int]] = []
    assert evaluate_hook(ts, FORWARD_HOOK, ack(src="192.0.2.66"), trace) == DROP
    assert trace == [("raw", "PREROUTING", 1)]
    trace.clear()
    assert evaluate_hook(ts, FORWARD_HOOK, ack(dst="198.51.100.9"), trace) == DROP
    assert trace == [("raw", "PREROUTING", 0), ("mangle", "FORWARD", 1)]  # mangle PREROUTING: empty
    # filter accepts, security (after it) still drops
    trace.clear()
    assert evaluate_hook(ts, FORWARD_HOOK, ack(dst="198.51.100.7"), trace) == DROP
    assert trace[-3:] == [("mangle", "FORWARD", 0), ("filter", "FORWARD", 1), ("security", "FORWARD", 1)]
    # accepted by every table: each policy counted (but of a chain that
    # changes nothing: not evaluated)
    trace.clear()
    assert evaluate_hook(ts, FORWARD_HOOK, ack(), trace) == ACCEPT
    assert trace == [("raw", "PREROUTING", 0), ("mangle", "FORWARD", 0), ("filter", "FORWARD", 1),
                     ("security", "FORWARD", 0)]
    # INPUT: its own chains, and raw/mangle PREROUTING before them
    every = tables(**{t: "\n".join(f"-A {c} -p udp -j DROP" for c in BUILTIN_CHAINS[t]) for t in
                      ("security", "filter", "mangle", "raw")})
    assert [(b.table, b.chain) for b in base_chains(every, INPUT_HOOK)] == [
        ("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("mangle", "INPUT"), ("filter", "INPUT"),
        ("security", "INPUT")]
    assert evaluate_hook(ts, INPUT_HOOK, ack(src="192.0.2.66", oif=None)) == DROP


def test_a_policy_of_another_table_decides_too() -> None:
    ts = tables(mangle=":FORWARD DROP [0:0]\n-A FORWARD -p udp -j ACCEPT")
    assert evaluate_hook(ts, FORWARD_HOOK, ack()) == DROP
    assert evaluate_hook(ts, FORWARD_HOOK, Packet(ip_address("192.0.2.2"), ip_address("198.51.100.2"), "eth1",
                                                  "eth2", 17, 1, 2)) == ACCEPT


def test_raw_sees_no_conntrack_entry() -> None:
    """Before conntrack, xt_conntrack finds no entry: INVALID, whatever the
    connection's state later is."""
    ts = tables(raw="-A PREROUTING -m conntrack --ctstate INVALID -j DROP")
    assert evaluate_hook(ts, FORWARD_HOOK, ack()) == DROP
    ts = tables(raw="-A PREROUTING -m conntrack --ctstate ESTABLISHED -j DROP")
    assert evaluate_hook(ts, FORWARD_HOOK, ack()) == ACCEPT


def test_a_target_tna_cannot_apply_keeps_only_what_it_could_match() -> None:
    ts = tables(mangle="-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
                filter=":FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT")
    assert evaluate_hook(ts, FORWARD_HOOK, ack()) == ACCEPT
    assert evaluate_hook(ts, FORWARD_HOOK, ack(flags=0x02, ctstate="NEW")) == KERNEL
    # a rule of a later table is never reached by what an earlier one drops
    ts = tables(raw="-A PREROUTING -p tcp -j DROP", mangle="-A FORWARD -j MARK --set-xmark 0x1/0xffffffff")
    assert evaluate_hook(ts, FORWARD_HOOK, ack()) == DROP


def test_gotos_return_to_the_chain_that_jumped() -> None:
    ts = tables(filter="""
:FORWARD DROP [0:0]
:outer - [0:0]
:inner - [0:0]
-A FORWARD -j outer
-A FORWARD -p tcp -j ACCEPT
-A outer -g inner
-A outer -j DROP
-A inner -p udp -j DROP
""")
    trace: list[tuple[str, str, int]] = []
    # inner ends: the goto pushed nothing, so outer ends with it (its DROP unreached)
    assert evaluate_hook(ts, FORWARD_HOOK, ack(), trace) == ACCEPT
    assert trace == [("filter", "FORWARD", 1), ("filter", "outer", 1), ("filter", "FORWARD", 2)]
    # a goto from a built-in chain: the end of the target applies its policy
    ts = tables(filter=":FORWARD DROP [0:0]\n:u - [0:0]\n-A FORWARD -g u\n-A FORWARD -j ACCEPT\n-A u -p udp -j ACCEPT")
    trace.clear()
    assert evaluate_hook(ts, FORWARD_HOOK, ack(), trace) == DROP
    assert trace == [("filter", "FORWARD", 1), ("filter", "FORWARD", 0)]
    assert ts["filter"].chains["FORWARD"].rules[0].expressible


def test_mark_match_as_kube_proxy_writes_it() -> None:
    ts = tables(filter="""
:FORWARD DROP [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -m mark ! --mark 0x1 -j DROP
""")
    rule = ts["filter"].chains["FORWARD"].rules[0]
    assert rule.expressible and rule.mark is not None and rule.mark.value == (0x4000, 0x4000)
    assert ts["filter"].chains["FORWARD"].rules[2].mark.value == (1, 0xFFFFFFFF)  # type: ignore[union-attr]
    trace: list[tuple[str, str, int]] = []
    assert evaluate_hook(ts, FORWARD_HOOK, ack(), trace) == ACCEPT
    assert trace == [("filter", "FORWARD", 2)]  # mark 0: the masquerade mark rule does not match
    assert evaluate_hook(ts, FORWARD_HOOK, ack(mark=0x4000)) == ACCEPT
    assert evaluate_hook(ts, FORWARD_HOOK, ack(ctstate="NEW")) == DROP  # ! --mark 0x1 holds for 0


def test_plan_takes_every_table() -> None:
    text = save(raw="-A PREROUTING -d 198.51.100.2/32 ! -i br0 -j DROP",
                mangle="-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
                filter="-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT",
                security="-A INPUT -p udp -j DROP")
    fw, why = firewall_plan({4: parse_save(text), 6: {}})
    assert why is None and fw is not None and fw.ct4
    assert fw.fwd4 is not None and fw.in4 is not None
    assert [(c.table, c.name) for c in fw.fwd4] == [("raw", "PREROUTING"), ("mangle", "FORWARD"),
                                                    ("filter", "FORWARD")]
    assert [(c.table, c.name) for c in fw.in4] == [("raw", "PREROUTING"), ("security", "INPUT")]
    assert fw.ifaces == ("br0",)
    nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n"
    natted, _ = firewall_plan({4: parse_save(text + nat), 6: {}})  # NAT: carried (nat.c.j2), no early drop
    assert natted is not None and natted.nat4 and natted.fwd4 == fw.fwd4 and natted.in4 is None
    # status names the rule that keeps traffic on the kernel path, with its table
    st = _firewall(fw, {}, {})
    assert st is not None and st["kernel_rules"] == [{
        "family": 4, "table": "mangle", "chain": "FORWARD", "index": 1, "why": ["-j TCPMSS"],
        "text": "-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"}]


def test_a_table_that_changes_nothing_is_not_evaluated() -> None:
    fw, why = firewall_plan({4: tables(raw="", mangle="", security="", filter="-A FORWARD -p udp -j DROP")})
    assert why is None and fw is not None and fw.fwd4 is not None
    assert [(c.table, c.name) for c in fw.fwd4] == [("filter", "FORWARD")]


def test_conntrack_status_and_direction_as_xt_conntrack() -> None:
    ts = tables(filter="""
-A FORWARD -m conntrack --ctstatus ASSURED --ctdir REPLY -j ACCEPT
-A FORWARD -m conntrack ! --ctstatus SEEN_REPLY -j DROP
-A FORWARD -m conntrack --ctstate INVALID --ctdir ORIGINAL -j DROP
""")
    assured, seen = CT_STATUS["ASSURED"] | CT_STATUS["CONFIRMED"], CT_STATUS["SEEN_REPLY"]
    trace: list[tuple[str, str, int]] = []
    assert evaluate_hook(ts, FORWARD_HOOK, ack(ctstatus=assured | seen, ctdir="REPLY"), trace) == ACCEPT
    assert trace == [("filter", "FORWARD", 1)]
    assert evaluate_hook(ts, FORWARD_HOOK, ack(ctstatus=assured | seen)) == ACCEPT  # original: the policy
    assert evaluate_hook(ts, FORWARD_HOOK, ack(ctstatus=assured, ctdir="REPLY")) == ACCEPT
    # a NEW packet's entry is not confirmed yet (status 0): ! --ctstatus holds
    assert evaluate_hook(ts, FORWARD_HOOK, ack(flags=0x02, ctstate="NEW")) == DROP
    # no entry: --ctstatus/--ctdir never match, a state match alone decides
    trace.clear()
    assert evaluate_hook(ts, FORWARD_HOOK, ack(ctstate="INVALID"), trace) == DROP
    assert trace == [("filter", "FORWARD", 3)]
    assert evaluate_hook(ts, FORWARD_HOOK, ack(ctstate=frozenset({"NEW", "INVALID"}))) == KERNEL
    rule = ts["filter"].chains["FORWARD"].rules[0]
    assert rule.expressible and rule.ctdir == "REPLY" and rule.ctstatus is not None and rule.ctstatus.value == 4
    assert firewall_plan({4: ts})[0].ct4  # type: ignore[union-attr]


@pytest.mark.parametrize("rule", ["-A FORWARD -m connbytes --connbytes 10000: --connbytes-dir both "
                                  "--connbytes-mode bytes -j ACCEPT",
                                  "-A FORWARD -m connlabel --label 1 -j ACCEPT",
                                  "-A FORWARD -j CONNSECMARK --save"])
def test_matches_and_targets_that_make_conntrack_track_the_family(rule: str) -> None:
    """Each of these loads conntrack for the family (nf_ct_netns_get()):
    every flow gets an entry, which the fast path must keep alive."""
    assert firewall_plan({4: tables(filter=rule)})[0].ct4  # type: ignore[union-attr]


def test_matches_tna_does_not_model_stay_with_the_kernel() -> None:
    ts = tables(mangle="-A PREROUTING -m statistic --mode random --probability 0.5 -j DROP")
    assert evaluate_hook(ts, FORWARD_HOOK, ack()) == KERNEL
    assert not ts["mangle"].chains["PREROUTING"].rules[0].expressible


def test_chains_of_every_table_compile(tmp_path: Path) -> None:
    """Gotos, marks, status and direction, address types, a user chain two
    built-in chains share, in both families and hooks (clang runs with -Wall
    -Werror)."""
    text = save(raw=":u - [0:0]\n-A PREROUTING -m mark --mark 0x1/0x1 -g u\n-A u -p udp -j DROP",
                mangle=":m - [0:0]\n-A PREROUTING -j m\n-A FORWARD -j m\n-A m -m conntrack --ctdir REPLY -j RETURN",
                filter=":FORWARD DROP [0:0]\n-A FORWARD -m conntrack ! --ctstatus ASSURED,EXPECTED -j ACCEPT",
                security="-A INPUT -m mark ! --mark 0x2 -j DROP\n-A INPUT -m addrtype --dst-type LOCAL -j RETURN\n"
                         "-A FORWARD -m addrtype ! --dst-type LOCAL,BROADCAST -j ACCEPT")
    fw, why = firewall_plan({4: parse_save(text), 6: parse_save(text)})
    assert why is None and fw is not None and fw.fwd4 is not None
    assert sum(c.name == "m" for c in fw.fwd4) == 1
    for hook in ("xdp", "tc"):
        tna_compile.compile_source(render(hook, ("firewall", "router"), firewall=fw), tmp_path)


ROUTED = frozenset({"UNICAST", "THROW"})  # a forwarded IPv4 destination (hooks.py)


def test_destination_types_the_fast_path_can_prove() -> None:
    # ufw's ufw-not-local, reached from INPUT: the box's address is LOCAL
    ts = tables(filter="""
:ufw-not-local - [0:0]
-A INPUT -j ufw-not-local
-A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN
-A ufw-not-local -m addrtype --dst-type MULTICAST -j RETURN
-A ufw-not-local -j DROP
-A FORWARD -m addrtype --dst-type LOCAL -j DROP
-A FORWARD -m addrtype ! --dst-type BROADCAST,MULTICAST -p udp -j DROP
-A FORWARD -m addrtype --dst-type UNICAST -j DROP
""")
    to_box = ack(dst="192.0.2.1", oif=None, ctstate="NEW", flags=0x02, dst_types=frozenset({"LOCAL"}))
    trace: list[tuple[str, str, int]] = []
    assert evaluate_hook(ts, INPUT_HOOK, to_box, trace) == ACCEPT
    assert trace == [("filter", "INPUT", 1), ("filter", "ufw-not-local", 1), ("filter", "INPUT", 0)]
    assert evaluate_hook(ts, INPUT_HOOK, replace(to_box, dst_types=frozenset({"MULTICAST"}))) == ACCEPT
    # forwarded: never LOCAL; UNICAST or THROW cannot be told apart
    assert evaluate_hook(ts, FORWARD_HOOK, ack(dst_types=ROUTED)) == KERNEL
    udp = Packet(ip_address("192.0.2.2"), ip_address("198.51.100.2"), "eth1", "eth2", 17, 1, 2, dst_types=ROUTED)
    assert evaluate_hook(ts, FORWARD_HOOK, udp) == DROP
    assert evaluate_hook(ts, FORWARD_HOOK, replace(udp, dst_types=None)) == KERNEL  # unknown (IPv6)
    # PREROUTING of a forwarded packet: a DNAT may follow, the type is unknown
    pre = tables(mangle="-A PREROUTING -m addrtype --dst-type LOCAL -j DROP")
    assert evaluate_hook(pre, FORWARD_HOOK, ack(dst_types=ROUTED)) == KERNEL
    # the source's type, or the types of one interface's addresses: the kernel's
    for opts in ("--src-type LOCAL", "--dst-type LOCAL --limit-iface-in"):
        rule = tables(filter=f"-A FORWARD -m addrtype {opts} -j DROP")["filter"].chains["FORWARD"].rules[0]
        assert not rule.expressible, opts


def test_a_nat_state_match_stays_with_the_kernel() -> None:
    """--ctstate SNAT/DNAT tests the entry's NAT bits: the rule is the
    kernel's (and its family tracked); it used to fail code generation."""
    text = save(filter="-A FORWARD -m conntrack --ctstate DNAT -j ACCEPT\n-A FORWARD -p udp -j DROP")
    fw, why = firewall_plan({4: parse_save(text)})
    assert why is None and fw is not None and fw.ct4 and fw.fwd4 is not None
    assert fw.fwd4[0].rules[0].unsupported == ("conntrack --ctstate DNAT",)
    assert evaluate_hook(parse_save(text), FORWARD_HOOK, ack()) == KERNEL
    render("xdp", ("firewall", "router"), firewall=fw)


def test_an_unknown_conntrack_status_is_a_parse_error() -> None:
    # libxt_conntrack refuses it ("Bad ctstatus"); the error names it
    with pytest.raises(ParseError, match="unknown conntrack status BOGUS"):
        tables(filter="-A FORWARD -m conntrack --ctstatus ASSURED,BOGUS -j ACCEPT")
