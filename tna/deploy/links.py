"""XDP and TC attachment through BPF links, so attaching changes nothing else.

Attaching, replacing or detaching an XDP program by netlink (RTM_SETLINK
with IFLA_XDP, libbpf's bpf_xdp_attach) makes rtnetlink announce
NETDEV_CHANGE for the device as if its state had changed.  Listeners act on
it: the bridge re-runs its carrier check and turns a port the admin had set
to `disabled` back on (forwarding at once with STP off), and IPv6 re-sends
the device's MLD reports.  A BPF link (BPF_LINK_CREATE, BPF_LINK_UPDATE,
BPF_LINK_DETACH) installs the same program without that announcement.

At TC the link is a tcx one (kernel >= 6.6): the program runs straight from
the ingress hook, without a clsact qdisc and cls_bpf's filter walk in
between, which cost passed traffic ~5 % of Linux's rate (docs/benchmarks.md).

A link lives as long as its file descriptor: if the daemon dies the kernel
detaches its programs at once, and the interface is plain Linux again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from pyroute2 import IPRoute

from tna.bpf import abi, attach
from tna.bpf import libbpf as bpf
from tna.deploy import clsact
from tna.netlink.watch import TC_H_CLSACT_EGRESS, TC_H_CLSACT_INGRESS, tc_filters

log = logging.getLogger(__name__)

_CREATE: dict[str, Callable[[int, int], int]] = {"xdp": attach.xdp_link, "tc": attach.tcx_link}


class ForeignProgram(Exception):
    """Someone else's XDP program or TC filter is there: leave the interface alone."""


def attached_tna_prog(ifindex: int, hook: str) -> int:
    """Id of a TNA program attached at hook on ifindex, 0 if none; raises
    ForeignProgram if only another program holds the hook.  At TC that is
    a tcx program, or the clsact filter of a TNA from before tcx links."""
    if hook == "xdp":
        ids = [attach.xdp_query_id(ifindex)]
    else:
        ids = [*attach.tcx_prog_ids(ifindex), attach.tc_query(ifindex, abi.TNA_TC_HANDLE, abi.TNA_TC_PRIORITY)]
    ours, others = attach.split_tna(ids)
    if others and not ours:
        raise ForeignProgram(f"a foreign {hook} program (id {others[0]}) is attached")
    return ours[0] if ours else 0


def check_tc_ingress(ifindex: int) -> None:
    """Raise ForeignProgram if another program sees this device's ingress
    at TC: TNA's redirect would bypass it (tcx programs run in order, then
    the clsact filters)."""
    foreign = attach.foreign_tcx(ifindex, attach.BPF_TCX_INGRESS)
    if foreign:
        raise ForeignProgram(f"foreign tcx ingress programs are attached (ids {foreign})")
    filters = [f for f in clsact_filters(ifindex, TC_H_CLSACT_INGRESS) if f != abi.TC_FILTER]
    if filters:
        raise ForeignProgram(f"foreign TC ingress filters are attached (prio/handle {filters})")


class HookLinks:
    """Our XDP and tcx links, by (ifindex, hook)."""

    def __init__(self) -> None:
        self._fds: dict[tuple[int, str], int] = {}

    def attach(self, ifindex: int, hook: str, prog: bpf.Program, old_id: int) -> None:
        """Attach prog; a TNA program attached now (old_id) is swapped for it
        atomically if it is on our link."""
        fd = self._fds.get((ifindex, hook))
        if fd is not None and old_id:
            old = bpf.Program.from_id(old_id)
            try:
                attach.link_update(fd, prog.fd, old.fd)
            finally:
                old.close()
            return
        self.release(ifindex, hook)  # a link left from a device that went away
        if old_id:
            self.detach(ifindex, hook)
        self._fds[(ifindex, hook)] = _CREATE[hook](ifindex, prog.fd)

    def detach(self, ifindex: int, hook: str) -> None:
        """Take off the TNA program attached at hook on ifindex."""
        fd = self._fds.pop((ifindex, hook), None)
        if fd is not None:
            try:
                attach.link_detach(fd)
            finally:
                os.close(fd)
        elif hook == "xdp":
            # attached by netlink (a TNA from before links): only netlink can
            # take it off, with the side effects this module avoids
            log.warning("ifindex %d: removing a netlink-attached TNA program; the kernel announces "
                        "NETDEV_CHANGE (a disabled bridge port on it turns forwarding)", ifindex)
            attach.xdp_detach(ifindex)
        else:
            # a clsact filter (a TNA from before tcx links), and the qdisc if
            # that TNA added it and nothing else hangs on it
            attach.tc_detach(ifindex, abi.TNA_TC_HANDLE, abi.TNA_TC_PRIORITY)
            if not clsact_filters(ifindex, TC_H_CLSACT_INGRESS) and not clsact_filters(ifindex, TC_H_CLSACT_EGRESS):
                clsact.remove_if_ours(ifindex)

    def release(self, ifindex: int, hook: str | None = None) -> None:
        """Close the links (of one hook, or both): the kernel detaches a
        link's program when its last fd closes (and did already if the
        device is gone)."""
        for h in (hook,) if hook else tuple(_CREATE):
            fd = self._fds.pop((ifindex, h), None)
            if fd is not None:
                os.close(fd)


def clsact_filters(ifindex: int, parent: int) -> list[tuple[int, int]]:
    with IPRoute() as ipr:
        return tc_filters(ipr, ifindex, parent)
