"""sd_notify(3) for `Type=notify` units: the daemon's state as one datagram
to `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading '@').
Without that variable (not started by systemd) every call does nothing."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("tna")


def notify(state: str) -> bool:
    """Send state ("READY=1", "STOPPING=1", "STATUS=..."); True if sent.  A
    failure is logged, never raised: the fast path does not depend on it."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    elif not addr.startswith("/"):
        log.warning("NOTIFY_SOCKET %r: only unix sockets are supported; systemd is not told %s", addr, state)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("cannot tell systemd %s (NOTIFY_SOCKET %r): %s", state, addr.replace("\0", "@"), e)
        return False
    return True


def reloading() -> bool:
    """Before a configuration re-read (SIGHUP), with the timestamp systemd
    asks for; READY=1 says when the reload is done."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
