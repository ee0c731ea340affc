"""The chains of every table a packet passes (tna/model/hooks.py) -> C:
one function per chain, one `if` per rule, one map lookup per set of
same-shaped rules; per path, the base chains called in the kernel's
order (by hook and priority), in four groups (before conntrack, before a
DNAT, prerouting after it, routed).

Rule matches become C conditions over `struct fw_pkt` (firewall.c.j2);
addresses are compared in network byte order as the packet holds them, so
constants are emitted as the u32 a little-endian load of those bytes gives.
A rule TNA cannot express keeps its expressible matches and sends what they
match to the kernel; the rest of its matches are the kernel's to judge.

A RuleSet (tna/model/firewall.py) becomes an LPM trie per program: the code
knows only the set's shape (which fields, in which order), its rules are the
map's entries (set_entries()), so a set of 10,000 rules costs one lookup and
no compile time.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any

from tna.bpf.abi import FW_CT, FW_RULES_MAX
from tna.model.firewall import Firewall, FwChain, RuleSet, code_size
from tna.model.iptables import ADDR_TYPES, Neg, Rule
from tna.synth import setgen

MAX_COMPILED_RULES = 256  # rules compiled as code (a set of rules counts as one)
IFACE_PATTERNS_MAX = 64   # tna_fw_ifaces holds a u64 of pattern bits per interface


def unfit(fw: Firewall) -> str | None:
    """Why fw cannot be compiled into the fast path, None if it can."""
    if len(fw.ifaces) > IFACE_PATTERNS_MAX:
        return f"{len(fw.ifaces)} interface patterns in filter rules (at most {IFACE_PATTERNS_MAX} are modelled)"
    used = [cs for cs in (fw.fwd4, fw.fwd6, fw.in4, fw.in6) if cs]
    counted = sum(len(c.rules) + 1 for cs in used for c in cs)
    if counted > FW_RULES_MAX:
        return f"{counted} filter rules: the fast path counts at most {FW_RULES_MAX}"
    size = sum(code_size(cs) for cs in used)
    if size > MAX_COMPILED_RULES:
        # one `if` per rule: clang takes ~0.5 s for 100 rules but a minute
        # for 1,000; sets of same-shaped rules are one lookup each
        return (f"{size} filter rules (or sets of rules) would be compiled as code: at most "
                f"{MAX_COMPILED_RULES} are")
    return None


def _words(packed: bytes) -> list[int]:
    return [int.from_bytes(packed[i:i + 4], "little") for i in range(0, len(packed), 4)]


def _net(field: str, m: Neg) -> str:
    net = m.value
    assert isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network))
    terms = [f"(f->{field}[{i}] & 0x{mw:08x}U) == 0x{nw:08x}U"
             for i, (nw, mw) in enumerate(zip(_words(net.network_address.packed), _words(net.netmask.packed),
                                              strict=True)) if mw]
    return " && ".join(terms) or "1"


def _ranges(field: str, ranges: Any) -> str:
    return " || ".join(f"f->{field} == {lo}" if lo == hi else f"(f->{field} >= {lo} && f->{field} <= {hi})"
                       for lo, hi in ranges)


FW_CT_ALL = sum(FW_CT.values())
FW_CT_NO_ENTRY = FW_CT["INVALID"] | FW_CT["UNTRACKED"]


def _ct_holds(rule: Rule) -> str:
    """C for the FW_CT_* states in which the rule's conntrack match holds
    (model: firewall._conntrack): those its state match allows, of them
    the ones without an entry only if it has a state match, the ones with
    an entry only if the direction and status hold (f->ct_dir/ct_status:
    the entry's, or a new one's: 0)."""
    allowed = FW_CT_ALL
    if rule.ctstate is not None:
        states = rule.ctstate.value
        assert isinstance(states, frozenset)
        mask = sum(FW_CT[s] for s in states)
        allowed = FW_CT_ALL & ~mask if rule.ctstate.neg else mask
    without = allowed & FW_CT_NO_ENTRY if rule.ctstate is not None else 0
    entry = []
    if rule.ctdir is not None:
        entry.append(f"f->ct_dir == {int(rule.ctdir == 'REPLY')}")
    if rule.ctstatus is not None:
        entry.append(f"{'!' if rule.ctstatus.neg else ''}(f->ct_status & 0x{rule.ctstatus.value:02x})")
    if not entry:
        return f"0x{allowed:02x}"
    return f"(0x{without:02x} | (({' && '.join(entry)}) ? 0x{allowed & ~FW_CT_NO_ENTRY:02x} : 0))"


def _dst_types(m: Neg) -> str:
    """The bits (1 << RTN_*, as f->dst_types holds them) of the types --dst-type accepts."""
    wanted = sum(1 << ADDR_TYPES[t] for t in m.value)  # type: ignore[attr-defined]
    return f"0x{(~wanted & ((1 << len(ADDR_TYPES)) - 1)) if m.neg else wanted:04x}"


def _condition(rule: Rule, ifaces: tuple[str, ...], could: bool = False) -> str:
    """C for the rule's expressible matches; could: a state match need only
    hold for some of the packet's possible states."""
    terms = []

    def add(m: Neg | None, expr: str) -> None:
        if m is not None:
            terms.append(f"!({expr})" if m.neg else f"({expr})")

    add(rule.src, _net("saddr", rule.src) if rule.src else "")
    add(rule.dst, _net("daddr", rule.dst) if rule.dst else "")
    if rule.iif is not None:
        add(rule.iif, f"(f->in_mask >> {ifaces.index(str(rule.iif.value))}) & 1")
    if rule.oif is not None:
        add(rule.oif, f"(f->out_mask >> {ifaces.index(str(rule.oif.value))}) & 1")
    if rule.proto is not None:
        add(rule.proto, "1" if rule.proto.value == 0 else f"f->proto == {rule.proto.value}")
    if rule.sport is not None:
        add(rule.sport, f"f->has_ports && ({_ranges('sport', rule.sport.value)})")
    if rule.dport is not None:
        add(rule.dport, f"f->has_ports && ({_ranges('dport', rule.dport.value)})")
    if rule.ports is not None:
        add(rule.ports, f"f->has_ports && ({_ranges('sport', rule.ports.value)} || "
                        f"{_ranges('dport', rule.ports.value)})")
    if rule.tcp_flags is not None:
        mask, comp = rule.tcp_flags.value  # type: ignore[misc]
        add(rule.tcp_flags, f"f->proto == 6 && (f->tcp_flags & 0x{mask:02x}) == 0x{comp:02x}")
    if rule.icmp_type is not None:
        t, code = rule.icmp_type.value  # type: ignore[misc]
        add(rule.icmp_type, f"f->has_icmp && f->icmp_type == {t}" + (f" && f->icmp_code == {code}" if code is not None
                                                                       else ""))
    if rule.fragment is not None:
        add(rule.fragment, "0")  # the fast path never sees fragments
    if rule.uses_ct:
        # for some of the packet's possible states (could), or for all
        terms.append(f"(f->ct & {_ct_holds(rule)})" if could else f"!(f->ct & ~{_ct_holds(rule)})")
    if rule.dst_type is not None:
        # f->dst_types: the types the destination could have, 0 unknown
        held = _dst_types(rule.dst_type)
        terms.append(f"(!f->dst_types || (f->dst_types & {held}))" if could else
                     f"(f->dst_types && !(f->dst_types & ~{held}))")
    if rule.rpf is not None:
        # f->rpf: 1 when the route back leaves by the input device, 0 unknown
        # (the fast path never knows that it does not: the kernel decides)
        if rule.rpf.neg:
            terms.append("!f->rpf" if could else "0")
        elif not could:
            terms.append("f->rpf")
    if rule.mark is not None:
        value, mask = rule.mark.value  # type: ignore[misc]
        add(rule.mark, f"(f->mark & 0x{mask:08x}U) == 0x{value:08x}U")
    terms += [setgen.condition(m) for m in rule.sets if m.shape is not None]  # the others: the kernel's
    if len(terms) == 1 and terms[0].startswith("("):
        return terms[0][1:-1]  # `if ((a == b))` is an error under -Wall -Werror
    return " && ".join(terms) or "1"


def _maybe(rule: Rule, ifaces: tuple[str, ...]) -> str | None:
    """When an expressible rule's conntrack, address type or reverse-path
    match holds for some but not all of the packet's possible states,
    destination types or routes back (its other matches holding): the
    kernel, which knows, decides."""
    doubts = []
    if rule.uses_ct:
        doubts.append(f"(f->ct & ~{_ct_holds(rule)})")
    if rule.dst_type is not None:
        doubts.append(f"(!f->dst_types || (f->dst_types & ~{_dst_types(rule.dst_type)}))")
    if rule.rpf is not None:
        doubts.append("!f->rpf")
    if not doubts or not rule.expressible:
        return None
    return f"({_condition(rule, ifaces, could=True)}) && ({' || '.join(doubts)})"


# RETURN ends a user chain (the caller goes on) but a built-in chain by its
# policy, which the kernel then counts too: the chain's code jumps to it.
RETURN_USER, RETURN_BUILTIN = "return FW_CONT;", "goto policy;"
# a policy the kernel applies (tna/model/nftables.py: a table that goes with its owner's socket)
POLICY_TEXT = {"KERNEL": "policy DROP (the kernel's: the table goes with its owner)"}


def _action(rule: Rule, fn: str, rid: int, ret: str) -> str:
    """What a matching rule does (fn: its jump's function; ret: what RETURN
    does in its chain).  The rules applied are recorded and counted only if
    the fast path decides the packet: one that ends with the kernel is
    counted there, whole."""
    if not rule.expressible:
        return "return FW_KERNEL;"
    count = f"fw_step(f, {rid});"
    if rule.target == "ACCEPT":
        return f"{{ {count} return FW_ACCEPT; }}"
    if rule.target == "DROP":
        return f"{{ {count} return FW_DROP; }}"
    if rule.target == "RETURN":
        return f"{{ {count} {ret} }}"
    if rule.target == "CONTINUE":
        return count  # counted, the next rule follows
    # -g pushes no return position: the end of its chain ends this one
    after = f" {ret}" if rule.goto else ""
    return f"{{ {count} int r = {fn}(f); if (r != FW_CONT) return r;{after} }}"


@dataclass(frozen=True)
class RuleRef:
    """What counter id `id` of tna_fw_rules counts (index 0: the policy)."""

    id: int
    family: int
    chain: str
    index: int
    text: str
    table: str = "filter"
    handle: int | None = None  # an nft rule's (its Rules share its one kernel counter)


@functools.lru_cache(maxsize=4)
def rule_refs(fw: Firewall | None) -> list[RuleRef]:
    """Every counted rule and policy in the chains' order (cached: asked per
    program, per status write, per stats read; do not modify).  The ids of
    the code's rules and policies come first, those of the sets' rules after
    all of them: the code holds its ids as constants, so a rule joining or
    leaving a set changes map entries only, never the source (no clang run)."""
    if fw is None:
        return []
    shown: list[tuple[int, FwChain, Rule | None, bool]] = []  # (family, chain, rule or None: policy, in a set)
    # a chain both INPUT and FORWARD pass (raw PREROUTING, a user chain)
    # has one counter per rule
    seen: set[tuple[int, str, str]] = set()
    for family, chains in ((4, fw.fwd4), (6, fw.fwd6), (4, fw.in4), (6, fw.in6)):
        for c in chains or ():
            if (family, c.table, c.name) in seen:
                continue
            seen.add((family, c.table, c.name))
            for seg in c.parts:
                shown += ([(family, c, r, True) for r in seg.rules] if isinstance(seg, RuleSet)
                          else [(family, c, seg, False)])
            if c.policy is not None:
                shown.append((family, c, None, False))
    if len(shown) > FW_RULES_MAX:
        raise ValueError(f"{len(shown)} filter rules: at most {FW_RULES_MAX} are counted")
    order = sorted(range(len(shown)), key=lambda k: shown[k][3])  # stable: code first, in the chains' order
    ids = {k: i for i, k in enumerate(order)}
    return [RuleRef(ids[k], family, c.name, 0, POLICY_TEXT.get(c.policy or "", f"policy {c.policy}"), c.table)
            if r is None
            else RuleRef(ids[k], family, c.name, r.index, r.text, c.table, r.handle)
            for k, (family, c, r, _) in enumerate(shown)]


FIELD_BYTES = {"proto": 1, "sport": 2, "dport": 2}


def _field_size(field: str, family: int) -> int:
    return FIELD_BYTES.get(field, 4 if family == 4 else 16)


def _set_data(rs: RuleSet, family: int, name: str, ret: str) -> dict[str, Any]:
    """What firewall.c.j2 needs to look a packet up in one set's map."""
    fill, off = [], 0
    for field in rs.fields:
        size = _field_size(field, family)
        if field == "proto":
            fill.append(f"k.data[{off}] = f->proto;")
        elif field in ("sport", "dport"):
            fill.append(f"{{ __be16 p = bpf_htons(f->{field}); __builtin_memcpy(&k.data[{off}], &p, 2); }}")
        else:
            fill.append(f"__builtin_memcpy(&k.data[{off}], f->{'saddr' if field == 'src' else 'daddr'}, {size});")
        off += size
    exit_ = {"ACCEPT": "return FW_ACCEPT;", "DROP": "return FW_DROP;", "RETURN": ret}[rs.target]
    return {"set": name, "size": off, "bits": off * 8, "fill": fill,
            "guard": "f->has_ports" if {"sport", "dport"} & set(rs.fields) else "1",
            "exit": exit_, "text": _comment(f"a set of rules: {', '.join(rs.fields)} -> {rs.target}")}


def _values(rule: Rule, field: str, family: int) -> list[tuple[bytes, int]]:
    """A rule's (bytes, prefix bits) for one key field."""
    m = getattr(rule, field)
    if field == "proto":
        return [(bytes([m.value]), 8)]
    if field in ("sport", "dport"):
        return [(p.to_bytes(2, "big"), 16) for lo, hi in m.value for p in range(lo, hi + 1)]
    net = m.value
    return [(net.network_address.packed, net.prefixlen)]


def set_entries(rs: RuleSet, family: int, ids: dict[int, int]) -> dict[bytes, bytes]:
    """The LPM entries of a set: key (prefixlen, data) -> counter id of the
    first rule matching whatever matches that entry.  ids: rule index ->
    counter id.  A longest-prefix hit must still count the first rule, so
    each entry holds the smallest id among the entries covering it."""
    size = sum(_field_size(f, family) for f in rs.fields)
    pad = (-(4 + size)) % 4  # the C key struct is padded to 4 bytes
    best: dict[tuple[bytes, int], int] = {}  # (data, bits) -> id
    for rule in rs.rules:
        combos = [(b"", 0)]
        for field in rs.fields:
            combos = [(d + v, n + bits) for d, n in combos for v, bits in _values(rule, field, family)]
        for data, bits in combos:
            key = (_masked(data, bits), bits)
            best[key] = min(best.get(key, ids[rule.index]), ids[rule.index])
    out = {}
    lengths = sorted({bits for _, bits in best})
    for (data, bits), rid in best.items():
        for shorter in lengths:  # entries covering this one: same data up to a shorter length
            if shorter < bits:
                cover = best.get((_masked(data, shorter), shorter))
                if cover is not None:
                    rid = min(rid, cover)
        out[bits.to_bytes(4, "little") + data + bytes(pad)] = rid.to_bytes(4, "little")
    return out


def _masked(data: bytes, bits: int) -> bytes:
    """data with every bit past the first `bits` cleared."""
    n = int.from_bytes(data, "big") if data else 0
    total = len(data) * 8
    mask = ((1 << bits) - 1) << (total - bits) if bits else 0
    return (n & mask).to_bytes(len(data), "big")


def _comment(text: str) -> str:
    return text.replace("*/", "* /")


def set_name(prefix: str, k: int) -> str:
    """The map of a chain family's k-th set (BPF map names: 15 characters)."""
    return f"{prefix}_set{k}"


Ids = dict[tuple[int, str, str, int], int]  # (family, table, chain, rule index) -> counter id


def _ids(fw: Firewall) -> Ids:
    return {(r.family, r.table, r.chain, r.index): r.id for r in rule_refs(fw)}


def _chains(chains: tuple[FwChain, ...] | None, family: int, ifaces: tuple[str, ...],
            ids: Ids, prefix: str) -> list[dict[str, Any]]:
    if not chains:
        return []
    sets = 0
    index = {(c.table, c.name): f"{prefix}_{i}" for i, c in enumerate(chains)}
    out = []
    for c in chains:
        end, ret = "return FW_CONT;", RETURN_USER
        if c.policy == "KERNEL":  # a policy the kernel applies (and counts): tna/model/nftables.py
            end, ret = "return FW_KERNEL;", RETURN_BUILTIN
        elif c.policy is not None:
            verdict = "FW_ACCEPT" if c.policy == "ACCEPT" else "FW_DROP"
            end, ret = f"{{ fw_step(f, {ids[family, c.table, c.name, 0]}); return {verdict}; }}", RETURN_BUILTIN
        rules = []
        for seg in c.parts:
            if isinstance(seg, RuleSet):
                rules.append(_set_data(seg, family, set_name(prefix, sets), ret))
                sets += 1
                continue
            r = seg
            rules.append({"set": None, "text": _comment(r.text), "cond": _condition(r, ifaces, could=not r.expressible),
                          "maybe": _maybe(r, ifaces),
                          "action": _action(r, index.get((c.table, r.target), ""),
                                            ids[family, c.table, c.name, r.index], ret)})
        if ret == RETURN_BUILTIN and any(ret in (r.get("action") or r.get("exit", "")) for r in rules):
            end = f"policy:\n\t{end}"
        if c.kernel is not None:  # the kernel decides whatever reaches it
            rules, end = [], f"return FW_KERNEL;  /* {_comment(c.kernel)} */"
        out.append({"fn": index[c.table, c.name], "name": _comment(f"{c.table} {c.name}"), "rules": rules,
                    "end": end, "group": c.stage, "hook": c.hook, "tie": c.tie})
    return out


def render_data(fw: Firewall | None) -> dict[str, Any] | None:
    """What firewall.c.j2 needs: per family, the chains to emit in order
    (a built-in chain's "group" says where the hook calls it)."""
    if fw is None:
        return None
    ids = _ids(fw)
    return {"fwd4": _chains(fw.fwd4, 4, fw.ifaces, ids, "fw4"), "fwd6": _chains(fw.fwd6, 6, fw.ifaces, ids, "fw6"),
            "in4": _chains(fw.in4, 4, fw.ifaces, ids, "in4"), "in6": _chains(fw.in6, 6, fw.ifaces, ids, "in6"),
            "uses_ifaces": bool(fw.ifaces), "nodev_mask": fw.nodev_mask, "ipsets": setgen.render_data(fw.ipsets),
            "uses_addrtype": any(r.dst_type is not None for cs in (fw.fwd4, fw.fwd6, fw.in4, fw.in6)
                                 for c in cs or () for r in c.rules),
            "uses_rpf4": any(r.rpf is not None for c in fw.fwd4 or () for r in c.rules),
            "uses_rpf6": any(r.rpf is not None for c in fw.fwd6 or () for r in c.rules),
            "ct4": fw.ct4, "ct6": fw.ct6, "nat4": fw.nat4, "nat6": fw.nat6, "ct_helpers": fw.ct_helpers}


@functools.lru_cache(maxsize=4)
def all_set_entries(fw: Firewall | None) -> dict[str, dict[bytes, bytes]]:
    """Every set map of a program for fw, by name, with its entries (the
    daemon sizes the maps and fills them before the program is attached)."""
    if fw is None:
        return {}
    ids = _ids(fw)
    out: dict[str, dict[bytes, bytes]] = {}
    for chains, family, prefix in ((fw.fwd4, 4, "fw4"), (fw.fwd6, 6, "fw6"), (fw.in4, 4, "in4"), (fw.in6, 6, "in6")):
        k = 0
        for c in chains or ():
            for seg in c.parts:
                if isinstance(seg, RuleSet):
                    by_index = {r.index: ids[family, c.table, c.name, r.index] for r in seg.rules}
                    out[set_name(prefix, k)] = set_entries(seg, family, by_index)
                    k += 1
    return out
