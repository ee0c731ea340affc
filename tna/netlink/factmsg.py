"""A message decoded into its fact where it was read, dressed as much like a
pyroute2 message as pyroute2 and the watcher look at: the header (its type
and flags: a dump's NLM_F_MULTI keeps pyroute2 reading), shared by all
messages of a kind.  pyroute2's own message objects cost KiBs each: the
messages that come by the hundred thousand (a large FDB, a burst of route
changes) are kept as their facts only."""

from __future__ import annotations

from typing import Any

from tna.model.config import Fact


class FactMsg:
    __slots__ = ("fact", "header")
    _headers: dict[tuple[int, int], dict[str, Any]] = {}

    def __init__(self, fact: Fact, mtype: int, flags: int) -> None:
        self.fact = fact
        self.header = self._headers.setdefault((mtype, flags), {"type": mtype, "flags": flags, "error": None})

    def get(self, key: str, default: Any = None) -> Any:
        return self.header if key == "header" else default

    def __getitem__(self, key: str) -> Any:
        if key == "header":
            return self.header
        raise KeyError(key)
