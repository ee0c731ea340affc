"""IPsec (xfrm): the families whose forwarded packets the kernel may have to
check, encrypt or block (ip-xfrm(8)), and whether SAs exist.

ip_forward() asks the policies of direction `fwd` whether a packet had to
come through IPsec (plaintext then is dropped), and its route's output the
policies of direction `out` whether it must leave through an SA (encrypted,
or dropped while none is negotiated); the default policy of either, if
`block`, drops what no policy covers.  bpf_fib_lookup() asks none of them,
so a family with such a policy (or both, under a blocking default) goes to
the kernel (`XFRM`).  `in` and socket policies only concern packets to the
box, after the INPUT chain whose drops are all the fast path acts on there.
A packet an SA decrypted is received again on its device with a secpath,
which the TC hook sees: while SAs exist, the TC programs pass such packets
(the kernel checks their secpath against the fwd policies, or drops a
tunnelled one that no policy covers).

pyroute2 has no xfrm family: the policies and SAs are read with iproute2's
`ip xfrm` (as nftables' rule sets are read with `nft`), and a NETLINK_XFRM
socket subscribed to the policy, SA and expiry groups only says when to
read them again.  What cannot be read keeps both families on the kernel
path.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from pyroute2.netlink.nlsocket import NetlinkSocket

from tna.model.config import XfrmPolicies
from tna.netlink.netfilter import run_tool

log = logging.getLogger(__name__)

NETLINK_XFRM = 6
XFRMNLGRP_EXPIRE, XFRMNLGRP_SA, XFRMNLGRP_POLICY = 2, 3, 4
BOTH = frozenset((socket.AF_INET, socket.AF_INET6))
FORWARDED_DIRS = ("fwd", "out")
_DIRECTION = re.compile(r"^\s+(dir|socket) (\w+)", re.M)
_DEFAULT = re.compile(r"^\s*(fwd|out):\s*(\w+)", re.M)
_SAD_COUNT = re.compile(r"SAD count (\d+)")
DEFAULTS_KERNEL = (5, 16)  # XFRM_MSG_GETDEFAULT


def parse_policies(policies: str, defaults: str | None, sad: str = "SAD count 0") -> XfrmPolicies:
    """`ip xfrm policy list`, `ip xfrm policy getdefault` (None: unknown)
    and `ip xfrm state count` output.  A policy is a block from its
    selector line (`src ... dst ...`) to the next; one whose direction is
    not found (a format this parser does not know) counts for both
    families."""
    families: set[int] = set()
    for block in re.split(r"^(?=src )", policies, flags=re.M):
        if not block.startswith("src "):
            continue
        found = _DIRECTION.search(block)
        if found is None:
            families |= BOTH
        elif found.group(1) == "dir" and found.group(2) in FORWARDED_DIRS:
            families.add(socket.AF_INET6 if ":" in block.split()[1] else socket.AF_INET)
    if defaults is None:
        blocked = ("unknown",)
    else:
        blocked = tuple(sorted(d for d, action in _DEFAULT.findall(defaults) if action != "accept"))
    count = _SAD_COUNT.search(sad)
    return XfrmPolicies(frozenset(BOTH if blocked else families), blocked,
                        sas=count is None or int(count.group(1)) > 0)


def read_policies() -> XfrmPolicies:
    """The namespace's policies and SAs now; unreadable: both families
    (and every secpath checked) on the kernel path."""
    try:
        return parse_policies(run_tool(["ip", "xfrm", "policy", "list"]), _defaults(),
                              run_tool(["ip", "xfrm", "state", "count"]))
    except (OSError, subprocess.SubprocessError, ValueError) as e:  # FileNotFoundError: no ip(8)
        log.warning("xfrm policies unreadable (%s): IPv4 and IPv6 forwarding stay on the kernel path", e)
        return XfrmPolicies(BOTH, ("unknown",), sas=True)


def _defaults() -> str | None:
    """Default policies: a kernel before 5.16 has none (all accept); an ip(8)
    before 5.16 cannot read them (None: unknown)."""
    try:
        return run_tool(["ip", "xfrm", "policy", "getdefault"])
    except OSError as e:
        if tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2]) < DEFAULTS_KERNEL:
            return ""
        log.warning("xfrm default policies unreadable (%s): taken as blocking", e)
        return None


def unfollowable() -> XfrmPolicies:
    """No xfrm netlink socket (a kernel without xfrm_user): no policy can be
    set but through PF_KEY, which this cannot follow."""
    if Path("/proc/net/pfkey").exists():
        log.warning("PF_KEY is there but no xfrm netlink: IPv4 and IPv6 forwarding stay on the kernel path")
        return XfrmPolicies(BOTH, ("unknown",), sas=True)
    return XfrmPolicies()


class XfrmEvents:
    """Policy, SA and expiry notifications: any message means "read again";
    an overrun too (nothing of a message is decoded)."""

    def __init__(self) -> None:
        self._sock = NetlinkSocket(family=NETLINK_XFRM)
        try:
            self._sock.bind(groups=sum(1 << (g - 1) for g in (XFRMNLGRP_EXPIRE, XFRMNLGRP_SA, XFRMNLGRP_POLICY)))
        except BaseException:
            self._sock.close()
            raise
        self._raw = socket.socket(fileno=self._sock.fileno())

    def close(self) -> None:
        self._raw.detach()  # the fd belongs to the pyroute2 socket
        self._sock.close()

    def pending(self) -> bool:
        return bool(select.select([self._raw], [], [], 0)[0])

    def wait(self, timeout: float, on_begin: Callable[[], None]) -> bool:
        """Whether anything changed within timeout: on_begin() as soon as the
        first message is there (the kernel applied it already), then every
        pending message is consumed."""
        if not select.select([self._raw], [], [], timeout)[0]:
            return False
        on_begin()
        while self.pending():
            try:
                self._raw.recv(1 << 16)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
        return True
