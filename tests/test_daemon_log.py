"""The daemon's log lines name the interface and why (no root: the
recording fake datapath of test_reconcile_order)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from tests.test_reconcile_order import recording_daemon
from tna.model.config import Sysctls


def test_left_alone_is_logged_once_per_reason(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    d = recording_daemon(monkeypatch)
    caplog.set_level(logging.INFO, logger="tna")
    d.reconcile()
    assert "left alone" not in caplog.text
    d.model.links[3] = dataclasses.replace(d.model.links[3], flags=0)
    d.reconcile()
    d.reconcile()
    assert [r.getMessage() for r in caplog.records if "left alone" in r.getMessage()] == [
        "r-h2: left alone, kernel path: down"]
    d.model.sysctls = Sysctls(False, False)
    d.reconcile()
    assert "r-h1: left alone, kernel path: forwarding is disabled" in caplog.text
