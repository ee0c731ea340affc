"""The kernel's announcements of per-family device settings (RTM_NEWNETCONF).

Writing net.ipv4.ip_forward, net.ipv{4,6}.conf.*.forwarding, rp_filter,
ignore_routes_with_linkdown, proxy_arp, ... takes effect in the kernel at
the write, which announces it to RTNLGRP_IPV4_NETCONF / IPV6_NETCONF with
that one value (inet_netconf_notify_devconf()); a device that appears is
announced with all of them.  This pyroute2 has no netconf message, so it
is declared here in pyroute2's terms and registered on the event socket.
The values are read from /proc/sys as at a poll: an announcement says when.
"""

from __future__ import annotations

from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import nlmsg

RTM_NEWNETCONF, RTM_DELNETCONF = 80, 81
RTNLGRP_IPV4_NETCONF, RTNLGRP_IPV6_NETCONF = 24, 25
RTMGRP_NETCONF = (1 << (RTNLGRP_IPV4_NETCONF - 1)) | (1 << (RTNLGRP_IPV6_NETCONF - 1))


class netconf_msg(nlmsg):
    """struct netconfmsg (padded to 4 bytes) and the NETCONFA_* attributes
    (include/uapi/linux/netconf.h)."""

    prefix = "NETCONFA_"
    fields = (("family", "B"), ("__pad", "3x"))
    nla_map = (
        ("NETCONFA_UNSPEC", "none"),
        ("NETCONFA_IFINDEX", "int32"),
        ("NETCONFA_FORWARDING", "int32"),
        ("NETCONFA_RP_FILTER", "int32"),
        ("NETCONFA_MC_FORWARDING", "int32"),
        ("NETCONFA_PROXY_NEIGH", "int32"),
        ("NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN", "int32"),
        ("NETCONFA_INPUT", "int32"),
        ("NETCONFA_BC_FORWARDING", "int32"),
    )


POLICY: dict[int, Any] = {RTM_NEWNETCONF: netconf_msg, RTM_DELNETCONF: netconf_msg}


class SysctlsAnnounced:
    """A setting the daemon reads from /proc/sys changed: read them now."""


SYSCTLS_ANNOUNCED = SysctlsAnnounced()


def follow_netconf(ipr: IPRoute) -> None:
    """Make ipr decode netconf messages (bind RTMGRP_NETCONF to get them)."""
    ipr.register_policy(POLICY)


def written(msg: Any) -> bool:
    """A sysctl write (one value announced), not a device appearing (all of
    them) or going (none)."""
    if not isinstance(msg, nlmsg) or msg["header"]["type"] != RTM_NEWNETCONF:
        return False
    return sum(1 for name, _ in msg["attrs"] if name != "NETCONFA_IFINDEX") == 1
