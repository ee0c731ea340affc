"""Lost netlink events never misforward, and bulk FDB changes are followed
exactly, on real traffic through a bridge (both hooks).

- A real overrun: tests/tna_paused.py (TNA_PAUSE_AT=resync) gives the
  rtnetlink socket a small receive buffer, a burst of FDB additions overruns
  it (ENOBUFS in the real reader), and the daemon pauses in its resync
  before the new dump.  Meanwhile a MAC moves to another port: frames to it
  must arrive where Linux sends them, never on the old port.
- A flush of thousands of entries fits the real buffer: no resync, and the
  datapath's tna_fdb ends up equal to the kernel's FDB.
- 10,000 routes in one burst: they fit the real buffer (no resync); a small
  one overruns, and the daemon resyncs, releases its hold and forwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from netns_labs.lab import BridgeLab, Host, RouterLab, ping, py, wait_for
from netns_labs.tna_proc import Tna, tna_running
from tna.bpf import abi
from tna.bpf import libbpf as bpf

pytestmark = pytest.mark.root

PORTS = ["b-h1", "b-h2", "b-h3"]
MOVED = "02:00:00:00:aa:01"  # a MAC behind b-h2 that moves behind b-h3 (a migrated VM, say)
MARK = b"TNA-RESYNC-MARK!"
BROADCAST = "ff:ff:ff:ff:ff:ff"
FRAMES = 8


def frame(dst: str, src: str, payload: bytes = b"") -> bytes:
    """An Ethernet frame of a local experimental EtherType, padded to 60 bytes."""
    def mac(m: str) -> bytes:
        return bytes.fromhex(m.replace(":", ""))
    return (mac(dst) + mac(src) + b"\x88\xb5" + payload).ljust(60, b"\0")


def send(lab: BridgeLab, host: Host, frames: list[bytes], gap: float = 0) -> None:
    lab.run(host.ns, py("netns_labs.xfer", "raw-send", host.dev, ",".join(f.hex() for f in frames), "1", str(gap)),
            cwd=lab.repo)


def capture(lab: BridgeLab, host: Host, count: int, timeout: float) -> subprocess.Popen:
    """Frames carrying MARK that reach host (until count or timeout s of silence)."""
    cap = lab.popen(host.ns, py("netns_labs.xfer", "raw-capture", host.dev, MARK.hex(), str(count), str(timeout)),
                    stdout=subprocess.PIPE, text=True, cwd=lab.repo)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    return cap


def deliveries(lab: BridgeLab, frames: list[bytes], to: str) -> dict[str, list[bytes]]:
    """Send frames from h1; what h2 (the old port) and h3 (the new) receive.
    Host `to` (where Linux sends them) is waited for until it has them all;
    the other until 3 s pass without a frame (a misforwarded copy would
    have come by then: same ingress)."""
    caps = {name: capture(lab, host, len(frames), 20 if name == to else 3)
            for name, host in (("h2", lab.h2), ("h3", lab.h3))}
    send(lab, lab.h1, frames)
    return {name: [bytes.fromhex(x) for x in c.communicate(timeout=60)[0].split()] for name, c in caps.items()}


def shared_map(tna: Tna, name: str, iface: str = "b-h1") -> bpf.Map:
    """A map every program shares, found through iface's program (ids are global)."""
    st = tna.state()
    assert st is not None
    prog = bpf.Program.from_id(st["ifaces"][iface]["prog_id"])
    try:
        return prog.find_map(name)
    finally:
        prog.close()


def pass_reason(tna: Tna, iface: str = "b-h1") -> int:
    m = shared_map(tna, abi.MAP_STATE, iface)
    try:
        raw = m.lookup(b"\0\0\0\0")
        assert isinstance(raw, bytes)
        return abi.TnaState.from_buffer_copy(raw).cfg.pass_reason
    finally:
        m.close()


def datapath_fdb(lab: BridgeLab, tna: Tna) -> set[tuple[str, int, str]]:
    """tna_fdb as the datapath has it: (mac, vid, port name) of br0's entries."""
    names = {lab.ifindex(lab.b, n): n for n in [*PORTS, "br0"]}
    br0 = lab.ifindex(lab.b, "br0")
    m = shared_map(tna, abi.MAP_FDB)
    try:
        out = set()
        for k, v in m.items():
            key, val = abi.TnaFdbKey.from_buffer_copy(k), abi.TnaFdb.from_buffer_copy(v)  # type: ignore[arg-type]
            if key.bridge == br0:
                out.add((bytes(key.mac).hex(":"), key.vid, names.get(val.port, str(val.port))))
        return out
    finally:
        m.close()


def kernel_fdb(lab: BridgeLab) -> set[tuple[str, int, str]]:
    """br0's FDB as iproute2 shows it: (mac, vid, port name); the ports' own
    address lists ("self" entries) are no bridge's."""
    entries = json.loads(lab.run(lab.b, ["bridge", "-j", "fdb", "show", "br", "br0"]).stdout)
    return {(e["mac"], e.get("vlan", 0), e["ifname"]) for e in entries if e.get("master") == "br0"}


def fdb_diff(lab: BridgeLab, tna: Tna) -> dict[str, list[tuple[str, int, str]]]:
    """What only the datapath and only the kernel have (a few of each)."""
    dp, kernel = datapath_fdb(lab, tna), kernel_fdb(lab)
    return {"datapath only": sorted(dp - kernel)[:10], "kernel only": sorted(kernel - dp)[:10]}


def add_static(lab: BridgeLab, port: str, n: int, prefix: str) -> None:
    """n static FDB entries on port, in one `bridge -batch` (a burst of n notifications)."""
    lines = "".join(f"fdb add {prefix}:{i >> 8:02x}:{i & 0xFF:02x} dev {port} master static\n" for i in range(n))
    lab.run(lab.b, ["bridge", "-batch", "-"], input=lines)


def delta(after: dict[str, int], before: dict[str, int], reason: str) -> int:
    return after.get(reason, 0) - before.get(reason, 0)


def test_a_mac_that_moves_during_a_resync_never_receives_frames_on_its_old_port(hook: str, tmp_path: Path) -> None:
    with BridgeLab() as lab, tna_running(lab, lab.b, hook, PORTS, lab.hosts, module="tests.tna_paused",
                                         env_extra={"TNA_PAUSE_DIR": str(tmp_path),
                                                    "TNA_PAUSE_AT": "resync"}) as tna:
        to_moved = [frame(MOVED, lab.h1.mac, MARK + bytes([i])) for i in range(FRAMES)]
        # the kernel learns h1 on b-h1 and MOVED on b-h2; the daemon mirrors both
        send(lab, lab.h1, [frame(BROADCAST, lab.h1.mac)])
        send(lab, lab.h2, [frame(BROADCAST, MOVED)])
        assert wait_for(lambda: lab.fdb().get(MOVED) == "b-h2", 30)
        assert wait_for(lambda: (MOVED, 0, "b-h2") in datapath_fdb(lab, tna), 30), tna.output()
        before = tna.counters("b-h1")
        got = deliveries(lab, to_moved, "h2")
        assert got == {"h2": to_moved, "h3": []}
        assert delta(tna.counters("b-h1"), before, "FORWARDED") >= FRAMES - 1  # one may renew h1's entry

        # a burst of FDB additions overruns the reader's (small) buffer: the
        # daemon stops in its resync, before the new dump
        (tmp_path / "arm").touch()
        add_static(lab, "b-h3", 3000, "02:00:00:01")
        assert wait_for((tmp_path / "paused").exists, 60), tna.output()
        # MOVED now talks from b-h3: the kernel moves its entry; the
        # datapath's maps still say b-h2
        send(lab, lab.h3, [frame(BROADCAST, MOVED)])
        assert wait_for(lambda: lab.fdb().get(MOVED) == "b-h3", 30)
        assert (MOVED, 0, "b-h2") in datapath_fdb(lab, tna)
        before = tna.counters("b-h1")
        in_resync = deliveries(lab, to_moved, "h3")
        held = tna.counters("b-h1")
        reason = pass_reason(tna)
        (tmp_path / "resume").touch()
        assert in_resync == {"h2": [], "h3": to_moved}, tna.output()  # where Linux sends them
        assert delta(held, before, "RESYNC") >= FRAMES and delta(held, before, "FORWARDED") == 0, held
        assert reason == abi.REASON["RESYNC"]
        assert "resynchronising" in tna.output()

        # the resync's reconcile wrote every map from the new dump, then released
        assert wait_for(lambda: pass_reason(tna) == 0, 60), tna.output()
        assert (MOVED, 0, "b-h3") in datapath_fdb(lab, tna)
        before = tna.counters("b-h1")
        assert deliveries(lab, to_moved, "h3") == {"h2": [], "h3": to_moved}
        assert delta(tna.counters("b-h1"), before, "FORWARDED") >= FRAMES - 1


def test_a_bulk_fdb_flush_is_followed_exactly_without_a_resync(hook: str) -> None:
    with BridgeLab() as lab:
        add_static(lab, "b-h2", 2500, "02:00:00:02")  # in the start-up dump
        with tna_running(lab, lab.b, hook, PORTS, lab.hosts) as tna:
            # learned ones, as events: frames from 1,500 sources behind b-h3
            learned = [frame(BROADCAST, f"02:00:00:03:{i >> 8:02x}:{i & 0xFF:02x}") for i in range(1500)]
            for i in range(0, len(learned), 500):  # an argument holds at most 128 KiB
                send(lab, lab.h3, learned[i:i + 500], gap=0.0005)
            assert wait_for(lambda: len(kernel_fdb(lab)) > 3500, 30)
            assert wait_for(lambda: datapath_fdb(lab, tna) == kernel_fdb(lab), 60), fdb_diff(lab, tna)
            # thousands of deletions at once: more than the default buffer holds
            lab.run(lab.b, ["bridge", "fdb", "flush", "dev", "br0", "nopermanent"])
            assert len(kernel_fdb(lab)) < 10, kernel_fdb(lab)  # the ports', the bridge's, a host relearned

            def followed() -> bool:  # (hosts' own frames may relearn them meanwhile: compared anew)
                dp = datapath_fdb(lab, tna)
                return dp == kernel_fdb(lab) and not any(mac.startswith(("02:00:00:02", "02:00:00:03"))
                                                         for mac, _, _ in dp)
            assert wait_for(followed, 60), fdb_diff(lab, tna)
            assert "resynchronising" not in tna.output()
            # a removed entry's frames go to the kernel, which floods them
            send(lab, lab.h1, [frame(BROADCAST, lab.h1.mac)])
            assert wait_for(lambda: (lab.h1.mac, 0, "b-h1") in datapath_fdb(lab, tna), 30)
            before = tna.counters("b-h1")
            flooded = [frame("02:00:00:02:00:07", lab.h1.mac, MARK + bytes([i])) for i in range(FRAMES)]
            caps = [capture(lab, h, FRAMES, 20) for h in (lab.h2, lab.h3)]
            send(lab, lab.h1, flooded)
            assert [[bytes.fromhex(x) for x in c.communicate(timeout=60)[0].split()] for c in caps] == [flooded] * 2
            after = tna.counters("b-h1")  # (the first one may renew h1's entry instead)
            assert delta(after, before, "FORWARDED") == 0 and delta(after, before, "BR_UNKNOWN_DST") >= FRAMES - 1


@pytest.mark.parametrize("small_buffer", [False, True])
def test_a_burst_of_routes_is_followed_and_an_overrun_resyncs(router_lab: RouterLab, hook: str, tmp_path: Path,
                                                              small_buffer: bool) -> None:
    """10,000 routes in one `ip -batch`: ~10 MiB of notifications at once,
    5 times what the default buffer holds, queued while the daemon is
    stopped (so that they are there at once: a reader that keeps up with
    the kernel's insertions would decide nothing).  The real buffer takes
    them (no resync); the instrumented daemon's small one overruns (ENOBUFS):
    it holds, rebuilds its model from a dump, releases and keeps the fast
    path going."""
    lab = router_lab
    env = {"TNA_PAUSE_DIR": str(tmp_path), "TNA_PAUSE_AT": "resync"} if small_buffer else {}  # never armed
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2], module="tests.tna_paused" if small_buffer
                     else "tna", env_extra=env) as tna:
        batch = tmp_path / "routes"
        batch.write_text("".join(f"route add 2001:db8:9:{i:x}::/64 via 2001:db8:2::2\n" for i in range(10000)))
        tna.proc.send_signal(signal.SIGSTOP)
        try:
            lab.run(lab.r, ["ip", "-6", "-batch", str(batch)])
        finally:
            tna.proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: (tna.status() or {}).get("routes", 0) >= 10000, 120, 0.5), tna.output()
        assert ("resynchronising everything" in tna.output()) == small_buffer, tna.output()
        assert wait_for(lambda: pass_reason(tna, "r-h1") == 0, 30), tna.output()
        before = tna.counters().get("FORWARDED", 0)
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
        # the address change makes the kernel re-resolve r-h1's neighbour once
        assert tna.counters().get("FORWARDED", 0) - before >= 8
