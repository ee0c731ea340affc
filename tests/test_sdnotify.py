"""sd_notify datagrams, received on a socket the test binds (no root)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tna import sdnotify


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket systemd would own, named in NOTIFY_SOCKET."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        addr = env = str(tmp_path / "notify")
    else:
        name = f"tna-test-{id(s)}-{tmp_path.name}"
        addr, env = "\0" + name, "@" + name
    s.bind(addr)
    s.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", env)
    yield s
    s.close()


def test_ready_and_stopping(listener: socket.socket) -> None:
    assert sdnotify.notify("READY=1")
    assert sdnotify.notify("STOPPING=1")
    assert listener.recv(4096) == b"READY=1"
    assert listener.recv(4096) == b"STOPPING=1"


def test_reloading_carries_the_monotonic_clock(listener: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    lines = listener.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.notify("READY=1")


def test_unreachable_socket_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert not sdnotify.notify("READY=1")
    assert "cannot tell systemd READY=1" in caplog.text
