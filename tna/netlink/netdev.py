"""Which devices accept XDP_REDIRECTed frames right now (kernel >= 6.3).

The `netdev` generic-netlink family reports each device's xdp-features;
NETDEV_XDP_ACT_NDO_XMIT is the kernel's own answer to "can an XDP redirect
transmit here": a veth sets it only while its peer runs XDP (or GRO), many
NIC drivers only while they run an XDP program themselves.  The family's
"mgmt" group announces every change.  Without the family (older kernels)
nothing qualifies, so XDP never redirects blindly.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Iterator

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, genlmsg
from pyroute2.netlink.generic import GenericNetlinkSocket

from tna.model.config import XdpXmit

log = logging.getLogger(__name__)

NETDEV_CMD_DEV_GET = 1
NETDEV_CMD_DEV_DEL_NTF = 3
NETDEV_XDP_ACT_NDO_XMIT = 1 << 2


class netdev_msg(genlmsg):
    """struct genlmsghdr + the attributes of include/uapi/linux/netdev.h we read."""

    prefix = "NETDEV_A_DEV_"
    nla_map = (
        ("NETDEV_A_DEV_UNSPEC", "none"),
        ("NETDEV_A_DEV_IFINDEX", "uint32"),
        ("NETDEV_A_DEV_PAD", "none"),
        ("NETDEV_A_DEV_XDP_FEATURES", "uint64"),
    )


def _decode(msg: netdev_msg) -> XdpXmit:
    capable = msg["cmd"] != NETDEV_CMD_DEV_DEL_NTF and bool(
        (msg.get("NETDEV_A_DEV_XDP_FEATURES") or 0) & NETDEV_XDP_ACT_NDO_XMIT)
    return XdpXmit(msg.get("NETDEV_A_DEV_IFINDEX"), capable)


def _socket() -> GenericNetlinkSocket:
    sock = GenericNetlinkSocket()
    sock.bind("netdev", netdev_msg)
    return sock


def xdp_xmit_capable() -> dict[int, bool]:
    """ifindex -> accepts redirected XDP frames, for this namespace."""
    try:
        sock = _socket()
    except Exception:  # no netdev family (the watcher says so): no known XDP egress
        return {}
    try:
        req = netdev_msg()
        req["cmd"], req["version"] = NETDEV_CMD_DEV_GET, 1
        msgs = sock.nlm_request(req, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
        return {x.ifindex: x.capable for x in map(_decode, msgs)}
    finally:
        sock.close()


class XdpFeatureEvents:
    """Subscription to xdp-features changes.  Read with select() + pyroute2's
    marshal: this pyroute2 never hands these notifications to get()."""

    def __init__(self) -> None:
        self._sock = _socket()
        self._sock.add_membership("mgmt")
        self._raw = socket.socket(fileno=self._sock.fileno())

    def close(self) -> None:
        self._raw.detach()  # the fd belongs to the pyroute2 socket
        self._sock.close()

    def read(self, timeout: float) -> Iterator[XdpXmit]:
        """Changes that arrive within timeout; OSError(ENOBUFS) on overrun."""
        if select.select([self._raw], [], [], timeout)[0]:
            for msg in self._sock.marshal.parse(self._raw.recv(1 << 16)):
                if isinstance(msg, netdev_msg):
                    yield _decode(msg)
