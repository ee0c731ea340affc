"""The namespace's ipsets, read over netlink (pyroute2's IPSet).

The kernel announces nothing for ipset commands: nfnetlink_ipset
(net/netfilter/ipset/ip_set_core.c) answers requests and never calls
nfnetlink_send()/a multicast group, so a change can only be seen by
reading.  The daemon polls the sets its rules use, at two costs:

- the header (a terse listing, ~0.5 ms): element count, memory size and
  hash seed, which an add, a del, a swap or a resize changes;
- the whole listing (~6 ms for 10,000 IPv6 nets, half of it the kernel's
  dump), hashed: it also sees what keeps the count (a flush and refill to
  the same size, a nomatch flag flipped with -exist, a del and an add
  between two polls).  It is all a small set's poll costs (one request);
  a large one's runs no more often than FULL_BUDGET of a core allows, the
  header in between.

Members are decoded only when the listing's bytes changed (pyroute2 takes
~0.7 s of a core for 10,000 of them).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from pyroute2.ipset import IPSet
from pyroute2.netlink.exceptions import NetlinkError

from tna.model.ipset import DIMENSIONS, IpSet, Member

log = logging.getLogger("tna")

_FAMILY = {socket.AF_INET: 4, socket.AF_INET6: 6}
# enum ipset_cadt_flags (include/uapi/linux/netfilter/ipset/ip_set.h)
_PHYSDEV, _NOMATCH, _WITH_COUNTERS, _WILDCARD = 1 << 1, 1 << 2, 1 << 3, 1 << 7
_NLMSG_AND_NFGEN = 20  # nlmsghdr + nfgenmsg: sequence and port change per request
_LIST_HEADER = 1 << 2  # IPSET_FLAG_LIST_HEADER (enum ipset_cmd_flags): the terse listing
FULL_BUDGET = 0.001    # of a core for whole listings of unchanged headers
FULL_MIN_S = 0.5       # a set is listed whole at most this often when its header is unchanged


@dataclass
class _Seen:
    header: bytes        # digest of the terse listing
    listing: bytes       # digest of the whole listing
    ipset: IpSet
    next_full: float     # monotonic time of the next whole listing, unless the header changes


def _digest(msgs: list[Any]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for m in msgs:
        h.update(m.data[m.offset + _NLMSG_AND_NFGEN:m.offset + m["header"]["length"]])
    return h.digest()


class IpsetReader:
    """Reads named sets, decoding only those whose listing changed."""

    def __init__(self) -> None:
        self._sock: IPSet | None = None
        self._seen: dict[str, _Seen] = {}

    def read(self, names: Iterable[str]) -> dict[str, IpSet]:
        """The named sets that exist, by name."""
        if self._sock is None:
            self._sock = IPSet()
        out: dict[str, IpSet] = {}
        for name in sorted(names):
            try:
                seen = self._read(self._sock, name)
            except NetlinkError:  # no such set (a rule cannot use one; it went meanwhile)
                continue
            except (OSError, ValueError, KeyError, AttributeError, TypeError, IndexError) as e:
                # a dump lost (ENOBUFS) or a listing pyroute2 does not decode
                # as expected: the set is unreadable, its rules the kernel's;
                # a new socket, as the old one may hold the rest of the dump
                log.warning("ipset %s cannot be read (%r); its rules stay on the kernel path", name, e)
                self.close()
                self._sock = IPSet()
                continue
            if seen is not None:
                self._seen[name] = seen
                out[name] = seen.ipset
        self._seen = {n: self._seen[n] for n in out}
        return out

    def _read(self, sock: IPSet, name: str) -> _Seen | None:
        seen, now = self._seen.get(name), time.monotonic()
        head = b""
        if seen is not None and now < seen.next_full:
            head = self._header(sock, name)
            if head == seen.header:
                return seen
        cpu = time.thread_time()
        msgs = list(sock.list(name=name))
        if not msgs:
            return None
        listing = _digest(msgs)
        cost = time.thread_time() - cpu  # the kernel's dump included (system time of this thread)
        ipset = seen.ipset if seen is not None and seen.listing == listing else decode(msgs)
        wait = max(FULL_MIN_S, cost / FULL_BUDGET)
        if wait > FULL_MIN_S and not head:  # the header is what the polls in between compare
            head = self._header(sock, name)
        return _Seen(head, listing, ipset, now + wait)

    @staticmethod
    def _header(sock: IPSet, name: str) -> bytes:
        return _digest(list(sock.list(name=name, flags=_LIST_HEADER)))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _netmask(value: Any) -> int:
    """IPSET_ATTR_NETMASK is a u8 that pyroute2 hands over as hex text."""
    return int(value, 16) if isinstance(value, str) else int(value)


def decode(msgs: list[Any]) -> IpSet:
    """One set from its listing (the dump of a large set spans messages,
    each with the header and a part of the members)."""
    first = msgs[0]
    name, type_ = first.get_attr("IPSET_ATTR_SETNAME"), first.get_attr("IPSET_ATTR_TYPENAME")
    family = _FAMILY.get(first.get_attr("IPSET_ATTR_FAMILY"), 0)
    head = first.get_attr("IPSET_ATTR_DATA")
    flags = head.get_attr("IPSET_ATTR_CADT_FLAGS") or 0
    netmask = head.get_attr("IPSET_ATTR_NETMASK")
    unmodelled = next((a for a in ("IPSET_ATTR_BITMASK", "IPSET_ATTR_MARKMASK") if head.get_attr(a) is not None),
                      None)
    s = IpSet(name, type_, family, head.get_attr("IPSET_ATTR_MAXELEM") or 0,
              timeout=head.get_attr("IPSET_ATTR_TIMEOUT") is not None, counters=bool(flags & _WITH_COUNTERS),
              unmodelled=unmodelled and unmodelled.removeprefix("IPSET_ATTR_").lower(),
              elements=head.get_attr("IPSET_ATTR_ELEMENTS"))
    if type_ not in DIMENSIONS or family == 0 or s.timeout or unmodelled:
        return s  # its rules are the kernel's: members not needed
    host = 32 if family == 4 else 128
    members = []
    for m in msgs:
        adt = m.get_attr("IPSET_ATTR_ADT")
        for e in adt.get_attrs("IPSET_ATTR_DATA") if adt is not None else ():
            addr = e.get_attr("IPSET_ATTR_IP_FROM").get_attr(
                "IPSET_ATTR_IPADDR_IPV4" if family == 4 else "IPSET_ATTR_IPADDR_IPV6")
            cidr = e.get_attr("IPSET_ATTR_CIDR")
            if cidr is None:
                cidr = _netmask(netmask) if netmask is not None else host
            eflags = e.get_attr("IPSET_ATTR_CADT_FLAGS") or 0
            members.append(Member(ipaddress.ip_network(f"{addr}/{cidr}", strict=False),
                                  e.get_attr("IPSET_ATTR_PROTO"), e.get_attr("IPSET_ATTR_PORT_FROM"),
                                  e.get_attr("IPSET_ATTR_IFACE"), bool(eflags & _NOMATCH),
                                  bool(eflags & _PHYSDEV), bool(eflags & _WILDCARD)))
    return replace(s, members=frozenset(members))
