"""The real tools' rule sets (tests/data/rulesets/, netns_labs/rulesets.py)
do what each tool intends, on Linux alone: published ports reachable from
outside, the containers' traffic MASQUERADEd (the outside drops their own
addresses), isolation and denied traffic dropped. This proves the fixtures
are real before netns_labs.transparency judges TNA with them."""

from __future__ import annotations

import pytest

from netns_labs.hostlab import TCP_PORT, UPLINK4, HostLab
from netns_labs.lab import tcp_transfer
from netns_labs.rulesets import RULESETS_ALL, RuleSet
from netns_labs.transparency import real_traffic

pytestmark = pytest.mark.root


@pytest.mark.parametrize("rs", RULESETS_ALL, ids=lambda rs: rs.name)
def test_ruleset_does_what_the_tool_intends(rs: RuleSet) -> None:
    with HostLab(rs.bridges) as lab:
        lab.load_ruleset(rs.name)
        assert real_traffic(lab) == rs.expect


def test_kube_proxy_with_1000_services() -> None:
    """The set kube-proxy writes for 1,000 services loads, every service in
    it (the last has no endpoints), and a NodePort still works."""
    with HostLab(("cni0", "cni1")) as lab:
        lab.load_ruleset("kube-proxy-1000")
        saved = lab.run(lab.host, ["iptables-save", "-t", "nat"]).stdout.splitlines()
        assert sum(line.startswith("-A KUBE-SERVICES -d ") for line in saved) == 999
        assert sum("-m statistic --mode random --probability 0.50000000000" in line for line in saved) == 997
        sent, received = tcp_transfer(lab, lab.out.ns, lab.c1.ns, UPLINK4, 1 << 20, TCP_PORT)
        assert sent == received
