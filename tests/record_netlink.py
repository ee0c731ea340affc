"""Record the rtnetlink messages a router namespace produces, for the
model's unit tests (tests/data/router_lab.nl).  Run as root:

  python -m tests.record_netlink > tests/data/router_lab.nl

Format: '# <step>' lines, then one hex-encoded message per line.
"""

from __future__ import annotations

import sys

from netns_labs.lab import RouterLab, in_netns
from tna.model.config import TcFilters, XdpXmit
from tna.netlink.watch import Watcher


def raw(msg) -> bytes:
    return bytes(msg.data[msg.offset:msg.offset + msg["header"]["length"]])


def main() -> None:
    with RouterLab() as lab:
        with in_netns(lab.r):  # the watcher's threads and sockets live in r
            watcher = Watcher()
        print("# dump")
        for msg in watcher.snapshot():
            if not isinstance(msg, (XdpXmit, TcFilters)):  # derived facts, not messages
                print(raw(msg).hex())
        steps = [
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
        for name, cmds in steps:
            for cmd in cmds:
                lab.run(lab.r, cmd)
            print(f"# {name}")
            for msg in watcher.events(timeout=1.0):
                if not isinstance(msg, (XdpXmit, TcFilters)):
                    print(raw(msg).hex())
        watcher.close()


if __name__ == "__main__":
    sys.exit(main())
