"""nft's JSON values: the ICMP names nft prints, how addresses, ports and
flags read, a readable nft-syntax rendering of a rule (for `tna status`;
not a round-trip printer: an expression it does not know is shown as its
JSON key), and what the document's items say as a whole (the live ones,
the sets rules fill)."""

from __future__ import annotations

import ipaddress
import itertools
import json

from tna.model.ipset import IpSet, Member
from tna.model.iptables import CT_STATUS, TCP_FLAGS

ICMP_TYPES = {
    "icmp": {"echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
             "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11,
             "parameter-problem": 12, "timestamp-request": 13, "timestamp-reply": 14, "info-request": 15,
             "info-reply": 16, "address-mask-request": 17, "address-mask-reply": 18},
    "icmpv6": {"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
               "echo-request": 128, "echo-reply": 129, "mld-listener-query": 130, "mld-listener-report": 131,
               "mld-listener-done": 132, "mld-listener-reduction": 132, "nd-router-solicit": 133,
               "nd-router-advert": 134, "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136,
               "nd-redirect": 137, "router-renumbering": 138, "ind-neighbor-solicit": 141,
               "ind-neighbor-advert": 142, "mld2-listener-report": 143},
}
# nft's icmp_code / icmpv6_code names (it prints a known code by name)
ICMP_CODES = {
    "icmp": {"net-unreachable": 0, "host-unreachable": 1, "prot-unreachable": 2, "port-unreachable": 3,
             "frag-needed": 4, "net-prohibited": 9, "host-prohibited": 10, "admin-prohibited": 13},
    "icmpv6": {"no-route": 0, "admin-prohibited": 1, "addr-unreachable": 3, "port-unreachable": 4,
               "policy-fail": 5, "reject-route": 6},
}
_VERDICTS = ("accept", "drop", "return", "continue")


class Unsupported(Exception):
    """A match TNA cannot express (the message names it)."""


def names(right: object) -> list[str]:
    if isinstance(right, dict) and "set" in right:
        right = right["set"]
    return [str(x) for x in right] if isinstance(right, list) else [str(right)]


def flag_bits(v: object) -> int:
    if isinstance(v, int):
        return v
    names = v if isinstance(v, list) else [v]
    try:
        return sum(TCP_FLAGS[str(n).upper()] for n in names) & 0xFF
    except KeyError as e:
        raise Unsupported(f"tcp flag {e}") from e


def port_ranges(v: object) -> tuple[tuple[int, int], ...]:
    if isinstance(v, int):
        return ((v, v),)
    if isinstance(v, dict) and "range" in v:
        lo, hi = v["range"]
        return ((int(lo), int(hi)),)
    if isinstance(v, dict) and "set" in v:
        return tuple(r for e in v["set"] for r in port_ranges(e))
    raise Unsupported(f"port {v}")


def nets(v: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The exact prefix decomposition of an address, prefix, range or set of them."""
    if isinstance(v, str):
        return [ipaddress.ip_network(v)]
    if isinstance(v, dict) and "prefix" in v:
        return [ipaddress.ip_network(f"{v['prefix']['addr']}/{v['prefix']['len']}", strict=False)]
    if isinstance(v, dict) and "range" in v:
        lo, hi = (ipaddress.ip_address(x) for x in v["range"])
        return list(ipaddress.summarize_address_range(lo, hi))  # type: ignore[arg-type]
    if isinstance(v, dict) and "set" in v:
        return [n for e in v["set"] for n in nets(e)]
    if isinstance(v, dict) and "elem" in v:
        return nets(v["elem"]["val"])
    raise Unsupported(f"address {v}")


def render_rule(r: dict) -> str:
    """`ip saddr 192.0.2.0/24 tcp dport 22 counter accept`-like text."""
    text = " ".join(_stmt(e) for e in r.get("expr", []))
    return f'{text} comment "{r["comment"]}"' if r.get("comment") else text


def _stmt(e: dict) -> str:
    (kind, body), = e.items()
    if kind == "match":
        if "fib" in body["left"] and isinstance(body["right"], bool):  # nft's words for a result of 0 or not
            op = "" if body["op"] == "==" else "!= "
            return f"{expr(body['left'])} {op}{'exists' if body['right'] else 'missing'}"
        op = "" if body["op"] == "in" or (body["op"] == "==" and "&" not in body["left"]) else f"{body['op']} "
        return f"{expr(body['left'])} {op}{expr(body['right'])}"
    if kind in _VERDICTS:
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']}"
    if kind == "counter":
        return "counter"  # its values are counts (Rule.counters), not what the rule is: the text must not change
    if kind == "vmap":
        return f"{expr(body['key'])} vmap {expr(body['data'])}"
    if body is None:
        return kind
    if isinstance(body, dict):
        args = " ".join(f"{k} {expr(v)}" for k, v in body.items())
        return f"{kind} {args}".strip()
    return f"{kind} {json.dumps(body)}"


def expr(v: object) -> str:
    """One expression (left or right side) in nft syntax."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v) if not v.replace("-", "").replace("_", "").replace(".", "").replace(":", "").replace(
            "@", "").replace("/", "").isalnum() else v
    if isinstance(v, list):  # flags (a, b), or a map element [key, value]
        return f"{expr(v[0])} : {expr(v[1])}" if len(v) == 2 and isinstance(v[1], dict) else ",".join(map(expr, v))
    assert isinstance(v, dict)
    (kind, body), = v.items()
    if kind == "payload":
        return f"{body.get('protocol', 'raw')} {body.get('field', '')}".strip()
    if kind in ("meta", "ct"):
        return f"{kind} {body['key']}" if kind == "ct" or body["key"] not in ("iifname", "oifname") else body["key"]
    if kind == "set":
        return "{ " + ", ".join(expr(x) for x in body) + " }" if isinstance(body, list) else "{ " + expr(body) + " }"
    if kind == "prefix":
        return f"{body['addr']}/{body['len']}"
    if kind == "range":
        return f"{expr(body[0])}-{expr(body[1])}"
    if kind == "&":
        return f"{expr(body[0])} & ({' | '.join(map(expr, body[1]))})" if isinstance(body[1], list) else \
            f"{expr(body[0])} & {expr(body[1])}"
    if kind == "fib":
        return f"fib {' . '.join(body.get('flags', []))} {body.get('result')}"
    if isinstance(body, list) and len(body) == 2 and all(not isinstance(x, list) for x in body):
        return f"{expr(body[0])} : {expr(body[1])}" if kind == "elem" else f"{expr(body[0])} {kind} {expr(body[1])}"
    if body is None:
        return kind
    if isinstance(body, dict) and "target" in body:
        return f"{kind} {body['target']}"
    return kind


# `ct status` names: iptables' --ctstatus ones and the NAT bits (IPS_SRC_NAT,
# IPS_DST_NAT), which the fast path reads from the entry as it reads the others
CT_STATUS_BITS = {**CT_STATUS, "SNAT": 1 << 4, "DNAT": 1 << 5}


def item_obj(item: dict) -> dict:
    """The object of one item of the document ({"rule": {...}} -> {...})."""
    obj = next(iter(item.values()))
    return obj if isinstance(obj, dict) else {}


def live_items(objs: list[dict]) -> list[dict]:
    """The items of tables that are not dormant (a dormant table registers
    no hook: nothing of it runs)."""
    dormant = {(t["family"], t["name"]) for o in objs if (t := o.get("table")) and "dormant" in (t.get("flags") or ())}
    return [o for o in objs
            if (item_obj(o).get("family"), item_obj(o).get("table", item_obj(o).get("name"))) not in dormant]


def packet_filled(objs: list[dict]) -> set[tuple[str, str, str]]:
    """The sets and maps (family, table, name) that rules' statements add
    to or update from the packet path (`add @s { ip saddr }`, `update`,
    a map statement, a meter): the kernel announces none of those
    elements, whatever the set's flags."""
    out = set()
    for o in objs:
        r = o.get("rule")
        for e in r.get("expr", []) if r else ():
            (kind, body), = e.items()
            if kind in ("set", "map") and isinstance(body, dict) and str(body.get(kind, "")).startswith("@"):
                out.add((r["family"], r["table"], body[kind][1:]))
            elif kind == "meter" and isinstance(body, dict) and "name" in body:
                out.add((r["family"], r["table"], body["name"]))
    return out


def ipset_of(s: dict, name: str, kind: str, version: int, members: set[Member],
             filled: set[tuple[str, str, str]]) -> IpSet:
    """The IpSet of set s's JSON: timeouts and counters as ipset's, and
    whether a rule's set statement fills it (filled: packet_filled()'s);
    mirror_problem() then keeps its rules on the kernel path."""
    return IpSet(name, kind, version, max(int(s.get("size", 65536)), len(members)), timeout=expires(s),
                 counters=counted(s), members=frozenset(members),
                 packet_filled=(s.get("family"), s.get("table"), s.get("name")) in filled)


def counted(s: dict) -> bool:
    """Whether a match on set s's JSON updates an element's counter."""
    return any(isinstance(e, dict) and "elem" in e and "counter" in e["elem"] for e in s.get("elem", [])) or any(
        "counter" in st for st in s.get("stmt", []))


def expires(s: dict) -> bool:
    """Whether set s's elements may expire (a timeout), unannounced."""
    return bool(set(s.get("flags", [])) & {"timeout", "dynamic"}) or "timeout" in s or any(
        isinstance(e, dict) and "elem" in e and "timeout" in e["elem"] for e in s.get("elem", []))


def is_set_field(left: object) -> bool:
    """Fields whose model value is itself a set (addresses, ports, ct state/status, fib type)."""
    if isinstance(left, dict) and "payload" in left:
        return left["payload"].get("field") in ("saddr", "daddr", "sport", "dport")
    return isinstance(left, dict) and ("ct" in left or "fib" in left)


def field_name(left: object) -> str:
    if isinstance(left, dict) and left:
        (kind, body), = itertools.islice(left.items(), 1)
        if isinstance(body, dict):
            return " ".join(str(body[k]) for k in ("protocol", "field", "key") if k in body) or kind
        return kind
    return str(left)
