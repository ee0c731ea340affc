"""nftables commit notifications (NFNLGRP_NFTABLES), told apart by what they change.

The kernel announces a commit as one message per object it changed, then
NFT_MSG_NEWGEN.  A commit that only added or deleted elements of sets (an
`nft add element ... @blocked { ... }`) is decoded into its elements, so
that the daemon can follow it as a map update; any other commit - a rule,
chain, table, set definition, object, flowtable, or an element this module
does not read exactly (with data, a timeout, expressions, an end key, a
catch-all) - is just "changed": the rule sets are read again.  Messages are
parsed by pyroute2; only the set-element ones are decoded in full (a
commit of 10,000 rules sends 10,000 messages: their headers are enough),
and of a deleted rule, chain or table and of a base chain added (again)
its table and chain: the rules whose kernel counters ended or were
zeroed (tna/deploy/rulecounts.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSETELEM,
    NFT_MSG_DELTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWGEN,
    NFT_MSG_NEWSETELEM,
    nft_chain_msg,
    nft_rule_msg,
    nft_set_elem_list_msg,
    nft_table_msg,
)
from pyroute2.netlink.nlsocket import Marshal

from tna.model.nftsets import SetElement, nft_set_name

NFNL_SUBSYS_NFTABLES = 10
NFPROTO = {1: "inet", 2: "ip", 10: "ip6"}  # the families whose sets the rules may use
IP_VERSION = {2: 4, 10: 6}  # iptables-nft's tables: ip and ip6
NFT_SET_ELEM_INTERVAL_END = 1
NFTNL_SET_ELEM_F_INTERVAL_OPEN = 1  # libnftnl's element user data: the interval runs to the end of the space
# what a plain element has (data, a timeout, expressions, an end key, ... make it more than a key)
_PLAIN = {"NFTA_SET_ELEM_KEY", "NFTA_SET_ELEM_FLAGS", "NFTA_SET_ELEM_USERDATA"}


Deleted = tuple[tuple[tuple[int, str, str | None], int], ...]


@dataclass(frozen=True)
class NftCommit:
    """elements: the commit's element changes in order, or None when it
    changed anything else (or was not read whole); deleted: how many rules
    it deleted per (IP version, table, chain) of the ip and ip6 tables,
    chain None for a table deleted whole or whose counters it may have
    zeroed (None: not known)."""

    elements: tuple[SetElement, ...] | None
    deleted: Deleted | None = None


class _deleted_rule_msg(nft_rule_msg):
    """A deleted rule's place, its expressions left undecoded."""

    nla_map = (("NFTA_RULE_UNSPEC", "none"), ("NFTA_RULE_TABLE", "asciiz"), ("NFTA_RULE_CHAIN", "asciiz"),
               ("NFTA_RULE_HANDLE", "be64"), ("NFTA_RULE_EXPRESSIONS", "none"))


class _chain_msg(nft_chain_msg):
    """A chain's place, and whether it is a base chain (NFTA_CHAIN_HOOK)."""

    nla_map = (("NFTA_CHAIN_UNSPEC", "none"), ("NFTA_CHAIN_TABLE", "asciiz"), ("NFTA_CHAIN_HANDLE", "be64"),
               ("NFTA_CHAIN_NAME", "asciiz"), ("NFTA_CHAIN_HOOK", "hex"))


class _deleted_table_msg(nft_table_msg):
    nla_map = (("NFTA_TABLE_UNSPEC", "none"), ("NFTA_TABLE_NAME", "asciiz"))


class _Marshal(Marshal):
    msg_map = {**{(NFNL_SUBSYS_NFTABLES << 8) | t: nft_set_elem_list_msg for t in (NFT_MSG_NEWSETELEM,
                                                                                    NFT_MSG_DELSETELEM)},
               (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE: _deleted_rule_msg,
               (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELCHAIN: _chain_msg,
               (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN: _chain_msg,
               (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE: _deleted_table_msg}


def _deleted_place(msg: nft_rule_msg, kind: int) -> tuple[int, str, str | None] | None:
    """Where a deletion in an ip or ip6 table was (None: elsewhere).  A
    chain deleted counts as one rule more than its rules deleted: a chain
    of that name made again in the commit is in doubt as a whole."""
    version = IP_VERSION.get(msg["nfgen_family"])
    if version is None:
        return None
    if kind == NFT_MSG_DELRULE:
        return version, msg.get_attr("NFTA_RULE_TABLE"), msg.get_attr("NFTA_RULE_CHAIN")
    if kind == NFT_MSG_DELCHAIN:
        return version, msg.get_attr("NFTA_CHAIN_TABLE"), msg.get_attr("NFTA_CHAIN_NAME")
    return version, msg.get_attr("NFTA_TABLE_NAME"), None


def _elements(msg: nft_set_elem_list_msg, add: bool) -> list[SetElement] | None:
    family = NFPROTO.get(msg["nfgen_family"])
    table, name = msg.get_attr("NFTA_SET_ELEM_LIST_TABLE"), msg.get_attr("NFTA_SET_ELEM_LIST_SET")
    if family is None or table is None or name is None:
        return None
    out = []
    for e in msg.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS") or []:
        attrs = dict(e["attrs"])
        if attrs.keys() - _PLAIN:
            return None
        key = (attrs.get("NFTA_SET_ELEM_KEY") or {}).get("attrs", [])
        flags = attrs.get("NFTA_SET_ELEM_FLAGS", frozenset())
        if len(key) != 1 or key[0][0] != "NFTA_DATA_VALUE" or flags - {NFT_SET_ELEM_INTERVAL_END}:
            return None  # a verdict as key, a catch-all element
        udata = dict(attrs.get("NFTA_SET_ELEM_USERDATA") or [])
        open_ = int.from_bytes(udata.get("NFTNL_UDATA_SET_ELEM_FLAGS", b"\0"), "little")
        if open_ & ~NFTNL_SET_ELEM_F_INTERVAL_OPEN:
            return None
        out.append(SetElement(nft_set_name(family, table, name), add, bytes(key[0][1]),
                              NFT_SET_ELEM_INTERVAL_END in flags, bool(open_)))
    return out


class CommitReader:
    """Notification data in, finished commits out; a commit may span reads."""

    def __init__(self) -> None:
        self._marshal = _Marshal()
        self._elements: list[SetElement] | None = []
        self._deleted: Counter[tuple[int, str, str | None]] | None = Counter()
        self._base_chains: dict[tuple[int, str], set[str]] = {}  # added (again) by the commit under way
        self.partial = False  # messages of a commit whose NEWGEN has not come yet
        self.unsure = False  # messages were lost, and none has been missed since

    def lost(self) -> list[NftCommit]:
        """Messages were lost (an overrun): a commit not known whole, now,
        and the rest of the one under way (up to its NEWGEN) another."""
        self._elements, self._deleted, self._base_chains, self.partial = None, None, {}, False
        self.unsure = True
        return [NftCommit(None)]

    def settle(self) -> list[NftCommit]:
        """No notification is left after an overrun: the rest of a commit
        under way may have been lost with its NEWGEN, so it ends here, not
        known whole (the kernel notifies a commit once it has applied all of
        it: the rules read after this have it all).  What still comes of it
        is another commit not known whole, as after lost()."""
        ended = self.lost() if self.partial else []
        self.unsure = False
        return ended

    def _deletions(self) -> Deleted | None:
        """The commit's deletions.  A base chain added again is how
        iptables-nft's `-P` sets a policy (its counter zeroed) and `-Z`
        zeroes the counters: the chain is in doubt, and where the commit
        added two or more of a table's base chains again (`-Z` of them
        all), the whole table, the rules `-Z` leaves as they are (those the
        kernel counted 0) included; the others it zeroes it deletes and
        adds again."""
        if self._deleted is None:
            return None
        for (version, table), chains in self._base_chains.items():
            for chain in (None,) if len(chains) > 1 else chains:
                self._deleted[(version, table, chain)] += 1
        return tuple(self._deleted.items())

    def feed(self, data: bytes) -> list[NftCommit]:
        done = []
        for msg in self._marshal.parse(data):
            subsys, kind = msg["header"]["type"] >> 8, msg["header"]["type"] & 0xFF
            if subsys != NFNL_SUBSYS_NFTABLES:
                continue
            if kind == NFT_MSG_NEWGEN:
                done.append(NftCommit(None if self._elements is None else tuple(self._elements), self._deletions()))
                self._elements, self._deleted, self._base_chains, self.partial = [], Counter(), {}, False
                continue
            self.partial = True
            if kind == NFT_MSG_NEWCHAIN and msg.get_attr("NFTA_CHAIN_HOOK") \
                    and (version := IP_VERSION.get(msg["nfgen_family"])) is not None:
                self._base_chains.setdefault((version, msg.get_attr("NFTA_CHAIN_TABLE")), set()).add(
                    msg.get_attr("NFTA_CHAIN_NAME"))
            elif kind in (NFT_MSG_DELRULE, NFT_MSG_DELCHAIN, NFT_MSG_DELTABLE) and self._deleted is not None:
                place = _deleted_place(msg, kind)
                if place is not None:
                    self._deleted[place] += 1
            if self._elements is None:
                continue
            decoded = (_elements(msg, kind == NFT_MSG_NEWSETELEM)
                       if kind in (NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM) and not msg["header"].get("error")
                       else None)
            if decoded is None:
                self._elements = None
            else:
                self._elements.extend(decoded)
        return done
