"""The set model against the kernel's own answers: `ipset test` (the same
mtype_test_cidrs() a rule's lookup runs) and an xt_set rule's counter on a
real packet (ip_set_test() with the rule's flags), in a namespace of the
test's.  The expectations are the kernel's, never the model's."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator

import pytest
from pyroute2.ipset import IPSet

from netns_labs.lab import Lab, in_netns
from tests.test_ipset_model import hset, net, pkt
from tests.test_reconcile_order import recording_daemon, rules
from tna.model.ipset import Member, SetMatch, mirror_problem, set_test
from tna.netlink import ipset as ipset_reader

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def ns() -> Iterator[tuple[Lab, str]]:
    with Lab() as lab:
        name = lab.add_ns("k")
        lab.run(name, ["ip", "route", "add", "192.0.2.0/24", "dev", "lo"])
        yield lab, name


def ipset(lab: Lab, ns: str, *cmds: str) -> None:
    lab.run(ns, ["ipset", "restore"], input="".join(f"{c}\n" for c in cmds))


def kernel_test(lab: Lab, ns: str, set_name: str, element: str) -> bool:
    return lab.run(ns, ["ipset", "test", set_name, element], check=False).returncode == 0


# a longer net with another interface hides a shorter one's: the kernel tries
# only the longest net any entry has (hash_netiface4_data_equal() counts a
# net as found before it compares the interface)
NETIFACE = [("192.0.2.0/24", "a", False), ("192.0.2.16/28", "c", False), ("192.0.2.64/26", "a", False),
            ("192.0.2.64/27", "a", True)]


@pytest.mark.parametrize(("addr", "iface"), [("192.0.2.17", "a"), ("192.0.2.17", "c"), ("192.0.2.1", "a"),
                                             ("192.0.2.1", "c"), ("192.0.2.65", "a"), ("192.0.2.100", "a"),
                                             ("198.51.100.1", "a")])
def test_hash_net_iface_tries_only_the_longest_net(ns: tuple[Lab, str], addr: str, iface: str) -> None:
    lab, name = ns
    ipset(lab, name, "create -exist ni hash:net,iface", "flush ni",
          *(f"add ni {n},{i}{' nomatch' if no else ''}" for n, i, no in NETIFACE))
    s = hset("ni", "hash:net,iface", *(Member(net(n), iface=i, nomatch=no) for n, i, no in NETIFACE))
    m = SetMatch("ni", ("src", "src"))
    assert set_test(s, m, pkt(addr, iif=iface)) == kernel_test(lab, name, "ni", f"{addr},{iface}")


def test_hash_net_iface_shadowing_stays_on_the_kernel_path() -> None:
    """The trie falls back to a shorter net of the packet's interface, the
    kernel does not: such a set is not mirrored."""
    m = SetMatch("ni", ("src", "src"))
    shadowed = hset("ni", "hash:net,iface", *(Member(net(n), iface=i, nomatch=no) for n, i, no in NETIFACE))
    assert "interface" in (mirror_problem(shadowed, m) or "")
    # the same interfaces on the longer net as on the shorter: the trie's answer is the kernel's
    nested = hset("ni", "hash:net,iface", Member(net("192.0.2.0/24"), iface="a"),
                  Member(net("192.0.2.16/28"), iface="a", nomatch=True), Member(net("192.0.2.16/28"), iface="c"))
    assert mirror_problem(nested, m) is None


SEND = "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b'x',(sys.argv[1],5000))"


@pytest.mark.parametrize(("type_", "element", "dirs"), [
    ("hash:ip", "192.0.2.7", "dst"),
    ("hash:ip,port", "192.0.2.7,udp:5000", "dst,dst"),
    ("hash:net", "192.0.2.0/24", "dst"),
    ("hash:net", "192.0.2.0/24 nomatch", "dst"),
    ("hash:net,port", "192.0.2.0/24,udp:5000 nomatch", "dst,dst"),
])
def test_return_nomatch_as_xt_set_applies_it(ns: tuple[Lab, str], type_: str, element: str, dirs: str) -> None:
    """--return-nomatch on a real packet: the rule's counter says whether
    the kernel matched."""
    lab, name = ns
    ipset(lab, name, f"create rn {type_}", f"add rn {element}")
    rule = ["OUTPUT", "-p", "udp", "-m", "set", "--match-set", "rn", dirs, "--return-nomatch"]
    lab.run(name, ["iptables", "-A", *rule])
    try:
        lab.run(name, [sys.executable, "-c", SEND, "192.0.2.7"])
        out = lab.run(name, ["iptables", "-nvxL", "OUTPUT"]).stdout.splitlines()[2]
        kernel = int(out.split()[0]) == 1
    finally:
        lab.run(name, ["iptables", "-D", *rule])
        lab.run(name, ["ipset", "destroy", "rn"])
    nomatch = element.endswith(" nomatch")
    first = element.split()[0].split(",")[0]
    s = hset("rn", type_, Member(net(first if "/" in first else f"{first}/32"),
                                 *((17, 5000) if "port" in type_ else ()), nomatch=nomatch))
    m = SetMatch("rn", tuple(dirs.split(",")), return_nomatch=True)
    assert set_test(s, m, pkt("192.0.2.1", "192.0.2.7", dport=5000)) == kernel


def test_a_set_in_use_keeps_its_name(ns: tuple[Lab, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """xt_set holds a set's index, the daemon mirrors by name: they agree
    because the kernel refuses to rename or destroy a set a rule references
    (ip_set_core.c: IPSET_ERR_REFERENCED), and a swap exchanges the contents
    behind both names.  After `ipset swap A B` the daemon's A holds what
    the rule now matches: B's former members."""
    lab, name = ns
    ipset(lab, name, "create A hash:ip", "add A 192.0.2.7", "create B hash:ip", "add B 192.0.2.8")
    lab.run(name, ["iptables-restore"], input=rules("-A FORWARD -m set --match-set A src -j DROP"))
    d = recording_daemon(monkeypatch)
    try:
        assert lab.run(name, ["ipset", "rename", "A", "A_old"], check=False).returncode != 0
        assert lab.run(name, ["ipset", "destroy", "A"], check=False).returncode != 0
        with in_netns(name):
            d._poll()
            lab.run(name, ["ipset", "swap", "A", "B"])
            d.rules.poll_ipsets(d.model)
        assert d.rules.set_names == {"A"}
        assert [m.net for m in d.model.ipsets["A"].members] == [net("192.0.2.8/32")]
    finally:
        d.rules.close()
        lab.run(name, ["iptables", "-F", "FORWARD"])
        lab.run(name, ["ipset", "destroy"])


class _Failing(IPSet):
    """The kernel's socket, except that its first dump fails as a dump can
    (ENOBUFS: the receive buffer overran) and set `garbled` decodes to
    nothing."""

    failed = False

    def list(self, *argv: object, **kw: object):  # type: ignore[no-untyped-def]
        if not _Failing.failed:
            _Failing.failed = True
            raise OSError(errno.ENOBUFS, "No buffer space available")
        msgs = list(super().list(*argv, **kw))
        for m in msgs:
            if m.get_attr("IPSET_ATTR_SETNAME") == "garbled":
                m["attrs"] = [a for a in m["attrs"] if a[0] != "IPSET_ATTR_DATA"]
        return msgs


def test_an_unreadable_set_is_left_out(ns: tuple[Lab, str], monkeypatch: pytest.MonkeyPatch) -> None:
    lab, name = ns
    ipset(lab, name, "create good hash:ip", "add good 192.0.2.7", "create garbled hash:ip")
    monkeypatch.setattr(ipset_reader, "IPSet", _Failing)
    reader = ipset_reader.IpsetReader()
    try:
        with in_netns(name):
            assert reader.read({"good", "garbled"}) == {}  # the dump failed: nothing read
            assert set(reader.read({"good", "garbled"})) == {"good"}  # a new socket answers
    finally:
        reader.close()
        lab.run(name, ["ipset", "destroy"])


def test_a_change_keeping_the_header_is_seen_within_the_stated_bound(
        ns: tuple[Lab, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A del and an add between two polls can keep the count, memory size
    and seed the terse header shows (`ipset list -t` says so for a 10,000
    net set on this kernel, though the size may move with the buckets): only
    a whole dump sees it.  The reader states per set how late that can be
    (`tna status` shows it); on a clock of the test's, with the headers
    pinned as the kernel may leave them, a read that late sees the change."""
    lab, name = ns
    ipset(lab, name, "create big hash:net family inet6", *(f"add big 2001:db8:{i:x}::/48" for i in range(10000)))
    clock = [1000.0]
    monkeypatch.setattr(ipset_reader, "_now", lambda: clock[0])
    reader = ipset_reader.IpsetReader()
    try:
        with in_netns(name):
            reader.read({"big"})
            headers = reader._terse()
            monkeypatch.setattr(reader, "_terse", lambda: headers)
            ipset(lab, name, "del big 2001:db8:6::/48", "add big 2001:db8:ffff::/48")
            clock[0] += reader.stale_s["big"]
            after = reader.read({"big"})["big"]
        assert Member(net("2001:db8:ffff::/48")) in after.members
    finally:
        reader.close()
        lab.run(name, ["ipset", "destroy", "big"])
