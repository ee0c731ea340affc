"""The namespace's ipsets, read over netlink (pyroute2's IPSet).

The kernel announces nothing for ipset commands: nfnetlink_ipset
(net/netfilter/ipset/ip_set_core.c) answers requests and never calls
nfnetlink_send()/a multicast group, so a change can only be seen by
reading.  Each poll is one request for all sets (pyroute2 costs ~0.7 ms of
a core a request, more than a small set's members):

- the whole dump (every set's header and members), hashed per set: it sees
  every change.  Taken at every poll while it costs at most WHOLE_EACH_POLL
  of CPU (a few small sets), else no more often than WHOLE_BUDGET of a core
  allows (10,000 IPv6 nets: ~6.6 ms, every ~6.6 s), and at once when
- the terse dump in between (every set's header: element count, memory
  size, hash seed, index) changes, which an add, a del, a swap, a resize,
  a create or a destroy do.  What keeps the header (a del and an add
  between two polls, a nomatch flag flipped with -exist) is seen at the
  next whole dump: `stale_s` says per set how late that can be (shown by
  `tna status`).

Members are decoded only for the used sets whose listing changed (pyroute2
takes ~0.7 s of a core for 10,000 of them).
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

from tna.model.ipset import DIMENSIONS, IpSet, Member

log = logging.getLogger("tna")

_FAMILY = {socket.AF_INET: 4, socket.AF_INET6: 6}
# enum ipset_cadt_flags (include/uapi/linux/netfilter/ipset/ip_set.h)
_PHYSDEV, _NOMATCH, _WITH_COUNTERS, _WILDCARD = 1 << 1, 1 << 2, 1 << 3, 1 << 7
_NLMSG_AND_NFGEN = 20  # nlmsghdr + nfgenmsg: sequence and port change per request
LIST_HEADER = 1 << 2   # IPSET_FLAG_LIST_HEADER (enum ipset_cmd_flags): the terse listing
WHOLE_EACH_POLL = 0.002  # s of CPU: a whole dump this cheap is taken at every poll
WHOLE_BUDGET = 0.001     # of a core for whole dumps while the headers stay the same
_now = time.monotonic    # the clock of the polls


@dataclass
class _Seen:
    listing: bytes       # digest of the set's whole listing
    ipset: IpSet


def _by_set(msgs: Iterable[Any]) -> dict[str, list[Any]]:
    """A dump's messages per set (a large set's listing spans several)."""
    out: dict[str, list[Any]] = {}
    for m in msgs:
        out.setdefault(m.get_attr("IPSET_ATTR_SETNAME"), []).append(m)
    return out


def _digest(msgs: list[Any]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for m in msgs:
        h.update(m.data[m.offset + _NLMSG_AND_NFGEN:m.offset + m["header"]["length"]])
    return h.digest()


class IpsetReader:
    """Reads the used sets, decoding only those whose listing changed."""

    def __init__(self) -> None:
        self._sock: IPSet | None = None
        self._seen: dict[str, _Seen] = {}
        self._headers: dict[str, bytes] | None = None  # every set's terse digest at the last whole dump
        self._next_whole = 0.0
        # per used set: how late a change the header does not show can be
        # seen, beyond the poll interval (s)
        self.stale_s: dict[str, float] = {}

    def read(self, names: Iterable[str]) -> dict[str, IpSet]:
        """The named sets that exist and could be read, by name."""
        wanted = set(names)
        if self._sock is None:
            self._sock = IPSet()
        try:
            if self._headers is not None and _now() < self._next_whole and wanted <= self._seen.keys():
                if self._terse() == self._headers:
                    return {n: self._seen[n].ipset for n in sorted(wanted)}
            return self._whole(wanted)
        except OSError as e:
            # a dump lost (ENOBUFS): unread, the sets' rules are the kernel's;
            # a new socket, as the old one may hold the rest of the dump
            log.warning("ipsets cannot be read (%r); rules matching on them stay on the kernel path", e)
            self.close()
            self._seen, self._headers = {}, None
            return {}

    def _terse(self) -> dict[str, bytes]:
        assert self._sock is not None
        return {n: _digest(ms) for n, ms in _by_set(self._sock.list(flags=LIST_HEADER)).items()}

    def _whole(self, wanted: set[str]) -> dict[str, IpSet]:
        assert self._sock is not None
        cpu = time.thread_time()
        sets = _by_set(self._sock.list())
        cost = time.thread_time() - cpu  # the kernel's dump included (system time of this thread)
        seen: dict[str, _Seen] = {}
        for name in sorted(wanted & sets.keys()):
            listing, old = _digest(sets[name]), self._seen.get(name)
            try:
                ipset = old.ipset if old is not None and old.listing == listing else decode(sets[name])
            except (ValueError, KeyError, AttributeError, TypeError, IndexError) as e:
                # a listing pyroute2 does not decode as expected: unread, its rules the kernel's
                log.warning("ipset %s cannot be read (%r); its rules stay on the kernel path", name, e)
                continue
            seen[name] = _Seen(listing, ipset)
        self._seen = seen
        if cost <= WHOLE_EACH_POLL:
            self._headers, wait = None, 0.0
        else:  # the terse dump is what the polls in between compare
            self._headers, wait = self._terse(), cost / WHOLE_BUDGET
            self._next_whole = _now() + wait
        self.stale_s = {n: wait for n in seen}
        return {n: s.ipset for n, s in seen.items()}

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
