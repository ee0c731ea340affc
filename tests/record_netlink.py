"""Record the rtnetlink messages a lab namespace produces, for the model's
unit tests (tests/data/<lab>_lab.nl).  Run as root:

  python -m tests.record_netlink router > tests/data/router_lab.nl
  python -m tests.record_netlink bridge > tests/data/bridge_lab.nl
  python -m tests.record_netlink nexthop > tests/data/nexthop_lab.nl
  python -m tests.record_netlink nexthop_compat > tests/data/nexthop_compat_lab.nl

Format: '# <step>' lines, then one hex-encoded message per line.
"""

from __future__ import annotations

import sys

from netns_labs.lab import BridgeLab, Lab, RouterLab, in_netns
from tna.model.config import AF_INET, AF_INET6, TcFilters, XdpXmit
from tna.model.routes import Dumped, RouteDump
from tna.netlink import watch
from tna.netlink.watch import Watcher

DERIVED = (XdpXmit, TcFilters, RouteDump, Dumped)  # facts the watcher made, not messages


def raw(msg) -> bytes:
    return bytes(msg.data[msg.offset:msg.offset + msg["header"]["length"]])


ROUTER_STEPS = [
    ("add veth r-h3, up, address", [
        ["ip", "link", "add", "r-h3", "type", "veth", "peer", "name", "r-h3p"],
        ["ip", "link", "set", "r-h3", "up"], ["ip", "addr", "add", "203.0.113.1/24", "dev", "r-h3"]]),
    ("multipath route with an mtu", [
        ["ip", "route", "add", "203.0.113.128/25", "mtu", "1400", "nexthop", "via", "198.51.100.2",
         "nexthop", "via", "192.0.2.2"]]),
    ("neighbour goes stale", [["ip", "neigh", "add", "198.51.100.9", "lladdr", "02:00:00:00:00:09",
                               "dev", "r-h2", "nud", "stale"]]),
    ("r-h2 down", [["ip", "link", "set", "r-h2", "down"]]),
    ("delete r-h3", [["ip", "link", "del", "r-h3"]]),
]

# On the router lab with net.ipv4.nexthop_compat_mode=0 (nexthop_compat: 1).
# With 0, route messages name their nexthop object only by id, and a group's
# changes reach no route message; with 1 they also copy its next hops, and
# route messages follow a group's replacement.  The setup is in the dump: a
# route by a group of one.
NEXTHOP_SETUP = [
    ["ip", "nexthop", "add", "id", "1", "via", "192.0.2.2", "dev", "r-h1"],
    ["ip", "nexthop", "add", "id", "2", "via", "198.51.100.2", "dev", "r-h2"],
    ["ip", "nexthop", "add", "id", "10", "group", "1"],
    ["ip", "route", "add", "203.0.113.0/24", "nhid", "10"],
]
NEXTHOP_STEPS = [
    ("IPv6 route by a resilient group of two", [
        ["ip", "nexthop", "add", "id", "6", "via", "2001:db8:1::2", "dev", "r-h1"],
        ["ip", "nexthop", "add", "id", "7", "via", "2001:db8:2::2", "dev", "r-h2"],
        ["ip", "nexthop", "add", "id", "60", "group", "6/7", "type", "resilient", "buckets", "8"],
        ["ip", "-6", "route", "add", "2001:db8:f::/64", "nhid", "60"]]),
    ("group 10 gets a second member", [["ip", "nexthop", "replace", "id", "10", "group", "1/2"]]),
    ("nexthop 2 deleted", [["ip", "nexthop", "del", "id", "2"]]),
    ("group 60 deleted", [["ip", "nexthop", "del", "id", "60"]]),
]

BRIDGE_STEPS = [
    ("static fdb entry", [["bridge", "fdb", "add", "02:00:00:00:00:aa", "dev", "b-h1", "master", "static"]]),
    ("b-h2 learning", [["bridge", "link", "set", "dev", "b-h2", "state", "2"]]),
    ("b-h3 isolated", [["ip", "link", "set", "b-h3", "type", "bridge_slave", "isolated", "on"]]),
    ("fdb del", [["bridge", "fdb", "del", "02:00:00:00:00:aa", "dev", "b-h1", "master"]]),
    ("b-h3 leaves", [["ip", "link", "set", "b-h3", "nomaster"]]),
    ("ageing 10 s", [["ip", "link", "set", "br0", "type", "bridge", "ageing_time", "1000"]]),
]


def main(argv: list[str]) -> None:
    which = argv[0] if argv else "router"
    lab: Lab
    if which == "bridge":
        lab, steps = BridgeLab(), BRIDGE_STEPS
        ns = lab.b
    else:
        lab, steps = RouterLab(), NEXTHOP_STEPS if which.startswith("nexthop") else ROUTER_STEPS
        ns = lab.r
        if which.startswith("nexthop"):
            lab.sysctl(ns, "net.ipv4.nexthop_compat_mode", int(which == "nexthop_compat"))
            for cmd in NEXTHOP_SETUP:
                lab.run(ns, cmd)
    # pyroute2's own messages, which keep their bytes (the fast FDB decoder keeps only facts)
    watch.decode_fdb_fast = lambda marshal: None
    with lab:
        with in_netns(ns):  # the watcher's threads and sockets live in the lab
            watcher = Watcher()
        print("# dump")
        for msg in watcher.snapshot():
            if not isinstance(msg, DERIVED):
                print(raw(msg).hex())
        # the watcher streams routes as decoded facts: record their messages
        for family in (AF_INET, AF_INET6):
            for msg in watcher.query.get_routes(family=family):
                print(raw(msg).hex())
        for name, cmds in steps:
            for cmd in cmds:
                lab.run(ns, cmd)
            print(f"# {name}")
            for msg in watcher.events(timeout=1.0):
                if not isinstance(msg, DERIVED):
                    print(raw(msg).hex())
        watcher.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
