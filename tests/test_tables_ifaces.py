"""Interface matches where the kernel's hook has no device: ipt_do_table()
and ip6t_do_table() compare -i/-o with nulldevname ("") when the hook's
state->in/out is NULL (out in PREROUTING and INPUT, in in POSTROUTING:
ip_output() passes indev NULL).  iptables refuses -o only in the built-in
PREROUTING/INPUT (and -i in POSTROUTING), so a user chain they jump to may
hold one; `-o +` (an all-zero mask) matches "" too.  Model and program."""

from __future__ import annotations

import pytest
from scapy.layers.inet import UDP

from netns_labs.lab import RouterLab
from tests.harness import FirewallHarness
from tests.test_firewall_prog import V4, check
from tests.test_tables_model import ack, save, tables
from tests.test_tables_props import expect
from tna.model.firewall import ACCEPT, DROP
from tna.model.hooks import FORWARD_HOOK, evaluate_hook
from tna.model.iptables import parse_save

# a user chain raw PREROUTING jumps to, judging by the output interface
RAW_OUT = save(raw=":u - [0:0]\n-A PREROUTING -j u\n-A u -o r-h2 -j DROP\n-A u ! -o + -j DROP")
# a user chain mangle POSTROUTING jumps to, judging by the input interface
POST_IN = save(mangle=":u - [0:0]\n-A POSTROUTING -j u\n-A u -i r-h1 -j DROP\n-A u ! -i + -j DROP")


def test_the_model_sees_no_device_where_the_hook_has_none() -> None:
    pkt = ack(iif="r-h1", oif="r-h2")
    assert evaluate_hook(parse_save(RAW_OUT), FORWARD_HOOK, pkt) == ACCEPT  # -o r-h2 no, ! -o + no
    assert evaluate_hook(parse_save(POST_IN), FORWARD_HOOK, pkt) == ACCEPT
    drop_unnamed = tables(raw=":u - [0:0]\n-A PREROUTING -j u\n-A u -o + -j DROP")
    assert evaluate_hook(drop_unnamed, FORWARD_HOOK, pkt) == DROP  # "" matches the empty prefix


@pytest.mark.root
@pytest.mark.parametrize("hook", ["xdp", "tc"])
@pytest.mark.parametrize("rules", [RAW_OUT, POST_IN], ids=["raw-out", "postrouting-in"])
def test_the_program_sees_no_device_where_the_hook_has_none(fwlab: RouterLab, hook: str, rules: str) -> None:
    h = FirewallHarness(fwlab, hook, rules, "")
    try:
        frame = bytes(V4(fwlab) / UDP(sport=9, dport=9))
        want = expect(parse_save(rules), 4, h.fw.ct4, frame, False, 0, 0)
        assert want[:2] == ("REDIRECT", "FORWARDED")  # neither rule matches (the model test)
        check(h, frame, *want, by_table=True)
    finally:
        h.close()
