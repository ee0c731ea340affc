"""Python side of helpers/tna_abi.h.

The reason enum is read from the header itself, so the names `tna stats`
prints can never drift from the C.  The structs are ctypes mirrors; the test
tests/test_abi.py compiles the header and checks every size and offset.
"""

from __future__ import annotations

import re
from ctypes import Structure, c_uint8, c_uint16, c_uint32, c_uint64

from tna import HELPERS_DIR

ABI_HEADER = HELPERS_DIR / "tna_abi.h"


def _parse_reasons() -> list[str]:
    text = ABI_HEADER.read_text()
    body = re.search(r"enum tna_reason \{(.*?)\};", text, re.S)
    if body is None:
        raise RuntimeError(f"{ABI_HEADER}: enum tna_reason not found")
    names = re.findall(r"^\s*TNA_R_([A-Z0-9_]+)", body.group(1), re.M)
    return [n for n in names if n != "MAX"]


REASONS: list[str] = _parse_reasons()
REASON = {name: i for i, name in enumerate(REASONS)}

TNA_IF_CHECK_CSUM_PARTIAL = 1 << 0
TNA_IF_RP_STRICT = 1 << 1
TNA_IF_RP_LOOSE = 1 << 2
TNA_IF_L2_EGRESS = 1 << 3
LOCAL4_MAX = 32
LOCAL6_MAX = 16
TNA_MP_GUARD_V4 = 1 << 0
TNA_MP_GUARD_V6 = 1 << 1
TNA_FW_V4 = 1 << 0
TNA_FW_V6 = 1 << 1
TNA_CT_CSUM = 1 << 0
TNA_CT_ACCT = 1 << 1
TNA_CT_TCP_LOOSE = 1 << 2
TNA_CT_TCP_LIBERAL = 1 << 3


class TnaConfig(Structure):
    _fields_ = [("lease_jiffies", c_uint64), ("pass_reason", c_uint32), ("stale_count", c_uint32),
                ("mp_guard", c_uint32), ("route_mtu4", c_uint32), ("route_mtu6", c_uint32),
                ("local4_count", c_uint32), ("local4", c_uint32 * LOCAL4_MAX), ("fw_families", c_uint32),
                ("ct_flags", c_uint32), ("ct_timeout_tcp", c_uint32), ("ct_timeout_udp", c_uint32),
                ("local6_count", c_uint32), ("ct_max_retrans", c_uint32), ("local6", c_uint32 * 4 * LOCAL6_MAX),
                ("ct_timeout_unack", c_uint32), ("ct_timeout_retrans", c_uint32)]


class TnaState(Structure):
    _fields_ = [("deadline", c_uint64), ("renewed_at", c_uint64), ("cfg", TnaConfig)]


class TnaCounter(Structure):
    _fields_ = [("packets", c_uint64), ("bytes", c_uint64)]


class TnaIfaceCfg(Structure):
    _fields_ = [("ifindex", c_uint32), ("mac", c_uint8 * 6), ("flags", c_uint16), ("port_slot", c_uint16),
                ("pad", c_uint16)]


class TnaNeighKey(Structure):
    _fields_ = [("ifindex", c_uint32), ("family", c_uint32), ("addr", c_uint32 * 4)]


class TnaEgress(Structure):
    _fields_ = [("flags", c_uint32)]


PORT_FLAGS = {name: 1 << i for i, name in enumerate((
    "FORWARDING", "ISOLATED", "HAIRPIN", "LOCKED", "NEIGH_SUPPRESS", "NF_IP4", "NF_IP6", "NF_VLAN",
    "NF_PPPOE", "ROUTER"))}
PORTS_SIZE = 1024
FDB_LOCAL = 1 << 0
FDB_DYNAMIC = 1 << 1


class TnaPort(Structure):
    _fields_ = [("ifindex", c_uint32), ("flags", c_uint32), ("mtu", c_uint32), ("refresh_jiffies", c_uint32),
                ("br", TnaIfaceCfg)]


class TnaCtKey(Structure):
    _fields_ = [("saddr", c_uint32 * 4), ("daddr", c_uint32 * 4), ("sport", c_uint16), ("dport", c_uint16),
                ("family", c_uint8), ("proto", c_uint8), ("pad", c_uint16)]


class TnaFdbKey(Structure):
    _fields_ = [("bridge", c_uint32), ("vid", c_uint16), ("mac", c_uint8 * 6)]


class TnaFdb(Structure):
    _fields_ = [("port", c_uint32), ("port_slot", c_uint16), ("flags", c_uint16), ("refreshed", c_uint64)]


# Map names as declared in the header (what Program.find_map() looks for).
MAP_STATE = "tna_state"
MAP_DEVMAP = "tna_devmap"
MAP_EGRESS = "tna_egress"
MAP_STALE = "tna_stale"
MAP_STATS = "tna_stats"
MAP_FW_RULES = "tna_fw_rules"
FW_RULES_MAX = 16384
MAP_PORTS = "tna_ports"
MAP_FDB = "tna_fdb"
MAP_L3BR = "tna_l3br"
MAP_FW_IFACES = "tna_fw_ifaces"
MAP_CT_SYNC = "tna_ct_sync"
MAP_CT_WIN = "tna_ct_win"
SECTION_IFACE = ".rodata.tna"
SHARED_MAPS = (MAP_STATE, MAP_DEVMAP, MAP_EGRESS, MAP_STALE, MAP_PORTS, MAP_FDB, MAP_L3BR, MAP_FW_IFACES, MAP_CT_SYNC,
               MAP_CT_WIN)
PROGRAM_NAME = "tna_main"
RENEW_PROGRAM = "tna_renew"
