"""netns_labs.bench_nft's rule set and commands: the router lab's variant of
router-wiki.nft is one nft accepts, with the elements asked for, and the
undo of an inserted rule finds the handle in nft's echo."""

from __future__ import annotations

import re
import subprocess

import pytest

from netns_labs.bench_nft import DOC_BLOCKED, LAN, RPF_RULE, WAN, router_ruleset, undo


@pytest.mark.parametrize("elements", [10, 10_000])
def test_router_ruleset_has_the_elements_and_the_lab_interfaces(elements: int) -> None:
    text = router_ruleset(elements)
    members = re.search(r"set blocked \{.*?elements = \{ (.*?) \}", text, re.S)
    assert members is not None and members[1].startswith(DOC_BLOCKED)
    assert len(members[1].split(", ")) == elements
    assert all(m.startswith("10.") for m in members[1].split(", ")[2:])
    assert f'DEV_WAN = "{WAN}"' in text and f'DEV_LAN = "{LAN}"' in text and "table inet nat" not in text


def test_router_rpf_puts_the_reverse_path_filter_first_in_prerouting() -> None:
    pre = router_ruleset(10, rpf=True).split("chain prerouting {", 1)[1]
    assert pre.split("\n")[2].strip() == RPF_RULE and RPF_RULE not in router_ruleset(10)


@pytest.mark.root
@pytest.mark.parametrize("rpf", [False, True])
def test_nft_accepts_the_router_ruleset(rpf: bool) -> None:
    # check mode in a namespace of its own: parsed and validated by the kernel, nothing committed
    subprocess.run(["unshare", "-n", "nft", "-c", "-f", "-"], input=router_ruleset(10_000, rpf), text=True,
                   check=True)


def test_undo_of_an_inserted_rule_uses_its_handle() -> None:
    echo = "insert rule inet filter forward ip saddr 192.0.2.2 counter packets 0 bytes 0 drop # handle 17\n"
    assert undo("nft insert rule", "192.0.2.2", echo) == ["delete", "rule", "inet", "filter", "forward",
                                                          "handle", "17"]
    with pytest.raises(SystemExit):
        undo("nft insert rule", "192.0.2.2", "")
