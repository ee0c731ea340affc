"""A message decoded into its fact where it was read, dressed as much like a
pyroute2 message as pyroute2 and the watcher look at: the header (its type
and flags: a dump's NLM_F_MULTI keeps pyroute2 reading), shared by all
messages of a kind.  pyroute2's own message objects cost KiBs each: the
messages that come by the hundred thousand (a large FDB, a burst of route
changes) are kept as their facts only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tna.model.config import Fact, Removed


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


def decode_into_facts(marshal: Any, new: int, gone: int, claims: Callable[[bytes, int, int], bool],
                      fact: Callable[[bytes, int, int], Any]) -> None:
    """Make a pyroute2 marshal decode the messages of types new and gone
    that claims(data, offset, length) accepts with fact(data, offset,
    length) into FactMsg (the fact, or Removed(fact) for gone; None, i.e.
    skipped, where fact() gives None); every other message stays
    pyroute2's.  (Its parse_one_message() is the default parser of every
    message without a request-specific one.)"""
    fallback = marshal.parse_one_message

    def parse(key: int, flags: int, seq: int, data: bytes, offset: int, length: int) -> Any:
        if key in (new, gone) and claims(data, offset, length):
            found = fact(data, offset, length)
            if found is None:
                return None
            return FactMsg(found if key == new else Removed(found), key, flags)
        return fallback(key, flags, seq, data, offset, length)
    marshal.parse_one_message = parse
