"""IPsec (xfrm) policies: the families whose forwarded packets the kernel may
have to check, encrypt or block (ip-xfrm(8)).

ip_forward() asks the policies of direction `fwd` whether a packet had to
come through IPsec (plaintext then is dropped), and its route's output the
policies of direction `out` whether it must leave through an SA (encrypted,
or dropped while none is negotiated); the default policy of either, if
`block`, drops what no policy covers.  bpf_fib_lookup() asks none of them,
so a family with such a policy (or both, under a blocking default) goes to
the kernel (`XFRM`).  `in` policies only concern packets delivered to the
box, after the INPUT chain whose drops are all the fast path acts on there.

pyroute2 has no xfrm family: policies are read with iproute2's `ip xfrm`
(as nftables' rule sets are read with `nft`), and a NETLINK_XFRM socket
subscribed to XFRMNLGRP_POLICY only says when to read them again.
"""

from __future__ import annotations

import errno
import logging
import re
import select
import socket

from pyroute2.netlink.nlsocket import NetlinkSocket

from tna.model.config import XfrmPolicies
from tna.netlink.netfilter import run_tool

log = logging.getLogger(__name__)

NETLINK_XFRM, XFRMNLGRP_POLICY = 6, 4
_POLICY = re.compile(r"^src (\S+) dst \S+.*\n\s+dir (\w+)", re.M)
_DEFAULT = re.compile(r"^\s*(fwd|out):\s*(\w+)", re.M)
FORWARDED_DIRS = ("fwd", "out")


def parse_policies(policies: str, defaults: str) -> XfrmPolicies:
    """`ip xfrm policy list` and `ip xfrm policy getdefault` output."""
    families = {socket.AF_INET6 if ":" in src else socket.AF_INET
                for src, direction in _POLICY.findall(policies) if direction in FORWARDED_DIRS}
    blocked = sorted(d for d, action in _DEFAULT.findall(defaults) if action != "accept")
    if blocked:
        families = {socket.AF_INET, socket.AF_INET6}
    return XfrmPolicies(frozenset(families), tuple(blocked))


def read_policies() -> XfrmPolicies:
    """The namespace's policies now.  A kernel without xfrm has none; one
    that cannot be read keeps both families on the kernel path."""
    try:
        return parse_policies(run_tool(["ip", "xfrm", "policy", "list"]), _defaults())
    except OSError as e:  # FileNotFoundError: no ip(8)
        log.warning("xfrm policies unreadable (%s): IPv4 and IPv6 forwarding stay on the kernel path", e)
        return XfrmPolicies(frozenset((socket.AF_INET, socket.AF_INET6)))


def _defaults() -> str:
    """Default policies (kernel >= 5.16; older ones accept, as without any)."""
    try:
        return run_tool(["ip", "xfrm", "policy", "getdefault"])
    except OSError as e:
        log.debug("no xfrm default policies (%s): accept", e)
        return ""


class XfrmEvents:
    """Policy changes (XFRMNLGRP_POLICY): any message means "read again"; an
    overrun too (nothing of a message is decoded)."""

    def __init__(self) -> None:
        self._sock = NetlinkSocket(family=NETLINK_XFRM)
        self._sock.bind(groups=1 << (XFRMNLGRP_POLICY - 1))
        self._raw = socket.socket(fileno=self._sock.fileno())

    def close(self) -> None:
        self._raw.detach()  # the fd belongs to the pyroute2 socket
        self._sock.close()

    def wait(self, timeout: float) -> bool:
        """Whether policies changed within timeout (every pending message is
        consumed)."""
        changed = False
        while select.select([self._raw], [], [], 0 if changed else timeout)[0]:
            try:
                self._raw.recv(1 << 16)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
            changed = True
        return changed
