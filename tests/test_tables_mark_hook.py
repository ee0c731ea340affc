"""Where an skb can carry a mark into XDP.  veth_xmit() hands the skb to
its peer through __dev_forward_skb(), whose skb_scrub_packet(xnet) keeps
skb->mark when both ends share a namespace; XDP cannot read it (the
generated code takes 0).  So while the rules match marks, a veth is
planned on TC, where the program reads the skb's mark.  No root."""

from __future__ import annotations

import pytest

from tests.test_tables_model import save
from tna.model.config import ARPHRD_ETHER, IFF_UP, Link, Model, Sysctls, XdpXmit
from tna.model.hooks import firewall_plan
from tna.model.iptables import parse_save
from tna.synth.planner import IFF_LOWER_UP, plan

MARK = save(filter="-A FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT\n-A FORWARD -p udp -j DROP")
NO_MARK = save(filter="-A FORWARD -p udp -j DROP")


def model(rules: str, kind: str | None) -> Model:
    link = Link(2, "eth1", kind, "02:00:00:00:00:02", 1500, IFF_UP | IFF_LOWER_UP, ARPHRD_ETHER, qdisc="noqueue")
    m = Model(links={2: link}, sysctls=Sysctls(True, True))
    m.apply(XdpXmit(2, True))
    m.set_firewall(firewall_plan({4: parse_save(rules)})[0])
    return m


@pytest.mark.parametrize(("rules", "kind", "overrides", "hook"), [
    (MARK, "veth", {}, "tc"),
    (MARK, "veth", {"eth1": "xdp"}, "tc"),     # an override cannot make the mark readable
    (NO_MARK, "veth", {}, "xdp"),
    (MARK, None, {}, "xdp"),                   # a NIC's skb starts with mark 0
])
def test_a_veth_is_planned_on_tc_while_rules_match_marks(rules: str, kind: str | None, overrides: dict[str, str],
                                                        hook: str) -> None:
    ip = plan(model(rules, kind), "xdp", overrides).ifaces[2]
    assert ip.hook == hook
