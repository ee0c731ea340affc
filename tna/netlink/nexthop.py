"""Nexthop objects (RTM_NEWNEXTHOP) and the routes that use them (RTA_NH_ID).

This pyroute2 has no nexthop message and stops decoding route attributes
before RTA_NH_ID, so both are declared here in pyroute2's own terms and
registered on each rtnetlink socket (and on the marshal the unit tests
replay recordings with).  With net.ipv4.nexthop_compat_mode=0 a route
message names its nexthop object only by id: without these a multipath
route by nexthop group looks like a route with no next hop at all.
"""

from __future__ import annotations

from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, nlmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg_base

RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106
RTNLGRP_NEXTHOP = 32
RTMGRP_NEXTHOP = 1 << (RTNLGRP_NEXTHOP - 1)  # still within bind()'s 32-bit group mask


class route_msg(rtmsg_base, nlmsg):
    """struct rtmsg with the attributes up to RTA_NH_ID (include/uapi/linux/rtnetlink.h).
    A sibling of pyroute2's rtmsg, not a subclass: pyroute2 compiles an
    attribute table once per class and a subclass would inherit rtmsg's."""

    nla_map = (*rtmsg_base.nla_map,
               ("RTA_PAD", "hex"),
               ("RTA_UID", "uint32"),
               ("RTA_TTL_PROPAGATE", "uint8"),
               ("RTA_IP_PROTO", "uint8"),
               ("RTA_SPORT", "be16"),
               ("RTA_DPORT", "be16"),
               ("RTA_NH_ID", "uint32"))


class nh_msg(nlmsg):
    """struct nhmsg and the NHA_* attributes up to NHA_FDB (include/uapi/linux/nexthop.h).
    NHA_GROUP is an array of struct nexthop_grp {u32 id; u8 weight, weight_high;
    u16 resvd}: as u32 words, the member ids are the even ones."""

    prefix = "NHA_"
    fields = (("family", "B"), ("scope", "B"), ("protocol", "B"), ("resvd", "B"), ("flags", "I"))
    nla_map = (
        ("NHA_UNSPEC", "none"),
        ("NHA_ID", "uint32"),
        ("NHA_GROUP", "array(I)"),
        ("NHA_GROUP_TYPE", "uint16"),
        ("NHA_BLACKHOLE", "flag"),
        ("NHA_OIF", "uint32"),
        ("NHA_GATEWAY", "target"),
        ("NHA_ENCAP_TYPE", "uint16"),
        ("NHA_ENCAP", "hex"),
        ("NHA_GROUPS", "flag"),
        ("NHA_MASTER", "uint32"),
        ("NHA_FDB", "flag"),
    )


POLICY: dict[int, Any] = {RTM_NEWROUTE: route_msg, RTM_DELROUTE: route_msg,
                          RTM_NEWNEXTHOP: nh_msg, RTM_DELNEXTHOP: nh_msg}


class Marshal(MarshalRtnl):
    """pyroute2's rtnetlink marshal, with route and nexthop messages as above."""

    msg_map = {**MarshalRtnl.msg_map, **POLICY}


def follow_nexthops(ipr: IPRoute) -> None:
    """Make ipr decode nexthop messages and routes' RTA_NH_ID."""
    ipr.register_policy(POLICY)
    # this pyroute2's IPRoute leaves the option its generic nlm_request() reads unset
    ipr.status.setdefault("nlm_generator", False)


def get_nexthops(ipr: IPRoute) -> list[Any]:
    """Dump every nexthop object of the namespace (singles and groups)."""
    return list(ipr.nlm_request(nh_msg(), msg_type=RTM_GETNEXTHOP, msg_flags=NLM_F_REQUEST | NLM_F_DUMP))
