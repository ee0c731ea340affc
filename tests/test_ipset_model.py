"""`-m set` parsing and the kernel's set-test semantics in evaluate()."""

from __future__ import annotations

import ipaddress

import pytest

from tna.model.firewall import ACCEPT, DROP, KERNEL, Packet, evaluate
from tna.model.ipset import IpSet, Member, SetMatch, resolve, used_sets
from tna.model.iptables import parse_save

ip = ipaddress.ip_address
net = ipaddress.ip_network


def save(*rules: str, policy: str = "ACCEPT") -> str:
    return "\n".join(["*filter", f":FORWARD {policy} [0:0]", *rules, "COMMIT"])


def rule_of(line: str):
    return parse_save(save(line))["filter"].chains["FORWARD"].rules[0]


@pytest.mark.parametrize(("line", "want"), [
    ("-A FORWARD -m set --match-set bl src -j DROP", SetMatch("bl", ("src",))),
    ("-A FORWARD -m set ! --match-set bl dst -j DROP", SetMatch("bl", ("dst",), neg=True)),
    ("-A FORWARD -m set --match-set ipp dst,dst -j ACCEPT", SetMatch("ipp", ("dst", "dst"))),
    ("-A FORWARD -m set --match-set n src --return-nomatch -j DROP", SetMatch("n", ("src",), return_nomatch=True)),
    ("-A FORWARD -m set --match-set n src ! --update-counters ! --update-subcounters -j DROP",
     SetMatch("n", ("src",), update_counters=False)),
    ("-A FORWARD -m set --match-set n src --packets-gt 5 -j DROP", SetMatch("n", ("src",), counter_test=True)),
    ("-A FORWARD -m set --match-set n src ! --bytes-eq 5 -j DROP", SetMatch("n", ("src",), counter_test=True)),
])
def test_parse_forms(line: str, want: SetMatch) -> None:
    r = rule_of(line)
    assert r.sets == (want,)
    assert not r.unsupported
    assert not r.expressible  # until resolve() finds the set mirrorable


def test_two_set_matches_and_other_matches() -> None:
    r = rule_of("-A FORWARD -p tcp -m set --match-set a src -m set ! --match-set b dst -m tcp --dport 80 -j ACCEPT")
    assert [m.name for m in r.sets] == ["a", "b"] and r.sets[1].neg
    assert r.dport is not None and r.dport.value == ((80, 80),)


def hset(name: str, type_: str, *members: Member, family: int = 4, **kw: object) -> IpSet:
    return IpSet(name, type_, family, 65536, members=frozenset(members), **kw)  # type: ignore[arg-type]


def verdict(rules: list[str], sets: list[IpSet], pkt: Packet) -> str:
    tables, _ = resolve({4 if pkt.src.version == 4 else 6: parse_save(save(*rules))}, {s.name: s for s in sets})
    table = tables[pkt.src.version]["filter"]
    return evaluate(table, "FORWARD", pkt, sets={s.name: s for s in sets})


def pkt(src: str, dst: str = "198.51.100.2", proto: int = 17, sport: int | None = 1000, dport: int | None = 53,
        iif: str = "a", oif: str | None = "b", **kw: object) -> Packet:
    return Packet(ip(src), ip(dst), iif, oif, proto, sport, dport, **kw)  # type: ignore[arg-type]


BL = hset("bl", "hash:net", Member(net("192.0.2.0/24")), Member(net("192.0.2.128/25"), nomatch=True),
          Member(net("192.0.2.130/32")))


@pytest.mark.parametrize(("src", "flags", "want"), [
    ("192.0.2.1", "", DROP),            # in the /24
    ("192.0.2.129", "", ACCEPT),        # the /25 nomatch exception is more specific
    ("192.0.2.130", "", DROP),          # a host inside the exception matches again
    ("203.0.113.1", "", ACCEPT),        # in no entry
    ("192.0.2.1", " --return-nomatch", ACCEPT),     # a plain entry: no match with --return-nomatch
    ("192.0.2.129", " --return-nomatch", DROP),     # a nomatch entry matches
    ("203.0.113.1", " --return-nomatch", ACCEPT),   # no entry at all: never a match
])
def test_hash_net_nomatch(src: str, flags: str, want: str) -> None:
    assert verdict([f"-A FORWARD -m set --match-set bl src{flags} -j DROP"], [BL], pkt(src)) == want


def test_negation_and_direction() -> None:
    rules = ["-A FORWARD -m set ! --match-set bl dst -j DROP"]
    assert verdict(rules, [BL], pkt("203.0.113.1", "192.0.2.1")) == ACCEPT
    assert verdict(rules, [BL], pkt("192.0.2.1", "203.0.113.1")) == DROP


def test_fewer_flags_than_dimensions_never_matches() -> None:
    s = hset("ipp", "hash:ip,port", Member(net("192.0.2.1/32"), 17, 53))
    assert verdict(["-A FORWARD -m set --match-set ipp src -j DROP"], [s], pkt("192.0.2.1")) == ACCEPT
    assert verdict(["-A FORWARD -m set ! --match-set ipp src -j DROP"], [s], pkt("192.0.2.1")) == DROP


def test_family_mismatch_never_matches() -> None:
    s6 = hset("v6", "hash:net", Member(net("2001:db8::/32")), family=6)
    assert verdict(["-A FORWARD -m set --match-set v6 src -j DROP"], [s6], pkt("192.0.2.1")) == ACCEPT
    assert verdict(["-A FORWARD -m set --match-set v6 src -j DROP"], [s6],
                   pkt("2001:db8::1", "2001:db8:2::2")) == DROP


@pytest.mark.parametrize(("p", "want"), [
    (pkt("192.0.2.1", dport=53), ACCEPT),                           # udp:53 to the ip
    (pkt("192.0.2.1", dport=54), DROP),
    (pkt("192.0.2.1", proto=6, dport=53), DROP),                    # tcp:53 is another entry
    (pkt("192.0.2.1", proto=6, sport=53, dport=80), DROP),          # dst flag: the destination port
    (pkt("192.0.2.1", proto=1, sport=None, dport=None, icmp_type=8, icmp_code=0), ACCEPT),  # icmp:8/0
    (pkt("192.0.2.1", proto=47, sport=None, dport=None), ACCEPT),   # gre: port 0 (the entry gre:0)
    (pkt("192.0.2.2", dport=53), DROP),
    (pkt("192.0.2.1", proto=58, sport=None, dport=None, icmp_type=8, icmp_code=0), ACCEPT),  # either family's ICMP
    (pkt("192.0.2.1", proto=0, sport=None, dport=None), DROP),     # IPv4 protocol 0: no port, no match
    (pkt("192.0.2.1", proto=132, dport=9, l4len=12), ACCEPT),       # sctp:9 with a whole header
    (pkt("192.0.2.1", proto=132, dport=9, l4len=11), DROP),         # shorter: the kernel reads no port
])
def test_hash_ip_port(p: Packet, want: str) -> None:
    # the address is the source here, the port the destination's
    s = hset("ipp", "hash:ip,port", Member(net("192.0.2.1/32"), 17, 53), Member(net("192.0.2.1/32"), 1, 8 << 8),
             Member(net("192.0.2.1/32"), 47, 0), Member(net("192.0.2.1/32"), 58, 8 << 8),
             Member(net("192.0.2.1/32"), 0, 0), Member(net("192.0.2.1/32"), 132, 9))
    assert verdict(["-A FORWARD -m set --match-set ipp src,dst -j ACCEPT", "-A FORWARD -j DROP"], [s], p) == want


def test_hash_net_port_most_specific_per_port() -> None:
    s = hset("np", "hash:net,port", Member(net("192.0.2.0/24"), 6, 22),
             Member(net("192.0.2.0/28"), 6, 22, nomatch=True), Member(net("192.0.2.0/28"), 6, 80))
    rules = ["-A FORWARD -m set --match-set np src,dst -j DROP"]
    assert verdict(rules, [s], pkt("192.0.2.1", proto=6, dport=22)) == ACCEPT   # the /28 nomatch
    assert verdict(rules, [s], pkt("192.0.2.100", proto=6, dport=22)) == DROP
    assert verdict(rules, [s], pkt("192.0.2.1", proto=6, dport=80)) == DROP
    assert verdict(rules, [s], pkt("192.0.2.100", proto=6, dport=80)) == ACCEPT


def test_hash_net_iface() -> None:
    s = hset("ni", "hash:net,iface", Member(net("192.0.2.0/24"), iface="a"),
             Member(net("192.0.2.0/26"), iface="a", nomatch=True))
    rules = ["-A FORWARD -m set --match-set ni src,src -j DROP"]
    assert verdict(rules, [s], pkt("192.0.2.100", iif="a")) == DROP
    assert verdict(rules, [s], pkt("192.0.2.1", iif="a")) == ACCEPT
    assert verdict(rules, [s], pkt("192.0.2.100", iif="c")) == ACCEPT
    # dst: the output interface
    assert verdict(["-A FORWARD -m set --match-set ni src,dst -j DROP"], [s], pkt("192.0.2.100", oif="a")) == DROP


def test_hash_ip() -> None:
    s = hset("h", "hash:ip", Member(net("192.0.2.7/32")))
    assert verdict(["-A FORWARD -m set --match-set h src -j DROP"], [s], pkt("192.0.2.7")) == DROP
    assert verdict(["-A FORWARD -m set --match-set h src -j DROP"], [s], pkt("192.0.2.8")) == ACCEPT


@pytest.mark.parametrize(("s", "line", "why"), [
    (hset("t", "hash:net", Member(net("192.0.2.0/24")), timeout=True), "", "timeout"),
    (hset("t", "hash:net", Member(net("192.0.2.0/24")), counters=True), "", "counters"),
    (hset("t", "list:set"), "", "type list:set"),
    (hset("t", "hash:net", Member(net("192.0.2.0/24"))), " --packets-gt 1", "counters"),
    (hset("t", "hash:net,iface", Member(net("192.0.2.0/24"), iface="a", physdev=True)), "", "physdev"),
])
def test_unmirrored_sets_keep_their_rules_on_the_kernel_path(s: IpSet, line: str, why: str) -> None:
    rules = [f"-A FORWARD -m set --match-set t src,src{line} -j DROP"]
    tables, shapes = resolve({4: parse_save(save(*rules))}, {"t": s})
    r = tables[4]["filter"].chains["FORWARD"].rules[0]
    assert not r.expressible and why in r.unsupported[-1] and shapes == ()
    assert evaluate(tables[4]["filter"], "FORWARD", pkt("192.0.2.1"), sets={"t": s}) == KERNEL
    # it is the kernel's even for a packet the set does not hold: the kernel judges the set
    assert evaluate(tables[4]["filter"], "FORWARD", pkt("203.0.113.1"), sets={"t": s}) == KERNEL


@pytest.mark.parametrize(("v", "setter"), [
    (4, "-A FORWARD -p tcp --dport 7000 -j SET --add-set bl src"),
    (4, "-A FORWARD -j SET --exist --timeout 60 --add-set bl src"),
    (6, "-A FORWARD -p tcp --dport 7000 -j SET --del-set bl src"),  # ipset names are global
])
def test_a_set_a_rule_fills_from_the_packet_path_is_the_kernels(v: int, setter: str) -> None:
    """-j SET changes the set from the packet path, announced to no one
    (the daemon would see it at its next poll): the rules that match it are
    the kernel's, as nftables' set statements make theirs."""
    setters = {4: [], 6: [], v: [setter]}
    tables, shapes = resolve({4: parse_save(save(*setters[4], "-A FORWARD -m set --match-set bl src -j DROP")),
                              6: parse_save(save(*setters[6]))}, {"bl": BL})
    r = next(r for r in tables[4]["filter"].chains["FORWARD"].rules if r.sets)
    assert not r.expressible and "SET" in r.unsupported[-1] and shapes == ()


@pytest.mark.parametrize("case", ["a list:set", "a set not read", "a native table's xt SET target"])
def test_a_set_target_whose_sets_are_not_known_makes_every_set_the_kernels(case: str) -> None:
    """A SET target on a list:set changes the sets it lists; one whose set
    is not read, or an xt SET target in a table read natively (nft shows no
    set name), may change any set."""
    from tna.model.nftables import parse_ruleset

    match = "-A FORWARD -m set --match-set bl src -j DROP"
    sets = {"bl": BL, "L": hset("L", "list:set")}
    if case == "a native table's xt SET target":
        doc = {"nftables": [
            {"table": {"family": "ip", "name": "m", "handle": 1}},
            {"chain": {"family": "ip", "table": "m", "name": "c", "handle": 2, "type": "filter", "hook": "forward",
                       "prio": -150, "policy": "accept"}},
            {"rule": {"family": "ip", "table": "m", "chain": "c", "handle": 3,
                      "expr": [{"xt": {"type": "target", "name": "SET"}}]}}]}
        tables = {4: {**parse_save(save(match)), **parse_ruleset(doc).tables[4]}}
    else:
        tables = {4: parse_save(save("-A FORWARD -j SET --add-set " + ("L" if case == "a list:set" else "gone") +
                                     " src", match))}
    tables, shapes = resolve(tables, sets)
    r = next(r for r in tables[4]["filter"].chains["FORWARD"].rules if r.sets)
    assert not r.expressible and "SET" in r.unsupported[-1] and shapes == ()


def test_counters_without_updates_are_mirrored() -> None:
    s = hset("t", "hash:net", Member(net("192.0.2.0/24")), counters=True)
    tables, shapes = resolve({4: parse_save(save("-A FORWARD -m set --match-set t src ! --update-counters -j DROP"))},
                             {"t": s})
    assert tables[4]["filter"].chains["FORWARD"].rules[0].expressible and [x.name for x in shapes] == ["t"]


def test_used_sets() -> None:
    assert used_sets({4: parse_save(save("-A FORWARD -m set --match-set a src -j DROP",
                                         "-A FORWARD -m set --match-set b src -m set --match-set a dst -j DROP"))}) \
        == {"a", "b"}


def test_status_says_what_is_mirrored_and_why_not() -> None:
    from tna.model.ipset import status

    sets = {"bl": BL, "t": hset("t", "hash:net", Member(net("192.0.2.0/24")), timeout=True)}
    tables, shapes = resolve({4: parse_save(save("-A FORWARD -m set --match-set bl src -j DROP",
                                                 "-A FORWARD -m set --match-set t src -j DROP"))}, sets)
    got = status(tables[4]["filter"].chains["FORWARD"].rules, shapes, sets, {"bl": 6.64})
    assert got["bl"] == {"type": "hash:net", "family": 4, "entries": 3, "mirrored": True, "kernel_path": [],
                         "stale_s": 6.6}  # how late a change keeping the set's header is seen
    assert not got["t"]["mirrored"] and "timeout" in got["t"]["kernel_path"][0]


def test_a_rule_the_set_makes_the_kernels_is_another_rule_set() -> None:
    """Whether a rule is the fast path's can change with its set's options
    alone (counters), its text and the set's shape staying: the rule sets
    must not compare equal (programs and the rendered code are kept by it)."""
    from tna.snapshot import plan_filtering

    rules = {4: parse_save(save("-A FORWARD -m set --match-set t src -j DROP",
                                "-A FORWARD -m set --match-set t dst ! --update-counters -j DROP"))}
    plain = hset("t", "hash:net", Member(net("192.0.2.0/24")))
    before, _ = plan_filtering(rules, {"t": plain})
    after, _ = plan_filtering(rules, {"t": hset("t", "hash:net", Member(net("192.0.2.0/24")), counters=True)})
    assert before is not None and after is not None
    assert [r.expressible for c in after.fwd4 or () for r in c.rules] == [False, True]
    assert before != after
