"""The namespace's netfilter rule sets, read in their canonical form.

iptables rules come from `iptables-save -c` / `ip6tables-save -c` of the
back end that holds them (iptables-nft: nftables tables ip/ip6 filter, nat,
...; iptables-legacy: x_tables, listed in /proc/net/ip{,6}_tables_names).
Everything else nftables holds with a base chain - a native table of any
family, a table iptables-nft cannot decode - is read natively, once, from
`nft -j list ruleset` (only when such a table exists: the base chains
alone say so), and translated by tna.model.nftables: its tables join
iptables' per IP version (an inet table both), its sets are mirrored as
ipsets are; what that cannot model is "foreign".  Read again on every
nftables commit (NftEvents: iptables-nft's rules included) but one that
only changed set elements (tna.netlink.nftmsg decodes those), and polled
for iptables-legacy, which announces nothing.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_GETGEN,
    NFT_MSG_GETTABLE,
    NFTSocket,
    nft_gen_msg,
    nft_table_msg,
)
from pyroute2.netlink.nlsocket import NetlinkSocket

from tna.model.ipset import IpSet
from tna.model.iptables import BUILTIN_CHAINS, ParseError, Table, parse_save
from tna.model.nftables import parse_ruleset
from tna.model.nftsets import SetElement
from tna.netlink.nftmsg import CommitReader, Deleted, NftCommit

LEGACY_NAMES = {4: Path("/proc/net/ip_tables_names"), 6: Path("/proc/net/ip6_tables_names")}
SAVE = {(4, "legacy"): "iptables-legacy-save", (6, "legacy"): "ip6tables-legacy-save",
        (4, "nft"): "iptables-nft-save", (6, "nft"): "ip6tables-nft-save"}
NFT_FAMILY = {"ip": 4, "ip6": 6}
FAMILY_NAME = {4: "ip", 6: "ip6"}
INCOMPATIBLE = re.compile(r"# Table `([^']+)' is incompatible")  # iptables-nft-save leaves it out
NETLINK_NETFILTER, NFNLGRP_NFTABLES = 12, 7
log = logging.getLogger(__name__)
SO_ATTACH_BPF, SO_DETACH_BPF = 50, 27  # asm-generic (x86, arm); Python's socket module has neither
NFNL_SUBSYS_NFTABLES = 10
TABLE_F_OWNER = 2
TABLE_FLAGS = {1: "dormant", TABLE_F_OWNER: "owner", 4: "persist"}  # NFT_TABLE_F_*
NFPROTO_NAME = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


@dataclass(frozen=True)
class NetfilterChanged:
    """An nftables commit happened in this namespace: the gen-th the daemon
    counted; its set-element changes (a map update), or None: the rule
    sets must be read again."""

    gen: int = 0
    elements: tuple[SetElement, ...] | None = None
    deleted: Deleted | None = None  # its rules deleted, by place (NftCommit.deleted; None: not known)


class NftEvents:
    """Subscription to nftables commits (NFNLGRP_NFTABLES), read with select()
    like the netdev family's (this pyroute2 never hands them to get())."""

    def __init__(self) -> None:
        self._sock = NetlinkSocket(family=NETLINK_NETFILTER)
        self._sock.bind(groups=1 << (NFNLGRP_NFTABLES - 1))
        self._raw = socket.socket(fileno=self._sock.fileno())
        self._commits = CommitReader()
        self.took = False  # the last read() took a notification
        self.overran = False  # ... or found notifications lost
        self.last_gen = 0  # the generation (nfgenmsg.res_id) of the last notification taken
        self._lock = threading.Lock()  # the reader closes the socket, another thread unfilters it
        self._open = True

    def close(self) -> None:
        with self._lock:
            self._open = False
            self._raw.detach()  # the fd belongs to the pyroute2 socket
            self._sock.close()

    def filter(self, prog_fd: int) -> None:
        """Run a socket filter on every notification as the kernel delivers it."""
        with self._lock:
            if self._open:  # else the reader ended: a resync follows
                self._raw.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog_fd)

    def unfilter(self) -> None:
        """Detach the filter at once (the socket may be read a while longer)."""
        with self._lock:
            if not self._open:  # closed: its fd may be another socket's now
                return
            try:
                self._raw.setsockopt(socket.SOL_SOCKET, SO_DETACH_BPF, 0)
            except OSError as e:  # none attached
                if e.errno != errno.ENOENT:
                    raise

    def covers(self, seen: int, mark: int) -> bool:
        """Whether the last read() took the notification that stored seen
        (mark | its generation: commit_guard.h), read after it: the same
        generation as the last one taken (a later commit's would differ; the
        filter stores before the kernel queues, so the socket being empty
        would not say it was taken); after an overrun, the socket empty: the
        read's lost commit then has the rules read whole after this."""
        if self.overran:
            return not select.select([self._raw], [], [], 0)[0]
        return self.took and seen == mark | self.last_gen

    @property
    def partial(self) -> bool:
        """A commit's messages came, its end not yet."""
        return self._commits.partial

    def read(self, timeout: float, on_begin: Callable[[], None]) -> list[NftCommit]:
        """The commits that ended within timeout (all pending messages are
        consumed); on_begin is called before the messages of a new commit
        are decoded (the kernel runs it already).  An overrun (a commit of
        thousands of rules sends a message per rule) is a commit not known
        whole: the rule sets are read whole then, so nothing else was lost
        and no resync is needed; so is the rest of a commit under way, once
        nothing is left (its NEWGEN may have been lost with the rest)."""
        done: list[NftCommit] = []
        self.took = self.overran = False
        while True:
            quiet = (done and not self.partial) or self._commits.unsure
            if not select.select([self._raw], [], [], 0 if quiet else timeout)[0]:
                return done + self._commits.settle() if self._commits.unsure else done
            self.took = True
            if not self.partial:
                on_begin()
            try:
                data = self._raw.recv(1 << 16)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                log.info("nftables notifications overran the socket: the rule sets are read whole")
                self.overran = True
                done += self._commits.lost()
                continue
            if len(data) >= 20 and int.from_bytes(data[4:6], sys.byteorder) >> 8 == NFNL_SUBSYS_NFTABLES:
                self.last_gen = int.from_bytes(data[18:20], "big")  # nlmsghdr, then nfgenmsg's res_id
            done += self._commits.feed(data)


@dataclass
class Rulesets:
    """iptables and native nftables tables per IP version, the native
tables' sets (by name), and what TNA cannot model."""

    tables: dict[int, dict[str, Table]] = field(default_factory=lambda: {4: {}, 6: {}})
    foreign: list[str] = field(default_factory=list)
    sets: dict[str, IpSet] = field(default_factory=dict)
    genid: int | None = None  # the nftables generation they are (None: a commit came during the read)

    @property
    def empty(self) -> bool:
        return not self.foreign and all(t.empty for v in self.tables.values() for t in v.values())


def run_tool(cmd: list[str]) -> str:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise FileNotFoundError(f"{cmd[0]} is not installed")
    res = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise OSError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return res.stdout


def _save(version: int, backend: str, out: Rulesets, native: set[tuple[str, str]]) -> None:
    """One back end's tables of one IP version into out; the tables
    iptables-nft cannot decode are added to native (read with nft)."""
    text = run_tool([SAVE[version, backend], "-c"])
    for name in INCOMPATIBLE.findall(text):  # "# Table `filter' is incompatible, use 'nft' tool."
        if backend == "nft":
            native.add((FAMILY_NAME[version], name))
        else:
            out.foreign.append(f"the IPv{version} table {name} iptables-{backend} cannot decode")
    try:
        tables = parse_save(text)
    except ParseError as e:
        out.foreign.append(f"iptables-{backend}-save output TNA cannot parse ({e})")
        return
    if backend == "nft":  # those read the native way (read_rulesets())
        tables = {name: t for name, t in tables.items() if (FAMILY_NAME[version], name) not in native}
    for name in tables.keys() & out.tables[version].keys():
        # both back ends hook a table of that name in, at one priority: one
        # must decide nothing for the other to stand for both
        if not _decides_nothing(out.tables[version][name]) and not _decides_nothing(tables[name]):
            out.foreign.append(f"the IPv{version} table {name} has rules in iptables-legacy and iptables-nft")
        elif _decides_nothing(tables[name]):
            del tables[name]
    out.tables[version].update(tables)


def _decides_nothing(t: Table) -> bool:
    """No rules and ACCEPT policies: every packet goes on as if the table
    were not there (a legacy table `iptables-legacy -L` once created)."""
    return all(not c.rules and c.policy in (None, "ACCEPT") for c in t.chains.values())


def _legacy_tables(version: int) -> list[str]:
    try:
        return LEGACY_NAMES[version].read_text().split()
    except OSError:  # x_tables not loaded: no legacy table
        return []


def legacy_in_use() -> bool:
    """Whether this namespace has iptables-legacy tables (cheap: two /proc
    reads), which must be polled because they announce no change."""
    return any(_legacy_tables(v) for v in LEGACY_NAMES)


def nft_generation() -> int | None:
    """The kernel's nftables rule set generation in this namespace (every
    commit moves it; None if it cannot be read)."""
    try:
        with NFTSocket() as nft:
            return nft.request_get(nft_gen_msg(), NFT_MSG_GETGEN, msg_flags=NLM_F_REQUEST)[0].get_attr("NFTA_GEN_ID")
    except (OSError, NetlinkError, IndexError, ValueError):
        return None


def table_flags() -> dict[tuple[str, str], int]:
    """(family, name) -> NFTA_TABLE_FLAGS of every nftables table, as the
    kernel has them (TABLE_FLAGS)."""
    msg = nft_table_msg()
    msg["nfgen_family"] = 0  # NFPROTO_UNSPEC: every family
    try:
        with NFTSocket(nfgen_family=0) as nft:
            tables = nft.request_get(msg, NFT_MSG_GETTABLE, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
    except NetlinkError as e:  # what a table's rules mean depends on its flags: the caller keeps the fast path off
        raise OSError(e.code, f"the nftables tables' flags could not be read: {e}") from e
    return {(NFPROTO_NAME.get(t["nfgen_family"], str(t["nfgen_family"])), t.get_attr("NFTA_TABLE_NAME")):
            t.get_attr("NFTA_TABLE_FLAGS") or 0 for t in tables}


def _of(item: dict, native: set[tuple[str, str]]) -> bool:
    """Whether an item of `nft -j list ruleset` belongs to a native table."""
    kind, obj = next(iter(item.items()))
    if kind == "metainfo":
        return True
    return (obj.get("family"), obj.get("name") if kind == "table" else obj.get("table")) in native


def _read_native(native: set[tuple[str, str]], flags: dict[tuple[str, str], int], out: Rulesets) -> None:
    """The native tables (family, name), translated, into out; flags:
    table_flags(), read before (a table listed but not there came in
    between: a commit, read again; until then its flags are not known, so
    it is taken for an owner's, which keeps its drops on the kernel path)."""
    doc = json.loads(run_tool(["nft", "-j", "list", "ruleset"]))
    for item in doc["nftables"]:
        if (t := item.get("table")) is not None and _of(item, native):
            # nft 1.0.6 prints a table's flags as garbage in JSON, and knows no persist
            bits = flags.get((t["family"], t["name"]), TABLE_F_OWNER)
            t["flags"] = [name for bit, name in TABLE_FLAGS.items() if bits & bit]
    try:
        rules = parse_ruleset({"nftables": [i for i in doc["nftables"] if _of(i, native)]})
    except (LookupError, TypeError, ValueError) as e:  # a shape of JSON it does not know
        out.foreign.append(f"nft -j list ruleset output TNA cannot translate ({e!r})")
        return
    for version, tables in rules.tables.items():
        out.tables.setdefault(version, {}).update(tables)
    out.sets.update(rules.sets)
    out.foreign += rules.foreign


def read_rulesets() -> Rulesets:
    """Every rule set of this namespace (raises OSError/FileNotFoundError
    when a tool is missing or fails: the caller keeps the fast path off)."""
    out = Rulesets(genid=nft_generation())
    native: set[tuple[str, str]] = set()
    for version in LEGACY_NAMES:
        if _legacy_tables(version):
            _save(version, "legacy", out, native)
    # base chains are what touches traffic (listing every rule would cost
    # ~0.3 s with 10,000 iptables-nft rules)
    flags = table_flags()  # before the listings: a table gone after it is not in them
    ruleset = json.loads(run_tool(["nft", "-j", "list", "chains"]))["nftables"]
    iptables_tables: set[int] = set()
    for item in ruleset:
        chain = item.get("chain")
        if chain is None or "hook" not in chain:
            continue  # tables, sets and regular chains touch no traffic by themselves
        version = NFT_FAMILY.get(chain["family"])
        # iptables-nft decodes a table of its names whatever its flags: such
        # a table (dormant, an owner's) is read the native way, which heeds them
        if version is not None and chain["table"] in BUILTIN_CHAINS \
                and not flags.get((chain["family"], chain["table"]), 0):
            iptables_tables.add(version)
        else:
            native.add((chain["family"], chain["table"]))
    for version in sorted(iptables_tables):
        _save(version, "nft", out, native)
    if native:
        _read_native(native, flags, out)
    if out.genid != nft_generation():
        out.genid = None
    return out
