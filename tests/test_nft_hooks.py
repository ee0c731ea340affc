"""Native nftables base chains in the kernel's order (tna/model/hooks.py):
by hook and priority among iptables' built-in chains, the groups of the
generated code, equal priorities, the places with no exact order against
conntrack or NAT, nat and route chains, the hook's missing devices, and
rules without a verdict (CONTINUE).  The generated C compiles.  No root."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

from tests.nft_tables import native
from tests.test_tables_model import ack, tables
from tna.model.firewall import ACCEPT, DROP, KERNEL
from tna.model.hooks import FORWARD_HOOK, INPUT_HOOK, base_chains, evaluate_hook, firewall_plan
from tna.synth import compile as tna_compile
from tna.synth.render import render


def order(ts: dict, hook: tuple[str, ...] = FORWARD_HOOK) -> list[tuple[str, str, str]]:
    return [(b.table, b.chain, b.stage) for b in base_chains(ts, hook)]


def test_base_chains_run_by_hook_then_priority_among_iptables_chains() -> None:
    ts = tables(raw="-A PREROUTING -p udp -j DROP", mangle="-A PREROUTING -p udp -j DROP",
                filter="-A FORWARD -p udp -j DROP\n-A INPUT -p udp -j DROP")
    ts["inet t"] = native("inet t", """
:early ACCEPT [0:0]
:mid ACCEPT [0:0]
:late ACCEPT [0:0]
:fwd ACCEPT [0:0]
:post ACCEPT [0:0]
:in ACCEPT [0:0]
-A early -p tcp -j DROP
-A mid -p tcp -j DROP
-A late -p tcp -j DROP
-A fwd -p tcp -j DROP
-A post -i eth1 -j DROP
-A in -p tcp -j DROP""", {"early": ("prerouting", -250), "mid": ("prerouting", -120), "late": ("prerouting", -50),
                          "fwd": ("forward", -10), "post": ("postrouting", 300), "in": ("input", 10)})
    assert order(ts) == [("raw", "PREROUTING", "raw"), ("inet t", "early", "raw"), ("mangle", "PREROUTING", "pre"),
                         ("inet t", "mid", "pre"), ("inet t", "late", "dnat"), ("inet t", "fwd", "routed"),
                         ("filter", "FORWARD", "routed"), ("inet t", "post", "routed")]
    assert order(ts, INPUT_HOOK)[-2:] == [("filter", "INPUT", "routed"), ("inet t", "in", "routed")]
    trace: list[tuple[str, str, int]] = []
    assert evaluate_hook(ts, FORWARD_HOOK, ack(), trace) == DROP
    assert trace == [("raw", "PREROUTING", 0), ("inet t", "early", 1)]  # the first drop is final
    # postrouting has no input device (by its hook, whatever the chain's name)
    udp = replace(ack(), proto=17)
    assert evaluate_hook({"inet t": ts["inet t"]}, FORWARD_HOOK, udp) == ACCEPT
    fw, why = firewall_plan({4: ts})
    assert why is None and fw is not None and fw.fwd4 is not None
    assert [(c.name, c.hook, c.stage) for c in fw.fwd4 if c.table == "inet t"][-1] == ("post", "postrouting", "routed")


def test_equal_priorities_decide_only_where_the_order_does_not_matter() -> None:
    """The kernel runs chains of one priority in registration order, which
    the rule set does not say: all accepting is exact (every one counts the
    same in any order); any other verdict is the kernel's."""
    ts = tables(filter=":FORWARD ACCEPT [0:0]\n-A FORWARD -p udp -j DROP")
    ts["inet filter"] = native("inet filter", ":forward ACCEPT [0:0]\n-A forward -d 198.51.100.9/32 -j DROP",
                               {"forward": ("forward", 0)})
    assert [b.tie for b in base_chains(ts, FORWARD_HOOK)] == [True, True]
    trace: list[tuple[str, str, int]] = []
    assert evaluate_hook(ts, FORWARD_HOOK, ack(), trace) == ACCEPT
    assert sorted(trace) == [("filter", "FORWARD", 0), ("inet filter", "forward", 0)]
    assert evaluate_hook(ts, FORWARD_HOOK, ack(dst="198.51.100.9")) == KERNEL
    # a tie with a chain that changes nothing is no tie
    ts["filter"].chains["FORWARD"].rules.clear()
    assert [b.tie for b in base_chains(ts, FORWARD_HOOK)] == [False]
    assert evaluate_hook(ts, FORWARD_HOOK, ack(dst="198.51.100.9")) == DROP


def test_no_exact_place_against_conntrack_or_nat_is_the_kernels() -> None:
    chain = ":c ACCEPT [0:0]\n-A c -p udp -j DROP"
    untracked = {"inet t": native("inet t", chain, {"c": ("prerouting", -200)})}
    assert order(untracked) == [("inet t", "c", "pre")] and base_chains(untracked, FORWARD_HOOK)[0].kernel is None
    tracked = {**untracked, "inet ct": native("inet ct", ":f ACCEPT [0:0]\n-A f -m conntrack --ctstate INVALID -j DROP",
                                              {"f": ("forward", 0)})}
    assert "conntrack" in (base_chains(tracked, FORWARD_HOOK)[0].kernel or "")
    assert evaluate_hook(tracked, FORWARD_HOOK, ack()) == KERNEL
    nat = native("ip nat", ":pre ACCEPT [0:0]\n-A pre -p tcp -j ACCEPT", {"pre": ("prerouting", -100, "nat")})
    at_dnat = {"ip nat": nat, "inet t": native("inet t", chain, {"c": ("prerouting", -100)})}
    assert "DNAT" in (base_chains(at_dnat, FORWARD_HOOK)[0].kernel or "")
    after_snat = {"ip nat": nat, "inet t": native("inet t", chain, {"c": ("postrouting", 150)})}
    assert "SNAT" in (base_chains(after_snat, FORWARD_HOOK)[0].kernel or "")
    fw, why = firewall_plan({4: after_snat})
    assert why is None and fw is not None and fw.fwd4 is not None and fw.fwd4[0].kernel is not None
    render("xdp", ("firewall", "router"), firewall=fw)


def test_nat_chains_are_the_nat_table_and_route_chains_are_ignored() -> None:
    nat = native("ip nat", ":post ACCEPT [0:0]\n-A post -o eth2 -j ACCEPT", {"post": ("postrouting", 100, "nat")})
    filt = native("inet filter", ":input DROP [0:0]\n:out ACCEPT [0:0]\n-A out -p udp -j DROP\n"
                  "-A input -p tcp -j ACCEPT", {"input": ("input", 0), "out": ("output", -150, "route")})
    ts = {"ip nat": nat, "inet filter": filt}
    assert order(ts, INPUT_HOOK) == [("inet filter", "input", "routed")]
    assert order(ts) == []
    fw, why = firewall_plan({4: ts})
    assert why is None and fw is not None
    assert fw.ct4 and fw.nat4 and fw.in4 is None  # tracked, natted: no INPUT early drop
    empty = native("ip nat", ":post ACCEPT [0:0]", {"post": ("postrouting", 100, "nat")})
    fw, _ = firewall_plan({4: {"ip nat": empty}})
    assert fw is not None and fw.ct4 and not fw.nat4


def test_a_rule_without_verdict_counts_and_goes_on(tmp_path: Path) -> None:
    """iptables' rule without -j and nft's rule without a verdict (a
    counter): CONTINUE, exact, counted."""
    ts = tables(filter=":FORWARD DROP [0:0]\n-A FORWARD -s 192.0.2.0/24\n-A FORWARD -p tcp -j ACCEPT")
    rule = ts["filter"].chains["FORWARD"].rules[0]
    assert rule.target == "CONTINUE" and rule.expressible
    trace: list[tuple[str, str, int]] = []
    assert evaluate_hook(ts, FORWARD_HOOK, ack(), trace) == ACCEPT
    assert trace == [("filter", "FORWARD", 1), ("filter", "FORWARD", 2)]
    trace.clear()
    assert evaluate_hook(ts, FORWARD_HOOK, ack(src="203.0.113.1", flags=0x10), trace) == ACCEPT
    assert trace == [("filter", "FORWARD", 2)]
    assert evaluate_hook(ts, FORWARD_HOOK, replace(ack(), proto=17, src=ip_address("192.0.2.9"))) == DROP
    fw, why = firewall_plan({4: ts})
    assert why is None and fw is not None
    for hook in ("xdp", "tc"):
        tna_compile.compile_source(render(hook, ("firewall", "router"), firewall=fw), tmp_path)


def test_every_group_and_a_tie_compile(tmp_path: Path) -> None:
    body = "\n".join([":a ACCEPT [0:0]", ":b ACCEPT [0:0]", ":c ACCEPT [0:0]", ":d ACCEPT [0:0]", ":e DROP [0:0]",
                      "-A a -p udp -j DROP", "-A b -i eth1 -j DROP", "-A c -o eth2 -j DROP",
                      "-A d -m conntrack --ctstate ESTABLISHED -j ACCEPT", "-A e -m conntrack --ctstate ESTABLISHED"
                      " -j ACCEPT", "-A e -p tcp -j ACCEPT"])
    t = native("inet filter", body, {"a": ("prerouting", -300), "b": ("prerouting", -150), "c": ("prerouting", 0),
                                     "d": ("forward", 0), "e": ("forward", 0)})
    fw, why = firewall_plan({4: {"inet filter": t}, 6: {"inet filter": t}})
    assert why is None and fw is not None and fw.fwd6 is not None and fw.in4 is not None
    assert {c.stage for c in fw.fwd4 or ()} == {"raw", "pre", "dnat", "routed"}
    src = render("tc", ("firewall", "router"), firewall=fw)
    assert "return FW_KERNEL;" in src.split("fwd4_routed(struct")[1].split("}")[0]  # the tie
    tna_compile.compile_source(src, tmp_path)


def test_planning_with_sets_keeps_where_chains_hook() -> None:
    """snapshot.plan_filtering() resolves the sets into new tables: the base
    chains keep their hook, priority and type."""
    from tna.snapshot import plan_filtering

    t = native("inet filter", ":fwd DROP [0:0]\n-A fwd -p tcp -j ACCEPT", {"fwd": ("forward", 0)})
    fw, why = plan_filtering({4: {"inet filter": t}}, {})
    assert why is None and fw is not None and fw.fwd4 is not None
    assert (fw.fwd4[0].hook, fw.fwd4[0].stage) == ("forward", "routed")
