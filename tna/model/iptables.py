"""iptables-save / ip6tables-save output -> rule sets: pure data, no I/O.

The canonical text both back ends print (iptables-nft and iptables-legacy)
is the input: `*table`, `:CHAIN POLICY [pkts:bytes]`, `[pkts:bytes] -A CHAIN
...` (with -c) or `-A CHAIN ...`, `COMMIT`.  Each rule becomes a `Rule`:
the matches TNA can express as typed fields, everything else recorded by
name in `unsupported` (the rule then keeps the traffic it could match on
the kernel path).  Tokenising follows the quoting iptables-save writes
(double quotes, backslash escapes), so a comment can hold any text.
"""

from __future__ import annotations

import functools
import ipaddress
import shlex
from dataclasses import dataclass, field

from tna.model import ipset
from tna.model.ipset import SetMatch

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132, "udplite": 136,
             "gre": 47, "esp": 50, "ah": 51, "all": 0}
TCP_FLAGS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20,
             "ECE": 0x40, "CWR": 0x80, "ALL": 0xFF, "NONE": 0}
VERDICTS = ("ACCEPT", "DROP", "RETURN", "CONTINUE")  # CONTINUE: no target (count, go on)
_IMPLICIT = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}
CT_STATES = {"INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED", "SNAT", "DNAT"}
# -m addrtype: the kernel's route types (RTN_*), the bit of each is 1 << value
ADDR_TYPES = {name: i for i, name in enumerate(("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST",
                                                "BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE"))}
CT_STATUS = {"NONE": 0, "EXPECTED": 1 << 0, "SEEN_REPLY": 1 << 1, "ASSURED": 1 << 2, "CONFIRMED": 1 << 3}  # IPS_*
# options of the built-in matches, and which take an argument
_BUILTIN = {"-s": "src", "--source": "src", "-d": "dst", "--destination": "dst",
            "-i": "iif", "--in-interface": "iif", "-o": "oif", "--out-interface": "oif",
            "-p": "proto", "--protocol": "proto"}


# xt matches whose every evaluation changes state (a recent list, a token
# bucket, a counter): iptables runs a rule's matches in order, so a packet a
# later match fails still changed that state - the later matches (the
# built-in ones run first) restrict nothing the fast path may rely on
XT_STATEFUL = {"recent", "hashlimit", "limit", "quota", "statistic", "connlimit", "nfacct", "cluster"}
_BUILTIN_FIELDS = {"src", "dst", "iif", "oif", "proto", "fragment"}


class ParseError(ValueError):
    """Text that is not iptables-save output."""


@dataclass(frozen=True)
class Neg:
    """A match value and whether it was negated with `!`."""

    value: object
    neg: bool = False


@dataclass(frozen=True)
class Rule:
    chain: str
    index: int                      # 1-based position in its chain (iptables -L --line-numbers)
    text: str                       # the rule as iptables-save printed it (without counters)
    target: str                     # ACCEPT, DROP, RETURN, a user chain, or another target
    target_args: tuple[str, ...] = ()
    goto: bool = False              # -g: jump without return
    src: Neg | None = None          # ip_network
    dst: Neg | None = None
    iif: Neg | None = None          # interface name, "+" suffix: prefix wildcard
    oif: Neg | None = None
    proto: Neg | None = None        # protocol number (0: all)
    sport: Neg | None = None        # tuple of (lo, hi) port ranges
    dport: Neg | None = None
    ports: Neg | None = None        # multiport --ports: source or destination
    tcp_flags: Neg | None = None    # (mask, compare)
    icmp_type: Neg | None = None    # (type, code or None)
    fragment: Neg | None = None     # -f: True
    ctstate: Neg | None = None      # frozenset of CT_STATES
    ctstatus: Neg | None = None     # --ctstatus: mask of CT_STATUS bits (any of them set matches)
    ctdir: str | None = None        # --ctdir: ORIGINAL or REPLY
    mark: Neg | None = None         # -m mark --mark: (value, mask)
    dst_type: Neg | None = None     # -m addrtype --dst-type: frozenset of ADDR_TYPES
    rpf: Neg | None = None          # nft `fib saddr . iif oif exists` (True); neg: `... oif missing`
    comment: str | None = None
    sets: tuple[SetMatch, ...] = ()  # -m set --match-set, in order (tna/model/ipset.py)
    unsupported: tuple[str, ...] = ()  # matches, options or the target TNA cannot express
    counters: tuple[int, int] = field(default=(0, 0), compare=False)  # not part of what the rule does
    handle: int | None = None       # nftables: the rule's handle (one nft rule may become several Rules)

    @property
    def expressible(self) -> bool:
        """TNA can decide this rule's traffic (else: the kernel must)."""
        return not self.unsupported and all(m.shape is not None for m in self.sets)

    @property
    def uses_ct(self) -> bool:
        """A conntrack match TNA models (state, status or direction)."""
        return self.ctstate is not None or self.ctstatus is not None or self.ctdir is not None

    @property
    def jump(self) -> bool:
        return self.target not in VERDICTS


@dataclass
class Chain:
    name: str
    policy: str | None              # None for a user-defined chain
    counters: tuple[int, int] = field(default=(0, 0), compare=False)
    rules: list[Rule] = field(default_factory=list)
    # a native nftables base chain says where it runs (iptables' built-in
    # chains: hooks.py knows theirs); None for a regular chain
    hook: str | None = None         # prerouting, input, forward, output, postrouting
    priority: int | None = None
    kind: str = "filter"            # the base chain's type: filter, nat or route


@dataclass
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    handle: int | None = None  # nftables: the table's (a table made anew has another)
    vanishing: bool = False  # nftables flags owner, not persist: gone, unannounced, with its owner's socket

    @property
    def empty(self) -> bool:
        """No rule and every policy ACCEPT: the table changes nothing."""
        return all(not c.rules and c.policy in (None, "ACCEPT") for c in self.chains.values())


@functools.lru_cache(maxsize=1 << 16)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Rule sets are read whole on every change: blocklists repeat."""
    return ipaddress.ip_network(text, strict=False)


def parse_save(text: str) -> dict[str, Table]:
    """Tables of one family from iptables-save (or ip6tables-save) output."""
    tables: dict[str, Table] = {}
    table: Table | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("*"):
                table = tables.setdefault(line[1:], Table(line[1:]))
            elif line == "COMMIT":
                table = None
            elif table is None:
                raise ParseError("outside a table")
            elif line.startswith(":"):
                name, policy, counts = ([*line[1:].split(), "", ""])[:3]
                table.chains[name] = Chain(name, None if policy == "-" else policy, _counters(counts))
            else:
                counters = (0, 0)
                if line.startswith("["):
                    counts, _, line = line.partition(" ")
                    counters = _counters(counts)
                rule = parse_rule(line, table, counters)
                table.chains[rule.chain].rules.append(rule)
        except (ParseError, ValueError, KeyError, IndexError) as e:
            raise ParseError(f"line {lineno}: {raw!r}: {e}") from e
    return tables


def _counters(text: str) -> tuple[int, int]:
    if not text.startswith("["):
        return (0, 0)
    pkts, _, byts = text.strip("[]").partition(":")
    return int(pkts), int(byts)


def _ports(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        out.append((int(lo or 0), int(hi or 65535) if _ else int(lo)))
    return tuple(out)


def _tcp_flags(mask: str, comp: str) -> tuple[int, int]:
    def bits(names: str) -> int:
        return sum(TCP_FLAGS[n] for n in names.split(",")) & 0xFF
    return bits(mask), bits(comp)


def _icmp_type(text: str) -> tuple[int, int | None]:
    t, _, code = text.partition("/")
    return int(t), (int(code) if code else None)


def parse_rule(line: str, table: Table, counters: tuple[int, int] = (0, 0)) -> Rule:
    """One `-A CHAIN ...` line of iptables-save output, the next rule of its
    chain in table."""
    rule = _parse_line(line)
    if rule.chain not in table.chains:
        raise ParseError(f"unknown chain {rule.chain}")
    unsupported = rule.unsupported
    if rule.target not in VERDICTS and rule.target not in table.chains:
        unsupported += (f"-j {rule.target}",)  # LOG, REJECT, NFQUEUE, MARK, NAT targets, ...
    # the parsed rule with its place: dataclasses.replace() would re-run
    # __init__ (~5 us a rule, 50 ms a read of 10,000 rules; a copy of the
    # fields ~0.6 us); Rule has no derived state to recompute
    placed = object.__new__(Rule)
    placed.__dict__.update(rule.__dict__, index=len(table.chains[rule.chain].rules) + 1, counters=counters,
                           unsupported=unsupported)
    return placed


@functools.lru_cache(maxsize=1 << 17)
def _parse_line(line: str) -> Rule:
    """What a line says, whatever its place (index 0) and counters: a rule
    set is read whole on every change, and all but the changed lines were
    parsed before (~25 us a line, a tenth of that for the copy).  Up to
    131,072 lines (~1.6 KB each, the lines in use and those gone until the
    newer push them out); a larger rule set is parsed whole each time."""
    # iptables-save quotes only what needs it; shlex costs ~30 us a line
    tokens = shlex.split(line) if any(c in line for c in "\"'\\") else line.split()
    if len(tokens) < 2 or tokens[0] != "-A":
        raise ParseError("expected -A CHAIN")
    chain = tokens[1]
    f: dict[str, object] = {}
    unsupported: list[str] = []
    target, target_args, goto = "", (), False
    module: str | None = None
    sets: list[SetMatch] = []
    stateful = False  # after a match in XT_STATEFUL
    i, neg = 2, False
    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            neg, i = True, i + 1
            continue
        if tok in ("-j", "--jump", "-g", "--goto"):
            target, target_args, goto = tokens[i + 1], tuple(tokens[i + 2:]), tok in ("-g", "--goto")
            break
        if tok in ("-m", "--match"):
            module, i = tokens[i + 1], i + 2
            stateful |= module in XT_STATEFUL
            if module not in ("tcp", "udp", "icmp", "icmp6", "multiport", "conntrack", "state", "comment", "set",
                              "mark", "addrtype"):
                unsupported.append(f"-m {module}")
            continue
        if module == "set" and (after := ipset.parse_option(tokens, i, neg, [] if stateful else sets)) is not None:
            i, neg = after, False
            continue
        before = dict(f)
        key, step = _option(tokens[i:], module, f, unsupported)
        proto = f.get("proto")
        implied = _IMPLICIT.get(proto.value) if isinstance(proto, Neg) and not proto.neg else None  # type: ignore[arg-type]
        if key is None and step and unsupported and unsupported[-1].endswith(tok) and implied not in (None, module):
            # `-p udp ... --dport N`: iptables loads the protocol's match implicitly
            unsupported.pop()
            key, step = _option(tokens[i:], implied, f, unsupported)
        stored = [k for k in f if k != "comment" and (k not in before or f[k] is not before[k])]
        if stateful and (dropped := [k for k in stored if k not in _BUILTIN_FIELDS]):
            for k in dropped:
                del f[k]
            if module in ("conntrack", "state"):  # conntrack is still in use (hooks.py)
                unsupported.append(f"-m {module} after a stateful match")
            key = None
        elif key is not None and key in before:  # both must hold: f keeps one, the kernel decides
            unsupported.append(f"a second {key} match")
        if key is not None:
            f[key] = Neg(f[key], neg)
        i, neg = i + step, False
    return Rule(chain=chain, index=0, text=line, target=target or "CONTINUE",  # no target: a counting rule
                target_args=target_args, goto=goto, sets=tuple(sets), unsupported=tuple(unsupported),
                **f)  # type: ignore[arg-type]


def _option(tokens: list[str], module: str | None, f: dict[str, object],
            unsupported: list[str]) -> tuple[str | None, int]:
    """Store the value of the option at tokens[0] in f; (field name or None,
    tokens used)."""
    tok, arg = tokens[0], tokens[1] if len(tokens) > 1 else ""
    if tok in _BUILTIN:
        key = _BUILTIN[tok]
        if key in ("src", "dst"):
            f[key] = _network(arg)
        elif key == "proto":
            f[key] = PROTOCOLS[arg] if arg in PROTOCOLS else int(arg)
        else:
            f[key] = arg
        return key, 2
    if tok in ("-f", "--fragment"):
        f["fragment"] = True
        return "fragment", 1
    if module in ("tcp", "udp") and tok in ("--sport", "--source-port", "--dport", "--destination-port"):
        key = "sport" if tok in ("--sport", "--source-port") else "dport"
        f[key] = _ports(arg)
        return key, 2
    if module == "tcp" and tok == "--tcp-flags":
        f["tcp_flags"] = _tcp_flags(arg, tokens[2])
        return "tcp_flags", 3
    if module == "tcp" and tok == "--syn":
        f["tcp_flags"] = (0x17, 0x02)  # SYN,RST,ACK,FIN SYN
        return "tcp_flags", 1
    if module == "multiport" and tok in ("--sports", "--source-ports", "--dports", "--destination-ports",
                                         "--ports"):
        key = {"--sports": "sport", "--source-ports": "sport", "--dports": "dport",
               "--destination-ports": "dport", "--ports": "ports"}[tok]
        f[key] = _ports(arg)
        return key, 2
    if (module == "icmp" and tok == "--icmp-type") or (module == "icmp6" and tok == "--icmpv6-type"):
        f["icmp_type"] = _icmp_type(arg)
        return "icmp_type", 2
    if (module == "conntrack" and tok == "--ctstate") or (module == "state" and tok == "--state"):
        states = frozenset(arg.split(","))
        if not states <= CT_STATES:
            raise ParseError(f"unknown conntrack state in {arg}")
        if states & {"SNAT", "DNAT"}:  # the entry's NAT bits: the kernel's to judge
            unsupported.append(f"{module} {tok} {arg}")
            return None, 2
        f["ctstate"] = states
        return "ctstate", 2
    if module == "conntrack" and tok == "--ctstatus":
        names = arg.split(",")
        if unknown := [n for n in names if n not in CT_STATUS]:
            raise ParseError(f"unknown conntrack status {','.join(unknown)}")
        f["ctstatus"] = sum(CT_STATUS[name] for name in names)
        return "ctstatus", 2
    if module == "conntrack" and tok == "--ctdir" and arg in ("ORIGINAL", "REPLY"):
        f["ctdir"] = arg
        return None, 2
    if module == "mark" and tok == "--mark":
        value, _, mask = arg.partition("/")
        f["mark"] = (int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF)
        return "mark", 2
    if module == "addrtype" and tok == "--dst-type":  # --src-type, --limit-iface-*: not modelled
        types = frozenset(arg.split(","))
        if not types <= ADDR_TYPES.keys():
            raise ParseError(f"unknown address type in {arg}")
        f["dst_type"] = types
        return "dst_type", 2
    if module == "comment" and tok == "--comment":
        f["comment"] = arg
        return None, 2
    # an option TNA does not model (of any module): record it and skip its
    # arguments, up to the next option
    unsupported.append(f"{module or ''} {tok}".strip())
    step = 1
    while step < len(tokens) and not tokens[step].startswith("-") and tokens[step] != "!":
        step += 1
    return None, step
