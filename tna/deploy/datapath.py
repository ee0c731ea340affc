"""Put plans into the kernel: load, attach, atomically replace, detach, and
keep the shared maps equal to what the model says (shadow + diff).

One program instance per interface (its own counters and .rodata), built
from the object for its plan's shape; the shared maps are created by the
first load and reused by every later one.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.model.config import USER_HZ, FdbEntry, Neigh
from tna.model.firewall import Firewall
from tna.netlink.watch import TC_H_CLSACT_EGRESS, TC_H_CLSACT_INGRESS, TC_HANDLE, TC_PRIORITY, tc_filters
from tna.synth.compile import compile_source
from tna.synth.fwgen import all_set_entries, rule_refs
from tna.synth.planner import IfacePlan, L3Bridge, PortPlan
from tna.synth.render import render

log = logging.getLogger(__name__)


LEASE_NS = 1_000_000_000


class ForeignProgram(Exception):
    """Someone else's XDP program or TC filter is there: leave the interface alone."""


@dataclass
class Attached:
    plan: IfacePlan
    obj: bpf.BpfObject
    prog: bpf.Program
    prog_id: int
    source: Path

    def stats(self) -> dict[str, tuple[int, int]]:
        return read_stats(self.obj.map(abi.MAP_STATS))


def read_counters(counter_map: bpf.Map) -> dict[int, tuple[int, int]]:
    """index -> (packets, bytes) of a per-CPU tna_counter array, summed over
    CPUs; zero entries left out."""
    out: dict[int, tuple[int, int]] = {}
    for key, per_cpu in counter_map.items():
        counters = [abi.TnaCounter.from_buffer_copy(v) for v in per_cpu]
        pkts, byts = sum(c.packets for c in counters), sum(c.bytes for c in counters)
        if pkts:
            out[int.from_bytes(key, "little")] = (pkts, byts)
    return out


def read_stats(stats_map: bpf.Map) -> dict[str, tuple[int, int]]:
    """reason -> (packets, bytes), summed over CPUs; zero reasons left out."""
    return {abi.REASONS[i]: c for i, c in read_counters(stats_map).items() if i < len(abi.REASONS)}


def renew(prog: bpf.Program, cfg: abi.TnaConfig) -> None:
    """Run tna_renew with cfg as its input frame."""
    ret, _, _ = prog.test_run(bytes(cfg).ljust(64, b"\0"))  # XDP test runs want >= 14 bytes
    if ret != 2:  # XDP_PASS
        raise OSError(f"tna_renew returned {ret}")


def jiffies_hz(prog: bpf.Program, state: bpf.Map) -> int:
    """The kernel's HZ (jiffies per second), measured: BPF sees jiffies,
    user space does not.  Rounded to the nearest configurable value."""
    def now() -> int:
        renew(prog, abi.TnaConfig(lease_jiffies=0, pass_reason=abi.REASON["DISABLED"]))
        raw = state.lookup(b"\0\0\0\0")
        assert isinstance(raw, bytes)
        return abi.TnaState.from_buffer_copy(raw).renewed_at

    t0, j0 = time.monotonic(), now()
    time.sleep(0.1)
    t1, j1 = time.monotonic(), now()
    measured = (j1 - j0) / (t1 - t0)
    return min((100, 250, 300, 1000), key=lambda hz: abs(hz - measured))


def load_with_sets(obj: bpf.BpfObject, sets: dict[str, dict[bytes, bytes]],
                   reuse: dict[str, bpf.Map] | None = None) -> dict[str, bpf.Map]:
    """Load obj with its rule-set maps sized for, and filled with, sets
    (fwgen.all_set_entries()), before anything can attach the program; or
    with reuse, maps another program already holds the same sets in.
    Returns the set maps (descriptors of their own)."""
    if reuse is not None:
        for name, m in reuse.items():
            obj.reuse_map(name, m.fd)
        obj.load()
        return reuse
    for name, entries in sets.items():
        obj.set_max_entries(name, max(1, len(entries)))
    obj.load()
    maps = {}
    for name, entries in sets.items():
        m = obj.map(name)
        for key, value in entries.items():
            m.update(key, value)
        maps[name] = bpf.Map(os.dup(m.fd), m.key_size, m.value_size, name, owned=True)
    return maps


def iface_cfg(ifindex: int, mac: str, flags: int, port_slot: int = 0) -> bytes:
    cfg = abi.TnaIfaceCfg(ifindex=ifindex, flags=flags, port_slot=port_slot)
    cfg.mac[:] = bytes.fromhex(mac.replace(":", ""))
    return bytes(cfg)


def attached_tna_prog(ifindex: int, hook: str) -> int:
    """Id of a TNA program attached at hook on ifindex, 0 if none; raises
    ForeignProgram if another program holds the hook."""
    if hook == "xdp":
        prog_id = bpf.xdp_query_id(ifindex)
    else:
        prog_id = bpf.tc_query(ifindex, TC_HANDLE, TC_PRIORITY)
    if prog_id == 0:
        return 0
    prog = bpf.Program.from_id(prog_id)
    try:
        if prog.name != abi.PROGRAM_NAME:
            raise ForeignProgram(f"a foreign {hook} program ({prog.name}, id {prog_id}) is attached")
    finally:
        prog.close()
    return prog_id


class Datapath:
    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self.shared: dict[str, bpf.Map] = {}
        self.renew_prog: bpf.Program | None = None
        self.attached: dict[int, Attached] = {}
        self._shadow: dict[str, dict[bytes, bytes]] = {}
        self._state_lock = threading.Lock()
        self.cfg = abi.TnaConfig()
        self.hz = 0  # the kernel's jiffies per second, measured at the first load
        self.slots: dict[int, int] = {}  # bridge port ifindex -> its index in tna_ports
        # the rule-set maps of the newest rule set, which every program
        # compiled for it shares (filling 10,000 entries once, not per port)
        self._sets: tuple[Firewall, dict[str, bpf.Map]] | None = None

    # --- programs -----------------------------------------------------

    def _load(self, plan: IfacePlan) -> tuple[bpf.BpfObject, bpf.Program, Path]:
        source = render(plan.hook, plan.modules, dev_bound=plan.hook == "xdp", firewall=plan.firewall)
        path = compile_source(source, self.cache_dir)
        obj = bpf.BpfObject(str(path))
        try:
            if plan.hook == "xdp":
                obj.bind_to_device(abi.PROGRAM_NAME, plan.ifindex)
            slot = self.port_slot(plan.ifindex) if "bridge" in plan.modules else 0
            obj.set_initial_value(abi.SECTION_IFACE, iface_cfg(plan.ifindex, plan.mac, plan.flags, slot))
            # one counter per compiled FORWARD rule (per program: its own)
            obj.set_max_entries(abi.MAP_FW_RULES, max(1, len(rule_refs(plan.firewall))))
            for name, m in self.shared.items():
                obj.reuse_map(name, m.fd)
            fw = plan.firewall
            same = self._sets[1] if self._sets is not None and self._sets[0] == fw else None
            maps = load_with_sets(obj, all_set_entries(fw), same)
            if same is None and fw is not None:
                self._drop_sets()
                self._sets = (fw, maps)
            if not self.shared:
                self._adopt_shared(obj)
            return obj, obj.program(abi.PROGRAM_NAME), path.with_suffix(".c")
        except BaseException:
            obj.close()
            raise

    def _drop_sets(self) -> None:
        """Our handles on an older rule set's maps (programs keep theirs)."""
        if self._sets is not None:
            for m in self._sets[1].values():
                m.close()
            self._sets = None

    def _adopt_shared(self, obj: bpf.BpfObject) -> None:
        for name in abi.SHARED_MAPS:
            m = obj.map(name)
            self.shared[name] = bpf.Map(os.dup(m.fd), m.key_size, m.value_size, name, owned=True)
        prog = obj.program(abi.RENEW_PROGRAM)
        self.renew_prog = bpf.Program(os.dup(prog.fd), prog.name, owned=True)
        # no program is attached yet, so calibrating (which briefly publishes
        # DISABLED) is invisible; then the lease must be valid before any is
        self.hz = jiffies_hz(self.renew_prog, self.shared[abi.MAP_STATE])
        self.cfg.lease_jiffies = self.hz * LEASE_NS // 10**9
        self.write_state()

    def apply(self, plan: IfacePlan) -> Attached:
        """Attach plan's program to its interface, replacing atomically what
        TNA had there (ours or a dead daemon's).  Unchanged plans are kept."""
        cur = self.attached.get(plan.ifindex)
        if cur is not None and cur.plan == plan:
            return cur
        obj, prog, source = self._load(plan)
        try:
            other = "tc" if plan.hook == "xdp" else "xdp"
            old = attached_tna_prog(plan.ifindex, plan.hook)
            attached_tna_prog(plan.ifindex, other)  # raises if foreign
            if plan.hook == "xdp":
                self._attach_xdp(plan.ifindex, prog, old)
            else:
                self._attach_tc(plan.ifindex, prog, old)
            # the other hook may still hold our program from an earlier plan
            self._detach_hook(plan.ifindex, other)
        except BaseException:
            obj.close()
            raise
        if cur is not None:
            cur.obj.close()
        att = Attached(plan, obj, prog, prog.id, source)
        self.attached[plan.ifindex] = att
        log.info("%s: %s program %d attached (%s)", plan.name, plan.hook, att.prog_id, ",".join(plan.modules))
        return att

    @staticmethod
    def _attach_xdp(ifindex: int, prog: bpf.Program, old_id: int) -> None:
        if not old_id:
            bpf.xdp_attach(ifindex, prog.fd)
            return
        old = bpf.Program.from_id(old_id)
        try:
            bpf.xdp_attach(ifindex, prog.fd, old_prog_fd=old.fd)
        finally:
            old.close()

    @staticmethod
    def _attach_tc(ifindex: int, prog: bpf.Program, old_id: int) -> None:
        bpf.tc_hook_create(ifindex)
        foreign = [f for f in _tc_filters(ifindex, TC_H_CLSACT_INGRESS) if f != (TC_PRIORITY, TC_HANDLE)]
        if foreign:
            raise ForeignProgram(f"foreign TC ingress filters are attached (prio/handle {foreign})")
        bpf.tc_attach(ifindex, prog.fd, TC_HANDLE, TC_PRIORITY, replace=bool(old_id))

    def _detach_hook(self, ifindex: int, hook: str) -> None:
        try:
            if not attached_tna_prog(ifindex, hook):
                return
        except ForeignProgram:
            return
        if hook == "xdp":
            bpf.xdp_detach(ifindex)
        else:
            bpf.tc_detach(ifindex, TC_HANDLE, TC_PRIORITY)
            if not _tc_filters(ifindex, TC_H_CLSACT_INGRESS) and not _tc_filters(ifindex, TC_H_CLSACT_EGRESS):
                bpf.tc_hook_destroy(ifindex)

    def remove(self, ifindex: int) -> None:
        """Detach TNA from ifindex (both hooks), whoever attached it."""
        att = self.attached.pop(ifindex, None)
        for hook in ("xdp", "tc"):
            try:
                self._detach_hook(ifindex, hook)
            except OSError as e:
                if e.errno not in (errno.ENODEV, errno.EINVAL):
                    raise
        if att is not None:
            att.obj.close()
            log.info("%s: detached", att.plan.name)

    def remove_all(self) -> None:
        for ifindex in list(self.attached):
            try:
                self.remove(ifindex)
            except OSError as e:
                log.error("detach from ifindex %d failed: %s", ifindex, e)
        for m in self.shared.values():
            m.close()
        self.shared.clear()
        self._drop_sets()
        self._shadow.clear()
        self.slots.clear()
        if self.renew_prog is not None:
            self.renew_prog.close()
            self.renew_prog = None

    # --- shared maps ----------------------------------------------------

    def write_state(self) -> None:
        """Publish the config and renew the lease (through tna_renew, the only
        writer of tna_state)."""
        with self._state_lock:
            if self.renew_prog is not None:
                renew(self.renew_prog, self.cfg)

    def hold(self, reason: int) -> None:
        """Send everything to the kernel now (the next set_guards() ends it)."""
        if self.cfg.pass_reason != reason:
            self.cfg.pass_reason = reason
            self.write_state()

    def set_guards(self, pass_reason: int, mp_guard: int, route_mtu: tuple[int, int],
                   local: tuple[list[str], list[str]], fw_families: int = 0,
                   ct: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)) -> None:
        """Global switches; published before any program of a new plan runs.
        local: the box's IPv4 and IPv6 addresses; ct: Model.ct_config()."""
        local4, local6 = local
        c = self.cfg
        before = bytes(c)
        c.pass_reason, c.mp_guard, (c.route_mtu4, c.route_mtu6) = pass_reason, mp_guard, route_mtu
        c.fw_families = fw_families
        (c.ct_flags, c.ct_timeout_tcp, c.ct_timeout_udp, c.ct_timeout_unack, c.ct_timeout_retrans,
         c.ct_max_retrans) = ct
        c.local4_count = len(local4)
        packed = b"".join(socket.inet_aton(a) for a in local4[:abi.LOCAL4_MAX])
        ctypes.memmove(c.local4, packed.ljust(4 * abi.LOCAL4_MAX, b"\0"), 4 * abi.LOCAL4_MAX)
        c.local6_count = len(local6)
        packed = b"".join(socket.inet_pton(socket.AF_INET6, a) for a in local6[:abi.LOCAL6_MAX])
        ctypes.memmove(c.local6, packed.ljust(16 * abi.LOCAL6_MAX, b"\0"), 16 * abi.LOCAL6_MAX)
        if bytes(c) != before:
            self.write_state()

    def sync(self, xdp_egress: frozenset[int], tc_egress: frozenset[int], stale: set[Neigh]) -> None:
        if not self.shared:
            return
        u32 = ctypes.c_uint32
        self._sync(abi.MAP_DEVMAP, {bytes(u32(i)): bytes(u32(i)) for i in xdp_egress})
        self._sync(abi.MAP_EGRESS, {bytes(u32(i)): bytes(abi.TnaEgress()) for i in tc_egress})
        self._sync_stale(stale)

    def sync_firewall(self, masks: dict[int, int]) -> None:
        """Which FORWARD-rule interface patterns each interface matches."""
        if self.shared:
            u32, u64 = ctypes.c_uint32, ctypes.c_uint64
            self._sync(abi.MAP_FW_IFACES, {bytes(u32(i)): bytes(u64(m)) for i, m in masks.items() if m})

    def port_slot(self, ifindex: int) -> int:
        """A port's stable index in tna_ports (allocated on first use)."""
        if ifindex not in self.slots:
            used = set(self.slots.values())
            free = next((i for i in range(1, abi.PORTS_SIZE) if i not in used), None)
            if free is None:
                raise OSError(errno.ENOSPC, f"more than {abi.PORTS_SIZE - 1} bridge ports")
            self.slots[ifindex] = free
        return self.slots[ifindex]

    def sync_bridges(self, ports: dict[int, PortPlan], l3: dict[int, L3Bridge], fdb: list[FdbEntry]) -> None:
        """Ports first: a port's entry goes before FDB entries point to it.
        Called after apply(), which gave every attached port its slot."""
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
        self._sync(abi.MAP_FDB, dict(self._fdb_item(e) for e in fdb))

    def _port_value(self, ifindex: int, p: PortPlan) -> bytes:
        # a learned FDB entry lives ageing_time (forward_delay during an STP
        # topology change) past the last frame the kernel saw from it: renew
        # it 16 times per period (ageing 0, i.e. entries never kept, gives 0:
        # every frame goes to the kernel)
        refresh = p.hold_cs * self.hz // USER_HZ // 16
        br = abi.TnaIfaceCfg.from_buffer_copy(iface_cfg(p.bridge, p.bridge_mac, p.l3_flags))
        return bytes(abi.TnaPort(ifindex=ifindex, flags=p.flags, mtu=p.mtu, refresh_jiffies=refresh, br=br))

    def _fdb_item(self, e: FdbEntry) -> tuple[bytes, bytes]:
        key = abi.TnaFdbKey(bridge=e.bridge, vid=e.vid)
        key.mac[:] = bytes.fromhex(e.mac.replace(":", ""))
        flags = (abi.FDB_LOCAL if e.local else 0) | (abi.FDB_DYNAMIC if e.dynamic else 0)
        return bytes(key), bytes(abi.TnaFdb(port=e.port, port_slot=self.slots.get(e.port, 0), flags=flags))

    def _sync_stale(self, stale: set[Neigh]) -> None:
        keys = {_neigh_key(n) for n in stale}
        # the datapath deletes an entry once it has handed a packet for it to
        # the kernel; our shadow then over-states the map, which only costs a
        # redundant delete when the neighbour leaves STALE
        self._sync(abi.MAP_STALE, {k: b"\x01" for k in keys})
        if len(keys) != self.cfg.stale_count:
            self.cfg.stale_count = len(keys)
            self.write_state()

    def _sync(self, name: str, desired: dict[bytes, bytes], array: bool = False) -> None:
        """Write only the difference between what we wrote last and desired
        (an array's entries cannot be deleted: they are zeroed)."""
        m, shadow = self.shared[name], self._shadow.setdefault(name, {})
        failed: list[OSError] = []
        for key in shadow.keys() - desired.keys():
            if array:
                m.update(key, bytes(m.value_size))
            else:
                m.delete(key)
            del shadow[key]
        for key, value in desired.items():
            if shadow.get(key) != value:
                try:
                    m.update(key, value)
                except OSError as e:  # a device that vanished meanwhile, a full map
                    failed.append(e)
                    continue
                shadow[key] = value
        if failed:
            # those entries' packets take the kernel path (a missing port or
            # FDB entry is a pass), so one line per sync is enough
            log.warning("map %s: %d entries not written (%s); their traffic stays on the kernel path",
                        name, len(failed), failed[0])


def _neigh_key(n: Neigh) -> bytes:
    key = abi.TnaNeighKey(ifindex=n.index, family=n.family)
    packed = socket.inet_pton(n.family, n.dst)  # AF_INET/AF_INET6 match socket's
    ctypes.memmove(key.addr, packed, len(packed))
    return bytes(key)


def _tc_filters(ifindex: int, parent: int) -> list[tuple[int, int]]:
    with IPRoute() as ipr:
        return tc_filters(ipr, ifindex, parent)
