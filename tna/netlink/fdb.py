"""The bridge FDB at scale: AF_BRIDGE neighbour messages decoded straight
into facts, and the FDB dumped in one go.

A large L2 domain has a million FDB entries.  pyroute2 spends ~150 us and a
few KiB decoding each into a message object, and its synchronous API runs
its event loop once per message of a dump.  So the FDB dump is one
nlm_request_batch() (one loop run), and the socket's marshal decodes
AF_BRIDGE neighbour messages, dumped or events, with decode_fdb_fast()
(tests/test_fdb_map.py holds it equal to decode.fdb_from_msg()); every
other message stays pyroute2's.  pyroute2 still owns the socket, the
requests, multipart dumps and errors.
"""

from __future__ import annotations

import struct
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from tna.model.config import AF_BRIDGE, FdbEntry
from tna.netlink.factmsg import decode_into_facts

RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NDA_LLADDR, NDA_VLAN, NDA_MASTER, NDA_FLAGS_EXT = 2, 5, 9, 15
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_EXT_LEARNED = 0x10
NTF_STICKY = 0x40
NTF_EXT_LOCKED = 0x1   # NDA_FLAGS_EXT: an entry a locked port holds back (MAB)

_HDR = struct.Struct("=IHHII")        # nlmsghdr: length, type, flags, seq, pid
_NDMSG = struct.Struct("=BxxxiHBB")   # ndmsg: family, ifindex, state, flags, type
_NLA = struct.Struct("=HH")


def fdb_from_bytes(data: bytes, offset: int, length: int) -> FdbEntry | None:
    """fdb_from_msg() of the raw AF_BRIDGE neighbour message at offset."""
    _family, port, state, flags, _type = _NDMSG.unpack_from(data, offset + _HDR.size)
    mac = bridge = None
    vid = ext = 0
    pos, end = offset + _HDR.size + _NDMSG.size, offset + length
    while pos + _NLA.size <= end:
        nla_len, nla_type = _NLA.unpack_from(data, pos)
        if nla_len < _NLA.size:
            break
        nla_type &= NLA_TYPE_MASK
        if nla_type == NDA_LLADDR and nla_len == 10:
            mac = data[pos + 4:pos + 10].hex(":")
        elif nla_type == NDA_MASTER:
            bridge = int.from_bytes(data[pos + 4:pos + 8], "little")
        elif nla_type == NDA_VLAN:
            vid = int.from_bytes(data[pos + 4:pos + 6], "little")
        elif nla_type == NDA_FLAGS_EXT:
            ext = int.from_bytes(data[pos + 4:pos + 8], "little")
        pos += (nla_len + 3) & ~3
    if bridge is None or mac is None or ext & NTF_EXT_LOCKED:
        return None
    local = bool(state & NUD_PERMANENT) or port == bridge
    dynamic = not local and not state & NUD_NOARP and not flags & NTF_EXT_LEARNED
    return FdbEntry(bridge, vid, mac, port, local, dynamic, bool(flags & NTF_STICKY))


def decode_fdb_fast(marshal: Any) -> None:
    """Make a pyroute2 socket's marshal (IPRoute().asyncore.marshal) decode
    AF_BRIDGE neighbour messages, dumped or events, into FactMsg (skipped
    for the "self" entries nothing forwards by); every other message stays
    pyroute2's."""
    decode_into_facts(marshal, RTM_NEWNEIGH, RTM_DELNEIGH, _is_fdb, fdb_from_bytes)


def _is_fdb(data: bytes, offset: int, length: int) -> bool:
    return length >= _HDR.size + _NDMSG.size and data[offset + _HDR.size] == AF_BRIDGE


def dump_fdb(ipr: IPRoute) -> list[Any]:
    """Every bridge FDB entry (FactMsg; decode_fdb_fast() must be installed
    on ipr), in one run of pyroute2's event loop."""
    req = ndmsg()
    req["family"] = AF_BRIDGE
    req["header"]["type"], req["header"]["flags"] = RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP
    return list(ipr.nlm_request_batch([req]))
