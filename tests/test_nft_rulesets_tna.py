"""Transparency on the real tools' native nftables rule sets
(tests/data/rulesets/nft/, netns_labs.nft_rulesets; netns_labs.transparency):
for each, what every host receives and every real-stack outcome under
`tna run` is what Linux alone gives, the allowed established traffic is
carried by the fast path, and `tna status` names the rules that keep
traffic on the kernel path. One lab per bridge naming with one Harness,
the rule sets loaded one after another (the module's budget: `auto` on
each, forced xdp and tc on the router's)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from netns_labs.hostlab import HostLab
from netns_labs.lab import Lab, py
from netns_labs.nft_rulesets import DOCKER, LAN, NFT_RULESETS, unload
from netns_labs.rulesets import RuleSet
from netns_labs.transparency import HOOKS, LINUX, Harness, Run

pytestmark = pytest.mark.root

FULL = "nft/router-wiki"  # every hook here; `auto` on the others

# What stays on the kernel path, per rule set, and why (`tna status`'s
# kernel_rules; a sample of each asserted in KERNEL_RULES):
# - debian-stock: nothing; its empty accept-all chains compile to no filter.
# - router-wiki: nothing; every rule (sets, ct state, masquerade) is compiled.
# - fw4: new connections (conntrack's, CT_NEW) and what ends in handle_reject
#   (reject statement), the SYNs mangle_forward clamps (mangle statement), the
#   rate-limited ICMPv6 accepts of forward_wan (limit statement); established
#   flows are carried.
# - firewalld: the zones' rejects, and IPv6 packets whose route back the fast
#   path cannot prove leaves by their input device (filter_PREROUTING's
#   `fib saddr . mark . iif oif missing drop`: spoofed sources); established
#   flows of both families are carried.
# - docker-29: new connections (its nat chains); filter-FORWARD's named
#   verdict maps (`iifname vmap @filter-forward-out-jumps`) are compiled
#   like anonymous ones, so established flows are carried.
KERNEL_RULES = {
    "nft/debian-stock": set(),
    "nft/router-wiki": set(),
    "nft/fw4": {(4, "inet fw4", "handle_reject", "reject statement"),
                (6, "inet fw4", "mangle_forward", "mangle statement"),
                (6, "inet fw4", "forward_wan", "limit statement")},
    "nft/firewalld": {(4, "inet firewalld", "filter_FWD_public", "reject statement")},
    "nft/docker-29": set(),
}


@dataclass
class Setup:
    rs: RuleSet
    harness: Harness
    linux: Run
    runs: dict[str, Run] = field(default_factory=dict)
    status: dict[str, dict] = field(default_factory=dict)  # `tna status --json` during each run

    def run(self, hook: str) -> Run:
        """One `tna run` per hook, shared by the tests that judge it."""
        if hook not in self.runs:
            lab = self.harness.lab

            def status() -> dict:
                res = lab.run(lab.host, py("tna", "status", "--json"), cwd=Lab.repo)
                return json.loads(res.stdout)
            self.runs[hook] = run = self.harness.observe(hook, status)
            self.status[hook] = run.frames.during["extra"]  # type: ignore[index]
        return self.runs[hook]


@pytest.fixture(scope="module")
def harnesses() -> Iterator[dict[tuple[str, ...], Harness]]:
    """A lab and its Harness per bridge naming (a lab takes one Harness)."""
    with HostLab(DOCKER) as docker_lab, HostLab(LAN) as lan_lab:
        yield {DOCKER: Harness(docker_lab), LAN: Harness(lan_lab)}


@pytest.fixture(scope="module", params=NFT_RULESETS, ids=lambda rs: rs.name)
def setup(request: pytest.FixtureRequest, harnesses: dict[tuple[str, ...], Harness]) -> Setup:
    rs: RuleSet = request.param
    harness = harnesses[rs.bridges]
    unload(harness.lab)
    harness.lab.load_ruleset(rs.name)
    return Setup(rs, harness, harness.observe(LINUX))


@pytest.mark.parametrize("hook", HOOKS)
def test_transparent(setup: Setup, hook: str) -> None:
    if setup.rs.name != FULL and hook != "auto":
        pytest.skip(f"the module's budget: every hook on {FULL}, `auto` on the others")
    assert setup.linux.outcomes == setup.rs.expect, "the rule set itself misbehaves (see test_nft_rulesets_linux)"
    run = setup.run(hook)
    assert setup.harness.diff(setup.linux, run) == []
    assert sum(run.counters.values()) > 0 or run.kernel_path, run.counters


def test_established_traffic_carried(setup: Setup) -> None:
    run = setup.run("auto")
    assert run.kernel_path is None
    assert run.carried == ("ok" if setup.linux.outcomes["tcp out v4"] == "ok" else None)
    assert run.counters.get("FORWARDED", 0) > 0, run.counters


def test_status_names_the_kernel_path_rules(setup: Setup) -> None:
    """`tna status` lists, by family, table, chain and reason, the rules
    that keep traffic on the kernel path (a sample per rule set)."""
    setup.run("auto")
    fw = setup.status["auto"]["firewall"] or {}
    listed = {(r["family"], r["table"], r["chain"], why) for r in fw.get("kernel_rules", ()) for why in r["why"]}
    want = KERNEL_RULES[setup.rs.name]
    assert want <= listed if want else listed == set(), sorted(listed)
