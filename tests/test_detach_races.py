"""Programs come and go under the daemon: a tcx program detached between
the query of a hook and the look at its ids, or an error while detaching,
must neither leave TNA's link attached nor put a device whose foreign
programs could not be read back on the fast path.  The races are pinned
with stand-ins for the kernel calls."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest

from tna.bpf import attach
from tna.deploy.datapath import Datapath
from tna.deploy.links import attached_tna_prog
from tna.netlink import watch

GONE, OURS = 111, 222


def _vanishing(prog_id: int) -> bool:
    if prog_id == GONE:
        raise OSError(errno.ENOENT, "no such program")
    return prog_id == OURS


def test_a_tcx_program_detached_during_the_look_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attach, "tcx_prog_ids", lambda ifindex, attach_type=0: [GONE, OURS])
    monkeypatch.setattr(attach, "tc_query", lambda *a: 0)
    monkeypatch.setattr(attach, "is_tna", _vanishing)
    assert attached_tna_prog(5, "tc") == OURS


def test_an_error_while_detaching_still_closes_the_link_and_the_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing a link's last fd detaches its program: whatever detaching
    raised, the link must be closed, not left attached and forgotten; the
    object with it once the status no longer names it."""
    dp = Datapath()
    fd = os.open(os.devnull, os.O_RDONLY)
    dp.links._fds[(5, "tc")] = fd
    closed: list[bool] = []
    dp.attached[5] = SimpleNamespace(obj=SimpleNamespace(close=lambda: closed.append(True)),
                                     plan=SimpleNamespace(name="veth0"), prog_id=7)

    def fails(ifindex: int, hook: str) -> None:
        raise OSError(errno.EPERM, "not permitted")

    monkeypatch.setattr(dp, "_detach_hook", fails)
    with pytest.raises(OSError):
        dp.remove(5, "test")
    assert dp.links._fds == {} and closed == []
    dp.release_retired()
    assert closed == [True]
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_tcx_hook_that_cannot_be_read_keeps_the_device_off_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(ifindex: int, attach_type: int) -> list[int]:
        raise OSError(errno.EMFILE, "too many open files")

    monkeypatch.setattr(attach, "foreign_tcx", fails)
    assert watch.tcx_in_use(5, attach.BPF_TCX_INGRESS)


def test_a_gone_device_has_no_tcx_programs() -> None:
    """The kernel's answer for a device that is gone (ENODEV), read for real."""
    assert not watch.tcx_in_use(0x7FFFFFF0, attach.BPF_TCX_INGRESS)
