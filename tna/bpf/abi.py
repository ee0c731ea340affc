"""Python side of tna/helpers/tna_abi.h.

The reason enum, every #define (flags, sizes, limits, program and section
names, the TC filter's priority/handle) and the map names are read from the
header itself, so nothing shared can drift from the C.  The structs are
ctypes mirrors; tests/test_abi.py compiles the header and checks every
value, size and offset.
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


def _parse_defines() -> dict[str, int | str]:
    """Every `#define NAME VALUE` of the header: integers, (1U << n), an OR of
    earlier defines, "strings" and names (a C identifier, kept as its text)."""
    out: dict[str, int | str] = {}
    for name, value in re.findall(r"^#define ([A-Z][A-Z0-9_]*)[ \t]+(.+?)\s*(?:/\*.*)?$",
                                  ABI_HEADER.read_text(), re.M):
        if m := re.fullmatch(r"\(1U << (\d+)\)", value):
            out[name] = 1 << int(m.group(1))
        elif re.fullmatch(r"0x[0-9A-Fa-f]+|\d+", value):
            out[name] = int(value, 0)
        elif m := re.fullmatch(r"\(([A-Z][A-Z0-9_]*(?: \| [A-Z][A-Z0-9_]*)+)\)", value):
            bits = 0
            for term in m.group(1).split(" | "):
                if not isinstance(bit := out.get(term), int):
                    raise RuntimeError(f"{ABI_HEADER}: #define {name} {value}: {term} is no earlier integer")
                bits |= bit
            out[name] = bits
        elif m := re.fullmatch(r'"([^"]*)"|([a-z_][a-z0-9_]*)', value):
            out[name] = m.group(1) if m.group(1) is not None else m.group(2)
        else:
            raise RuntimeError(f"{ABI_HEADER}: #define {name} {value}: not a value abi.py reads")
    return out


DEFINES = _parse_defines()
MAP_NAMES: tuple[str, ...] = tuple(re.findall(r'^\} (\w+) SEC\("\.maps"\);', ABI_HEADER.read_text(), re.M))


def _int(name: str) -> int:
    value = DEFINES[name]
    assert isinstance(value, int), name
    return value


def _str(name: str) -> str:
    value = DEFINES[name]
    assert isinstance(value, str), name
    return value


def _map(name: str) -> str:
    if name not in MAP_NAMES:
        raise RuntimeError(f"{ABI_HEADER}: no map {name}")
    return name


TNA_IF_CHECK_CSUM_PARTIAL = _int("TNA_IF_CHECK_CSUM_PARTIAL")
TNA_IF_RP_STRICT = _int("TNA_IF_RP_STRICT")
TNA_IF_RP_LOOSE = _int("TNA_IF_RP_LOOSE")
TNA_IF_L2_EGRESS = _int("TNA_IF_L2_EGRESS")
LOCAL4_MAX = _int("TNA_LOCAL4_MAX")
LOCAL6_MAX = _int("TNA_LOCAL6_MAX")
TNA_MP_GUARD_V4 = _int("TNA_MP_GUARD_V4")
TNA_MP_GUARD_V6 = _int("TNA_MP_GUARD_V6")
TNA_MP_INNER_V4 = _int("TNA_MP_INNER_V4")
TNA_MP_INNER_V6 = _int("TNA_MP_INNER_V6")
TNA_MP_ALL_V4 = _int("TNA_MP_ALL_V4")
TNA_MP_ALL_V6 = _int("TNA_MP_ALL_V6")
TNA_MP_ICMP6_LABEL = _int("TNA_MP_ICMP6_LABEL")
TNA_FW_V4 = _int("TNA_FW_V4")
TNA_FW_V6 = _int("TNA_FW_V6")
TNA_XFRM_SA = _int("TNA_XFRM_SA")
TNA_SET_MATCH = _int("TNA_SET_MATCH")
TNA_SET_NOMATCH = _int("TNA_SET_NOMATCH")
TNA_CT_CSUM = _int("TNA_CT_CSUM")
TNA_CT_ACCT = _int("TNA_CT_ACCT")
TNA_CT_TCP_LOOSE = _int("TNA_CT_TCP_LOOSE")
TNA_CT_TCP_LIBERAL = _int("TNA_CT_TCP_LIBERAL")
TNA_CT_IGNORE_INVALID_RST = _int("TNA_CT_IGNORE_INVALID_RST")
CT_SYNC_LIBERAL = _int("TNA_CT_SYNC_LIBERAL")
CT_SYNC_CLOSE = _int("TNA_CT_SYNC_CLOSE")
TNA_TC_PRIORITY = _int("TNA_TC_PRIORITY")
TNA_TC_HANDLE = _int("TNA_TC_HANDLE")
TC_FILTER = (TNA_TC_PRIORITY, TNA_TC_HANDLE)  # (priority, handle), as tc_filters() lists filters
# conntrack states a packet could have (the firewall's fw_pkt.ct)
FW_CT = {state: _int(f"FW_CT_{state}") for state in ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED")}


FW_HOLD_MAX = _int("TNA_FW_HOLD_MAX")


class TnaFwHold(Structure):
    _fields_ = [("saddr", c_uint32 * 4), ("daddr", c_uint32 * 4), ("sport_lo", c_uint16), ("sport_hi", c_uint16),
                ("dport_lo", c_uint16), ("dport_hi", c_uint16), ("family", c_uint8), ("proto", c_uint8),
                ("src_len", c_uint8), ("dst_len", c_uint8)]


class TnaConfig(Structure):
    _fields_ = [("lease_jiffies", c_uint64), ("pass_reason", c_uint32), ("stale_count", c_uint32),
                ("mp_guard", c_uint32), ("route_mtu4", c_uint32), ("route_mtu6", c_uint32),
                ("local4_count", c_uint32), ("local4", c_uint32 * LOCAL4_MAX), ("fw_families", c_uint32),
                ("ct_flags", c_uint32), ("ct_timeout_tcp", c_uint32), ("ct_timeout_udp", c_uint32),
                ("local6_count", c_uint32), ("ct_max_retrans", c_uint32), ("local6", c_uint32 * 4 * LOCAL6_MAX),
                ("ct_timeout_unack", c_uint32), ("ct_timeout_retrans", c_uint32), ("hz", c_uint32),
                ("ct_timeout_udp_unreplied", c_uint32), ("pass_cache_jiffies", c_uint32),
                ("rpf_doubt", c_uint32), ("xfrm_families", c_uint32), ("nft_heard", c_uint32),
                ("fw_hold_count", c_uint32), ("fw_hold", TnaFwHold * FW_HOLD_MAX)]


class TnaState(Structure):
    _fields_ = [("deadline", c_uint64), ("renewed_at", c_uint64), ("cfg", TnaConfig), ("nft_seen", c_uint32),
                ("pad", c_uint32)]


class TnaCounter(Structure):
    _fields_ = [("packets", c_uint64), ("bytes", c_uint64)]


class TnaIfaceCfg(Structure):
    _fields_ = [("ifindex", c_uint32), ("mac", c_uint8 * 6), ("flags", c_uint16), ("port_slot", c_uint16),
                ("pad", c_uint16)]


class TnaNeighKey(Structure):
    _fields_ = [("ifindex", c_uint32), ("family", c_uint32), ("addr", c_uint32 * 4)]


class TnaEgress(Structure):
    _fields_ = [("flags", c_uint32)]


PORT_FLAGS = {name: _int(f"TNA_PORT_{name}") for name in (
    "FORWARDING", "ISOLATED", "HAIRPIN", "LOCKED", "NEIGH_SUPPRESS", "NF_IP4", "NF_IP6", "NF_VLAN",
    "NF_PPPOE", "ROUTER", "LEARNING", "BR_PROMISC")}
PORTS_SIZE = _int("TNA_PORTS_SIZE")
STALE_SIZE = _int("TNA_STALE_SIZE")  # the smallest tna_stale: the daemon sizes it from gc_thresh3
FDB_SIZE = _int("TNA_FDB_SIZE")  # the smallest tna_fdb: the daemon sizes it from the kernel's FDB
FDB_LOCAL = _int("TNA_FDB_LOCAL")
FDB_DYNAMIC = _int("TNA_FDB_DYNAMIC")
FDB_STICKY = _int("TNA_FDB_STICKY")


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
MAP_STATE = _map("tna_state")
MAP_DEVMAP = _map("tna_devmap")
MAP_EGRESS = _map("tna_egress")
MAP_STALE = _map("tna_stale")
MAP_STATS = _map("tna_stats")
MAP_FW_RULES = _map("tna_fw_rules")
FW_RULES_MAX = _int("TNA_FW_RULES_MAX")
MAP_PORTS = _map("tna_ports")
MAP_FDB = _map("tna_fdb")
MAP_L3BR = _map("tna_l3br")
MAP_FW_IFACES = _map("tna_fw_ifaces")
MAP_CT_SYNC = _map("tna_ct_sync")
MAP_CT_BELL = _map("tna_ct_bell")
MAP_CT_WIN = _map("tna_ct_win")
SECTION_IFACE = _str("TNA_SECTION_IFACE")
# every map but the per-program counters: created by the first load, reused by every later one
SHARED_MAPS = tuple(m for m in MAP_NAMES if m not in (MAP_STATS, MAP_FW_RULES))
PROGRAM_NAME = _str("TNA_PROGRAM")
RENEW_PROGRAM = _str("TNA_RENEW_PROGRAM")
NFT_SEEN_PROGRAM = _str("TNA_NFT_SEEN_PROGRAM")
NFT_SEEN = _int("TNA_NFT_SEEN")  # tna_state.nft_seen's mark: a generation seen
