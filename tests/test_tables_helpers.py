"""Expected connections: where a conntrack helper can be assigned (a raw
`-j CT --helper`, or a `-m helper` rule), the kernel's conntrack looks up
an expectation for every packet of no entry (init_conntrack() ->
nf_ct_find_expectation()): a match makes it RELATED with IPS_EXPECTED and
consumes the expectation, whatever the rules then decide.  The fast path
cannot see expectations, so such packets go to the kernel after raw
PREROUTING (which runs before the lookup).  Model and program."""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP

from netns_labs.lab import RouterLab
from tests.harness import FirewallHarness
from tests.test_firewall_prog import V4
from tests.test_tables_model import save
from tna.model.hooks import firewall_plan
from tna.model.iptables import parse_save

FTP = save(raw="-A PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp",
           filter="-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT\n"
                  "-A FORWARD -m conntrack --ctstate NEW -j DROP")


@pytest.mark.parametrize(("rules", "helpers"), [
    (FTP, True),
    (save(filter="-A FORWARD -m helper --helper ftp -j ACCEPT"), True),
    (save(raw="-A PREROUTING -p tcp -j CT --notrack", filter="-A FORWARD -m conntrack --ctstate NEW -j DROP"), False),
])
def test_the_plan_knows_where_a_helper_may_expect_a_connection(rules: str, helpers: bool) -> None:
    fw, why = firewall_plan({4: parse_save(rules)})
    assert why is None and fw is not None
    assert fw.ct_helpers is helpers


@pytest.mark.root
@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_a_packet_of_no_entry_goes_to_the_kernel_where_a_helper_may_expect_it(fwlab: RouterLab, hook: str) -> None:
    # FTP data's SYN: the kernel may find an expectation (RELATED: the NEW drop
    # does not apply); without it the drop would be right, but only the kernel knows
    h = FirewallHarness(fwlab, hook, FTP, "")
    try:
        syn = bytes(V4(fwlab) / TCP(sport=20, dport=40000, flags="S"))
        verdict, reason, _, _ = h.run_fw(syn, True, 0)
        assert (verdict, reason) == ("PASS", "CT_NEW")
    finally:
        h.close()
