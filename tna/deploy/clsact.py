"""The clsact qdisc TNA's TC programs hang on: removed only if TNA added it.

An admin's clsact, even one with no filter on it, is configuration; taking
it away on detach would change the box.  The interfaces where TNA added the
qdisc are listed in the run directory, which outlives a daemon that died, so
its successor removes those and only those.
"""

from __future__ import annotations

from tna.bpf import attach
from tna.runstate import run_dir

_FILE = "clsact"


def _ours() -> set[int]:
    try:
        return {int(i) for i in (run_dir() / _FILE).read_text().split()}
    except FileNotFoundError:
        return set()


def _save(ifindexes: set[int]) -> None:
    run_dir().mkdir(parents=True, exist_ok=True)
    (run_dir() / _FILE).write_text("".join(f"{i}\n" for i in sorted(ifindexes)))


def add(ifindex: int) -> None:
    """clsact on ifindex: the one there, or a new one we remember adding."""
    if attach.tc_hook_create(ifindex):
        _save(_ours() | {ifindex})


def remove_if_ours(ifindex: int) -> None:
    """Remove clsact (the caller saw no filter left on it) if TNA added it."""
    ours = _ours()
    if ifindex in ours:
        attach.tc_hook_destroy(ifindex)
        _save(ours - {ifindex})
