"""tna_stale: the STALE neighbours, whose next packet the datapath sends to
the kernel (router.c.j2), which re-validates the neighbour as forwarding
would (DELAY, then a probe).

The main loop writes the model's STALE neighbours; the rtnetlink reader
thread writes a neighbour it hears turn STALE at once (mark()), so that a
main loop busy loading programs need not hold every packet for it
(PENDING).  A mark stays in the map until the model has taken the batch it
came in: a sync from a model that has not applied it yet keeps it.
"""

from __future__ import annotations

import ctypes
import socket
import threading
from collections.abc import Callable, Iterable

from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.deploy.lease import Lease
from tna.deploy.mapwrite import write_diff
from tna.model.config import Neigh


def neigh_key(n: Neigh) -> bytes:
    key = abi.TnaNeighKey(ifindex=n.index, family=n.family)
    packed = socket.inet_pton(n.family, n.dst)  # AF_INET/AF_INET6 match socket's
    ctypes.memmove(key.addr, packed, len(packed))
    return bytes(key)


class StaleMap:
    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.map: bpf.Map | None = None  # the shared tna_stale, once the first load made it
        self.taken: Callable[[], int] = lambda: 0  # the rtnetlink batches the model has applied (Holds.taken)
        self._lock = threading.Lock()  # the reader thread's marks against the main loop's syncs
        # what we wrote (the datapath deletes an entry once it has handed a
        # packet for it to the kernel, so this may over-state the map: that
        # only costs a redundant delete when the neighbour leaves STALE)
        self.shadow: dict[bytes, bytes] = {}
        self._marks: dict[bytes, int] = {}  # key -> the batch the reader marked it for

    def mark(self, neighs: Iterable[Neigh], batch: int) -> bool:
        """Reader thread: neighbours batch announced STALE, in the map now -
        written even where we wrote them before: the datapath may have taken
        an entry out since, and the kernel made it STALE again.  False: not
        all written (no map yet, or a full one): the caller holds."""
        with self._lock:
            if self.map is None:
                return False
            try:
                for n in neighs:
                    key = neigh_key(n)
                    self.map.update(key, b"\x01")
                    self.shadow[key], self._marks[key] = b"\x01", batch
            except OSError:
                return False
            finally:
                self.lease.set_stale_count(len(self.shadow))
            return True

    def sync(self, stale: set[Neigh]) -> None:
        """The model's STALE neighbours, and the marks of batches it has not taken."""
        taken = self.taken()  # before the lock: the reader marks under the Holds lock, then takes this one
        with self._lock:
            if self.map is None:
                return
            self._marks = {k: b for k, b in self._marks.items() if b > taken}
            keys = {neigh_key(n) for n in stale} | self._marks.keys()
            try:
                write_diff(self.map, self.shadow, dict.fromkeys(keys, b"\x01"), abi.MAP_STALE)
            finally:
                self.lease.set_stale_count(len(self.shadow))

    def rewrite(self) -> None:
        """The next sync writes every STALE neighbour again (a new dump: what
        the lost events re-announced may have been taken out since), and
        deletes what it no longer has (the keys stay known)."""
        with self._lock:
            self.shadow = dict.fromkeys(self.shadow, b"")

    def clear(self) -> None:
        with self._lock:
            self.map = None
            self.shadow, self._marks = {}, {}
