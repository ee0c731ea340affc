"""Watch links, addresses, routes and neighbours; feed the model.

Bind first, then dump into the same socket, so no event between the dump
and the subscription is lost; the dump's messages and later events come
through one queue and are applied in order.  On overrun (ENOBUFS) or an
interrupted dump the caller drops the model and resyncs from a new dump.
"""

from __future__ import annotations

import errno
import logging
import os
import select
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    RTMGRP_TC,
)

from tna.model.config import AF_INET, AF_INET6, Link, NlMsg, Sysctls

log = logging.getLogger(__name__)

GROUPS = (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
          | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_TC)
RTM_NEWQDISC, RTM_DELQDISC = 36, 37


class ResyncNeeded(Exception):
    """Events were lost: rebuild the model from a fresh dump."""


class Watcher:
    def __init__(self) -> None:
        self.ipr = IPRoute()
        self.ipr.bind(groups=GROUPS)

    def close(self) -> None:
        self.ipr.close()

    def fileno(self) -> int:
        return self.ipr.fileno()

    def dump(self) -> list[NlMsg]:
        """Everything the model needs, in dependency order (links first)."""
        for _ in range(5):
            try:
                msgs: list[NlMsg] = list(self.ipr.get_links())
                for family in (AF_INET, AF_INET6):
                    msgs += self.ipr.get_addr(family=family)
                    msgs += self.ipr.get_routes(family=family)
                    msgs += self.ipr.get_neighbours(family=family)
                return msgs
            except NetlinkDumpInterrupted:
                log.info("netlink dump interrupted by a change; dumping again")
        raise ResyncNeeded("netlink dumps keep being interrupted")

    def events(self, timeout: float) -> Iterator[NlMsg]:
        """Messages that arrive within timeout (all that are queued, then stop)."""
        wait = timeout
        while select.select([self.ipr], [], [], wait)[0]:
            wait = 0
            try:
                batch = self.ipr.get()
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    raise ResyncNeeded("netlink socket overrun (ENOBUFS)") from e
                raise
            for msg in batch:
                if msg["header"]["type"] in (RTM_NEWQDISC, RTM_DELQDISC):
                    # qdisc events do not carry the link; re-read it so the
                    # model's root qdisc stays true
                    yield from self.ipr.get_links(msg["index"])
                elif msg.get("header", {}).get("error") is None:
                    yield msg

    def peer_has_xdp(self, link: Link, netns_by_id: dict[int, str]) -> bool | None:
        """Does the other end of a veth in another namespace run XDP?
        None when its namespace is not a named one we can open."""
        name = netns_by_id.get(link.peer_netnsid) if link.peer_netnsid is not None else None
        if name is None or link.peer_index is None:
            return None
        with IPRoute(netns=name) as peer_ns:
            try:
                peer = peer_ns.get_links(link.peer_index)[0]
            except Exception:  # peer gone or namespace vanished: not usable
                return None
            xdp = peer.get("IFLA_XDP")
            return bool(xdp is not None and xdp.get("IFLA_XDP_PROG_ID"))

    def named_netns_ids(self) -> dict[int, str]:
        """nsid (as this namespace numbers them) -> name, for /run/netns/*."""
        out: dict[int, str] = {}
        run = Path("/run/netns")
        if not run.is_dir():
            return out
        for entry in run.iterdir():
            try:
                fd = os.open(entry, os.O_RDONLY)
            except OSError:
                continue
            try:
                info = self.ipr.get_netnsid(fd=fd)
                nsid = info.get("nsid") if isinstance(info, dict) else None
                if nsid is not None and nsid >= 0 and nsid != 0xFFFFFFFF:
                    out[nsid] = entry.name
            except Exception:
                pass
            finally:
                os.close(fd)
        return out


def _read_flag(path: str) -> bool:
    try:
        return Path(path).read_text().strip() not in ("", "0")
    except OSError:
        return False


def read_sysctls() -> Sysctls:
    """Forwarding switches of the namespace this process is in (/proc/sys/net is per netns)."""
    return Sysctls(
        ipv4_forward=_read_flag("/proc/sys/net/ipv4/ip_forward"),
        ipv6_forward=_read_flag("/proc/sys/net/ipv6/conf/all/forwarding"),
    )
