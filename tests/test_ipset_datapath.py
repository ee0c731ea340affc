"""Writing a mirrored ipset's members into its map: a write that fails is
reported (a missing trie entry would answer "not in the set" where the
kernel says it is), and adds go before deletes (replacing a net by its
halves never leaves the net's addresses out)."""

from __future__ import annotations

import errno

from tna.deploy.datapath import Datapath
from tna.model.firewall import Firewall


class _Map:
    """A map that records its writes and is full for the keys in `full`."""

    def __init__(self, full: set[bytes]) -> None:
        self.ops: list[tuple[str, bytes]] = []
        self.full = full
        self.value_size = 1

    def update(self, key: bytes, value: bytes) -> None:
        if key in self.full:
            raise OSError(errno.E2BIG, "Argument list too long")
        self.ops.append(("update", key))

    def delete(self, key: bytes) -> None:
        self.ops.append(("delete", key))


def _datapath(m: _Map, shadow: dict[bytes, bytes]) -> tuple[Datapath, Firewall]:
    dp, fw = Datapath(), Firewall(None, None, ())
    dp.sets.maps = (fw, {"ips_bl": m})  # type: ignore[dict-item]
    dp.sets.ipset_shadow = {"ips_bl": dict(shadow)}
    return dp, fw


def test_adds_before_deletes() -> None:
    m = _Map(set())
    dp, fw = _datapath(m, {b"/8": b"\x01"})
    assert dp.sets.sync_ipsets({"ips_bl": {b"/9a": b"\x01", b"/9b": b"\x01"}}, fw) == {}
    assert [op for op, _ in m.ops] == ["update", "update", "delete"]


def test_a_failed_write_is_reported() -> None:
    m = _Map({b"/9b"})
    dp, fw = _datapath(m, {})
    failed = dp.sets.sync_ipsets({"ips_bl": {b"/9a": b"\x01", b"/9b": b"\x01"}}, fw)
    assert list(failed) == ["ips_bl"] and "Argument list too long" in failed["ips_bl"]
