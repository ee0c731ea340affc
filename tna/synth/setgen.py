"""Mirrored ipsets -> C and map entries.

A set's shape (type, family) is code: an LPM trie and a test function that
builds the packet's key (firewall.c.j2 via ipset.c.j2); its members are the
trie's entries, written by the daemon (a member change is a map update,
never a recompile).  Keys put the exact fields first and the address last:

  hash:ip, hash:net          address                       prefix: the cidr
  hash:ip,port, hash:net,port proto (1) port (2, BE) address prefix: 24 + cidr
  hash:net,iface             ifindex (4, host order) address prefix: 32 + cidr

so the longest prefix is the kernel's most specific cidr among entries
with equal exact fields (ip_set_hash_gen.h mtype_test_cidrs()).  Values:
TNA_SET_MATCH or TNA_SET_NOMATCH (a `nomatch` entry; tna_abi.h).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Mapping
from typing import Any

from tna.bpf.abi import TNA_SET_MATCH, TNA_SET_NOMATCH
from tna.model.ipset import DIMENSIONS, NOMATCH_TYPES, PORT_TYPES, IpSet, SetMatch, SetShape


def map_name(name: str) -> str:
    """The C symbol of a set's map: set names may hold any character."""
    return f"ips_{re.sub('[^A-Za-z0-9]', '_', name)[:24]}_{zlib.crc32(name.encode()):08x}"


def _prefix_bytes(shape: SetShape) -> int:
    """Bytes of the exact fields before the address."""
    return 3 if shape.type in PORT_TYPES else 4 if shape.type == "hash:net,iface" else 0


def _addr_bytes(shape: SetShape) -> int:
    return 4 if shape.family == 4 else 16


def condition(m: SetMatch) -> str:
    """C for one mirrored set match (negation included)."""
    assert m.shape is not None
    if len(m.dirs) < DIMENSIONS[m.shape.type] or m.shape.family != m.family:
        test = "0"  # the kernel's ip_set_test() answers no match
    else:
        flags = ", ".join("1" if (len(m.dirs) > k and m.dirs[k] == "src") else "0" for k in range(2))
        # only the types with nomatch entries invert with --return-nomatch (ip_set_test())
        inverted = m.return_nomatch and m.shape.type in NOMATCH_TYPES
        test = f"{map_name(m.name)}_test(f, {flags}) == {'TNA_SET_NOMATCH' if inverted else 'TNA_SET_MATCH'}"
    return f"!({test})" if m.neg else f"({test})"


def render_data(shapes: tuple[SetShape, ...]) -> list[dict[str, Any]]:
    """What ipset.c.j2 needs per mirrored set."""
    out = []
    for s in shapes:
        pre, addr = _prefix_bytes(s), _addr_bytes(s)
        fill = []
        if s.type in PORT_TYPES:
            # ip_set_getport.c: ports of TCP, UDP, SCTP, UDPLITE (not DCCP:
            # port 0), none (no match) without a whole SCTP header (fw_l4()
            # needs only the ports) or for IPv4 protocol 0; ICMP and ICMPv6
            # of either family give type and code (fw_l4() reads both)
            fill += ["if (f->proto == IPPROTO_SCTP && f->l4len < 12)", "\treturn 0;"]
            if s.family == 4:
                fill += ["if (f->proto == 0)", "\treturn 0;"]
            fill += ["k.data[0] = f->proto;",
                     "__u16 port = f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP || f->proto == IPPROTO_SCTP "
                     "|| f->proto == IPPROTO_UDPLITE ? (src2 ? f->sport : f->dport) : f->has_icmp ? "
                     "(__u16)(f->icmp_type << 8 | f->icmp_code) : 0;",
                     "k.data[1] = port >> 8;", "k.data[2] = port & 0xff;"]
        elif s.type == "hash:net,iface":
            fill.append("__u32 ifindex = src2 ? f->iif : f->oif; __builtin_memcpy(k.data, &ifindex, 4);")
        fill.append(f"__builtin_memcpy(&k.data[{pre}], src ? f->saddr : f->daddr, {addr});")
        out.append({"map": map_name(s.name), "name": s.name.replace("*/", "* /"), "type": s.type,
                    "family": s.family, "size": pre + addr, "bits": (pre + addr) * 8, "fill": fill})
    return out


def map_sizes(shapes: tuple[SetShape, ...]) -> dict[str, int]:
    """Each mirrored set's map and its capacity (set before the load)."""
    return {map_name(s.name): s.capacity for s in shapes}


@functools.lru_cache(maxsize=64)
def set_entries(shape: SetShape, s: IpSet, ifindexes: tuple[tuple[str, int], ...]) -> dict[bytes, bytes]:
    """The trie entries of a set: key (prefixlen, data, padding) -> value.
    ifindexes: interface name -> index (hash:net,iface entries naming no
    interface are left out: no packet carries that name)."""
    pre, addr = _prefix_bytes(shape), _addr_bytes(shape)
    pad = (-(pre + addr)) % 4  # the C key struct is padded to 4 bytes
    index = dict(ifindexes)
    out = {}
    for e in s.members:
        if shape.type in PORT_TYPES:
            head = bytes([e.proto or 0]) + (e.port or 0).to_bytes(2, "big")
        elif shape.type == "hash:net,iface":
            if e.iface not in index:
                continue
            head = index[e.iface].to_bytes(4, "little")
        else:
            head = b""
        key = (pre * 8 + e.net.prefixlen).to_bytes(4, "little") + head + e.net.network_address.packed + bytes(pad)
        out[key] = bytes([TNA_SET_NOMATCH if e.nomatch else TNA_SET_MATCH])
    return out


def all_entries(shapes: tuple[SetShape, ...], sets: Mapping[str, IpSet],
                ifnames: Mapping[int, str]) -> dict[str, dict[bytes, bytes]]:
    """Every mirrored set's map entries, by map name."""
    ifindexes = tuple(sorted((name, i) for i, name in ifnames.items()))
    return {map_name(sh.name): set_entries(sh, sets[sh.name], ifindexes) if sh.name in sets else {}
            for sh in shapes}
