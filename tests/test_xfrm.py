"""IPsec policies as `ip xfrm` prints them (ip-xfrm(8), what strongSwan or
libreswan install for a site-to-site tunnel), and the hold a change raises:
the kernel applies a policy at once, so the datapath passes everything from
the moment the reader hears of it until the loop has published the guards
that follow from it."""

from __future__ import annotations

from socket import AF_INET, AF_INET6

from tna.bpf import abi
from tna.holds import Holds
from tna.model.config import XfrmPolicies
from tna.netlink.xfrm import parse_policies

ACCEPT_ALL = "Default policies:\n in:  accept\n fwd: accept\n out: accept\n"

# a tunnel between two sites' subnets: out (encrypt), in and fwd (must have
# come through the SA), as an IKE daemon installs them; and a socket policy
# (the daemon's own IKE socket bypasses IPsec), which concerns that socket only
SITE_TO_SITE = """\
src 192.0.2.0/24 dst 198.51.100.0/24
\tdir out priority 375423 ptype main
\ttmpl src 203.0.113.1 dst 203.0.113.2
\t\tproto esp spi 0xc1a2b3c4 reqid 1 mode tunnel
src 198.51.100.0/24 dst 192.0.2.0/24
\tdir fwd priority 375423 ptype main
\ttmpl src 203.0.113.2 dst 203.0.113.1
\t\tproto esp reqid 1 mode tunnel
src 198.51.100.0/24 dst 192.0.2.0/24
\tdir in priority 375423 ptype main
\ttmpl src 203.0.113.2 dst 203.0.113.1
\t\tproto esp reqid 1 mode tunnel
src 0.0.0.0/0 dst 0.0.0.0/0
\tsocket in priority 0 ptype main
src 0.0.0.0/0 dst 0.0.0.0/0
\tsocket out priority 0 ptype main
"""

V6_IN_ONLY = """\
src 2001:db8:2::/64 dst 2001:db8:1::/64
\tdir in priority 0 ptype main
\ttmpl src 2001:db8:3::2 dst 2001:db8:3::1
\t\tproto esp reqid 0 mode tunnel
"""


def test_a_site_to_site_tunnel_covers_its_family_only() -> None:
    assert parse_policies(SITE_TO_SITE, ACCEPT_ALL) == XfrmPolicies(frozenset({AF_INET}))
    # as `ip xfrm` prints them: the selector and dir lines end with a blank
    assert parse_policies(SITE_TO_SITE.replace("\n", " \n"), ACCEPT_ALL) == XfrmPolicies(frozenset({AF_INET}))


def test_socket_and_in_policies_concern_no_forwarded_packet() -> None:
    sockets_only = "".join(SITE_TO_SITE.splitlines(keepends=True)[12:])
    assert parse_policies(sockets_only + V6_IN_ONLY, ACCEPT_ALL) == XfrmPolicies()
    assert parse_policies("", "") == XfrmPolicies()  # a kernel without default policies: accept


def test_a_blocking_default_covers_both_families() -> None:
    defaults = ACCEPT_ALL.replace("fwd: accept", "fwd: block")
    assert parse_policies("", defaults) == XfrmPolicies(frozenset({AF_INET, AF_INET6}), ("fwd",))


def test_a_policy_change_holds_until_the_loop_has_taken_the_policies() -> None:
    held: list[int] = []
    holds = Holds(held.append)
    holds.idle()
    holds.xfrm_begin()
    assert held == [abi.REASON["PENDING"]]
    holds.events_queued([])  # another batch, queued and taken meanwhile, ends nothing
    holds.busy(lambda: True)
    with holds.lock:
        assert holds.reason() == abi.REASON["PENDING"]
    holds.idle()
    holds.events_queued([XfrmPolicies(frozenset({AF_INET}))])
    with holds.lock:
        assert holds.reason() == abi.REASON["PENDING"]  # queued, not yet taken
    assert holds.busy(lambda: True)
    with holds.lock:
        assert holds.reason() == 0
