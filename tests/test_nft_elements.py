"""nftables commits of set elements, as the kernel announces them, applied to
the sets in hand (tna.netlink.nftmsg, tna.model.nftsets).

In a namespace of its own, nft changes named address sets (interval and
plain, IPv4 and IPv6; adjacent intervals, one that runs to the last
address, auto-merge, flush, many elements in one commit, drawn sequences);
after each command the set the daemon would hold - the previous one with
the commit's elements applied - must equal the set read anew from `nft -j
list ruleset`.  Commits of anything else, and elements that are more than
a key, must say "read everything again".
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from netns_labs.lab import in_netns
from tna.model.ipset import IpSet
from tna.model.nftables import parse_ruleset
from tna.model.nftsets import SetElement, apply_elements, mirrors
from tna.netlink.netfilter import NftEvents
from tna.netlink.nftmsg import NftCommit

pytestmark = pytest.mark.root

TABLE = """table inet t {
	set v4 { type ipv4_addr; flags interval; }
	set v4m { type ipv4_addr; flags interval; auto-merge; }
	set v6 { type ipv6_addr; flags interval; }
	set h4 { type ipv4_addr; }
	set h6 { type ipv6_addr; }
	set tm { type ipv4_addr; flags timeout; }
	set c4 { type ipv4_addr . inet_service; }
	set c6 { type ipv6_addr . inet_service; }
	set ci { type ipv4_addr . inet_service; flags interval; }
	set p { type inet_service; }
	set pi { type inet_service; flags interval; }
	map mp { type ipv4_addr : verdict; }
	chain c {
		type filter hook forward priority filter; policy accept;
		ip saddr @v4 drop
		ip saddr @v4m drop
		ip6 saddr @v6 drop
		ip daddr @h4 drop
		ip6 daddr @h6 drop
		ip daddr @tm drop
		ip saddr . tcp dport @c4 drop
		ip daddr . udp dport @c4 drop
		ip6 saddr . tcp sport @c6 drop
		ip saddr . tcp dport @ci drop
		tcp dport @p drop
		udp sport != @p drop
		ip6 nexthdr tcp tcp dport @pi drop
	}
}
"""
# a concatenation's, per protocol; a port set's, per protocol and IP version
NAMES = ("v4", "v4m", "v6", "h4", "h6", "tm", "c4:tcp", "c4:udp", "c6:tcp",
         "p:tcp:4", "p:tcp:6", "p:udp:4", "p:udp:6", "pi:tcp:6")


class Ns:
    def __init__(self, name: str) -> None:
        self.name = name
        with in_netns(name):
            self.events = NftEvents()

    def nft(self, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "nft", *args], check=True, capture_output=True)

    def commits(self) -> list[NftCommit]:
        out: list[NftCommit] = []
        while chunk := self.events.read(0.5, lambda: None):
            out += chunk
        return out

    def sets(self) -> dict[str, IpSet]:
        doc = json.loads(subprocess.run(["ip", "netns", "exec", self.name, "nft", "-j", "list", "ruleset"],
                                        check=True, capture_output=True, text=True).stdout)
        got = parse_ruleset(doc).sets
        return {n: got[f"nft:inet t:{n}"] for n in NAMES}


@pytest.fixture
def ns() -> Iterator[Ns]:
    name = f"tnael{os.getpid() % 100000}{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        n = Ns(name)
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=TABLE, text=True, check=True)
        n.commits()
        yield n
        n.events.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def followed(ns: Ns, held: dict[str, IpSet], *cmd: str) -> dict[str, IpSet]:
    """cmd run; the sets after it as the daemon follows it, checked against
    the kernel's listing."""
    ns.nft(*cmd)
    commits = ns.commits()
    assert commits and all(c.elements is not None for c in commits), (cmd, commits)
    elements: dict[str, list[SetElement]] = {}
    for e in (e for c in commits for e in c.elements or ()):
        elements.setdefault(e.set, []).append(e)
    after = dict(held)
    for base, els in elements.items():
        names = mirrors(base, [f"nft:inet t:{n}" for n in held])
        assert names, (cmd, base)
        for name in names:
            new = apply_elements(held[name.split(":", 2)[2]], els)
            assert new is not None, (cmd, name, els)
            after[name.split(":", 2)[2]] = new
    assert after == ns.sets(), cmd
    return after


def test_interval_and_plain_sets_follow_their_elements(ns: Ns) -> None:
    held = ns.sets()
    for cmd in (
        ["add", "element", "inet", "t", "v4", "{ 192.0.2.0/25, 198.51.100.5, 203.0.113.1-203.0.113.10 }"],
        ["add", "element", "inet", "t", "v4", "{ 192.0.2.128/25 }"],  # adjacent: one range with the first
        ["add", "element", "inet", "t", "v4", "{ 255.255.255.0/24 }"],  # runs to the last address
        ["delete", "element", "inet", "t", "v4", "{ 192.0.2.0/25 }"],
        ["delete", "element", "inet", "t", "v4", "{ 255.255.255.0/24 }"],
        ["add", "element", "inet", "t", "v4m", "{ 198.51.100.0/26 }"],
        ["add", "element", "inet", "t", "v4m", "{ 198.51.100.64/26 }"],  # auto-merge: delete + add
        ["add", "element", "inet", "t", "v6", "{ 2001:db8::/48, 2001:db8:1::1-2001:db8:1::9, ffff::/16 }"],
        ["delete", "element", "inet", "t", "v6", "{ 2001:db8::/48 }"],
        ["add", "element", "inet", "t", "h4", "{ 192.0.2.1, 192.0.2.2, 0.0.0.0, 255.255.255.255 }"],
        ["delete", "element", "inet", "t", "h4", "{ 192.0.2.1 }"],
        ["add", "element", "inet", "t", "h6", "{ 2001:db8::1, :: }"],
        ["flush", "set", "inet", "t", "v4"],
        ["flush", "set", "inet", "t", "h4"],
    ):
        held = followed(ns, held, *cmd)


def test_concatenation_sets_follow_their_elements(ns: Ns) -> None:
    """`ADDR . inet_service` sets without intervals: one element is one
    address and port, for each protocol a rule matches the set with."""
    held = ns.sets()
    for cmd in (
        ["add", "element", "inet", "t", "c4",
         "{ 192.0.2.1 . 22, 192.0.2.1 . 80, 0.0.0.0 . 0, 255.255.255.255 . 65535 }"],
        ["delete", "element", "inet", "t", "c4", "{ 192.0.2.1 . 22 }"],
        ["add", "element", "inet", "t", "c6", "{ 2001:db8::1 . 443, :: . 1 }"],
        ["delete", "element", "inet", "t", "c6", "{ :: . 1 }"],
        ["flush", "set", "inet", "t", "c4"],
    ):
        held = followed(ns, held, *cmd)
    assert {(str(m.net), m.port) for m in held["c6:tcp"].members} == {("2001:db8::1/128", 443)}
    assert {m.proto for m in held["c6:tcp"].members} == {6}


def test_port_sets_follow_their_elements(ns: Ns) -> None:
    """inet_service sets, plain and with intervals: each port is one
    member, with the protocol of the rule that matches it."""
    held = ns.sets()
    for cmd in (
        ["add", "element", "inet", "t", "p", "{ 22, 80, 0, 65535 }"],
        ["delete", "element", "inet", "t", "p", "{ 80 }"],
        ["add", "element", "inet", "t", "pi", "{ 1000-2000, 3000, 60000-65535 }"],
        ["add", "element", "inet", "t", "pi", "{ 2001-2010 }"],  # adjacent: one range with the first
        ["delete", "element", "inet", "t", "pi", "{ 3000 }"],
        ["delete", "element", "inet", "t", "pi", "{ 60000-65535 }"],
        ["add", "element", "inet", "t", "pi", "{ 0-9 }"],
        ["flush", "set", "inet", "t", "p"],
        ["add", "element", "inet", "t", "p", "{ 443 }"],
    ):
        held = followed(ns, held, *cmd)
    assert {(str(m.net), m.proto, m.port) for m in held["p:udp:6"].members} == {("::/0", 17, 443)}
    assert {m.port for m in held["pi:tcp:6"].members} == {*range(10), *range(1000, 2011)}


def test_many_elements_in_one_commit(ns: Ns) -> None:
    held = ns.sets()
    nets = ", ".join(f"203.0.{i >> 2}.{(i & 3) * 64}/27" for i in range(1000))  # none adjacent
    held = followed(ns, held, "add", "element", "inet", "t", "v4", "{ " + nets + " }")
    assert len(held["v4"].members) == 1000
    held = followed(ns, held, "delete", "element", "inet", "t", "v4", "{ 203.0.5.64/27 }")
    assert len(held["v4"].members) == 999


def test_drawn_sequences(ns: Ns) -> None:
    """Random adds and deletes of prefixes and ranges in 198.51.100.0/24 and
    2001:db8::/120 (the kernel refuses overlaps: such a command fails and
    announces nothing)."""
    rnd, held = random.Random(7), ns.sets()
    inside: dict[str, list[str]] = {"v4": [], "v6": []}
    for _ in range(40):
        name = rnd.choice(("v4", "v6"))
        base = ipaddress.ip_network("198.51.100.0/24" if name == "v4" else "2001:db8::/120")
        if inside[name] and rnd.random() < 0.4:
            elem = inside[name].pop(rnd.randrange(len(inside[name])))
            held = followed(ns, held, "delete", "element", "inet", "t", name, "{ " + elem + " }")
            continue
        lo = rnd.randrange(256)
        hi = min(255, lo + rnd.choice((0, 1, 3, 7, 20)))
        a, b = base.network_address + lo, base.network_address + hi
        elem = f"{a}-{b}" if rnd.random() < 0.5 else f"{a}"
        try:
            held = followed(ns, held, "add", "element", "inet", "t", name, "{ " + elem + " }")
        except subprocess.CalledProcessError:
            assert not ns.commits()  # refused: nothing announced, nothing changed
            assert held == ns.sets()
            continue
        inside[name].append(elem)


@pytest.mark.parametrize("cmd", [
    ["add", "rule", "inet", "t", "c", "ip", "saddr", "192.0.2.9", "drop"],
    ["add", "set", "inet", "t", "new", "{ type ipv4_addr; }"],
    ["add", "element", "inet", "t", "tm", "{ 192.0.2.1 timeout 1h }"],
    ["add", "element", "inet", "t", "mp", "{ 192.0.2.1 : drop }"],
    ["add", "element", "inet", "t", "ci", "{ 192.0.2.0/24 . 1000-1002 }"],  # an interval's end key
    ["add", "table", "ip", "other"],
])
def test_other_commits_say_read_everything(ns: Ns, cmd: list[str]) -> None:
    ns.nft(*cmd)
    commits = ns.commits()
    assert commits and all(c.elements is None for c in commits), commits


def test_an_element_of_another_set_or_a_stale_set_does_not_apply() -> None:
    s = IpSet("nft:inet t:v4", "hash:net", 4, 65536)
    elem = SetElement("nft:inet t:v4", True, bytes([192, 0, 2, 0]))
    end = SetElement("nft:inet t:v4", True, bytes([192, 0, 3, 0]), end=True)
    once = apply_elements(s, [elem, end])
    assert once is not None and len(once.members) == 1
    assert apply_elements(once, [elem, end]) is None  # an overlap: not the kernel's set
    assert apply_elements(s, [SetElement("nft:inet t:v4", False, elem.key), end]) is None  # not there
    assert apply_elements(s, [SetElement("nft:inet t:other", True, elem.key), end]) is None
    assert apply_elements(s, [elem]) is None  # an interval that never ends


def test_a_commit_says_which_iptables_rules_it_deleted(ns: Ns) -> None:
    """iptables-nft: `-D` one rule, `-I` none, iptables-restore the table
    deleted whole and every rule with it, `-X` its chain, `-Z` the table's counters
    (tna/deploy/rulecounts.py)."""
    def run(*cmd: str, input: str | None = None) -> list[NftCommit]:
        subprocess.run(["ip", "netns", "exec", ns.name, *cmd], input=input, text=True, check=True,
                       capture_output=True)
        return ns.commits()
    rules = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -p udp -j ACCEPT\n-A FORWARD -p tcp -j ACCEPT\nCOMMIT\n"
    run("iptables-restore", input=rules)
    assert [dict(c.deleted or {}) for c in run("iptables", "-D", "FORWARD", "2")] == [{(4, "filter", "FORWARD"): 1}]
    assert [c.deleted for c in run("iptables", "-I", "FORWARD", "1", "-p", "icmp", "-j", "ACCEPT")] == [()]
    whole = [dict(c.deleted or {}) for c in run("iptables-restore", input=rules)]
    # the table, FORWARD's 2 rules, FORWARD itself deleted and added again
    assert len(whole) == 1 and whole[0][(4, "filter", None)] >= 1 and whole[0][(4, "filter", "FORWARD")] == 4
    run("iptables", "-N", "SPARE")
    assert [dict(c.deleted or {}) for c in run("iptables", "-X", "SPARE")] == [{(4, "filter", "SPARE"): 1}]
    # -P: FORWARD added again (its counter zeroed); -Z: every base chain
    # (the whole table), its rules counted deleted and added again
    assert [dict(c.deleted or {}) for c in run("iptables", "-P", "FORWARD", "DROP")] == [{(4, "filter", "FORWARD"): 1}]
    run("iptables", "-A", "INPUT", "-j", "ACCEPT")
    zeroed = [dict(c.deleted or {}) for c in run("iptables", "-Z")]
    assert len(zeroed) == 1 and zeroed[0].get((4, "filter", None), 0) >= 1, zeroed


def test_an_overrun_that_lost_a_commits_end_leaves_no_commit_under_way(ns: Ns) -> None:
    """A commit of thousands of rules into a socket with room for one
    datagram: the kernel drops the rest, its NEWGEN with them, and reports
    the loss before the datagram it kept.  The loss is a commit not known
    whole, and so is what came after it, once nothing is left - else the
    commit would stay under way (and the daemon's hold on) until the next
    commit's NEWGEN."""
    import socket

    ns.events._raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rules = "".join(f"add rule inet t many tcp dport {port} drop\n" for port in range(1, 2001))
    subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], check=True, capture_output=True, text=True,
                   input="add chain inet t many\n" + rules)
    commits = ns.commits()
    assert commits and all(c.elements is None for c in commits), commits
    assert not ns.events.partial
