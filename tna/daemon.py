"""`tna run`: the event loop wiring netlink -> model -> plan -> kernel.

Threads: the main loop applies netlink events and reconciles; a lease thread
renews the datapath's lease every 200 ms while the main loop shows signs of
life; a conntrack thread, woken by the datapath's ring buffer, marks the TCP
connections it asks for window-liberal (tna/netlink/conntrack.py).  If the
process dies (kill -9, crash) the lease runs out within a second and every
module passes all traffic to the kernel on its own.
SIGHUP re-reads the configuration (tna/config.py): the handler only raises
a flag, the main loop does the work.
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tna.bpf import abi
from tna.bpf.libbpf import LibbpfError
from tna.commitguard import NOT_READ, guard_commits
from tna.config import Settings, reread_settings
from tna.ctsync import ct_sync_loop
from tna.deploy.datapath import Datapath
from tna.deploy.lease import family_bits
from tna.deploy.links import ForeignProgram
from tna.holds import Holds
from tna.metrics import Metrics, failure_kind, parse_addr
from tna.model.config import AF_INET, AF_INET6, Model
from tna.model.fwdiff import HeldFlow
from tna.model.routes import RouteDump
from tna.narrow import Narrowing, narrow_to, narrowed_hold
from tna.netlink import netfilter
from tna.netlink.decode import decoded
from tna.netlink.netconf import SysctlsAnnounced
from tna.netlink.netfilter import NetfilterChanged
from tna.netlink.watch import DumpStopped, ResyncNeeded, Watcher
from tna.rulesinput import RulesInput
from tna.runstate import RunLock, publish_status, save_rule_counts, take_rule_counts
from tna.sdnotify import notify, reloading
from tna.snapshot import BridgePromiscuity, model_from, poll_sysctls, poll_tcx
from tna.status import describe
from tna.synth import setgen
from tna.synth.build import Artifact, build_all
from tna.synth.compile import CompileError
from tna.synth.fwgen import rule_refs
from tna.synth.planner import IfacePlan, Plan, plan

log = logging.getLogger("tna")

LEASE_RENEW_S = 0.2
POLL_S = 1.0          # what announces nothing (some sysctls, iptables-legacy): polled
# ipset commands announce nothing either (tna/netlink/ipset.py): the sets the rules use are polled
# this often (a header each time, the whole listing within a CPU budget): an add is in the maps in ~0.5 s
IPSET_POLL_S = 0.5
STATUS_S = 1.0        # the route count in state.json follows at most this often without a reconcile
LOOP_WAKE_S = 0.5     # an idle main loop wakes this often (stop flag, polls, heartbeat)
HEARTBEAT_MAX_S = 3.0  # main loop silent this long: stop renewing the lease


class Daemon:
    def __init__(self, settings: Settings | None = None, cache_dir: Path | None = None,
                 reread: Callable[[], Settings] | None = None) -> None:
        """reread: the settings anew on SIGHUP (file + flags; raises ConfigError)."""
        self.settings, self.cache_dir = settings or Settings(), cache_dir
        self._reread = reread or (lambda: self.settings)
        self._hup = threading.Event()
        # a bad metrics address fails here, before anything is touched
        self.metrics_addr = parse_addr(self.settings.metrics) if self.settings.metrics is not None else None
        self.dp = Datapath()
        self.dp.on_load = lambda: setattr(self, "_heartbeat", time.monotonic())  # many loads take seconds
        self.model = Model()
        self.plan: Plan | None = None
        self.failed: dict[int, str] = {}
        self.failed_kind: dict[int, str] = {}  # its class (metrics), for the interfaces in failed
        self.metrics = Metrics(self)
        self._stop = threading.Event()
        self._heartbeat = time.monotonic()
        # what the reader threads raise, and end of the commit guard
        self.holds = Holds(lambda reason: self.dp.lease.hold(reason), lambda seen: self.dp.lease.set_nft_heard(seen),
                           self.dp.stale.mark)
        self.dp.stale.taken = lambda: self.holds.taken
        self._watcher: Watcher | None = None
        self._fdb_full = True  # a new model: the FDB map is compared whole at the next reconcile
        self._sysctls_due = False  # the kernel announced a sysctl change the loop has not read yet
        self._status: dict[str, Any] = {"routes": 0, "renumbered": 0}  # what state.json says
        self.rules = RulesInput()
        self._promiscuity = BridgePromiscuity()
        self._started = time.monotonic()

    # --- lifecycle --------------------------------------------------------

    def run(self) -> None:
        lock = RunLock()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._hup.set())
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # every thread's stack to the log, on demand
        self._set_log_level()
        lease = threading.Thread(target=self._lease_loop, name="tna-lease", daemon=True)
        ctsync = threading.Thread(target=ct_sync_loop, args=(self.dp, self._stop), name="tna-ctsync", daemon=True)
        try:
            if self.metrics_addr is not None:
                self.metrics.serve(*self.metrics_addr)
            self._resync()
            self.dp.rule_counts.restore(take_rule_counts())  # the last tna's, if no commit came since
            self.dp.remove_leftovers({i: link.name for i, link in self.model.links.items()}, self._plan().ifaces)
            self.reconcile()
            lease.start()
            ctsync.start()
            notify("READY=1")  # Type=notify: the fast path is attached where it can be
            self._loop()
        except DumpStopped:
            log.info("stopping during a dump")
        finally:
            notify("STOPPING=1")
            self._stop.set()
            for t in (lease, ctsync):
                if t.is_alive():
                    t.join()
            self.metrics.close()  # before the maps it reads go
            self.dp.remove_all()
            save_rule_counts(self.dp.rule_counts.saved())
            if self._watcher is not None:
                self._watcher.close()
            self.rules.close()
            self._promiscuity.close()
            lock.release()
            log.info("stopped; all interfaces are back on plain Linux")

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        next_poll = next_status = next_ipsets = 0.0
        while not self._stop.is_set():
            changed = False
            commits: list[NetfilterChanged] = []
            assert self._watcher is not None
            self.holds.idle()
            try:
                for msg in self._watcher.events(timeout=LOOP_WAKE_S):
                    if isinstance(msg, NetfilterChanged):  # held already (Holds.nft_begin)
                        commits.append(msg)
                        self.dp.rule_counts.heard(msg.gen, msg.deleted)
                        changed = True  # the reconcile ends the hold
                    else:
                        changed |= self._apply(msg)
            except ResyncNeeded as e:
                log.warning("%s: resynchronising everything", e)
                self.metrics.resyncs.inc()
                self._resync()
                changed = True
            if self._sysctls_due:  # one read for a batch of announcements (a device each: thousands)
                self._sysctls_due = False
                changed |= poll_sysctls(self.model)
            changed |= self.holds.busy(self._watcher.drained)  # the next reconcile ends a PENDING hold
            hup = self._hup.is_set()
            if hup:
                self._hup.clear()
                reloading()
                changed |= self._reload()
            now, due = time.monotonic(), self.holds.reread_due()
            if now >= next_poll or commits or due:
                # nftables announces its commits (one of set elements only is
                # applied as it is); only iptables-legacy must be polled
                applied = bool(commits) and self._apply_set_elements(commits)
                if commits:
                    self.metrics.nft_commits.labels("elements" if applied else "reread").inc(len(commits))
                # due: a read the first attach's hold waits for, changed or not
                changed |= self._poll(rules=(bool(commits) and not applied) or due or netfilter.legacy_in_use()) or due
                next_poll = now + POLL_S
            if now >= next_ipsets:
                changed |= self.rules.poll_ipsets(self.model)
                next_ipsets = now + IPSET_POLL_S
            if changed:
                self.reconcile()
                next_status = now + STATUS_S
            elif now >= next_status and self._status["routes"] != len(self.model.routes):
                # routes that move no guard need no reconcile; the count still shows
                self._publish_status()
                next_status = now + STATUS_S
            if hup:
                notify("READY=1")  # the new settings are in force
            self._heartbeat = time.monotonic()

    def _reload(self) -> bool:
        """SIGHUP: the settings re-read; True if they changed (systemd: RELOADING=1, READY=1 after the reconcile)."""
        new = reread_settings(self.settings, self._reread)
        changed, self.settings = new != self.settings, new
        self._set_log_level()
        return changed

    def _set_log_level(self) -> None:
        logging.getLogger().setLevel(self.settings.log_level.upper())

    def _apply(self, msg: Any) -> bool:
        changed = False
        for fact in decoded(msg):
            if isinstance(fact, SysctlsAnnounced):  # read once the batch is in, not a poll's second away
                self._sysctls_due = True
                continue
            changed |= self.model.apply(fact)
            if isinstance(fact, RouteDump) and fact.done:
                log.info("%s routes: %d known after %.1f s; their guards are exact now",
                         "IPv4" if fact.family == AF_INET else "IPv6", self.model.routes.count(fact.family),
                         time.monotonic() - self._started)
        return changed

    def _events_lost(self, gen: int, overrun: bool) -> None:
        """In the reader thread that lost events (watcher generation gen), at once: everything takes the
        kernel path until a later watcher's dump is in every map - not only once the main loop gets to it."""
        if overrun:
            self.metrics.overruns.inc()
        self.holds.events_lost(gen)

    def _lease_loop(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            if time.monotonic() - self._heartbeat < HEARTBEAT_MAX_S:
                self.dp.lease.renew()

    # --- inputs -------------------------------------------------------------

    def _resync(self) -> None:
        """A new socket and a model rebuilt from a full dump.  Retried while
        events keep overrunning it; the datapath holds (RESYNC, from the
        moment of the loss) until the reconcile that follows has written
        every map from it, and meanwhile the main loop shows no life, so the
        lease lapses too."""
        delay = 0.1
        self.dp.rule_counts.missed()  # the commits until the new watcher binds
        while True:
            if self._watcher is not None:
                self._watcher.close()
            gen = self.holds.new_watcher()
            self._watcher = Watcher(on_nft_begin=functools.partial(self.holds.nft_begin, gen),
                                    on_nft_end=functools.partial(self.holds.nft_end, gen=gen),
                                    on_lost=functools.partial(self._events_lost, gen),
                                    on_events=self.holds.events_queued,
                                    on_xfrm_begin=functools.partial(self.holds.xfrm_begin, gen),
                                    on_xfrm_end=functools.partial(self.holds.xfrm_end, gen))
            self._guard_commits()
            try:
                self.model = model_from(self._watcher.snapshot(self._stop))
                self._fdb_full = True
                self.dp.stale.rewrite()
                self._poll()
                return
            except ResyncNeeded as e:
                if self._stop.is_set():
                    raise
                log.warning("resync failed (%s); retrying in %.1f s", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _poll(self, rules: bool = True) -> bool:
        """The sysctls, others' tcx programs, the bridges' promiscuity, and
        with rules the netfilter rule sets."""
        changed = poll_sysctls(self.model) | poll_tcx(self.model) | self._promiscuity.poll(self.model)
        if not rules:
            return changed
        self.holds.rules_read()
        changed |= self.rules.read(self.model)
        # the kernel's counters as read: a rule gone or zeroed ends the fast path's count of it (status)
        return self.dp.observe_rules(rule_refs(self.model.firewall), self.rules.tables,
                                     self.holds.rules_gen if self.holds.rules_exact else None,
                                     not netfilter.legacy_in_use(), self.rules.genid) | changed

    def _apply_set_elements(self, commits: list[NetfilterChanged]) -> bool:
        """Commits that only added or deleted elements of mirrored nftables
        sets, on top of the rules in hand (RulesInput.set_elements(); its
        publication ends the hold).  False: anything else, or a change that
        does not fit the sets in hand - then the rule sets are read again."""
        updated = None if self.disabled_why else self.holds.follow(commits, self.rules.nft_sets)
        if updated is None:
            return False
        self.rules.set_elements(self.model, updated)
        log.debug("nftables: %d commits of set elements applied to %s", len(commits), ", ".join(updated) or "nothing")
        return True

    @property
    def disabled_why(self) -> str | None:
        return self.rules.disabled_why

    # --- output -------------------------------------------------------------

    def _plan(self) -> Plan:
        s = self.settings
        return plan(self.model, s.hook, s.iface_hook, s.ignore)

    def reconcile(self) -> None:
        with self.metrics.reconcile_seconds.time():
            self._reconcile()

    def _reconcile(self) -> None:
        """Make the kernel match the plan.  A program must never decide with
        maps that do not match the rules it was built for, so when the rules,
        the interface masks or the filtered families change: hold (FW_CHANGED)
        -> attach -> every map -> release, the release last (narrowed before
        the loads where rules were only inserted or deleted: tna/narrow.py).
        A resync's hold (RESYNC) ends the same way: only the last publication may end it."""
        m = self.model
        fw = m.firewall
        families = m.bridged_to_kernel()
        names = {i: link.name for i, link in m.links.items()}
        masks = {i: b for i, b in fw.iface_masks(names).items() if b} if fw else {}  # a new pattern shifts bits
        p = self._plan()
        # the maps mirroring the kernel's tables are sized from them when created
        self.dp.expect(len(m.fdb), sum(1 for link in m.links.values() if link.port is not None), m.neigh_max())
        # what new set maps are filled with, then the difference for those there (a member change: no program)
        ipsets = setgen.all_entries(fw.ipsets, m.ipsets, names) if fw else {}
        narrow: tuple[HeldFlow, ...] | None = None
        same_families = family_bits(families, abi.TNA_FW_V4, abi.TNA_FW_V6) == self.dp.lease.cfg.fw_families
        if not same_families or masks != self.dp.fw_masks() or any(
                i in p.ifaces and a.plan.firewall != p.ifaces[i].firewall for i, a in self.dp.attached.items()):
            self.dp.lease.hold(abi.REASON["FW_CHANGED"])
            narrow = narrowed_hold(self.dp, p, ipsets, self.rules.set_names, self.holds) if same_families else None
        else:  # what new programs read, before they run; a commit's hold lasts until the maps are written
            self._publish_guards(families, release=False)
        self._log_left_alone(p)
        for ifindex in set(self.dp.attached) - set(p.ifaces):
            why = p.skipped[ifindex].why if ifindex in p.skipped else "the interface is gone"
            self._safely(ifindex, lambda i=ifindex, why=why: self.dp.remove(i, why))
        self.failed = {i: why for i, why in self.failed.items() if i in p.ifaces}
        self.dp.sets.ipset_entries = ipsets
        # the kernel has moved these FDB entries and ports already: the
        # running programs must not keep sending a host's frames to its old
        # port while new programs compile (seconds); a port without a
        # program yet has no slot (its entries: the kernel's until below)
        self.dp.sync_bridges(p.ports, p.l3_bridges, m.fdb, None if self._fdb_full else m.take_fdb_changes(),
                             p.bridges)
        self._fdb_full = False
        publish = functools.partial(self._publish_guards, families)
        self._deploy(p, narrow and (lambda: narrow_to(self.dp, p, m.stale_neighbours(), narrow, masks, publish)))
        failed = self.dp.sets.sync_ipsets(ipsets, fw)
        if fw and failed:
            # a member missing from a map says "not in the set": hold until
            # programs without those sets run (they are the kernel's now)
            self.dp.lease.hold(abi.REASON["FW_CHANGED"])
            names = {setgen.map_name(s.name): s.name for s in fw.ipsets}
            self.rules.unwritable(m, {names[map_name]: why for map_name, why in failed.items()})
            return self._reconcile()
        self.dp.sync(p.xdp_egress, p.tc_egress, self.model.stale_neighbours())
        # the ports the new programs gave slots (their entries rewritten), and
        # what changed while they compiled
        self.dp.sync_bridges(p.ports, p.l3_bridges, m.fdb, m.take_fdb_changes(), p.bridges)
        self.dp.sync_firewall(masks)
        self.plan = p
        renumbered = self.dp.renumbered != self._status.get("renumbered")
        if renumbered:  # a kept program counts by new ids once released: the status names their rules first
            self._publish_status()
        if self.dp.fw_masks() == masks:
            self.holds.mapped()  # the model is the current watcher's
            self._publish_guards(families)  # ends a hold: every map now matches every program
        else:  # masks that do not match the rules: the hold stays (retried at the next reconcile)
            log.error("tna_fw_ifaces could not be written; all traffic stays on the kernel path")
        if not renumbered:
            self._publish_status()

    def _publish_status(self) -> None:
        self._status = describe(self.model, self.plan, self.dp.attached, pid=os.getpid(), mode=self.settings.hook,
                                disabled=self.disabled_why, failed=self.failed,
                                fdb_map=(self.dp.fdb.per_bridge, self.dp.fdb.capacity), renumbered=self.dp.renumbered,
                                ipset_stale=self.rules.ipset_reader.stale_s,
                                carried=self.dp.rule_counts.published(rule_refs(self.model.firewall)))
        publish_status(self._status)
        self.dp.release_retired()  # the status names their successors
        disabled = f"; fast path DISABLED: {self.disabled_why}" if self.disabled_why else ""
        plan_skipped = len(self.plan.skipped) if self.plan else 0
        notify(f"STATUS={len(self.dp.attached)} interfaces accelerated, {plan_skipped} left alone, "
               f"{len(self.failed)} failed{disabled}")  # systemctl status shows it

    def _log_left_alone(self, p: Plan) -> None:
        """One line per interface newly left alone, or left alone for a new reason."""
        before = self.plan.skipped if self.plan else {}
        for ifindex, s in p.skipped.items():
            if ifindex not in before or before[ifindex].why != s.why:
                log.info("%s: left alone, kernel path: %s", s.name, s.why)

    def _deploy(self, p: Plan, narrow: Callable[[], None] | None = None) -> None:
        """Build (each program shape once), load (all at once) and attach the programs of p's interfaces;
        an unchanged plan keeps its own, as does one whose rules changed in sets' entries only (under
        the hold; else narrow() narrows it before the loads: tna/narrow.py)."""
        n = Narrowing(self.dp, p, narrow)
        built = build_all([ip for ip in p.ifaces.values() if not self.dp.is_current(ip)], self.cache_dir,
                          self.metrics.compiled, n.rendered)
        kept = set() if n.done else self.dp.keep_programs([(p.ifaces[i], a) for i, a in built.items()
                                                           if isinstance(a, Artifact)])
        for ifindex in kept:
            del built[ifindex]
        n.kept(kept)

        def made(ip: IfacePlan) -> None:
            if isinstance(art := built.get(ip.ifindex), Exception):
                raise art

        def put(ip: IfacePlan) -> None:
            if (art := built.get(ip.ifindex)) is not None:  # not an error: made() raised that
                self._guard_commits(rules_read=True)  # the first load made the filter
                self.dp.attach(ip, art)

        ok = {i: self._safely(i, lambda ip=ip: made(ip)) for i, ip in p.ifaces.items()}
        try:
            self.dp.preload([(p.ifaces[i], a) for i, a in built.items() if not isinstance(a, Exception)])
            for ifindex, ip in p.ifaces.items():
                if ok[ifindex] and self._safely(ifindex, lambda ip=ip: put(ip)):
                    self.failed.pop(ifindex, None)
        finally:
            self.dp.preloads.drop()

    def _guard_commits(self, rules_read: bool = False) -> None:
        guard_commits(self._watcher, self.dp, self.holds, self.rules.genid if rules_read else NOT_READ)

    def _publish_guards(self, fw_families: frozenset[int], release: bool = True,
                        held: tuple[HeldFlow, ...] = ()) -> None:
        """release False: a hold in place stays (the maps are not written
        yet); held: a hold ending is narrowed to those flows."""
        m = self.model
        with self.holds.lock:
            reason = abi.REASON["DISABLED"] if self.disabled_why else self.holds.reason(release and not held)
            if not release:
                reason = reason or self.dp.lease.cfg.pass_reason
            self.dp.lease.set_guards(reason, m.multipath_policies(), (m.route_mtu(AF_INET), m.route_mtu(AF_INET6)),
                                     (m.local_ipv4(), m.local_ipv6()), fw_families, m.sysctls, m.rpf_doubt(),
                                     m.xfrm, held)

    def _safely(self, ifindex: int, action: Any) -> bool:
        """Run an attach/detach; on failure the interface ends on the kernel path."""
        try:
            action()
            return True
        except (CompileError, LibbpfError, ForeignProgram, OSError) as e:
            name = self.model.links[ifindex].name if ifindex in self.model.links else str(ifindex)
            msg = str(e)
            if isinstance(e, LibbpfError) and e.log:
                msg += "\n" + e.log.strip()[-2000:]
            if self.failed.get(ifindex) != msg:
                log.error("%s: %s; this interface's traffic stays on the kernel path", name, msg)
            self.failed[ifindex], self.failed_kind[ifindex] = msg, failure_kind(e)
            try:
                self.dp.remove(ifindex, "its program failed")
            except OSError:
                pass
            return False
