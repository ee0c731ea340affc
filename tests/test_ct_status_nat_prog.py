"""`ct status dnat` / `ct status snat` (nftables): the entry's IPS_DST_NAT /
IPS_SRC_NAT bits, read by the program from the entry as the kernel's
nft_ct reads ct->status (BPF_PROG_RUN on r's program)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from netns_labs.lab import RouterLab
from tests.harness import FirewallHarness
from tests.test_firewall_prog import F, table
from tests.test_passcache_prog import NAT_TABLE, NATTED, natted_entry, natted_frame
from tna.model.iptables import Neg, parse_save
from tna.model.nftables import CT_STATUS_BITS

# FORWARD, policy DROP: rule 1 accepts what `ct status <bit>` matches (an
# iptables rule whose status mask is replaced: iptables has no name for it)
RULES = table("DROP", "-A FORWARD -m conntrack --ctstatus ASSURED -j ACCEPT\n") + NAT_TABLE


@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("bit", ["DNAT", "SNAT"])
def test_ct_status_nat_bit(fwlab: RouterLab, hook: str, bit: str) -> None:
    """A DNAT'd flow has IPS_DST_NAT and not IPS_SRC_NAT: accepted by rule 1
    with `ct status dnat`, dropped by the policy with `ct status snat`."""
    tables = parse_save(RULES)
    fwd = tables["filter"].chains["FORWARD"]
    # the text too: a rule's text says all it does (rule sets compare by it)
    fwd.rules[0] = replace(fwd.rules[0], ctstatus=Neg(CT_STATUS_BITS[bit]), text=f"ct status {bit.lower()} accept")
    n, lab = NATTED["dnat"], fwlab
    h = FirewallHarness(lab, hook, tables)
    try:
        natted_entry(lab, n)
        verdict, reason, _, path = h.run_fw(natted_frame(lab, n))  # the frame's rewrite: test_nat_frames_lab
        if bit == "DNAT":
            assert (verdict, reason, path) == ("REDIRECT", "FORWARDED", Counter({(4, F, 1): 1}))
        else:
            assert (verdict, reason, path) == ("DROP", "FW_DROP", Counter({(4, F, 0): 1}))
    finally:
        h.close()
        lab.run(lab.r, ["conntrack", "-D", *n.match()], check=False)
