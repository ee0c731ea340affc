"""Programs loaded ahead of their attach, several at once.

A program load is mostly the verifier (~0.3 s for the firewall with
conntrack), which runs in the kernel without the GIL: the interfaces of a
reconcile load in threads, so n of them cost n / CPUs of it instead of n,
and every one of them holds the datapath until the last is attached.
Datapath.attach() then takes what was loaded for its plan (or raises the
load's error, where the daemon handles a failed interface).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from tna.bpf import libbpf as bpf
from tna.synth.planner import IfacePlan

if TYPE_CHECKING:
    from tna.synth.build import Artifact

Loaded = tuple[bpf.BpfObject, bpf.Program]


class Preloads:
    def __init__(self) -> None:
        # ifindex -> (plan, artifact, the loaded object and program, or the load's error)
        self._items: dict[int, tuple[IfacePlan, Artifact, Loaded | Exception]] = {}

    def load(self, todo: list[tuple[IfacePlan, Artifact]], load: Callable[[IfacePlan, Artifact], Loaded],
             together: Callable[[Artifact], bool]) -> None:
        """load() every item, those whose load creates no map (together)
        at once, the others alone (one may make the maps the rest reuse)."""
        self.drop()
        pending = list(todo)
        while pending:
            ready = [item for item in pending if together(item[1])]
            if not ready:
                self._one(load, *pending.pop(0))
                continue
            pending = [item for item in pending if item not in ready]
            with ThreadPoolExecutor(max_workers=max(1, min(len(ready), len(os.sched_getaffinity(0))))) as pool:
                list(pool.map(lambda item: self._one(load, *item), ready))

    def _one(self, load: Callable[[IfacePlan, Artifact], Loaded], plan: IfacePlan, art: Artifact) -> None:
        try:
            loaded: Loaded | Exception = load(plan, art)
        except Exception as e:  # raised by take(), for the caller's handling of a failed interface
            loaded = e
        self._items[plan.ifindex] = (plan, art, loaded)

    def take(self, plan: IfacePlan, art: Artifact) -> Loaded | None:
        """What was loaded for plan and art (None: nothing, or for another
        plan, which is closed); the load's error is raised here."""
        item = self._items.pop(plan.ifindex, None)
        if item is None:
            return None
        if item[0] != plan or item[1] is not art:
            if not isinstance(item[2], Exception):
                item[2][0].close()
            return None
        if isinstance(item[2], Exception):
            raise item[2]
        return item[2]

    def drop(self) -> None:
        """Close what no attach took."""
        for _, _, loaded in self._items.values():
            if not isinstance(loaded, Exception):
                loaded[0].close()
        self._items.clear()
