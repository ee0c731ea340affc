"""A message decoded into its fact where it was read, dressed as much like a
pyroute2 message as pyroute2 and the watcher look at: the header (its type
and flags: a dump's NLM_F_MULTI keeps pyroute2 reading), shared by all
messages of a kind.  pyroute2's own message objects cost KiBs each: the
messages that come by the hundred thousand (a large FDB, a burst of route
changes) are kept as their facts only."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
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


_NOT_CLAIMED = object()
_HDR = struct.Struct("=IHH")  # nlmsghdr: length, type, flags
_NLMSG_HDRLEN = 16


def decode_into_facts(marshal: Any, new: int, gone: int, claims: Callable[[bytes, int, int], bool],
                      fact: Callable[[bytes, int, int], Any]) -> None:
    """Make a pyroute2 marshal decode the messages of types new and gone
    that claims(data, offset, length) accepts with fact(data, offset,
    length) into FactMsg (the fact, or Removed(fact) for gone; None, i.e.
    skipped, where fact() gives None); every other message stays
    pyroute2's.  (Its parse_one_message() is the default parser of every
    message without a request-specific one; parse_events() takes the
    same decoders without pyroute2's per-message work.)"""
    def decode(key: int, flags: int, data: bytes, offset: int, length: int) -> Any:
        if not claims(data, offset, length):
            return _NOT_CLAIMED
        found = fact(data, offset, length)
        if found is None:
            return None
        return FactMsg(found if key == new else Removed(found), key, flags)

    fallback = marshal.parse_one_message

    def parse(key: int, flags: int, seq: int, data: bytes, offset: int, length: int) -> Any:
        msg = decode(key, flags, data, offset, length) if key in (new, gone) else _NOT_CLAIMED
        return fallback(key, flags, seq, data, offset, length) if msg is _NOT_CLAIMED else msg
    marshal.parse_one_message = parse
    fast = marshal.__dict__.setdefault("tna_facts", {})
    fast[new] = fast[gone] = decode


def parse_events(marshal: Any, data: bytes) -> Iterator[Any]:
    """The messages of one datagram as marshal.parse() gives them, but
    those that decode_into_facts() decoders claim are decoded here, without
    pyroute2's per-message work (a parser object, its fix-ups: ~2 us a
    message, as much as the decoding, in a burst of 200,000 route events)."""
    fast = marshal.__dict__.get("tna_facts", {})
    offset, end = 0, len(data)
    while offset + _NLMSG_HDRLEN <= end:
        length, key, flags = _HDR.unpack_from(data, offset)
        if length < _NLMSG_HDRLEN or offset + length > end:
            break
        decode = fast.get(key)
        msg = _NOT_CLAIMED if decode is None else decode(key, flags, data, offset, length)
        if msg is _NOT_CLAIMED:
            yield from marshal.parse(data[offset:offset + length])
        elif msg is not None:
            yield msg
        offset += (length + 3) & ~3
