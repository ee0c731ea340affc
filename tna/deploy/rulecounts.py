"""The fast path's counts of each rule, kept as long as the kernel keeps its own.

A program counts the rules it applies in its own tna_fw_rules, by the
counter ids of the rule set it was built for (fwgen.rule_refs()).  Those
counts end with the program (a new plan, new rules, an interface gone),
and a program kept for new rules counts other rules by the same ids.
The kernel's counter of a rule lives as long as the rule: `iptables -I`
or `nft add rule` of another rule leaves it.  So what a program counted
is carried over by what each rule is, for as long as the rule stays:

- a native nft rule: its table's handle and its own (a table made anew
  has another handle; its rules' handles start again);
- an iptables rule (read from iptables-save, no handle): its text, and
  which of the equal texts in its chain it is.  That holds only where the
  commits since the last read deleted exactly the rules whose texts are
  gone (NftCommit.deleted: an iptables-restore deletes the table and makes
  every rule anew; `iptables -R` replaces one with its own text), and the
  number of a repeated text did not change; anywhere else in doubt - a
  chain where that fails - the fast path's counts of those rules restart,
  as the kernel's may have.  A read that had a commit not heard yet is
  compared when it is; where the deletions are not known (commits not
  read whole, missed by a resync), every chain is in doubt; under
  iptables-legacy, which announces nothing, a chain whose texts changed.

A kernel counter that went back (nft reset, a legacy rule deleted and
made again with its text and place unseen in between) restarts the fast
path's count of that rule as well.  The counts go on in the next daemon
where its first read has the nftables generation of this one's last
(saved(), restore()).

What a rule matched is then its kernel counter, plus the running
programs' counts of it, plus the carried counts (state.json "carried"),
less the counts a kept program had before it was kept (its base).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, KeysView, Mapping, Sequence
from typing import TYPE_CHECKING

from tna.model.iptables import Rule, Table

if TYPE_CHECKING:  # the numbering synthesis compiled in (Artifact.refs); deploy runs none of its code
    from tna.synth.fwgen import RuleRef

Key = tuple[object, ...]
Place = tuple[int, str, str | None]  # (IP version, table, chain; None: all of them)
Counts = dict[int, tuple[int, int]]
Tables = Mapping[int, Mapping[str, Table]]


def kernel_rules(refs: Iterable[RuleRef], tables: Tables) -> list[tuple[Rule | None, tuple[int, int]]]:
    """For each ref, the kernel's rule it names (None: a policy, or gone)
    and the kernel's counters of that rule or policy."""
    by_index: dict[int, dict[int, Rule]] = {}  # id(chain) -> index -> rule
    out: list[tuple[Rule | None, tuple[int, int]]] = []
    for ref in refs:
        table = tables.get(ref.family, {}).get(ref.table)
        chain = table.chains.get(ref.chain) if table is not None else None
        if chain is None:
            out.append((None, (0, 0)))
        elif ref.index == 0:
            out.append((None, chain.counters))
        else:  # by index: a native inet chain's indexes skip the other version's rules
            rules = by_index.get(id(chain))
            if rules is None:
                rules = by_index[id(chain)] = {r.index: r for r in chain.rules}
            rule = rules.get(ref.index)
            out.append((rule, rule.counters if rule is not None else (0, 0)))
    return out


def rule_keys(refs: Sequence[RuleRef], handles: Mapping[tuple[int, str], int | None]) -> list[Key]:
    """What each counter id's rule is, across rule sets (by id); refs as
    rule_refs() lists them (each chain's rules in their order); handles:
    (family, table) -> the nft table's handle (a table made anew has
    another one, its rules' handles start again)."""
    keys: list[Key] = [()] * len(refs)
    equal_texts: dict[Key, int] = {}
    chains: dict[tuple[int, str, str], Key] = {}
    for ref in refs:
        where = chains.get((ref.family, ref.table, ref.chain))
        if where is None:
            where = chains[(ref.family, ref.table, ref.chain)] = (
                ref.family, ref.table, handles.get((ref.family, ref.table)), ref.chain)
        if ref.index == 0:
            keys[ref.id] = (*where, "policy")
        elif ref.handle is not None:  # a verdict map's Rules share it: the rule's one counter
            keys[ref.id] = (*where, ref.handle)
        else:
            k = equal_texts[(*where, ref.text)] = equal_texts.get((*where, ref.text), -1) + 1
            keys[ref.id] = (*where, ref.text, k)
    return keys


def _made_anew(old: KeysView[Key], new: KeysView[Key], deleted: Mapping[Place, int] | None,
               announced: bool = True) -> set[Key]:
    """The iptables chains (keys' first four fields) whose rules may have
    been made anew between the reads that numbered old and new, given the
    rules deleted in between (None: not known; announced: the tables'
    changes are nftables commits, not iptables-legacy's)."""
    if deleted is None:
        # legacy, read each second: where the texts changed (elsewhere the kernel
        # counters tell); news of a commit missed: anywhere
        return {k[:4] for k in (old | new if announced else old ^ new) if k[2] is None}
    whole = {(version, table) for (version, table, chain), n in deleted.items() if chain is None and n}
    changed = old ^ new  # an iptables rule's key: (*chain, text, which of the equal texts)
    touched = {k[:4] for k in changed if k[2] is None}  # or a policy's (it stays with its chain)
    touched |= {(version, table, None, chain) for (version, table, chain), n in deleted.items() if chain and n}
    if whole:
        touched |= {k[:4] for k in old | new if k[2] is None and k[:2] in whole}
    if not touched:
        return set()
    # the texts gone from each chain, counted: the keys numbered past a text's new number
    gone = Counter(k[:4] for k in old - new if len(k) == 6 and k[2] is None)
    # a repeated text whose number changed: which of the equal rules is which is not known
    repeated = {k[:4] for k in changed if len(k) == 6 and k[2] is None and
                ((*k[:5], 1) in old or (*k[:5], 1) in new)}
    return {chain for chain in touched if chain[:2] in whole or chain in repeated
            or deleted.get((chain[0], chain[1], chain[3]), 0) != gone[chain]}


def _add(a: tuple[int, int], b: tuple[int, int], sign: int = 1) -> tuple[int, int]:
    return a[0] + sign * b[0], a[1] + sign * b[1]


class RuleCounts:
    def __init__(self) -> None:
        # held while counts move between a program and the carried ones, so
        # that a reader (the metrics) never sees them in both or in neither
        self.lock = threading.Lock()
        self._carried: dict[Key, tuple[int, int]] = {}
        # prog id -> the refs it counts, their keys, its base
        self._programs: dict[int, tuple[Sequence[RuleRef], list[Key], Counts]] = {}
        self._seen: dict[Key, int] = {}  # the kernel's packets of each rule at the last read
        self._handles: dict[tuple[int, str], int | None] = {}
        # the refs last asked for, their keys, each key's first ref
        self._numbered: tuple[Sequence[RuleRef], list[Key], dict[Key, RuleRef]] | None = None
        self._refs: Sequence[RuleRef] = ()  # the counted rules of the last rule sets read
        self.version = 0  # moves whenever counts move between programs and the carried ones
        # the nftables commits heard (numbered as Holds numbers them, in order):
        # those that deleted rules, or whose deletions are not known (None)
        self._heard: dict[int, Iterable[tuple[Place, int]] | None] = {}
        self._last_heard = 0
        self._read_upto = 0  # the commits the last read rule sets had
        self._in_doubt = False  # commits missed, or not known to be in the last read
        self._read_genid: int | None = None  # the nftables generation _seen was read at (None: not known)
        # a read that had commits not heard yet: (refs, tables, running, upto), compared when they are
        self._waiting: tuple[Sequence[RuleRef], Tables, Callable[[], Mapping[int, Counts]], int] | None = None

    def heard(self, gen: int, deleted: Iterable[tuple[Place, int]] | None) -> bool:
        """The gen-th nftables commit's rule deletions (NftCommit.deleted).
        True if the carried counts changed: a read waiting for this news
        was compared."""
        self._last_heard = max(self._last_heard, gen)
        if deleted is None or deleted:
            self._heard[gen] = deleted
        waiting = self._waiting
        if waiting is None or gen < waiting[3]:
            return False
        with self.lock:
            self._waiting = None
            return self._compare(*waiting, announced=True)

    def missed(self) -> None:
        """Commits were missed (a new watcher): nothing says what they deleted."""
        self._in_doubt = True

    def _deleted_since(self, upto: int | None) -> Counter[Place] | None:
        """The rules deleted by the commits since the last read up to upto
        (the rule sets read had those; None: not known), by place; None if
        not known (upto None: a commit was under way at the read)."""
        window = [g for g in self._heard if g <= upto] if upto is not None else list(self._heard)
        known = upto is not None and not self._in_doubt and self._last_heard >= upto
        out: Counter[Place] | None = Counter()
        for g in window:
            deleted = self._heard.pop(g)
            if deleted is None or out is None:
                out = None
            elif g > self._read_upto:  # one heard after the read it was in: that read was in doubt
                out.update(dict(deleted))
        self._read_upto = max(self._read_upto, upto or self._last_heard)
        self._in_doubt = upto is None  # its commits may be heard after the next read too
        return out if known else None

    def _numbering(self, refs: Sequence[RuleRef]) -> tuple[Sequence[RuleRef], list[Key], dict[Key, RuleRef]]:
        numbered = self._numbered  # once: the metrics thread asks too (with the lock held)
        if numbered is None or numbered[0] is not refs:
            keys = rule_keys(refs, self._handles)
            first: dict[Key, RuleRef] = {}
            for ref in reversed(refs):  # the first in the chains' order (a verdict map's first Rule)
                first[keys[ref.id]] = ref
            numbered = self._numbered = (refs, keys, first)
        return numbered

    def keys(self, refs: Sequence[RuleRef]) -> list[Key]:
        """rule_keys() of a rule set's counter ids (fwgen.rule_refs(): the
        last one asked, cached)."""
        return self._numbering(refs)[1]

    def observe(self, refs: Sequence[RuleRef], tables: Tables, running: Callable[[], Mapping[int, Counts]],
                upto: int | None, announced: bool = True, genid: int | None = None) -> bool:
        """The rule sets were read (refs: the counted rules of what they
        became, fwgen.rule_refs(); running(): every running program's
        tna_fw_rules by program id; upto: the number of the last nftables
        commit they had, None if that is not known - a commit under way;
        announced: no iptables-legacy table, whose changes are no commits;
        genid: the kernel's nftables generation the read was made at):
        the counts of rules gone are dropped, and those of rules that may
        have been made anew, or whose kernel counter went back, restart;
        so do a running program's counts of the rules of an nft table made
        anew (its rules have the keys of the new table's from here on).
        True if the carried counts changed."""
        with self.lock:
            self._refs, self._waiting = refs, None
            if not refs:  # nothing counts meanwhile; compared with the next rule set, in doubt
                self._deleted_since(upto)
                self._in_doubt, self._read_genid = True, None
                return False
            self._read_genid = genid if announced else None
            return self._compare(refs, tables, running, upto, announced)

    def _compare(self, refs: Sequence[RuleRef], tables: Tables, running: Callable[[], Mapping[int, Counts]],
                 upto: int | None, announced: bool) -> bool:
        """observe()'s work (call with the lock held)."""
        handles = {(family, name): t.handle for family, ts in tables.items() for name, t in ts.items()}
        rekeyed = handles != self._handles
        if rekeyed:
            self._handles, self._numbered = handles, None
        keys = self.keys(refs)
        before = self._carried
        carried, reset = dict(before), set()
        if announced and upto is not None and upto > self._last_heard and not self._in_doubt:
            self._waiting = (refs, tables, running, upto)  # a commit the read had, not heard yet
        else:
            deleted = self._deleted_since(upto)
            seen: dict[Key, int] = {}
            for ref, (_, counters) in zip(refs, kernel_rules(refs, tables), strict=True):
                seen.setdefault(keys[ref.id], counters[0])
            doubtful = _made_anew(self._seen.keys(), seen.keys(), deleted if announced else None, announced)
            reset = {k for k, p in seen.items()
                     if p < self._seen.get(k, 0) or (k[2] is None and k[:4] in doubtful)}
            self._seen = seen
            carried = {k: c for k, c in before.items() if k in seen and k not in reset}
        for prog_id, counts in (running().items() if reset or rekeyed else ()):
            if (program := self._programs.get(prog_id)) is None:
                continue
            counted, old_keys, base = program
            new_keys = old_keys if not rekeyed else keys if counted is refs else rule_keys(counted, handles)
            for i, c in counts.items():
                if i < len(new_keys) and (new_keys[i] in reset or new_keys[i] != old_keys[i]):
                    # from here on: taken off what it goes on counting
                    k = new_keys[i]
                    carried[k] = _add(carried.get(k, (0, 0)), _add(c, base.get(i, (0, 0)), -1), -1)
            self._programs[prog_id] = (counted, new_keys, base)
        self._carried = carried
        self.version += carried != before
        return carried != before

    def saved(self) -> dict[str, object] | None:
        """The carried counts and the kernel's counters they go with, for
        a daemon started next (restore()); None where the rules read last
        are not known to be the kernel's generation genid's (a read in
        doubt or waiting for news, iptables-legacy)."""
        with self.lock:
            if self._read_genid is None or self._in_doubt or self._waiting is not None:
                return None
            return {"genid": self._read_genid, "seen": [[list(k), n] for k, n in self._seen.items()],
                    "carried": [[list(k), p, b] for k, (p, b) in self._carried.items()]}

    def restore(self, saved: dict[str, object] | None) -> bool:
        """A daemon before this one stopped with saved (its saved()): where
        the first read here has the same generation - no commit since -
        its counts are carried on, each while its rule's kernel counter has
        not gone back.  True if some were."""
        with self.lock:
            if not saved or self._read_genid is None or saved.get("genid") != self._read_genid or self._carried:
                return False
            try:
                then = {tuple(k): n for k, n in saved["seen"]}  # type: ignore[union-attr]
                counts = {tuple(k): (p, b) for k, p, b in saved["carried"]}  # type: ignore[union-attr]
            except (TypeError, ValueError):
                return False
            self._carried = {k: c for k, c in counts.items() if k in self._seen and self._seen[k] >= then.get(k, 0)}
            self.version += 1
            return bool(self._carried)

    def _by_key(self, prog_id: int, counts: Counts) -> dict[Key, tuple[int, int]]:
        """A program's counts less its base, by the keys of its rules."""
        _, keys, base = self._programs.get(prog_id, ((), [], {}))
        out: dict[Key, tuple[int, int]] = {}
        for i, c in counts.items():
            if i < len(keys):
                c = _add(c, base.get(i, (0, 0)), -1)
                out[keys[i]] = _add(out.get(keys[i], (0, 0)), c)
        return out

    def counts(self, prog_id: int) -> bool:
        """Does the program count rules (was it started() with some)?"""
        return prog_id in self._programs

    def started(self, prog_id: int, refs: Sequence[RuleRef]) -> None:
        """A program counting refs' rules runs (call with the lock held)."""
        if refs:
            self._programs[prog_id] = (refs, self.keys(refs), {})
            self.version += 1

    def ended(self, prog_id: int, counts: Counts) -> None:
        """The program's counts (its tna_fw_rules, read last) are carried
        over for the rules still there (call with the lock held)."""
        for k, c in self._by_key(prog_id, counts).items():
            if k in self._seen:
                self._carried[k] = _add(self._carried.get(k, (0, 0)), c)
        self._programs.pop(prog_id, None)
        self.version += 1

    def kept(self, prog_id: int, counts: Counts, refs: Sequence[RuleRef]) -> None:
        """The program counts refs' rules by the same ids from now on: its
        counts so far are carried over, and are its base (call with the
        lock held)."""
        self.ended(prog_id, counts)
        self._programs[prog_id] = (refs, self.keys(refs), dict(counts))

    def by_rule(self, running: Mapping[int, Counts]) -> list[tuple[RuleRef, tuple[int, int]]]:
        """Each rule of the last rule sets read (its first ref) and what the
        fast path applied it to: the carried counts and the running
        programs' (running: their tna_fw_rules by program id) less their
        bases, by what each rule is - a program not yet replaced for new
        rules counts them by its own ids (call with the lock held)."""
        total = dict(self._carried)
        for prog_id, counts in running.items():
            for k, c in self._by_key(prog_id, counts).items():
                total[k] = _add(total.get(k, (0, 0)), c)
        first = self._numbering(self._refs)[2] if self._refs else {}
        return [(first[k], c) for k, c in total.items() if k in first and c != (0, 0)]

    def published(self, refs: Sequence[RuleRef]) -> Counts:
        """What to add to the running programs' counts, by refs' ids, for
        each rule's total: the carried counts less the kept programs' bases."""
        first = self._numbering(refs)[2] if refs else {}
        out = {first[k].id: c for k, c in self._carried.items() if k in first and c != (0, 0)}
        for _, _, base in self._programs.values():
            for i, c in base.items():
                out[i] = _add(out.get(i, (0, 0)), c, -1)
        return {i: c for i, c in out.items() if c != (0, 0)}
