"""`tna run` that stops at one point of the real code path, for as long as a
lab test wants, once per PAUSE_DIR/arm file.  The main loop is stopped
meanwhile, so the lease thread is told to keep renewing (else the lease
would run out and hide what the programs decide).

TNA_PAUSE_AT picks the point:
- `fw_ifaces` (default): before the reconcile changes tna_fw_ifaces - the
  window between the attach of a program built for new rules and that map
  write;
- `nft_reader`: in the nftables reader thread, before it takes a
  notification - as a main loop holding the GIL would keep it waiting; the
  main loop runs on, knowing nothing of the commit;
- `attach`: before a program is attached - the window in which the
  programs built for the old rules still run while the new ones load
  (a narrowed hold's, tna/narrow.py);
- `resync`: in Daemon._resync, after the watcher that lost events is closed
  and before the new one binds and dumps - the old maps are all the
  datapath has.  The rtnetlink receive buffer is made small (RESYNC_RCVBUF)
  so that a test's burst of a few thousand FDB changes overruns it: a real
  ENOBUFS, seen by the real reader.

Usage: TNA_PAUSE_DIR=DIR [TNA_PAUSE_AT=...] python -m tests.tna_paused run
ARGS...; the test creates DIR/arm, waits for DIR/paused, then creates
DIR/resume."""

from __future__ import annotations

import os
import select
import sys
import time
from pathlib import Path
from typing import Any

from tna import daemon
from tna.bpf import abi
from tna.cli import main
from tna.deploy import datapath
from tna.netlink import netfilter, sockbuf, watch

PAUSE_MAX_S = 60
RESYNC_RCVBUF = 64 << 10  # the kernel doubles it: ~150 FDB notifications


def _pause_if_armed() -> None:
    pause_dir = Path(os.environ["TNA_PAUSE_DIR"])
    arm = pause_dir / "arm"
    if not arm.exists():
        return
    arm.unlink()
    (pause_dir / "paused").touch()
    end = time.monotonic() + PAUSE_MAX_S
    while not (pause_dir / "resume").exists() and time.monotonic() < end:
        time.sleep(0.01)
    (pause_dir / "resume").unlink(missing_ok=True)


def _pausing_sync(sync):  # type: ignore[no-untyped-def]
    def _sync(self, name: str, desired: dict[bytes, bytes], array: bool = False) -> None:  # type: ignore[no-untyped-def]
        if name == abi.MAP_FW_IFACES and desired != self._shadow.get(name, {}):
            _pause_if_armed()
        sync(self, name, desired, array)
    return _sync


def _pausing_read(read):  # type: ignore[no-untyped-def]
    def _read(self, timeout: float, on_begin):  # type: ignore[no-untyped-def]
        if select.select([self._raw], [], [], timeout)[0]:
            _pause_if_armed()
            return read(self, timeout, on_begin)
        return read(self, 0, on_begin)
    return _read


def _pausing_attach(attach):  # type: ignore[no-untyped-def]
    def _attach(self, plan, art):  # type: ignore[no-untyped-def]
        _pause_if_armed()
        attach(self, plan, art)
    return _attach


def _pausing_watcher(*args: Any, **kw: Any) -> watch.Watcher:
    _pause_if_armed()
    return watch.Watcher(*args, **kw)


if __name__ == "__main__":
    at = os.environ.get("TNA_PAUSE_AT", "fw_ifaces")
    if at == "resync":
        daemon.Watcher = _pausing_watcher  # type: ignore[misc]
        watch.grow_rcvbuf = lambda fd: sockbuf.grow_rcvbuf(fd, RESYNC_RCVBUF)  # type: ignore[assignment]
    elif at == "attach":
        datapath.Datapath.attach = _pausing_attach(datapath.Datapath.attach)  # type: ignore[method-assign]
    elif at == "nft_reader":
        netfilter.NftEvents.read = _pausing_read(netfilter.NftEvents.read)  # type: ignore[method-assign]
    else:
        datapath.Datapath._sync = _pausing_sync(datapath.Datapath._sync)  # type: ignore[method-assign]
    daemon.HEARTBEAT_MAX_S = PAUSE_MAX_S + 10
    sys.exit(main())
