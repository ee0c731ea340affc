"""`tna run` with the kernel's default netlink receive buffer instead of the
large one the daemon asks for, so a lab test can overrun its event socket
with a burst of thousands of events and watch the resync.

Usage: python -m tests.tna_small_rcvbuf run ARGS..."""

from __future__ import annotations

import sys

from tna.cli import main
from tna.netlink import watch

if __name__ == "__main__":
    watch.EVENTS_RCVBUF = 212992  # net.core.rmem_default
    sys.exit(main())
