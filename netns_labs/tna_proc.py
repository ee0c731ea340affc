"""A `tna run` in a lab namespace (the daemon under test) and what tests
ask of it: its status and counters, its leftovers once stopped, the hosts'
XDP programs that let redirected frames arrive."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from netns_labs.lab import Host, Lab, in_netns, py, wait_for
from tna.bpf import attach
from tna.bpf.abi import MAP_STATE, TnaState
from tna.deploy.counters import read_program_map
from tna.deploy.lease import published_hold


def read_state(state_map: Any) -> TnaState:
    raw = state_map.lookup(b"\0\0\0\0")
    assert isinstance(raw, bytes)
    return TnaState.from_buffer_copy(raw)


def pass_reason(state_map: Any) -> int:
    """The reason every program passes all with now (a hold; 0: none).  From
    the map itself (one map, shared by every program of a daemon, so it
    outlives each)."""
    return published_hold(state_map)[0]


class Tna:
    """A `tna run` in a lab namespace, and its status/stats as JSON."""

    def __init__(self, lab: Lab, ns: str, *args: str, env_extra: dict[str, str] | None = None,
                 module: str = "tna", command: Sequence[str] = (), cwd: Path = Lab.repo) -> None:
        """module: what runs `run ARGS` (a test's instrumented daemon); command:
        the argv that is `tna` for run and status alike (an installed wheel's
        script, tna under setpriv) instead of this interpreter's modules."""
        self.lab, self.ns, self.cwd = lab, ns, cwd
        self.tna = list(command) or py("tna")
        self.log = tempfile.NamedTemporaryFile(prefix="tna-", suffix=".log", delete=False)
        self.proc = lab.popen(ns, [*(command or py(module)), "run", *args], stdout=self.log,
                              stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env_extra or {})})

    def wait_attached(self, names: Sequence[str], timeout: float = 30, settled: bool = False) -> dict:
        """Status once every interface named is attached; settled: or else
        skipped or failed by the daemon (it logged why and leaves it to the kernel)."""
        def recorded() -> bool:
            """The daemon's own record names them (settled: attached, skipped or failed)."""
            st = self.state()
            # a dead daemon's state.json lingers until the new one writes its own
            return (st is not None and st["pid"] == self.proc.pid
                    and all(n in st["ifaces"] or (settled and (n in st["skipped"] or n in st["failed"]))
                            for n in names))

        def attached() -> bool:  # `tna status` confirms the programs are the ones on the links
            st = self.status()
            return (st is not None and st["pid"] == self.proc.pid
                    and all(n in st["ifaces"] and st["ifaces"][n]["attached"] for n in names))
        # state.json is polled first: a `tna status` per poll would compete
        # with the starting daemon for the CPU
        end = time.monotonic() + timeout
        if not (wait_for(recorded, timeout, 0.05)
                and (settled or wait_for(attached, max(end - time.monotonic(), 1), 0.2))):
            raise RuntimeError(f"tna did not attach {names}:\n{self.output()}")
        return self.status()  # type: ignore[return-value]

    def state(self) -> dict | None:
        """The daemon's state.json, read directly: cheap to poll (a `tna
        status` costs a Python start-up, seconds on a busy machine)."""
        from tna.runstate import RUN_ROOT

        try:
            path = RUN_ROOT / str(os.stat(f"/run/netns/{self.ns}").st_ino) / "state.json"
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def pass_reason(self) -> int:
        """The reason the datapath passes everything with now (a hold), 0
        if none; read through a program the daemon attached."""
        return self._with_state(pass_reason)

    def held_flows(self) -> int:
        """How many flows a narrowed hold names now (tna_config.fw_hold_count)."""
        return self._with_state(lambda m: read_state(m).cfg.fw_hold_count)

    def _with_state(self, read: Any) -> Any:
        """read(tna_state) through the first attached program (None: it is gone meanwhile)."""
        st = self.state()
        assert st is not None and st["ifaces"], "no program attached yet"
        return read_program_map(next(iter(st["ifaces"].values()))["prog_id"], MAP_STATE, read)

    def output(self) -> str:
        with open(self.log.name) as f:
            return f.read()

    def close(self) -> str:
        """Remove the log; returns what the daemon printed."""
        out = self.output()
        os.unlink(self.log.name)
        return out

    def status(self) -> dict | None:
        res = self.lab.run(self.ns, [*self.tna, "status", "--json"], check=False, cwd=self.cwd)
        return json.loads(res.stdout) if res.returncode == 0 else None

    def counters(self, *names: str) -> dict[str, int]:
        """Packets by reason, summed over interfaces (or just those named)."""
        st = self.status() or {"ifaces": {}}
        out: dict[str, int] = {}
        for name, iface in st["ifaces"].items():
            if names and name not in names:
                continue
            for reason, c in iface.get("reasons", {}).items():
                out[reason] = out.get(reason, 0) + c["packets"]
        return out

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if sig == signal.SIGKILL:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the daemon and `ip netns exec` alike
        else:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            if sig == signal.SIGKILL:
                raise
            self.proc.send_signal(signal.SIGUSR1)  # the daemon writes every thread's stack to its log
            time.sleep(1)
            raise RuntimeError(f"tna did not stop within 30 s of signal {sig}; its log:\n{self.output()[-12000:]}") \
                from None


def tna_leftovers(lab: Lab, ns: str) -> str:
    """Anything of TNA still in namespace ns (XDP programs, tcx programs,
    clsact qdiscs, its /run/tna state); "" once a daemon stopped cleanly."""
    links = lab.run(ns, ["ip", "-d", "link", "show"]).stdout
    qdiscs = lab.run(ns, ["tc", "qdisc", "show"]).stdout
    out = []
    if " xdp" in links or "prog/xdp" in links:
        out.append(links)
    if "clsact" in qdiscs:
        out.append(qdiscs)
    with in_netns(ns):
        tcx = [f"tcx program {i} on {name}" for index, name in socket.if_nameindex()
               for point in (attach.BPF_TCX_INGRESS, attach.BPF_TCX_EGRESS)
               for i in attach.tcx_prog_ids(index, point)]
    out += tcx
    inode = lab.run(ns, ["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).stdout.strip()
    if lab.run(ns, ["test", "-e", f"/run/tna/{inode}"], check=False).returncode == 0:
        out.append("/run/tna state left")
    return "\n".join(out)


def host_xdp(lab: Lab, ns: str, dev: str, prog: str = "pass") -> None:
    """Give a host's veth an XDP program so redirected frames are delivered
    to it, as a NIC would; its stack sees the same packets.  Attached from
    this process (netlink: it stays when the object is closed), which saves
    a Python start-up per host."""
    from netns_labs.progs import attach

    with in_netns(ns):
        attach(dev, prog)


@contextmanager
def tna_running(lab: Lab, ns: str, hook: str, ifaces: Sequence[str], hosts: Sequence[Host],
                settled: bool = False, timeout: float = 60, **tna_kw: Any) -> Iterator[Tna]:
    """`tna run --hook HOOK` in ns, attached to ifaces (settled: see
    Tna.wait_attached); under XDP the hosts' veths get an XDP program so
    redirected frames reach them (as on a NIC) and every accelerated
    interface must become valid XDP egress.  tna_kw: Tna's env_extra and
    module."""
    if hook == "xdp":
        for h in hosts:
            host_xdp(lab, h.ns, h.dev)
    tna = Tna(lab, ns, "--hook", hook, **tna_kw)
    try:
        tna.wait_attached(ifaces, timeout, settled)
        if hook == "xdp":
            def ok() -> bool:
                st = tna.state()
                return st is not None and all(i["xdp_egress"] for i in st["ifaces"].values())
            assert wait_for(ok, timeout, 0.05), tna.output()
        yield tna
    finally:
        rc = tna.stop()
        out = tna.close()
    assert rc == 0, out
