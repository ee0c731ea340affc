"""SIGHUP's re-read, without root: the recording fake datapath of
test_reconcile_order stands in for the kernel."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.test_reconcile_order import reconcile, recording_daemon
from tna import daemon as daemon_mod
from tna.config import ConfigError, Settings


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[daemon_mod.Daemon]:
    level = logging.getLogger().level  # a reload sets the root logger's: put it back
    yield recording_daemon(monkeypatch)
    logging.getLogger().setLevel(level)


def reread_gives(d: daemon_mod.Daemon, result: Settings | ConfigError) -> None:
    def reread() -> Settings:
        if isinstance(result, ConfigError):
            raise result
        return result
    d._reread = reread


def test_a_new_file_replans_and_the_log_level_changes_at_once(daemon: daemon_mod.Daemon,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    reconcile(daemon)
    assert {a.plan.hook for a in daemon.dp.attached.values()} == {"tc"}
    reread_gives(daemon, Settings(hook="tc", log_level="warning", ignore=("r-h2",), iface_hook={"r-h1": "xdp"}))
    with caplog.at_level(logging.INFO):
        assert daemon._reload()
        assert logging.getLogger().level == logging.WARNING
        assert 'ignore: [] -> ["r-h2"]' in caplog.text and 'iface_hook: {} -> {"r-h1": "xdp"}' in caplog.text
    calls = reconcile(daemon)
    assert ("remove", 3) in calls and ("attach", "r-h1") in calls
    assert set(daemon.dp.attached) == {2} and daemon.dp.attached[2].plan.hook == "xdp"
    assert daemon.plan is not None and "left alone by configuration (ignore = r-h2)" in daemon.plan.skipped[3].why


def test_an_invalid_file_keeps_the_settings(daemon: daemon_mod.Daemon,
                                            caplog: pytest.LogCaptureFixture) -> None:
    before = daemon.settings
    reread_gives(daemon, ConfigError('/etc/tna/tna.toml: hook: expected "auto", "xdp" or "tc", got "xpd"'))
    assert not daemon._reload()
    assert daemon.settings is before
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        'SIGHUP: /etc/tna/tna.toml: hook: expected "auto", "xdp" or "tc", got "xpd"; keeping the previous settings']


def test_the_metrics_address_stays_until_restart(daemon: daemon_mod.Daemon) -> None:
    daemon.settings = Settings(hook="tc", metrics="127.0.0.1:9469")
    reread_gives(daemon, Settings(hook="tc", metrics="127.0.0.1:9470"))
    assert not daemon._reload()  # nothing else changed: no re-plan
    assert daemon.settings.metrics == "127.0.0.1:9469"
