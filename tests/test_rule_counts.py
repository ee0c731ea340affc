"""The fast path's rule counts across programs (tna/deploy/rulecounts.py):
carried over to the same rule in the next rule set, and restarted where
the kernel's counter of it may have restarted."""

from __future__ import annotations

from tna.deploy.rulecounts import RuleCounts
from tna.model.firewall import Firewall
from tna.model.hooks import firewall_plan
from tna.model.iptables import Table, parse_save
from tna.model.nftables import parse_ruleset
from tna.synth.fwgen import rule_refs

UDP = "-A FORWARD -p udp -m udp --dport 53 -j ACCEPT"
TCP = "-A FORWARD -p tcp -m tcp --dport 22 -j ACCEPT"
ICMP = "-A FORWARD -p icmp -j ACCEPT"


class Counts(RuleCounts):
    """Its commits numbered as the daemon's are (Holds.nft_end)."""

    gen = 0

    def commit(self, deleted: tuple[tuple[tuple[int, str, str | None], int], ...] | None) -> None:
        self.gen += 1
        self.heard(self.gen, deleted)


def tables(*rules: str, kernel: int = 1) -> dict[int, dict[str, Table]]:
    """A filter table of rules, each counted kernel times by the kernel."""
    body = "".join(f"[{kernel}:{kernel * 100}] {r}\n" for r in rules)
    return {4: parse_save(f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [{kernel}:0]\n:OUTPUT ACCEPT [0:0]\n"
                          f"{body}COMMIT\n")}


def firewall(t: dict[int, dict[str, Table]]) -> Firewall:
    fw, why = firewall_plan(t)
    assert fw is not None and why is None
    return fw


def ids(fw: Firewall) -> dict[str, int]:
    return {r.text: r.id for r in rule_refs(fw)}


def running_with(counts: Counts, t: dict[int, dict[str, Table]], prog_id: int = 1,
                 counted: dict[str, int] | None = None) -> tuple[Firewall, dict[int, tuple[int, int]]]:
    """A first read of t, and program prog_id counting its rules (counted: text -> packets)."""
    fw = firewall(t)
    counts.observe(rule_refs(fw), t, dict, counts.gen)
    counts.started(prog_id, rule_refs(fw))
    return fw, {ids(fw)[text]: (n, 100 * n) for text, n in (counted or {}).items()}


def observe(counts: Counts, fw: Firewall, t: dict[int, dict[str, Table]],
            running: dict[int, dict[int, tuple[int, int]]] | None = None, announced: bool = True) -> bool:
    """A read of t, with every commit so far (announced: iptables-nft's)."""
    return counts.observe(rule_refs(fw), t, lambda: running or {}, counts.gen, announced)


def by_text(counts: RuleCounts, fw: Firewall) -> dict[str, int]:
    """What the published counts add to each rule (packets)."""
    text = {r.id: r.text for r in rule_refs(fw)}
    return {text[i]: p for i, (p, _) in counts.published(rule_refs(fw)).items()}


def test_a_rule_inserted_before_leaves_the_others_their_counts() -> None:
    counts = Counts()
    _, live = running_with(counts, tables(UDP, TCP), counted={UDP: 5, TCP: 3})
    fw2 = firewall(t2 := tables(ICMP, UDP, TCP))
    counts.commit(())  # an `iptables -I FORWARD 1`: nothing deleted
    assert not observe(counts, fw2, t2, {1: live})
    with counts.lock:
        counts.ended(1, live)
        counts.started(2, rule_refs(fw2))
    assert by_text(counts, fw2) == {UDP: 5, TCP: 3}
    assert set(counts.published(rule_refs(fw2))) == {ids(fw2)[UDP], ids(fw2)[TCP]}


def test_a_rule_deleted_takes_its_count_along_and_only_its_own() -> None:
    counts = Counts()
    _, live = running_with(counts, tables(UDP, TCP, ICMP), counted={UDP: 5, TCP: 3, ICMP: 1})
    fw2 = firewall(t2 := tables(UDP, ICMP))
    counts.commit((((4, "filter", "FORWARD"), 1),))  # iptables -D FORWARD 2
    observe(counts, fw2, t2, {1: live})
    with counts.lock:
        counts.ended(1, live)
    assert by_text(counts, fw2) == {UDP: 5, ICMP: 1}
    counts.commit(())
    observe(counts, fw3 := firewall(t3 := tables(UDP, TCP, ICMP)), t3)  # TCP again: a new rule
    assert by_text(counts, fw3) == {UDP: 5, ICMP: 1}


def test_a_table_restored_whole_restarts_every_count_as_the_kernels() -> None:
    """iptables-restore deletes the table and makes each rule anew, the
    same texts included: the fast path's counts restart as the kernel's
    do, even with the kernel's at 0 before (a rule only the fast path
    matched) - also what a still running program counted before."""
    counts = Counts()
    fw1, live = running_with(counts, tables(UDP, TCP, kernel=0), counted={UDP: 5, TCP: 3})
    counts.commit((((4, "filter", None), 1), ((4, "filter", "FORWARD"), 2)))
    assert observe(counts, fw1, t2 := tables(UDP, TCP, kernel=0), {1: live})
    assert by_text(counts, fw1) == {UDP: -5, TCP: -3}  # taken off what program 1 goes on counting
    more = {i: (p + 1, b + 100) for i, (p, b) in live.items()}
    with counts.lock:
        counts.ended(1, more)
    assert by_text(counts, firewall(t2)) == {UDP: 1, TCP: 1}


def test_a_chain_restored_rule_by_rule_or_a_repeated_rule_moved_restarts_that_chain() -> None:
    counts = Counts()
    fw1, live = running_with(counts, tables(UDP, TCP, UDP), counted={TCP: 3})
    counts.commit((((4, "filter", "FORWARD"), 3),))  # three deleted, the same three made again
    observe(counts, fw1, t2 := tables(UDP, TCP, UDP), {1: live})
    with counts.lock:
        counts.ended(1, live)
    assert by_text(counts, firewall(t2)) == {}
    _, live = running_with(counts, tables(UDP, TCP), 2, counted={TCP: 3})
    counts.commit(())  # one more UDP rule: which of the two is the old one?
    observe(counts, fw4 := firewall(t4 := tables(UDP, TCP, UDP)), t4, {2: live})
    with counts.lock:
        counts.ended(2, live)
    assert by_text(counts, fw4) == {}


def test_unannounced_changes_restart_the_iptables_counts() -> None:
    """iptables-legacy announces nothing (and a commit may be lost): which
    rules were made anew is not known."""
    counts = Counts()
    _, live = running_with(counts, tables(UDP, TCP), counted={UDP: 5})
    fw2 = firewall(t2 := tables(ICMP, UDP, TCP))
    observe(counts, fw2, t2, {1: live}, announced=False)
    with counts.lock:
        counts.ended(1, live)
    assert by_text(counts, fw2) == {}
    counts.commit(None)
    _, live = running_with(counts, t2, 2, counted={UDP: 5})  # this read: still unknown
    assert by_text(counts, fw2) == {}


def test_unannounced_reads_of_the_same_rules_keep_the_counts() -> None:
    """iptables-legacy: read every second, the same texts in the same
    places; the kernel's counters tell a rule made again in between."""
    counts = Counts()
    fw, live = running_with(counts, tables(UDP, TCP, kernel=4), counted={UDP: 5, TCP: 2})
    assert not observe(counts, fw, tables(UDP, TCP, kernel=4), {1: live}, announced=False)
    with counts.lock:
        counts.ended(1, live)
    assert by_text(counts, fw) == {UDP: 5, TCP: 2}
    assert observe(counts, fw, tables(UDP, TCP, kernel=0), announced=False)
    assert by_text(counts, fw) == {}


def test_a_kernel_counter_that_went_back_restarts_the_fast_paths() -> None:
    """iptables -Z, nft reset: no commit; the next read sees the kernel's
    counter below the last read's."""
    counts = Counts()
    fw, live = running_with(counts, tables(UDP, TCP, kernel=7), counted={UDP: 5, TCP: 2})
    assert observe(counts, fw, tables(UDP, TCP, kernel=1), {1: live})
    with counts.lock:
        counts.ended(1, {i: (p + 2, b) for i, (p, b) in live.items()})
    assert by_text(counts, fw) == {UDP: 2, TCP: 2}


def test_a_kept_programs_counts_so_far_are_carried_and_its_base() -> None:
    counts = Counts()
    _, live = running_with(counts, tables(UDP, TCP), counted={UDP: 5, TCP: 3})
    fw2 = firewall(t2 := tables(UDP, ICMP, TCP))
    counts.commit(())
    observe(counts, fw2, t2, {1: live})
    with counts.lock:
        counts.kept(1, live, rule_refs(fw2))  # same program, fw2's ids from now on
    old = {i: c for i, c in live.items()}
    more = {i: (p + 1, b + 100) for i, (p, b) in old.items()}  # by fw2's ids: id 1 counts ICMP on from its base
    assert {r.text: p for r, (p, _) in counts.by_rule({1: more})} == {UDP: 6, ICMP: 1, TCP: 3}
    total = {i: (a[0] + b[0], a[1] + b[1]) for i, a, b in
             ((i, counts.published(rule_refs(fw2)).get(i, (0, 0)), old.get(i, (0, 0))) for i in set(old) | set(
                 counts.published(rule_refs(fw2))))}
    text = {r.id: r.text for r in rule_refs(fw2)}
    assert {text[i]: p for i, (p, _) in total.items() if p} == {UDP: 5, TCP: 3}


NFT = {"nftables": [
    {"table": {"family": "inet", "name": "filter", "handle": 1}},
    {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter",
               "hook": "forward", "prio": 0, "policy": "drop"}},
    {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 4, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}},
        {"counter": {"packets": 1, "bytes": 100}}, {"accept": None}]}},
]}


def nft_tables(table_handle: int, rule_handle: int) -> dict[int, dict[str, Table]]:
    import copy
    doc = copy.deepcopy(NFT)
    doc["nftables"][0]["table"]["handle"] = table_handle
    doc["nftables"][2]["rule"]["handle"] = rule_handle
    return parse_ruleset(doc).tables


def test_an_nft_rule_is_its_handle_in_its_tables_incarnation() -> None:
    """Native rules: no doubt from iptables' deletions; a table deleted and
    made again (nft -f with `flush ruleset`) has a new handle, even where
    its rules' handles repeat."""
    counts = Counts()
    fw, live = running_with(counts, t := nft_tables(1, 4))
    udp = next(r.id for r in rule_refs(fw) if r.handle == 4 and r.family == 4)
    live = {udp: (5, 500)}
    counts.commit((((4, "filter", None), 1),))  # an iptables table elsewhere, deleted
    observe(counts, fw, t, {1: live})
    with counts.lock:
        counts.ended(1, live)
    assert counts.published(rule_refs(fw)) == {udp: (5, 500)}
    observe(counts, fw2 := firewall(t2 := nft_tables(2, 4)), t2)
    assert counts.published(rule_refs(fw2)) == {}


def test_a_running_programs_counts_of_a_table_made_again_restart() -> None:
    """The same rules in a table made anew: the program stays (equal
    rules), its counts so far were the old table's rules'."""
    counts = Counts()
    fw, _ = running_with(counts, nft_tables(1, 4))
    udp = next(r.id for r in rule_refs(fw) if r.handle == 4 and r.family == 4)
    fw2 = firewall(t2 := nft_tables(2, 4))
    assert fw2 == fw
    assert observe(counts, fw2, t2, {1: {udp: (5, 500)}})
    assert counts.published(rule_refs(fw2)) == {udp: (-5, -500)}  # taken off what program 1 goes on counting
    with counts.lock:
        counts.ended(1, {udp: (6, 600)})
    assert counts.published(rule_refs(fw2)) == {udp: (1, 100)}


def test_a_read_ahead_of_its_commits_news_waits_for_it() -> None:
    """The rule sets are read while the commit's news is still queued: the
    comparison waits for the news (no read may follow it: an element-only
    commit's news brings none), and a commit heard after the read that
    had it counts for none."""
    counts = Counts()
    fw2, live = running_with(counts, t2 := tables(UDP, kernel=0), counted={UDP: 5})
    # iptables -R FORWARD 1 with its own text, read before its news: the read had commit 1
    assert not counts.observe(rule_refs(fw2), t2, lambda: {1: live}, 1)
    assert by_text(counts, fw2) == {}
    assert counts.heard(1, (((4, "filter", "FORWARD"), 1),))
    counts.gen = 1
    assert by_text(counts, fw2) == {UDP: -5}  # made anew: restarted
    with counts.lock:
        counts.ended(1, live)
    assert not observe(counts, fw2, t2)  # commit 1 again: no doubt now
    assert by_text(counts, fw2) == {}
    counts.commit(())  # heard before the read, after it in the kernel: the next read's
    counts.gen -= 1
    assert not observe(counts, fw2, t2)
    counts.gen += 1
    _, live = running_with(counts, t2, 2, counted={UDP: 5})
    counts.missed()  # a new watcher: commits may have been missed
    assert observe(counts, fw3 := firewall(t3 := tables(ICMP, UDP)), t3, {2: live})
    assert by_text(counts, fw3) == {UDP: -5}


def test_a_program_not_yet_replaced_counts_its_rules_under_their_new_places() -> None:
    """Between a read and the new programs, the old ones count by their own
    ids: each count goes to its rule's place in the new rule set, none
    negative, none under another rule's place."""
    counts = Counts()
    _, live = running_with(counts, tables(UDP, TCP, kernel=0), counted={UDP: 5, TCP: 3})
    counts.commit((((4, "filter", None), 1), ((4, "filter", "FORWARD"), 2)))  # restored whole
    observe(counts, fw2 := firewall(t2 := tables(UDP, TCP, kernel=0)), t2, {1: live})
    counts.commit(())
    observe(counts, fw3 := firewall(t3 := tables(ICMP, UDP, TCP, kernel=0)), t3, {1: live})
    more = {i: (p + 1, b + 100) for i, (p, b) in live.items()}
    assert {(r.index, r.text): p for r, (p, _) in counts.by_rule({1: more})} == {(2, UDP): 1, (3, TCP): 1}
    assert fw2 != fw3


def test_the_counts_go_on_in_the_next_daemon_where_no_commit_came_between() -> None:
    """A tna stopped (saved()) and one started (restore() after its first
    read): the same generation - the same rules - carries the counts on
    (through JSON), each while its rule's kernel counter has not gone back;
    another generation carries none."""
    import json

    first = Counts()
    fw, live = running_with(first, t := tables(UDP, TCP, kernel=4), counted={UDP: 5, TCP: 3})
    first.commit(())
    first.observe(rule_refs(fw), t, lambda: {1: live}, first.gen, genid=7)
    with first.lock:
        first.ended(1, live)
    saved = json.loads(json.dumps(first.saved()))
    for genid, kernel, carried in ((7, 4, {UDP: 5, TCP: 3}), (8, 4, {}), (7, 2, {})):
        nxt = Counts()
        nxt.missed()  # as a start does
        nxt.observe(rule_refs(fw), tables(UDP, TCP, kernel=kernel), dict, 0, genid=genid)
        assert nxt.restore(saved) == bool(carried)
        assert by_text(nxt, fw) == carried, (genid, kernel)
    legacy = Counts()
    running_with(legacy, t)
    legacy.observe(rule_refs(fw), t, dict, 0, announced=False, genid=7)
    assert legacy.saved() is None
