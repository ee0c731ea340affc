"""The systemd units in packaging/systemd: `systemd-analyze verify` accepts
them, and `tna run` works as they run it: within their capability bounding
set, telling NOTIFY_SOCKET when it is ready and when it stops (root lab)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from netns_labs.lab import RouterLab, tcp_transfer
from netns_labs.tna_proc import Tna, tna_leftovers

UNITS = Path(__file__).resolve().parent.parent / "packaging" / "systemd"
EXEC_START = "ExecStart=/usr/local/bin/tna run"


def _setting(unit: str, key: str) -> list[str]:
    return [line.partition("=")[2] for line in (UNITS / unit).read_text().splitlines() if line.startswith(f"{key}=")]


@pytest.mark.parametrize("unit", ["tna.service", "tna@.service"])
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists ExecStart's binary exists: point it at this environment's tna
    tna = Path(sys.executable).parent / "tna"
    if not tna.exists():
        pytest.skip(f"no tna script beside {sys.executable} to stand in for /usr/local/bin/tna")
    text = (UNITS / unit).read_text()
    assert text.count(EXEC_START) == 1
    (tmp_path / unit).write_text(text.replace(EXEC_START, f"ExecStart={tna} run"))
    names = [unit] if "@" not in unit else [unit, unit.replace("@", "@R")]
    for name in names:
        if name != unit:
            shutil.copy(tmp_path / unit, tmp_path / name)
        res = subprocess.run([analyze, "verify", f"./{name}"], cwd=tmp_path, capture_output=True, text=True)
        # a misspelt key or bad value is only a warning ("ignoring"): none may appear
        ours = [line for line in (res.stdout + res.stderr).splitlines() if "tna" in line]
        assert res.returncode == 0 and not ours, res.stdout + res.stderr


def test_units_differ_only_in_the_namespace() -> None:
    """The template is the host unit plus its namespace and config lines."""
    host, inst = ((UNITS / u).read_text().splitlines() for u in ("tna.service", "tna@.service"))
    settings = [line for line in inst if "=" in line and not line.startswith("#")]
    extra = [line for line in settings if line not in host]
    assert extra == ["Description=TNA transparent network acceleration (network namespace %i)",
                     "AssertPathExists=/run/netns/%i", "NetworkNamespacePath=/run/netns/%i",
                     "Environment=TNA_CONFIG=/etc/tna/%i.toml"]
    assert [line for line in host if "=" in line and not line.startswith("#") and line not in inst] == [
        "Description=TNA transparent network acceleration (host network namespace)"]


def _datagrams(s: socket.socket, until: str) -> list[str]:
    """What arrives on s up to and including the datagram until (60 s at most)."""
    got: list[str] = []
    while until not in got:
        got.append(s.recv(4096).decode())
    return got


@pytest.mark.root
def test_tna_run_as_the_unit_runs_it(tmp_path: Path) -> None:
    """With the unit's CapabilityBoundingSet only, tna run attaches, forwards
    and detaches everything on SIGTERM (that needs CAP_SYS_ADMIN); READY=1
    comes once the fast path is attached, RELOADING=1 ... READY=1 around a
    SIGHUP, STOPPING=1 when it stops."""
    (caps,) = _setting("tna.service", "CapabilityBoundingSet")
    assert _setting("tna@.service", "CapabilityBoundingSet") == [caps]
    assert _setting("tna.service", "Type") == ["notify"]
    bounding = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps.split())
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # systemd's end
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    with RouterLab() as lab, notify:
        # stateful rules through iptables-legacy: its save needs CAP_NET_RAW; carrying an
        # established connection needs ctnetlink (CAP_NET_ADMIN)
        for rule in (["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                     ["-p", "tcp", "--dport", "9", "-j", "DROP"]):
            lab.run(lab.r, ["iptables-legacy", "-A", "FORWARD", *rule])
        tna = Tna(lab, lab.r, command=["setpriv", f"--bounding-set={bounding}", sys.executable, "-m", "tna"],
                  env_extra={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        try:
            ready = _datagrams(notify, "READY=1")
            state = tna.state()  # published before READY=1
            assert state is not None and sorted(state["ifaces"]) == ["r-h1", "r-h2"], (ready, tna.output())
            assert ready[-2].startswith("STATUS=2 interfaces accelerated, 1 left alone, 0 failed"), ready
            st = tna.wait_attached(["r-h1", "r-h2"], timeout=60)
            assert st["disabled"] is None, tna.output()
            sent, got = tcp_transfer(lab, lab.h1.ns, lab.h2.ns, lab.h2.ip4, 16_000_000)
            assert sent == got
            # the daemon freed the connection from window tracking (else every packet is CT_SYNC)
            c = tna.counters()
            assert c.get("FORWARDED", 0) > 2 * (c.get("CT_SYNC", 0) + c.get("CT_STATE", 0) + c.get("CT_NEW", 0)), c
            tna.proc.send_signal(signal.SIGHUP)  # `systemctl reload`: the settings re-read
            # (a reconcile during the transfer may have queued a STATUS= before it)
            reload = _datagrams(notify, "READY=1")
            assert any(d.startswith("RELOADING=1\nMONOTONIC_USEC=") for d in reload[:-1]), reload
        finally:
            rc = tna.stop()
        out = tna.close()
        assert rc == 0 and "ERROR" not in out and "WARNING" not in out, out
        assert _datagrams(notify, "STOPPING=1")
        assert tna_leftovers(lab, lab.r) == ""
