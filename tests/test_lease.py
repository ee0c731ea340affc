"""tna_state publication (tna/deploy/lease.py) with a fake tna_renew that
records each config it is run with (no root)."""

from __future__ import annotations

import threading

import pytest

from tna.bpf import abi
from tna.deploy import lease as lease_mod
from tna.deploy.lease import Lease, mp_guard_bits
from tna.model.config import AF_INET, AF_INET6, Sysctls
from tna.model.fwdiff import HeldFlow

HELD = abi.REASON["FW_CHANGED"]


class FakeRenew:
    def __init__(self) -> None:
        self.published: list[abi.TnaConfig] = []

    def run(self, data: bytes) -> tuple[int, bytes, int]:
        self.published.append(abi.TnaConfig.from_buffer_copy(data[:len(bytes(abi.TnaConfig()))]))
        return 2, data, 0  # XDP_PASS


@pytest.fixture(autouse=True)
def fake_test_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease runs tna_renew through BPF_PROG_TEST_RUN: here the fake's run()."""
    monkeypatch.setattr(lease_mod, "test_run", lambda prog, data: prog.run(data))


def started() -> tuple[Lease, FakeRenew]:
    lease, prog = Lease(), FakeRenew()
    lease._prog = prog  # type: ignore[assignment]  # start() would also calibrate HZ on a real map
    return lease, prog


def test_hold_lasts_until_guards_release_it() -> None:
    lease, prog = started()
    lease.hold(HELD)
    lease.set_stale_count(3)
    assert [c.pass_reason for c in prog.published] == [HELD, HELD]
    assert prog.published[-1].stale_count == 3
    lease.set_guards(0, {AF_INET: 1}, (1400, 0), (["192.0.2.1"], ["2001:db8::1"]),
                     frozenset({AF_INET}), Sysctls())
    last = prog.published[-1]
    assert last.pass_reason == 0 and last.stale_count == 3
    assert (last.mp_guard, last.fw_families, last.route_mtu4) == (abi.TNA_MP_GUARD_V4, abi.TNA_FW_V4, 1400)
    assert (last.local4_count, last.local4[0], last.local6_count) == (1, 0x010200C0, 1)
    assert last.ct_timeout_udp == 120_000 and last.ct_flags == abi.TNA_CT_CSUM | abi.TNA_CT_TCP_LOOSE
    assert last.ct_timeout_udp_unreplied == 30_000  # nf_conntrack_udp_timeout's default


def test_an_unchanged_config_is_not_republished_but_renew_always_is() -> None:
    lease, prog = started()
    lease.hold(HELD)
    lease.hold(HELD)
    assert len(prog.published) == 1
    lease.renew()
    assert len(prog.published) == 2 and prog.published[-1].pass_reason == HELD


def test_a_hold_from_another_thread_is_never_lost() -> None:
    """Edits from two threads (the nftables reader's hold, the main loop's
    stale count) each see the other's: the last config keeps the hold."""
    lease, prog = started()
    stop = threading.Event()

    def counts() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            lease.set_stale_count(n)

    t = threading.Thread(target=counts)
    t.start()
    try:
        for _ in range(200):
            lease.hold(HELD)
            lease.hold(0)
        lease.hold(HELD)
    finally:
        stop.set()
        t.join()
    assert lease.cfg.pass_reason == HELD and prog.published[-1].pass_reason == HELD


@pytest.mark.parametrize(("policies", "bits"), [
    ({}, 0),
    ({AF_INET: 0}, 0),                       # IPv4's L3 hash is bpf_fib_lookup()'s own
    ({AF_INET: 1}, abi.TNA_MP_GUARD_V4),
    ({AF_INET: 2}, abi.TNA_MP_INNER_V4),
    ({AF_INET: 3}, abi.TNA_MP_ALL_V4),
    ({AF_INET6: 0}, abi.TNA_MP_ICMP6_LABEL),
    ({AF_INET: 1, AF_INET6: 2}, abi.TNA_MP_GUARD_V4 | abi.TNA_MP_INNER_V6),
])
def test_multipath_policies_become_the_datapath_bits(policies: dict[int, int], bits: int) -> None:
    assert mp_guard_bits(policies) == bits


def test_the_commit_guards_end_is_published_and_kept_by_other_publications() -> None:
    """nft_heard ends the commit guard (commit_guard.h); the main loop's
    publications, which know nothing of it, must not take it back."""
    lease, prog = started()
    lease.set_nft_heard(0x10007)
    assert prog.published[-1].nft_heard == 0x10007
    lease.hold(HELD)
    lease.set_guards(0, {}, (0, 0), ([], []))
    assert [c.nft_heard for c in prog.published] == [0x10007] * 3


def test_a_narrowed_hold_lasts_until_the_guards_end_it() -> None:
    """narrow() publishes the flows under the hold; the set_guards() that
    ends the hold with them narrows it; the next one (the reconcile's last
    publication) clears them (tna_fw_held_flows shows what is held)."""
    lease = Lease()
    flows = (HeldFlow(4, 17, dport=(9, 9)), HeldFlow(6))
    lease.hold(abi.REASON["FW_CHANGED"])
    lease.narrow(flows)
    assert (lease.cfg.pass_reason, lease.held_flows()) == (abi.REASON["FW_CHANGED"], 2)
    lease.set_guards(0, {}, (0, 0), ([], []), held=flows)
    assert (lease.cfg.pass_reason, lease.held_flows()) == (0, 2)
    assert (lease.cfg.fw_hold[0].proto, lease.cfg.fw_hold[0].dport_lo, lease.cfg.fw_hold[1].family) == (17, 9, 6)
    lease.set_guards(0, {}, (0, 0), ([], []))
    assert lease.held_flows() == 0
