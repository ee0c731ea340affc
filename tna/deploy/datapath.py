"""Put plans into the kernel: load, attach, atomically replace, detach, and
keep the shared maps equal to what the model says (shadow + diff).

One program instance per interface (its own counters and .rodata), built
from the object for its plan's shape; the shared maps are created by the
first load and reused by every later one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.deploy.counters import read_counters
from tna.deploy.fdbmap import FdbMirror, map_size
from tna.deploy.lease import Lease
from tna.deploy.links import ForeignProgram, HookLinks, attached_tna_prog, check_tc_ingress
from tna.deploy.mapwrite import counter_room, write_diff, zero_array
from tna.deploy.preload import Preloads
from tna.deploy.rulecounts import Counts, RuleCounts, Tables
from tna.deploy.rulesetmaps import RuleSetMaps
from tna.deploy.stale import StaleMap
from tna.model.config import USER_HZ, FdbEntry, FdbKey, Neigh
from tna.model.firewall import Firewall
from tna.synth.planner import IfacePlan, L3Bridge, PortPlan

if TYPE_CHECKING:  # what synthesis hands over; deploy runs none of its code
    from tna.synth.build import Artifact
    from tna.synth.fwgen import RuleRef

log = logging.getLogger(__name__)
# the flows a firewall program passed lately (passcache.c.j2, included with
# the firewall): decided by its rules
PASS_CACHE = "tna_pass_cache"
STALE_MAX = 1 << 20  # tna_stale's room at most (its bucket array: 16 MiB)
# tests only: a small smallest FDB map, so a lab outgrows it with a few entries
FDB_SIZE_ENV = "TNA_TEST_FDB_SIZE"


@dataclass
class Attached:
    plan: IfacePlan
    obj: bpf.BpfObject
    prog: bpf.Program
    prog_id: int
    source: Path
    rule_counters: int  # the ids its tna_fw_rules counts (the rule set's)


def keeps(cur: Attached | None, plan: IfacePlan, source: Path, rule_set: Firewall | None) -> bool:
    """Whether cur, a program of the newest rule set, may stay for plan with
    this source (Datapath.keep_programs())."""
    return (cur is not None and rule_set is not None and cur.plan.firewall == rule_set and cur.source == source
            and plan.firewall is not None and replace(cur.plan, firewall=plan.firewall) == plan)


def iface_cfg(ifindex: int, mac: str, flags: int, port_slot: int = 0) -> bytes:
    cfg = abi.TnaIfaceCfg(ifindex=ifindex, flags=flags, port_slot=port_slot)
    cfg.mac[:] = bytes.fromhex(mac.replace(":", ""))
    return bytes(cfg)


class Datapath:
    def __init__(self) -> None:
        self.shared: dict[str, bpf.Map] = {}
        self.lease = Lease()  # started by the first load, which creates tna_state
        self.stale = StaleMap(self.lease)
        self.nft_seen_filter: bpf.Program | None = None  # the nftables reader's socket filter (commit_guard.h)
        self.on_load: Callable[[], None] = lambda: None  # after each program's load (in a loader thread)
        self.attached: dict[int, Attached] = {}
        self.links = HookLinks()
        self._shadow: dict[str, dict[bytes, bytes]] = {}
        self.slots: dict[int, int] = {}  # bridge port ifindex -> its index in tna_ports
        self.sets = RuleSetMaps()  # the newest rule set's, which every program compiled for it shares
        self._capacity: dict[str, int] = {}  # each shared map's (read at creation)
        # what the kernel holds: the first load sizes the maps mirroring it (expect())
        self._expected = {abi.MAP_FDB: 0, abi.MAP_PORTS: 0, abi.MAP_STALE: 0}
        self._defaults = {abi.MAP_FDB: int(os.environ.get(FDB_SIZE_ENV) or abi.FDB_SIZE),
                          abi.MAP_PORTS: abi.PORTS_SIZE, abi.MAP_STALE: abi.STALE_SIZE}
        self.fdb = FdbMirror(0)
        self.preloads = Preloads()  # programs loaded ahead of their attach (preload())
        # programs kept for new rules so far (keep_programs()): each time,
        # its counter ids became the new rules' (the status says how many)
        self.renumbered = 0
        self.rule_counts = RuleCounts()  # what programs counted, beyond their own lives
        # programs replaced or detached, open until the status names their
        # successors: a `tna stats --rules` reading the older one finds them
        self._retired: list[bpf.BpfObject] = []

    # --- programs -----------------------------------------------------

    def preload(self, todo: list[tuple[IfacePlan, Artifact]]) -> None:
        """Load the programs of several interfaces at once, for attach() to
        take (tna/deploy/preload.py).  Loads that would create maps run
        alone: the first at all (the shared maps), and the first of a new
        rule set whose maps could not be made beforehand."""
        for plan, _ in todo:
            if "bridge" in plan.modules:
                try:
                    self.port_slot(plan.ifindex)  # allocated here: the loads only read it
                except OSError:
                    pass  # no slot left: that load fails alike, and attach() reports it
        if self.shared:
            for art in {art.firewall: art for _, art in todo if not self.sets.holds(art)}.values():
                try:
                    self._make_sets(art)
                except Exception as e:  # the first load of the rule set tries again, and reports it
                    log.debug("the rule set's maps, made ahead: %s", e)
        self.preloads.load(todo, self._load, lambda art: bool(self.shared) and self.sets.holds(art))

    def _make_sets(self, art: Artifact) -> None:
        """Create and fill art's rule-set maps by loading its object without
        programs (no verifier run); the rule set's programs reuse them."""
        obj = bpf.BpfObject(str(art.obj))
        try:
            obj.maps_only()
            self._load_object(obj, art)
        finally:
            obj.close()  # the set maps live on: self.sets holds descriptors of its own

    def _load(self, plan: IfacePlan, art: Artifact) -> tuple[bpf.BpfObject, bpf.Program]:
        obj = bpf.BpfObject(str(art.obj))
        try:
            if plan.hook == "xdp":
                obj.bind_to_device(abi.PROGRAM_NAME, plan.ifindex)
            slot = self.port_slot(plan.ifindex) if "bridge" in plan.modules else 0
            obj.set_initial_value(abi.SECTION_IFACE, iface_cfg(plan.ifindex, plan.mac, plan.flags, slot))
            self._load_object(obj, art)
            self.on_load()
            return obj, obj.program(abi.PROGRAM_NAME)
        except BaseException:
            obj.close()
            raise

    def _load_object(self, obj: bpf.BpfObject, art: Artifact) -> None:
        """Load obj with the shared maps (the first load creates them) and
        its rule set's (the first load of that rule set creates and fills
        them)."""
        # one counter per counted filter rule (per program: its own)
        obj.set_max_entries(abi.MAP_FW_RULES, counter_room(art.rule_counters))
        for name, m in self.shared.items():
            obj.reuse_map(name, m.fd)
        if not self.shared:  # this load creates the shared maps
            for name in self._expected:
                obj.set_max_entries(name, self._size(name))
        self.sets.load(obj, art)
        if not self.shared:
            self._adopt_shared(obj)

    def _adopt_shared(self, obj: bpf.BpfObject) -> None:
        for name in abi.SHARED_MAPS:
            m = obj.map(name)
            self.shared[name] = bpf.Map(os.dup(m.fd), m.key_size, m.value_size, name, owned=True)
            self._capacity[name] = bpf.map_info(m.fd).max_entries
        self.fdb = FdbMirror(self._capacity[abi.MAP_FDB])
        self.stale.map = self.shared[abi.MAP_STALE]
        log.info("maps sized for what the kernel holds: %s", ", ".join(
            f"{name} {self._capacity[name]}" for name in self._expected))
        prog = obj.program(abi.RENEW_PROGRAM)
        # no program is attached yet
        self.lease.start(bpf.Program(os.dup(prog.fd), prog.name, owned=True), self.shared[abi.MAP_STATE])
        prog = obj.program(abi.NFT_SEEN_PROGRAM)
        self.nft_seen_filter = bpf.Program(os.dup(prog.fd), prog.name, owned=True)

    def rule_set(self) -> tuple[Firewall | None, dict[str, dict[bytes, bytes]]]:
        """The newest rule set, and what its mirrored ipsets' maps hold."""
        return self.sets.rule_set(), self.sets.ipset_shadow

    def is_current(self, plan: IfacePlan) -> bool:
        """plan's program is what runs on its interface (nothing to build)."""
        cur = self.attached.get(plan.ifindex)
        return cur is not None and cur.plan == plan

    def keep_programs(self, todo: list[tuple[IfacePlan, Artifact]]) -> set[int]:
        """The interfaces of todo whose running program stays: its plan
        differs from the attached one only in the rule set, whose new source
        is the running one's (a rule joined or left a set of rules: only map
        entries differ).  The shared set-of-rules maps get the new rule set's
        entries; each kept program's rule counts so far are carried over and
        become its base (its ids name the new rule set's rules), and its pass
        cache restarts (what the old rules passed, they decided).  Only under a hold:
        the maps change under the running programs, and a program of the old
        rule set not kept must be replaced before the hold ends (with these
        maps, which serve the new rule set now)."""
        fits = [(plan, art, cur) for plan, art in todo
                if keeps(cur := self.attached.get(plan.ifindex), plan, art.source, self.rule_set()[0])]
        if not fits or not self.sets.rewrite(fits[0][1]):
            return set()
        kept = set()
        for plan, art, cur in fits:
            try:
                counters = cur.obj.map(abi.MAP_FW_RULES)
                if art.firewall != self.sets.rule_set() or art.rule_counters > bpf.map_info(counters.fd).max_entries:
                    continue
                counted = read_counters(counters)
                zero_array(cur.obj.map(PASS_CACHE))
            except OSError as e:
                log.warning("%s: its counters could not be read (%s): a new program replaces it", plan.name, e)
                continue
            with self.rule_counts.lock:
                self.rule_counts.kept(cur.prog_id, counted, art.refs)
                cur.plan, cur.rule_counters = plan, art.rule_counters
            self.renumbered += 1
            kept.add(plan.ifindex)
            log.info("%s: program %d kept: the new rules differ in sets' entries only (written into its maps)",
                     plan.name, cur.prog_id)
        return kept

    def attach(self, plan: IfacePlan, art: Artifact) -> Attached:
        """Load art and attach it to plan's interface, replacing atomically
        what TNA had there (ours or a dead daemon's)."""
        cur = self.attached.get(plan.ifindex)
        obj, prog = self.preloads.take(plan, art) or self._load(plan, art)
        try:
            other = "tc" if plan.hook == "xdp" else "xdp"
            old = attached_tna_prog(plan.ifindex, plan.hook)
            attached_tna_prog(plan.ifindex, other)  # raises if foreign
            if plan.hook == "tc":
                check_tc_ingress(plan.ifindex)
            self.links.attach(plan.ifindex, plan.hook, prog, old)
            # the other hook may still hold our program from an earlier plan
            self._detach_hook(plan.ifindex, other)
        except BaseException:
            obj.close()
            raise
        att = Attached(plan, obj, prog, prog.id, art.source, art.rule_counters)
        with self.rule_counts.lock:
            if cur is not None:
                self._retire(cur)
            self.attached[plan.ifindex] = att
            self.rule_counts.started(att.prog_id, art.refs)
        log.info("%s: %s program %d attached (%s): %s", plan.name, plan.hook, att.prog_id, ",".join(plan.modules),
                 plan.hook_why)
        return att

    def _detach_hook(self, ifindex: int, hook: str) -> None:
        with contextlib.suppress(ForeignProgram):
            if attached_tna_prog(ifindex, hook):
                self.links.detach(ifindex, hook)

    def remove(self, ifindex: int, why: str) -> None:
        """Detach TNA from ifindex (both hooks), whoever attached it; why: for the log."""
        try:
            for hook in ("xdp", "tc"):
                try:
                    self._detach_hook(ifindex, hook)
                except OSError as e:
                    if e.errno not in (errno.ENODEV, errno.EINVAL):
                        raise
        finally:
            try:  # closing a link's last fd detaches its program, whatever detaching it explicitly raised
                self.links.release(ifindex)
            finally:
                with self.rule_counts.lock:  # its last counts: carried over as it leaves attached
                    att = self.attached.pop(ifindex, None)
                    if att is not None:
                        self._retire(att)
                if att is not None:
                    log.info("%s: detached, kernel path: %s", att.plan.name, why)

    def rule_counters(self, att: Attached) -> Counts:
        """A program's tna_fw_rules ({} if it counts no rules, or they
        could not be read: then what it counted is lost)."""
        try:
            return read_counters(att.obj.map(abi.MAP_FW_RULES)) if self.rule_counts.counts(att.prog_id) else {}
        except OSError as e:
            log.warning("%s: program %d's rule counters could not be read: %s", att.plan.name, att.prog_id, e)
            return {}

    def _retire(self, att: Attached) -> None:
        """att no longer runs: its rule counts are carried over (call with rule_counts.lock held)."""
        self.rule_counts.ended(att.prog_id, self.rule_counters(att))
        self._retired.append(att.obj)

    def release_retired(self) -> None:
        """Close the programs retired so far (the status no longer names them)."""
        for obj in self._retired:
            obj.close()
        self._retired.clear()

    def observe_rules(self, refs: Sequence[RuleRef], tables: Tables, upto: int | None, announced: bool,
                      genid: int | None) -> bool:
        """The rule sets were read again (RuleCounts.observe()); True if the carried counts changed."""
        return self.rule_counts.observe(refs, tables, lambda: {
            a.prog_id: self.rule_counters(a) for a in list(self.attached.values())}, upto, announced, genid)

    def remove_leftovers(self, links: Mapping[int, str], planned: Container[int]) -> None:
        """A dead daemon's programs stay attached (in fail-safe pass mode):
        detach them from the interfaces not planned (links: ifindex ->
        name); the planned ones get theirs replaced atomically by attach()."""
        for ifindex, name in links.items():
            if ifindex in planned:
                continue
            for hook in ("xdp", "tc"):
                try:
                    if attached_tna_prog(ifindex, hook):
                        log.info("%s: removing a %s program left by an earlier tna", name, hook)
                        self.remove(ifindex, "not planned for acceleration")
                except (ForeignProgram, OSError):
                    pass

    def remove_all(self) -> None:
        for ifindex in list(self.attached):
            try:
                self.remove(ifindex, "tna is stopping")
            except OSError as e:
                log.error("detach from ifindex %d failed: %s", ifindex, e)
        self.release_retired()
        self.lease.close()
        if self.nft_seen_filter is not None:  # a socket it filters keeps it
            self.nft_seen_filter.close()
            self.nft_seen_filter = None
        self.stale.clear()  # first: a mark the reader is making ends before the map is closed
        for m in self.shared.values():
            m.close()
        self.shared.clear()
        self.sets.drop()
        self._shadow.clear()
        self._capacity.clear()
        self.fdb = FdbMirror(0)
        self.slots.clear()

    # --- shared maps ----------------------------------------------------

    def expect(self, fdb_entries: int, ports: int, neighbours: int) -> None:
        """What the kernel holds now (neighbours: the most it may hold): the
        next load that creates the shared maps sizes them from it."""
        self._expected = {abi.MAP_FDB: fdb_entries, abi.MAP_PORTS: ports, abi.MAP_STALE: neighbours}

    def _size(self, name: str) -> int:
        size = self._capacity.get(name) or map_size(self._expected[name], self._defaults[name])
        # gc_thresh3 is a limit someone set, not a count: a huge one must not make the maps fail
        # to be created (a full tna_stale holds, StaleMap.mark())
        return min(size, STALE_MAX) if name == abi.MAP_STALE else size

    def sync(self, xdp_egress: frozenset[int], tc_egress: frozenset[int], stale: set[Neigh]) -> None:
        if not self.shared:
            return
        u32 = ctypes.c_uint32
        self._sync(abi.MAP_DEVMAP, {bytes(u32(i)): bytes(u32(i)) for i in xdp_egress})
        self._sync(abi.MAP_EGRESS, {bytes(u32(i)): bytes(abi.TnaEgress()) for i in tc_egress})
        self.stale.sync(stale)

    def sync_firewall(self, masks: dict[int, int]) -> None:
        """Which filter-rule interface patterns (FORWARD, INPUT) each interface matches."""
        if self.shared:
            u32, u64 = ctypes.c_uint32, ctypes.c_uint64
            self._sync(abi.MAP_FW_IFACES, {bytes(u32(i)): bytes(u64(m)) for i, m in masks.items() if m})

    def map_fill(self) -> dict[str, tuple[int, int]]:
        """(entries, capacity) of each map the daemon fills, from what it
        wrote (no kernel walk; safe from another thread).  tna_stale may hold
        fewer: the datapath deletes an entry once the kernel revalidates it.
        A rule set's map has room to change in place (mapwrite.set_room())."""
        fill = {name: (len(shadow), self._capacity.get(name, 0)) for name, shadow in list(self._shadow.items())}
        if self.shared:
            fill[abi.MAP_FDB] = (len(self.fdb.written), self.fdb.capacity)
            fill[abi.MAP_STALE] = (len(self.stale.shadow), self._capacity.get(abi.MAP_STALE, 0))
        return fill | self.sets.fill()

    def fdb_waiting(self) -> int:
        """FDB entries of mirrored bridges that did not fit in tna_fdb
        (written as soon as room frees up; safe from another thread)."""
        return len(self.fdb.unfit)

    def fw_masks(self) -> dict[int, int]:
        """What tna_fw_ifaces holds: ifindex -> pattern bits (none zero)."""
        return {int.from_bytes(k, "little"): int.from_bytes(v, "little")
                for k, v in self._shadow.get(abi.MAP_FW_IFACES, {}).items()}

    def port_slot(self, ifindex: int) -> int:
        """A port's stable index in tna_ports (allocated on first use)."""
        if ifindex not in self.slots:
            used = set(self.slots.values())
            size = self._size(abi.MAP_PORTS)
            free = next((i for i in range(1, size) if i not in used), None)
            if free is None:
                raise OSError(errno.ENOSPC, f"more than {size - 1} bridge ports")
            self.slots[ifindex] = free
        return self.slots[ifindex]

    def sync_bridges(self, ports: dict[int, PortPlan], l3: dict[int, L3Bridge], fdb: Mapping[FdbKey, FdbEntry],
                     changed: Iterable[FdbKey] | None, bridges: frozenset[int]) -> None:
        """Ports first: a port's entry goes before FDB entries point to it.
        Called after apply(), which gave every attached port its slot.  fdb:
        the model's, of which the mirrored bridges' entries go into the map;
        changed: the keys changed since the last call (None: any may have)."""
        if not self.shared:
            return
        u32 = ctypes.c_uint32
        # a slot stays with its port while a bridge program of ours uses it
        in_use = set(ports) | {i for i, a in self.attached.items() if "bridge" in a.plan.modules}
        for ifindex in set(self.slots) - in_use:
            del self.slots[ifindex]
        self._sync(abi.MAP_PORTS, {bytes(u32(self.slots[i])): self._port_value(i, p)
                                   for i, p in ports.items() if i in self.slots}, array=True)
        self._sync(abi.MAP_L3BR, {bytes(u32(i)): iface_cfg(b.ifindex, b.mac, b.flags) for i, b in l3.items()})
        self.fdb.sync(self.shared[abi.MAP_FDB], fdb, changed, bridges, self.slots)

    def _port_value(self, ifindex: int, p: PortPlan) -> bytes:
        # a learned FDB entry lives ageing_time (forward_delay during an STP
        # topology change) past the last frame the kernel saw from it: renew
        # it 16 times per period (ageing 0, i.e. entries never kept, gives 0:
        # every frame goes to the kernel)
        refresh = p.hold_cs * self.lease.hz // USER_HZ // 16
        br = abi.TnaIfaceCfg.from_buffer_copy(iface_cfg(p.bridge, p.bridge_mac, p.l3_flags))
        return bytes(abi.TnaPort(ifindex=ifindex, flags=p.flags, mtu=p.mtu, refresh_jiffies=refresh, br=br))

    def _sync(self, name: str, desired: dict[bytes, bytes], array: bool = False) -> None:
        write_diff(self.shared[name], self._shadow.setdefault(name, {}), desired, name, array)

