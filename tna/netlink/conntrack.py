"""Freeing fast-pathed TCP connections from conntrack's window tracking.

The kernel never sees the middle of a connection the fast path carries, so
its TCP window state goes stale and a later segment through the kernel (the
FIN) would be judged out of window: INVALID.  The kernel's own fast path,
the nftables flowtable, has the same problem and the same answer: it marks
an offloaded connection IP_CT_TCP_FLAG_BE_LIBERAL in both directions.  The
datapath asks (tna_ct_sync) for each established connection it wants to
carry; this marks it over ctnetlink, and the datapath carries it once both
flags show.  The kernel then judges a carried connection's RST by stale
sequence numbers too: the datapath judges it with its window copy and, where
Linux alone would close the connection, asks for that (close()).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable

from pyroute2 import NFCTSocket
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from tna.bpf.abi import TnaCtKey

log = logging.getLogger("tna")

IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
TCP_CONNTRACK_CLOSE = 8


def key_tuple(key: TnaCtKey) -> NFCTAttrTuple:
    """The ctnetlink tuple of a connection as the datapath saw a packet of it
    (its original direction, as the datapath keys it)."""
    family = key.family
    if family == socket.AF_INET:
        src = str(ipaddress.IPv4Address(bytes(key.saddr)[:4]))
        dst = str(ipaddress.IPv4Address(bytes(key.daddr)[:4]))
    else:
        src = str(ipaddress.IPv6Address(bytes(key.saddr)))
        dst = str(ipaddress.IPv6Address(bytes(key.daddr)))
    return NFCTAttrTuple(family=family, saddr=src, daddr=dst, proto=key.proto,
                         sport=socket.ntohs(key.sport), dport=socket.ntohs(key.dport))


class Liberal:
    """Changes the connections the datapath asks for, one ctnetlink socket per family."""

    def __init__(self) -> None:
        self._socks: dict[int, NFCTSocket] = {}

    def mark(self, keys: Iterable[TnaCtKey]) -> int:
        """Mark each key's connection window-liberal; returns how many were
        marked (one that is gone, or not TCP, is skipped: the datapath asks
        again if needed)."""
        flags = {"value": (IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL)}  # (flags, mask)
        return self._set(keys, "marked", protoinfo={"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
            ["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", flags], ["CTA_PROTOINFO_TCP_FLAGS_REPLY", flags]]}]]})

    def close_reset(self, keys: Iterable[TnaCtKey], timeout_s: int) -> int:
        """Move each key's connection to CLOSE with timeout_s to live, as
        nf_conntrack_tcp_packet() does with an RST it takes as exact."""
        return self._set(keys, "closed", timeout=timeout_s, protoinfo={"attrs": [["CTA_PROTOINFO_TCP", {
            "attrs": [["CTA_PROTOINFO_TCP_STATE", TCP_CONNTRACK_CLOSE]]}]]})

    def _set(self, keys: Iterable[TnaCtKey], done_what: str, **attrs: object) -> int:
        done = 0
        for key in keys:
            if key.proto != socket.IPPROTO_TCP or key.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            sock = self._socks.get(key.family)
            if sock is None:
                sock = self._socks[key.family] = NFCTSocket(nfgen_family=key.family)
            try:
                sock.entry("set", tuple_orig=key_tuple(key), **attrs)
                done += 1
            except NetlinkError as e:
                log.debug("conntrack entry %s not %s: %s", key_tuple(key).attrs(), done_what, e)
        return done

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
