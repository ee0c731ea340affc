"""Where a namespace's daemon keeps its lock and published state.

/run is shared by every `ip netns exec` (only /sys is remounted), so state
is keyed by the network namespace's inode; bpffs is not shared that way,
which is why `tna status` finds maps through the attached programs instead
of pins.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
RUN_ROOT = Path(os.environ.get("TNA_RUN_DIR", "/run/tna"))


def netns_id() -> str:
    return str(os.stat("/proc/self/ns/net").st_ino)


def run_dir() -> Path:
    return RUN_ROOT / netns_id()


class AlreadyRunning(RuntimeError):
    pass


class RunLock:
    """flock on run_dir()/lock: held while a daemon runs, released by the
    kernel if it dies, so a crashed daemon never blocks its successor."""

    def __init__(self) -> None:
        self.dir = run_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(self._fd, 32, 0).decode().strip() or "?"
            os.close(self._fd)
            raise AlreadyRunning(f"another `tna run` (pid {pid}) is active in this network namespace") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self, remove_dir: bool = True) -> None:
        if remove_dir:
            for f in self.dir.iterdir():
                f.unlink(missing_ok=True)
            self.dir.rmdir()
        os.close(self._fd)


def lock_holder() -> int | None:
    """Pid of the daemon holding this namespace's lock, None if there is none.
    Read from /proc/locks: taking the lock to find out would make a daemon
    starting at that moment refuse."""
    try:
        st = os.stat(run_dir() / "lock")
    except FileNotFoundError:
        return None
    return flock_holder(Path("/proc/locks").read_text(), os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def flock_holder(proc_locks: str, major: int, minor: int, inode: int) -> int | None:
    """The pid holding a flock on that file in /proc/locks' text, where a
    line reads `1: FLOCK  ADVISORY  WRITE 5620 fe:00:1450019 0 EOF` (a
    waiter's has `->` after the number)."""
    dev = f"{major:02x}:{minor:02x}:{inode}"
    for line in proc_locks.splitlines():
        f = line.split()
        if len(f) >= 6 and f[1] == "FLOCK" and f[5] == dev:
            return int(f[4])
    return None


SO_NETNS_COOKIE = 71  # a namespace's id for the boot: never reused, unlike its inode number


def _netns_cookie() -> int:
    with socket.socket() as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def _counts_file() -> Path:
    return RUN_ROOT / f"rulecounts-{netns_id()}.json"  # beside run_dir(): a stop removes that


def save_rule_counts(saved: dict[str, Any] | None) -> None:
    """What the fast path counted per rule when tna stopped
    (RuleCounts.saved()), for the next start in this namespace."""
    try:
        if saved is None:
            _counts_file().unlink(missing_ok=True)
        else:
            _counts_file().write_text(json.dumps({**saved, "netns": _netns_cookie()}))
    except OSError as e:  # tna is stopping: the counts are lost, nothing else
        log.warning("the fast path's rule counts could not be saved for the next start: %s", e)


def take_rule_counts() -> dict[str, Any] | None:
    """save_rule_counts()'s, once (None: none, or another namespace's)."""
    try:
        saved, cookie = json.loads(_counts_file().read_text()), _netns_cookie()
    except (OSError, ValueError):
        return None
    finally:
        _counts_file().unlink(missing_ok=True)
    return saved if isinstance(saved, dict) and saved.get("netns") == cookie else None


def publish_status(state: dict[str, Any]) -> None:
    """Write state.json (what `tna status` reads), atomically."""
    path = run_dir() / "state.json"
    tmp = path.with_suffix(".tmp")
    # compact: json's C encoder only runs without indent (10,000 rules: ~10x)
    tmp.write_text(json.dumps(state, sort_keys=True))
    tmp.replace(path)


def read_state() -> dict[str, Any] | None:
    try:
        return json.loads((run_dir() / "state.json").read_text())
    except (OSError, ValueError):
        return None
