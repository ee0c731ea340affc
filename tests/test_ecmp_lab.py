"""Multipath, differentially: each flow leaves by the path plain Linux took.

For every flow we first observe which path the kernel alone uses, then run
the same flow through `tna`.  Policy 0 (the default, L3 + IPv6 flow label)
is computed exactly by bpf_fib_lookup(), so those flows are fast-pathed.
Under policy 1 the kernel reuses a hash the packet already carries (socket
txhash, NIC RSS) when it has one; such packets go to the kernel
(MULTIPATH_HASH), the rest are hashed on the L4 ports the fast path fills in.
"""

from __future__ import annotations

import pytest

from netns_labs.lab import EcmpLab, Tna, py
from tests.conftest import host_xdp

pytestmark = pytest.mark.root

SPORTS = range(40000, 40016)
FLOWS = [(dst, src, sport) for dst, src in ((EcmpLab.DST4, "192.0.2.2"), (EcmpLab.DST6, "2001:db8:1::2"))
         for sport in SPORTS]


def _rx(lab: EcmpLab) -> dict[str, int]:
    return {dev: lab.ipr(lab.h2).get_links(lab.ifindex(lab.h2, dev))[0].get("IFLA_STATS64")["rx_packets"]
            for dev in ("h2-a", "h2-b")}


def _paths(lab: EcmpLab) -> dict[tuple[str, str, int], str]:
    """The device each flow arrived on at h2 (5 packets per flow)."""
    out = {}
    for dst, src, sport in FLOWS:
        before = _rx(lab)
        lab.run(lab.h1, py("netns_labs.xfer", "udp-send", dst, "9", str(sport), "5"), cwd=lab.repo)
        after = _rx(lab)
        got = [dev for dev in after if after[dev] - before[dev] >= 5]
        assert len(got) == 1, (dst, sport, before, after)
        out[(dst, src, sport)] = got[0]
    return out


@pytest.mark.parametrize("hook", ["auto", "xdp"])
@pytest.mark.parametrize("policy", [0, 1])
def test_flows_take_the_kernels_path(hook, policy):
    with EcmpLab() as lab:
        for family in ("ipv4", "ipv6"):
            lab.sysctl(lab.r, f"net.{family}.fib_multipath_hash_policy", policy)
        if hook == "xdp":
            for ns, dev in ((lab.h1, "h1-r"), (lab.h2, "h2-a"), (lab.h2, "h2-b")):
                host_xdp(lab, ns, dev)
        linux = _paths(lab)
        assert set(linux.values()) == {"h2-a", "h2-b"}, "the lab should spread these flows"
        tna = Tna(lab, lab.r, "--hook", hook)
        try:
            tna.wait_attached(["r-h1", "r-a", "r-b"])
            before = tna.counters()
            assert _paths(lab) == linux
            after = tna.counters()
            fast = after.get("FORWARDED", 0) - before.get("FORWARDED", 0)
            guarded = after.get("MULTIPATH_HASH", 0) - before.get("MULTIPATH_HASH", 0)
            if hook == "auto" and policy == 0:
                assert fast >= 5 * len(FLOWS)
            if hook == "auto" and policy == 1:
                assert guarded > 0  # these flows carry the sender's hash
            if hook == "xdp":  # stack-sent UDP: CHECKSUM_PARTIAL goes to the kernel first
                assert after.get("CSUM_PARTIAL", 0) - before.get("CSUM_PARTIAL", 0) >= 5 * len(FLOWS)
        finally:
            assert tna.stop() == 0
            tna.close()
