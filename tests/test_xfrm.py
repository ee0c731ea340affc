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


def test_a_labelled_policy_counts_and_an_unknown_layout_counts_for_both() -> None:
    """Labelled IPsec (an SELinux context) prints a line between selector
    and direction; a block whose direction is not found at all is taken
    for both families, not for none."""
    labelled = SITE_TO_SITE.replace("\tdir out", "\tsecurity context system_u:object_r:ipsec_spd_t:s0\n\tdir out")
    assert parse_policies(labelled, ACCEPT_ALL).families == {AF_INET}
    unknown = "src 2001:db8:1::/64 dst 2001:db8:2::/64\n\tdirection? fwd\n"
    assert parse_policies(unknown, ACCEPT_ALL).families == {AF_INET, AF_INET6}


def test_a_blocking_or_unreadable_default_covers_both_families() -> None:
    defaults = ACCEPT_ALL.replace("fwd: accept", "fwd: block")
    assert parse_policies("", defaults) == XfrmPolicies(frozenset({AF_INET, AF_INET6}), ("fwd",))
    assert parse_policies("", None).families == {AF_INET, AF_INET6}  # an ip(8) that cannot tell


def test_sas_make_the_tc_programs_check_for_decrypted_packets() -> None:
    assert parse_policies("", ACCEPT_ALL, "\t SAD count 2\n").sas
    assert not parse_policies("", ACCEPT_ALL, "\t SAD count 0\n").sas
    assert parse_policies("", ACCEPT_ALL, "garbage").sas


def test_a_policy_change_holds_until_the_loop_has_taken_the_policies() -> None:
    held: list[int] = []
    holds = Holds(held.append)
    gen = holds.new_watcher()
    holds.idle()
    holds.xfrm_begin(gen)
    assert held == [abi.REASON["PENDING"]]
    holds.events_queued([])  # another batch, queued and taken meanwhile, ends nothing
    holds.busy(lambda: True)
    with holds.lock:
        assert holds.reason() == abi.REASON["PENDING"]
    holds.idle()
    holds.events_queued([XfrmPolicies(frozenset({AF_INET}))])
    holds.xfrm_end(gen, lambda: True)  # another change is there already: still open
    holds.busy(lambda: True)
    with holds.lock:
        assert holds.reason() == abi.REASON["PENDING"]
    holds.idle()
    holds.events_queued([XfrmPolicies(frozenset({AF_INET}))])
    holds.xfrm_end(gen, lambda: False)
    with holds.lock:
        assert holds.reason() == abi.REASON["PENDING"]  # queued, not yet taken
    assert holds.busy(lambda: True)
    with holds.lock:
        assert holds.reason() == 0


def test_a_closed_watchers_reader_neither_holds_nor_ends_the_current_ones_hold() -> None:
    held: list[int] = []
    holds = Holds(held.append)
    old = holds.new_watcher()
    holds.xfrm_begin(old)
    current = holds.new_watcher()  # a resync: the new snapshot reads the policies
    with holds.lock:
        assert holds.reason() == 0
    holds.xfrm_begin(old)
    assert len(held) == 1
    holds.xfrm_begin(current)
    holds.xfrm_end(old, lambda: False)
    with holds.lock:
        assert holds.reason() == abi.REASON["PENDING"]
