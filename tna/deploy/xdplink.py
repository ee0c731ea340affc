"""XDP attachment through BPF links, so attaching changes nothing else.

Attaching, replacing or detaching an XDP program by netlink (RTM_SETLINK
with IFLA_XDP, libbpf's bpf_xdp_attach) makes rtnetlink announce
NETDEV_CHANGE for the device as if its state had changed.  Listeners act on
it: the bridge re-runs its carrier check and turns a port the admin had set
to `disabled` back on (forwarding at once with STP off), and IPv6 re-sends
the device's MLD reports.  A BPF link (BPF_LINK_CREATE, BPF_LINK_UPDATE,
BPF_LINK_DETACH) installs the same program without that announcement.

A link lives as long as its file descriptor: if the daemon dies the kernel
detaches its XDP programs at once, and the interface is plain Linux again.
"""

from __future__ import annotations

import logging
import os

from tna.bpf import attach
from tna.bpf import libbpf as bpf

log = logging.getLogger(__name__)


class XdpLinks:
    """Our XDP links, by ifindex."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}

    def attach(self, ifindex: int, prog: bpf.Program, old_id: int) -> None:
        """Attach prog; a TNA program attached now (old_id) is swapped for it
        atomically if it is on our link."""
        fd = self._fds.get(ifindex)
        if fd is not None and old_id:
            old = bpf.Program.from_id(old_id)
            try:
                attach.link_update(fd, prog.fd, old.fd)
            finally:
                old.close()
            return
        self.release(ifindex)  # a link left from a device that went away
        if old_id:
            self.detach(ifindex)
        self._fds[ifindex] = attach.xdp_link(ifindex, prog.fd)

    def detach(self, ifindex: int) -> None:
        """Take off the TNA program attached to ifindex."""
        fd = self._fds.pop(ifindex, None)
        if fd is None:
            # attached by netlink (a TNA from before links): only netlink can
            # take it off, with the side effects this module avoids
            log.warning("ifindex %d: removing a netlink-attached TNA program; the kernel announces "
                        "NETDEV_CHANGE (a disabled bridge port on it turns forwarding)", ifindex)
            attach.xdp_detach(ifindex)
            return
        try:
            attach.link_detach(fd)
        finally:
            os.close(fd)

    def release(self, ifindex: int) -> None:
        """Close a link whose device is gone (the kernel detached it then)."""
        fd = self._fds.pop(ifindex, None)
        if fd is not None:
            os.close(fd)
