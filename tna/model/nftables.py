"""`nft -j list ruleset` (libnftables-json) -> TNA's rule model: pure, no I/O.

The output is what tna/model/iptables.py gives for iptables-save: per IP
version the tables ("<family> <table>"), their chains and Rules with typed
match fields, plus the sets the rules match on (tna/model/ipset.py: set
contents are map contents; the set matches are read by
tna/model/nftables_sets.py).  What TNA cannot express is recorded by
name in Rule.unsupported (the rule keeps what it could match on the kernel
path).  nft statements run in order: a statement TNA does not model (log,
limit, reject, a mangling or NAT statement, ...) acts on every packet the
matches before it let through, so only those matches become typed fields.

An inet table appears in both versions; a rule whose matches imply one
family (ip/ip6 payload, meta nfproto) is left out of the other version's
chain.  One nft rule may become several Rules (a verdict map, an anonymous
set of small scalars): their keys are disjoint, so first-match order stays
exact; they share the rule's handle.  Indexes are 1-based per chain over
every Rule made (both versions), so a version's chain may skip some.

Base chains keep their hook, priority and type; chains of one hook with the
same priority in different tables are all kept (which runs first is the
kernel's registration order: the caller decides).  arp tables are ignored
(TNA carries no ARP); bridge and netdev base chains that see carried
traffic are `foreign`: they cannot be modelled at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from tna.model.firewall import DROP, KERNEL, PORT_PROTOS
from tna.model.ipset import IpSet, SetMatch
from tna.model.iptables import CT_STATES, PROTOCOLS, XT_STATEFUL, Chain, Neg, Rule, Table
from tna.model.nftables_sets import FAMILY_OF, Alt, SetMatches, element_value, imply_proto, set_field
from tna.model.nftables_text import (
    CT_STATUS_BITS,
    ICMP_CODES,
    ICMP_TYPES,
    Unsupported,
    field_name,
    flag_bits,
    is_set_field,
    live_items,
    names,
    packet_filled,
    render_rule,
)
from tna.model.nftsets import CONCAT_L4, L4, mirrors

VERSIONS = {"ip": (4,), "ip6": (6,), "inet": (4, 6)}
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
_TERMINAL = ("reject", "queue", "fwd", "dnat", "snat", "masquerade", "redirect", "tproxy", "synproxy")
MAX_EXPANSION = 64  # Rules one nft rule may become (beyond: kernel path)


@dataclass
class NftRules:
    tables: dict[int, dict[str, Table]]   # per IP version; key and Table.name: "<family> <table>"
    sets: dict[str, IpSet]                # by the name SetMatch uses
    foreign: list[str] = field(default_factory=list)  # base chains that cannot be modelled (why)
    code_sets: set[str] = field(default_factory=set)  # named sets some rule compiles as code (IpSet names)


def parse_ruleset(doc: dict) -> NftRules:
    """The model of one `nft -j list ruleset` document."""
    out = NftRules({4: {}, 6: {}}, {})
    objs = doc.get("nftables", [])
    set_json: dict[tuple[str, ...], dict] = {}
    indexes: dict[tuple[str, str], int] = {}  # per chain: Rules made (both versions)
    objs = live_items(objs)
    filled = packet_filled(objs)
    # a table its owner's process holds (flags owner, not persist) goes when
    # that socket closes, and the kernel says nothing: what it would drop
    # stays on the kernel path (what it accepts, the other tables judge
    # either way), so nothing it decides outlives it
    vanishing = {(t["family"], t["name"]) for o in objs if (t := o.get("table"))
                 and "owner" in (t.get("flags") or ()) and "persist" not in (t.get("flags") or ())}
    for o in objs:
        if "set" in o:
            s = o["set"]
            set_json[(s["family"], s["table"], s["name"])] = s
        elif "map" in o:  # verdict maps, apart: a set match must not find one
            s = o["map"]
            set_json[(s["family"], s["table"], s["name"], "map")] = s
    for o in objs:
        if "table" in o and o["table"]["family"] in VERSIONS:
            t = o["table"]
            for v in VERSIONS[t["family"]]:
                out.tables[v][_tname(t)] = Table(_tname(t), handle=t.get("handle"),
                                                 vanishing=(t["family"], t["name"]) in vanishing)
        elif "chain" in o:
            _chain(o["chain"], out, vanishing)
        elif "rule" in o and o["rule"]["family"] in VERSIONS:
            _rule(o["rule"], out, set_json, filled, indexes, vanishing)
    # a set mirrored by some rules and code in others: its element changes
    # are re-reads (the code would keep the old elements)
    for base in out.code_sets:
        for name in mirrors(base, list(out.sets)):
            out.sets[name] = replace(out.sets[name], code_too=True)
    return out


def _tname(o: dict) -> str:
    return f"{o['family']} {o.get('table', o.get('name'))}"


VANISHING = "a drop of a table that goes, unannounced, when its owner's socket closes (flags owner)"


def _chain(c: dict, out: NftRules, vanishing: set[tuple[str, str]]) -> None:
    fam, hook = c["family"], c.get("hook")
    if fam not in VERSIONS:
        # arp: TNA carries no ARP.  netdev ingress/egress sees every packet of
        # its device; a bridge's base chains see the frames of its ports
        # (input/output too: the fast path routes frames to a bridge's MAC
        # and routes into a bridge straight to the port)
        if hook and fam in ("netdev", "bridge"):
            dev = c.get("dev") or c.get("devices")  # nft 1.0.6 omits it
            where = f" on {dev}" if dev else ""
            out.foreign.append(f"{fam} {c['table']} chain {c['name']}: hook {hook}{where} sees carried traffic "
                               "before (or without) the IP hooks TNA models")
        return
    if hook is not None and hook not in HOOKS:
        out.foreign.append(f"{fam} {c['table']} chain {c['name']}: hook {hook} is not modelled")
        return
    policy = (c.get("policy") or "accept").upper() if hook else None
    if policy == DROP and (fam, c["table"]) in vanishing:
        policy = KERNEL
    for v in VERSIONS[fam]:
        table = out.tables[v].setdefault(_tname(c), Table(_tname(c)))
        table.chains[c["name"]] = Chain(c["name"], policy, hook=hook,
                                        priority=int(c["prio"]) if hook else None,
                                        kind=c.get("type", "filter") if hook else "filter")


def _rule(r: dict, out: NftRules, set_json: dict[tuple[str, ...], dict], filled: set[tuple[str, str, str]],
          indexes: dict[tuple[str, str], int], vanishing: set[tuple[str, str]]) -> None:
    fam, tname = r["family"], _tname(r)
    alts = [Alt(versions=frozenset(VERSIONS[fam]))]
    unsupported: list[str] = []
    stopped = False  # after a statement TNA does not model: later matches restrict nothing it could rely on
    counted = False  # after a counter
    counters, comment = (0, 0), r.get("comment")
    ctx = _Ctx(fam, r["table"], r["handle"], out, set_json, filled)
    for e in r.get("expr", []):
        (kind, body), = e.items()
        if kind == "counter":
            if isinstance(body, dict):
                counters = (int(body.get("packets", 0)), int(body.get("bytes", 0)))
            counted = True
            continue
        if kind in ("match", "vmap") and counted and not stopped:
            # it counts every packet that reaches it, the fast path only those the rule matches
            unsupported.append("counter before a match")
            stopped = True
        if kind in ("match", "vmap") and stopped and '"ct"' in json.dumps(body):
            unsupported.append("ct after a statement")  # not kept, but conntrack is in use (hooks.py)
        if kind in ("accept", "drop", "return", "continue", "jump", "goto"):
            for a in alts:
                _verdict(a, kind, body)
            break
        if kind == "match" and not stopped:
            # a failed match may have refined some alternatives already: each
            # refinement is a condition the rule has, so they stay (a superset)
            try:
                alts = _expand(alts, [ctx.match(body, a) for a in alts])
            except Unsupported as why:
                unsupported.append(str(why))
                # `numgen inc` counts every packet that reaches it: later matches restrict nothing
                stopped = isinstance(left := body.get("left"), dict) and left.get("numgen", {}).get("mode") == "inc"
            continue
        if kind == "match":
            continue
        if kind == "vmap" and not stopped:
            try:
                alts = _expand(alts, [ctx.vmap(body, a) for a in alts])
            except Unsupported as why:
                unsupported.append(str(why))
                break
            continue
        if kind == "xt" and isinstance(body, dict) and body.get("type") == "match" \
                and body.get("name") not in XT_STATEFUL:
            unsupported.append(f"xt match {body.get('name')}")  # an iptables-nft compat match: no side effect
            continue
        unsupported.append(f"xt {body.get('type')} {body.get('name')}" if kind == "xt" and isinstance(body, dict)
                           else f"{'flow add' if kind == 'flow' else kind} statement")
        stopped = True
        if kind in _TERMINAL:
            for a in alts:
                a.target = a.target or kind.upper()
            break
    text = render_rule(r)
    for a in alts:
        why = list(unsupported)
        proto = a.fields.get("proto")
        for key in ("sport", "dport"):
            if key in a.fields and not (isinstance(proto, Neg) and not proto.neg and proto.value in PORT_PROTOS):
                why.append(f"th {key} without a port protocol")
        if a.target == DROP and (fam, r["table"]) in vanishing:
            why.append(VANISHING)
        for v in sorted(a.versions):
            table = out.tables[v].get(tname)
            if table is None or r["chain"] not in table.chains:
                continue
            chain = table.chains[r["chain"]]
            key = (tname, r["chain"])
            indexes[key] = index = indexes.get(key, 0) + 1
            sets = tuple(SetMatch(m.name, m.dirs, m.neg, family=v) for m in a.sets
                         if out.sets[m.name].family == v)
            chain.rules.append(Rule(chain=r["chain"], index=index, text=text, target=a.target or "CONTINUE",
                                    goto=a.goto, comment=comment, sets=sets, unsupported=tuple(why),
                                    counters=counters, handle=r["handle"], **a.fields))  # type: ignore[arg-type]


def _expand(alts: list[Alt], each: list[list[Alt]]) -> list[Alt]:
    new = [a for group in each for a in group]
    if len(new) > MAX_EXPANSION:
        raise Unsupported(f"more than {MAX_EXPANSION} alternatives")
    return new


def _verdict(a: Alt, kind: str, body: object) -> None:
    if kind in ("jump", "goto"):
        assert isinstance(body, dict)
        a.target, a.goto = body["target"], kind == "goto"
    else:
        a.target = kind.upper()


class _Ctx(SetMatches):
    """What reading one rule needs: where it is, and the sets it may name."""

    def __init__(self, family: str, table: str, handle: int, out: NftRules,
                 set_json: dict[tuple[str, ...], dict], filled: set[tuple[str, str, str]]) -> None:
        self.family, self.table, self.handle, self.out, self.set_json = family, table, handle, out, set_json
        self.filled = filled  # the sets rules add to from the packet path (set statements)
        self.anon = 0

    # ---- matches --------------------------------------------------------
    def match(self, m: dict, a: Alt) -> list[Alt]:
        """The alternatives a refined by match m (none: it cannot hold)."""
        op, left, right = m["op"], m["left"], m["right"]
        if op not in ("==", "!=", "in"):
            raise Unsupported(f"{field_name(left)} {op}")
        if op == "in" and left in ({"payload": {"protocol": "tcp", "field": "flags"}}, {"ct": {"key": "status"}}):
            return self.any_bit(left, right, a)
        return self.key(left, right, op == "!=", a)

    def any_bit(self, left: dict, right: object, a: Alt) -> list[Alt]:
        """`tcp flags syn`, `ct status assured`: (value & bits) != 0."""
        if "ct" in left:
            return self.ct("status", right, False, a)
        bits = flag_bits(right)
        if bits & (bits - 1):  # any of several flags: not a (mask, cmp) test
            raise Unsupported(f"tcp flags {right} (any of)")
        imply_proto(a, 6)
        return set_field(a, "tcp_flags", (bits, bits), False)

    def key(self, left: object, right: object, neg: bool, a: Alt) -> list[Alt]:
        """Alternatives of a for `left == right` (neg: `!=`)."""
        if isinstance(right, dict) and "set" in right and not neg and not is_set_field(left):
            # a positive anonymous set of scalars: one alternative per element
            out: list[Alt] = []
            for elem in right["set"]:
                out += self.key(left, elem, False, a.fork())
            return out
        if isinstance(left, dict) and "concat" in left and isinstance(right, str) and right.startswith("@"):
            return self.concat(left["concat"], right[1:], neg, a)
        if isinstance(left, dict) and "payload" in left:
            return self.payload(left["payload"], right, neg, a)
        if isinstance(left, dict) and "meta" in left:
            return self.meta(left["meta"]["key"], right, neg, a)
        if left == {"ct": {"key": "status"}}:
            raise Unsupported("ct status ==/!= (compares all the bits)")
        if isinstance(left, dict) and "ct" in left and "dir" not in left["ct"]:
            return self.ct(left["ct"]["key"], right, neg, a)
        if isinstance(left, dict) and "&" in left:
            return self.masked(left["&"], right, neg, a)
        if isinstance(left, dict) and "fib" in left:
            return self.fib(left["fib"], right, neg, a)
        raise Unsupported(f"{field_name(left)} match")

    def fib(self, fib: dict, right: object, neg: bool, a: Alt) -> list[Alt]:
        """`fib daddr type ...`, and the reverse-path check `fib saddr [. mark]
        . iif oif exists|missing`: the mark matters to ip rules only, and
        with any the fast path does not know the answer (firewall.c.j2)."""
        flags, result = set(fib.get("flags", ())), fib.get("result")
        if result == "type" and flags == {"daddr"}:
            return set_field(a, "dst_type", frozenset(t.upper() for t in names(right)), neg)
        if result in ("oif", "oifname") and flags in ({"saddr", "iif"}, {"saddr", "mark", "iif"}) \
                and isinstance(right, bool):
            return set_field(a, "rpf", True, neg == right)  # `missing` is `== false`
        raise Unsupported("fib match")

    def payload(self, p: dict, right: object, neg: bool, a: Alt) -> list[Alt]:
        proto, fld = p.get("protocol"), p.get("field")
        if proto in ("ip", "ip6"):
            v = FAMILY_OF[proto]
            a.versions = a.versions & {v}
            if fld in ("saddr", "daddr"):
                return self.address(v, "src" if fld == "saddr" else "dst", right, neg, a)
            if (proto, fld) in (("ip", "protocol"), ("ip6", "nexthdr")):
                return self.meta("l4proto", right, neg, a)
        if proto in (*L4, "th") and fld in ("sport", "dport"):
            if proto != "th":
                imply_proto(a, L4[proto])
            if proto in CONCAT_L4 and isinstance(right, str) and right.startswith("@"):
                return self.port_set(proto, fld, right[1:], neg, a)
            return set_field(a, fld, self.ports(right), neg)
        if proto == "tcp" and fld == "flags":
            bits = flag_bits(right)
            imply_proto(a, 6)
            return set_field(a, "tcp_flags", (0xFF, bits), neg)
        if proto in ("icmp", "icmpv6") and fld in ("type", "code"):
            num = 1 if proto == "icmp" else 58
            imply_proto(a, num)
            if fld == "code":
                cur = a.fields.get("icmp_type")
                code = right if isinstance(right, int) else ICMP_CODES[proto].get(str(right))
                if not isinstance(cur, Neg) or cur.neg or neg or code is None or cur.value[1] is not None:  # type: ignore[index]
                    raise Unsupported(f"{proto} code {right} (without one positive icmp type)")
                a.fields["icmp_type"] = Neg((cur.value[0], code))  # type: ignore[index]
                return [a]
            t = right if isinstance(right, int) else ICMP_TYPES[proto].get(str(right))
            if t is None:
                raise Unsupported(f"{proto} type {right}")
            return set_field(a, "icmp_type", (t, None), neg)
        raise Unsupported(f"{proto} {fld} match")

    def meta(self, key: str, right: object, neg: bool, a: Alt) -> list[Alt]:
        if key == "nfproto":
            v = {"ipv4": 4, "ipv6": 6}.get(str(right))
            if v is None:
                raise Unsupported(f"meta nfproto {right}")
            a.versions = a.versions - {v} if neg else a.versions & {v}
            return [a] if a.versions else []
        if key == "l4proto":
            num = right if isinstance(right, int) else PROTOCOLS.get(str(right), L4.get(str(right)))
            if num is None or num == 0:  # 0 is the model's "-p all"; nft's means protocol 0 (HOPOPTS)
                raise Unsupported(f"meta l4proto {right}")
            return set_field(a, "proto", num, neg)
        if key in ("iifname", "oifname", "iif", "oif"):
            if isinstance(right, str) and right.startswith("@"):
                # a constant set of names: one alternative per name (the names are code, like a rule's)
                s = self.constant(right[1:])
                if neg or s is None or s.get("type") != "ifname":
                    raise Unsupported(f"meta {key} {'!= ' if neg else ''}set {right}")
                return [b for e in s.get("elem", []) for b in self.meta(key, e, False, a.fork())]
            if not isinstance(right, str) or right.endswith("+"):
                # a negated set of names (positive ones are split before); a
                # literal '+' ending a name would read as iptables' wildcard
                raise Unsupported(f"meta {key} {'!= ' if neg else ''}{right}")
            name = right
            if key.endswith("name") and name.endswith("*") and not name.endswith("\\*"):
                name = name[:-1] + "+"
            return set_field(a, key[:3], name.replace("\\*", "*"), neg)
        if key == "mark" and isinstance(right, int):
            return set_field(a, "mark", (right, 0xFFFFFFFF), neg)
        if key == "mark" and isinstance(right, dict) and "prefix" in right:
            # nft prints `mark and <high bits> == v` as the prefix v/len
            mask = (0xFFFFFFFF << (32 - right["prefix"]["len"])) & 0xFFFFFFFF
            return set_field(a, "mark", (right["prefix"]["addr"] & mask, mask), neg)
        raise Unsupported(f"meta {key} match")

    def ct(self, key: str, right: object, neg: bool, a: Alt) -> list[Alt]:
        words = names(right)
        if key == "state" and "ctstatus" not in a.fields:
            states = frozenset(n.upper() for n in words)
            if not states <= CT_STATES:
                raise Unsupported(f"ct state {right}")
            return set_field(a, "ctstate", states, neg)
        if key == "status" and not neg and "ctstate" not in a.fields:  # from any_bit() only
            bits = [CT_STATUS_BITS.get(n.upper().replace("-", "_")) for n in words]
            if None in bits:
                raise Unsupported(f"ct status {right}")
            return set_field(a, "ctstatus", sum(bits), neg)  # type: ignore[arg-type]
        # ct direction (and a ct status beside a ct state): without an entry
        # nft's expression does not match, the model's (xt_conntrack's) can
        raise Unsupported(f"ct {key} match")

    def masked(self, operands: list, right: object, neg: bool, a: Alt) -> list[Alt]:
        what, mask = operands
        if what == {"payload": {"protocol": "tcp", "field": "flags"}}:
            imply_proto(a, 6)
            return set_field(a, "tcp_flags", (flag_bits(mask), flag_bits(right)), neg)
        if what == {"meta": {"key": "mark"}} and isinstance(mask, int) and isinstance(right, int):
            if right & ~mask:  # `mark & 0x0f == 0x11` never holds (and its != always does)
                return [a] if neg else []
            return set_field(a, "mark", (right, mask), neg)
        raise Unsupported(f"{field_name(what)} & mask match")

    def vmap(self, v: dict, a_all: Alt) -> list[Alt]:
        data = v.get("data")
        if isinstance(data, str) and data.startswith("@"):
            # a named verdict map (Docker 29's per-bridge jumps): its elements
            # become code like an anonymous map's, so changing them is a new
            # program (a commit holds the datapath until it runs)
            m = self.constant(data[1:], "map")
            if m is None or m.get("map") != "verdict":
                raise Unsupported(f"verdict map {data}")
            pairs = [(element_value(k), verdict)
                     for k, verdict in m.get("elem", [])]
        elif isinstance(data, dict) and "set" in data:
            pairs = data["set"]
        else:
            raise Unsupported("verdict map")
        out: list[Alt] = []
        for key, verdict in pairs:
            for a in self.key(v["key"], key, False, a_all.fork()):
                (kind, body), = verdict.items()
                _verdict(a, kind, body)
                out.append(a)
        return out
