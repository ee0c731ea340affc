"""Receive buffers for the event sockets: room for a bulk change.

The kernel queues each notification as its own buffer, about 1 KiB of
socket memory (832 bytes for an FDB entry, 1056 for a route, measured on
6.18), charged only while it waits to be read.  The default buffer
(net.core.rmem_max caps SO_RCVBUF; 2 MiB with pyroute2's request) holds
~2,000 of them, so `bridge fdb flush` of 10,000 entries overruns it while
pyroute2 decodes (~4,000 messages/s here).  As root, SO_RCVBUFFORCE
exceeds the cap.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)

SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python's socket module lacks it
# the kernel doubles what is asked: 256 MiB, ~250,000 waiting notifications
EVENT_RCVBUF = 128 << 20


def grow_rcvbuf(fd: int, size: int = EVENT_RCVBUF) -> int:
    """Give fd's socket a receive buffer of size (beyond rmem_max as root,
    else up to it); returns what the kernel granted."""
    s = socket.socket(fileno=fd)
    try:
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:  # no CAP_NET_ADMIN: as much as rmem_max allows
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        granted = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        s.detach()  # the fd stays its owner's
    if granted < size:
        log.warning("netlink receive buffer %d KiB (asked for %d KiB): a bulk change may overrun it and force "
                    "a resync", granted >> 10, size >> 10)
    return granted
