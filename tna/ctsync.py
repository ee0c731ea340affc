"""The daemon's conntrack thread: connections the datapath waits to carry
(TNA_R_CT_SYNC) marked window-liberal (tna/netlink/conntrack.py) as soon
as the datapath's ring buffer (tna_ct_bell) rings, so an idle daemon does
not poll."""

from __future__ import annotations

import itertools
import threading

from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.bpf.ringbuf import RingBuffer
from tna.deploy.datapath import Datapath
from tna.netlink.conntrack import Liberal
from tna.netlink.sysctls import read_int

BELL_WAIT_S = 0.5  # how often the thread looks at the stop flag and the shared maps
BATCH = 512
CLOSE_TIMEOUT = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close"  # read when needed: rare


def ct_sync_loop(dp: Datapath, stop: threading.Event) -> None:
    """Until stop.  The shared maps are recreated when every program went
    away and came back: the ring buffer follows them."""
    liberal = Liberal()
    bell_map: bpf.Map | None = None
    bell: RingBuffer | None = None
    try:
        while not stop.is_set():
            m = dp.shared.get(abi.MAP_CT_BELL)
            if m is not bell_map:
                if bell is not None:
                    bell.close()
                bell_map, bell = m, (RingBuffer(m.fd, lambda _rec: None) if m is not None else None)
            if bell is None:
                stop.wait(BELL_WAIT_S)
            elif bell.poll(BELL_WAIT_S):
                _drain(dp, liberal)
    finally:
        if bell is not None:
            bell.close()
        liberal.close()


def _drain(dp: Datapath, liberal: Liberal) -> None:
    m = dp.shared.get(abi.MAP_CT_SYNC)
    while m is not None:
        keys = list(itertools.islice(m.keys(), BATCH))
        if not keys:
            return
        asked: dict[int, list[abi.TnaCtKey]] = {}
        for k in keys:
            # taken out as it is read: a request written after it (a close
            # over a mark) is the next drain's, not lost in a batch delete
            what = m.lookup(k)
            m.delete(k)
            if isinstance(what, bytes):  # gone meanwhile: None
                asked.setdefault(what[0], []).append(abi.TnaCtKey.from_buffer_copy(k))
        liberal.mark(asked.get(abi.CT_SYNC_LIBERAL, ()))
        if closing := asked.get(abi.CT_SYNC_CLOSE):
            liberal.close_reset(closing, read_int(CLOSE_TIMEOUT, 10))
