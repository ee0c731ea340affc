"""Which devices accept XDP_REDIRECTed frames right now (kernel >= 6.3).

The `netdev` generic-netlink family reports each device's xdp-features;
NETDEV_XDP_ACT_NDO_XMIT is the kernel's own answer to "can an XDP redirect
transmit here": a veth sets it only while its peer runs XDP (or GRO), many
NIC drivers only while they run an XDP program themselves.  Without the
family (older kernels) nothing qualifies, so XDP never redirects blindly.
"""

from __future__ import annotations

import logging

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, genlmsg
from pyroute2.netlink.generic import GenericNetlinkSocket

log = logging.getLogger(__name__)

NETDEV_CMD_DEV_GET = 1
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


def xdp_xmit_capable() -> dict[int, bool]:
    """ifindex -> accepts redirected XDP frames, for this namespace."""
    sock = GenericNetlinkSocket()
    try:
        sock.bind("netdev", netdev_msg)
        req = netdev_msg()
        req["cmd"], req["version"] = NETDEV_CMD_DEV_GET, 1
        return {m.get("NETDEV_A_DEV_IFINDEX"): bool((m.get("NETDEV_A_DEV_XDP_FEATURES") or 0)
                                                    & NETDEV_XDP_ACT_NDO_XMIT)
                for m in sock.nlm_request(req, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)}
    except Exception as e:  # no netdev family: no device is a known XDP egress
        log.debug("netdev xdp-features unavailable: %r", e)
        return {}
    finally:
        sock.close()
