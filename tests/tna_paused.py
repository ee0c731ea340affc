"""`tna run` that stops before it changes tna_fw_ifaces, for as long as a
lab test wants, once per PAUSE_DIR/arm file: the window between the attach
of a program built for new rules and that map write, held open so the test
can send real traffic through it.  The main loop is stopped meanwhile, so
the lease thread is told to keep renewing (else the lease would run out
and hide what the programs decide).

Usage: TNA_PAUSE_DIR=DIR python -m tests.tna_paused run ARGS...; the test
creates DIR/arm, waits for DIR/paused, then creates DIR/resume."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tna import daemon
from tna.bpf import abi
from tna.cli import main
from tna.deploy import datapath

PAUSE_MAX_S = 60


def _pausing(sync):  # type: ignore[no-untyped-def]
    pause_dir = Path(os.environ["TNA_PAUSE_DIR"])

    def _sync(self, name: str, desired: dict[bytes, bytes], array: bool = False) -> None:  # type: ignore[no-untyped-def]
        arm = pause_dir / "arm"
        if name == abi.MAP_FW_IFACES and arm.exists() and desired != self._shadow.get(name, {}):
            arm.unlink()
            (pause_dir / "paused").touch()
            end = time.monotonic() + PAUSE_MAX_S
            while not (pause_dir / "resume").exists() and time.monotonic() < end:
                time.sleep(0.01)
            (pause_dir / "resume").unlink(missing_ok=True)
        sync(self, name, desired, array)
    return _sync


if __name__ == "__main__":
    datapath.Datapath._sync = _pausing(datapath.Datapath._sync)  # type: ignore[method-assign]
    daemon.HEARTBEAT_MAX_S = PAUSE_MAX_S + 10
    sys.exit(main())
