"""`tna status` on a hold in place: what tna_state says every program
does now (cli.collect() reads it through an attached program)."""

from __future__ import annotations

import argparse
from ipaddress import ip_network
from typing import Any

import pytest

from tna import cli
from tna.bpf import abi
from tna.deploy.lease import held_flow, published_hold, set_fw_hold
from tna.model.fwdiff import HeldFlow

FLOWS = (HeldFlow(4, 17, ip_network("192.0.2.0/25"), ip_network("198.51.100.2/32"), dport=(9, 9)),
         HeldFlow(6, 0, None, ip_network("2001:db8:2::/64"), sport=(1000, 1999)))


class StateMap:
    def __init__(self, st: abi.TnaState) -> None:
        self.st = st

    def lookup(self, key: bytes) -> bytes:
        assert key == bytes(4)
        return bytes(self.st)


def test_a_published_hold_reads_back_as_published() -> None:
    st = abi.TnaState()
    set_fw_hold(st.cfg, FLOWS)
    assert published_hold(StateMap(st)) == (0, FLOWS)  # type: ignore[arg-type]
    assert [held_flow(st.cfg.fw_hold[i]) for i in range(2)] == list(FLOWS)
    st.cfg.pass_reason = abi.REASON["RESYNC"]
    assert published_hold(StateMap(st))[0] == abi.REASON["RESYNC"]  # type: ignore[arg-type]
    st.cfg.pass_reason, st.nft_seen = 0, 7  # a commit the reader has not taken: the commit guard holds
    assert published_hold(StateMap(st)) == (abi.REASON["FW_CHANGED"], FLOWS)  # type: ignore[arg-type]


def _status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], hold: dict[str, Any]) -> str:
    st = {"pid": 1, "mode": "auto", "forwarding": {"ipv4": True, "ipv6": True}, "routes": 3, "neighbours": 2,
          "disabled": None, "ifaces": {}, "failed": {}, "skipped": {}, "hold": hold}
    monkeypatch.setattr(cli, "_running_state", lambda: st)
    monkeypatch.setattr(cli, "collect", lambda state: state)
    assert cli.cmd_status(argparse.Namespace(json=False)) == 0
    return capsys.readouterr().out


def test_status_says_what_a_hold_keeps_on_the_kernel_path(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    narrowed = _status(monkeypatch, capsys, {"reason": None, "flows": [str(f) for f in FLOWS]})
    assert ("stays on the kernel path meanwhile (FW_CHANGED): IPv4 udp 192.0.2.0/25 -> 198.51.100.2 dport 9; "
            "IPv6 any -> 2001:db8:2::/64 sport 1000-1999\n") in narrowed
    whole = _status(monkeypatch, capsys, {"reason": "RESYNC", "flows": []})
    assert "HOLDING: every packet goes to the kernel path now (RESYNC: netlink events were lost" in whole
    assert "HOLDING" not in _status(monkeypatch, capsys, {"reason": None, "flows": []})
