"""Route messages decoded straight into facts, the way fdb.py decodes FDB
entries: a full table is a million messages, a BGP session reset hundreds
of thousands, and pyroute2 spends ~60 us and KiBs on each message object
before decode.route_from_msg() reads eight attributes of it.

route_from_bytes() reads those same attributes from the raw message
(tests/test_route_decode.py holds it equal to route_from_msg() on recorded
and generated messages); decode_routes_fast() installs it in a pyroute2
marshal, which still owns the socket, the requests, multipart dumps and
errors.  Every other message stays pyroute2's.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from tna.model.routes import AF_INET, AF_INET6, Route
from tna.netlink.decode import NLM_F_APPEND, NLM_F_REPLACE, RTM_DELROUTE, RTM_NEWROUTE, RTPROT_RA
from tna.netlink.factmsg import decode_into_facts

RTA_DST, RTA_SRC, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_MULTIPATH, RTA_CACHEINFO, RTA_TABLE, \
    RTA_NH_ID = 1, 2, 4, 5, 6, 8, 9, 12, 15, 30
RTA_EXPIRES_AT = 8  # struct rta_cacheinfo: rta_clntref, rta_lastuse, then rta_expires
RTAX_MTU = 2
NLA_TYPE_MASK = 0x3FFF

_HDR = struct.Struct("=IHHII")       # nlmsghdr: length, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NLA = struct.Struct("=HH")
_RTNH = struct.Struct("=HBBi")        # rtnexthop: len, flags, hops, ifindex
_U32 = struct.Struct("=I")


def _attrs(data: bytes, pos: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload start, payload end) of the attributes in
    data[pos:end] (of a type sent twice the last, as route_from_msg() keeps)."""
    out: dict[int, tuple[int, int]] = {}
    while pos + _NLA.size <= end:
        nla_len, nla_type = _NLA.unpack_from(data, pos)
        if nla_len < _NLA.size or pos + nla_len > end:
            break
        out[nla_type & NLA_TYPE_MASK] = (pos + _NLA.size, pos + nla_len)
        pos += (nla_len + 3) & ~3
    return out


def _u32(data: bytes, span: tuple[int, int] | None) -> int | None:
    return None if span is None or span[1] - span[0] < 4 else _U32.unpack_from(data, span[0])[0]


def _addr(family: int, data: bytes, span: tuple[int, int] | None) -> str | None:
    if span is None:
        return None
    return socket.inet_ntop(socket.AF_INET if family == AF_INET else socket.AF_INET6, data[span[0]:span[1]])


def _hops(data: bytes, span: tuple[int, int]) -> int:
    """The next hops in RTA_MULTIPATH (struct rtnexthop each, its attributes inside)."""
    pos, end, n = span[0], span[1], 0
    while pos + _RTNH.size <= end:
        rtnh_len = _RTNH.unpack_from(data, pos)[0]
        if rtnh_len < _RTNH.size:
            break
        n += 1
        pos += (rtnh_len + 3) & ~3
    return n


def route_from_bytes(data: bytes, offset: int, length: int) -> Route | None:
    """decode.route_from_msg() of the raw route message at offset."""
    _len, _kind, flags, _seq, _pid = _HDR.unpack_from(data, offset)
    family, dst_len, src_len, tos, table, proto, _scope, rtype, _rtm_flags = \
        _RTMSG.unpack_from(data, offset + _HDR.size)
    if family not in (AF_INET, AF_INET6):
        return None
    a = _attrs(data, offset + _HDR.size + _RTMSG.size, offset + length)
    # a route by nexthop object: its next hops are the object's (see route_from_msg())
    nhid = _u32(data, a.get(RTA_NH_ID)) or 0
    mtu = 0
    if (metrics := a.get(RTA_METRICS)) is not None:
        mtu = _u32(data, _attrs(data, metrics[0], metrics[1]).get(RTAX_MTU)) or 0
    multipath = a.get(RTA_MULTIPATH)
    cache = a.get(RTA_CACHEINFO)
    expires = proto == RTPROT_RA or (cache is not None and cache[1] - cache[0] >= RTA_EXPIRES_AT + 4
                                     and _U32.unpack_from(data, cache[0] + RTA_EXPIRES_AT)[0] != 0)
    return _route({
        "family": family,
        "table": _u32(data, a.get(RTA_TABLE)) or table,
        "dst": _addr(family, data, a.get(RTA_DST)) or ("0.0.0.0" if family == AF_INET else "::"),
        "dst_len": dst_len,
        "type": rtype,
        "oif": None if nhid else _u32(data, a.get(RTA_OIF)),
        "gateway": None if nhid else _addr(family, data, a.get(RTA_GATEWAY)),
        "multipath": 0 if nhid or multipath is None else _hops(data, multipath),
        "mtu": mtu,
        "nhid": nhid,
        "tos": tos,
        "priority": _u32(data, a.get(RTA_PRIORITY)) or 0,
        "src_len": src_len,
        "src": _addr(family, data, a.get(RTA_SRC)),
        "expires": expires,
        "replace": bool(flags & NLM_F_REPLACE),
        "append": bool(flags & NLM_F_APPEND),
    })


def _route(fields: dict[str, Any]) -> Route:
    """Route(**fields), every field given, without the frozen dataclass's
    __init__ (an object.__setattr__ per field: 2.4 us of the ~5 a message
    cost to decode; a dump or a burst is hundreds of thousands)."""
    route = object.__new__(Route)
    route.__dict__.update(fields)
    return route


def decode_routes_fast(marshal: Any) -> None:
    """Make a pyroute2 marshal decode route messages, dumped or events,
    into FactMsg (skipped for a family the model does not follow); every
    other message stays pyroute2's."""
    decode_into_facts(marshal, RTM_NEWROUTE, RTM_DELROUTE, _is_route, route_from_bytes)


def _is_route(_data: bytes, _offset: int, length: int) -> bool:
    return length >= _HDR.size + _RTMSG.size
