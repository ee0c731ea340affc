"""Transparency on the real tools' rule sets (netns_labs.transparency): for
each rule set and hook, what every host receives and every real-stack
outcome under `tna run` is what Linux alone gives (nat, raw, mangle, filter
and ipset matches all on the fast path's side now), and "established
traffic is carried" under `auto`, what such a host runs (a forced XDP hook
on veths facing real stacks passes their CHECKSUM_PARTIAL frames to the
kernel: docs/datapath.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from netns_labs.hostlab import HostLab
from netns_labs.rulesets import RULESETS_ALL, RuleSet
from netns_labs.transparency import HOOKS, LINUX, Harness, Run, quiet_flow

pytestmark = pytest.mark.root

FULL = {"docker-28"}  # XDP too on one Docker set; the others through `auto` (the suite's budget)
QUIET = ("docker-28", "auto")  # where the long quiet flow runs
@dataclass
class Setup:
    rs: RuleSet
    harness: Harness
    linux: Run
    runs: dict[str, Run] = field(default_factory=dict)

    def run(self, hook: str) -> Run:
        """One `tna run` per hook, shared by the tests that judge it."""
        if hook not in self.runs:
            self.runs[hook] = _observe(self.harness, self.rs, hook)
        return self.runs[hook]


def _observe(harness: Harness, rs: RuleSet, mode: str) -> Run:
    """The scenario in mode; where QUIET says, with the long quiet flow (and
    under Linux for the same rule set)."""
    lab = harness.lab
    quiet = (rs.name, mode) in (QUIET, (QUIET[0], LINUX))
    return harness.observe(mode, (lambda: quiet_flow(lab)) if quiet else None)


@pytest.fixture(scope="module", params=RULESETS_ALL, ids=lambda rs: rs.name)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    rs: RuleSet = request.param
    with HostLab(rs.bridges) as lab:
        lab.load_ruleset(rs.name)
        harness = Harness(lab)
        yield Setup(rs, harness, _observe(harness, rs, LINUX))


def _within_budget(setup: Setup, hook: str) -> None:
    if setup.rs.name not in FULL and hook != "auto":
        pytest.skip("the suite's budget: XDP on docker-28, `auto` on every set")


@pytest.mark.parametrize("hook", HOOKS)
def test_transparent(setup: Setup, hook: str) -> None:
    _within_budget(setup, hook)
    assert setup.linux.outcomes == setup.rs.expect, "the rule set itself misbehaves (see test_rulesets_linux)"
    run = setup.run(hook)
    assert setup.harness.diff(setup.linux, run) == []
    # the programs saw the traffic: whatever they left to the kernel is counted by reason
    assert sum(run.counters.values()) > 0 or run.kernel_path, run.counters


def test_established_traffic_carried(setup: Setup) -> None:
    run = setup.run("auto")
    assert run.kernel_path is None
    assert run.carried == ("ok" if setup.linux.outcomes["tcp out v4"] == "ok" else None)
    assert run.counters.get("FORWARDED", 0) > 0, run.counters


def test_quiet_flow_keeps_its_conntrack_entry(setup: Setup) -> None:
    """A flow busier than its conntrack timeout, then quiet, keeps its NAT."""
    if setup.rs.name != QUIET[0]:
        pytest.skip(f"runs on {QUIET[0]} only")
    hook = QUIET[1]
    assert setup.linux.frames.during["extra"] == "ok"  # type: ignore[index]
    assert setup.run(hook).frames.during["extra"] == "ok"  # type: ignore[index]


def test_harness_names_the_first_differing_frame(setup: Setup) -> None:
    """The harness is not blind: one more rule (in DOCKER-USER, where an
    admin adds theirs) dropping the crafted UDP flow shows, named by the
    first of its frames."""
    if setup.rs.name != QUIET[0]:
        pytest.skip(f"runs on {QUIET[0]} only")
    lab = setup.harness.lab
    rule = ["DOCKER-USER", "-p", "udp", "--dport", "53", "-j", "DROP"]
    lab.run(lab.host, ["iptables", "-I", *rule])
    try:
        dropping = setup.harness.observe(LINUX)
    finally:
        lab.run(lab.host, ["iptables", "-D", *rule])
    # the first frame to UDP port 53 (an IPv4 one: its port at bytes 36-37)
    first = next(i for i, s in enumerate(setup.harness.runner.case.sends) if s.frame[36:38] == (53).to_bytes(2, "big"))
    diff = setup.harness.diff(setup.linux, dropping)
    assert diff[0].startswith(f"first differing frame: #{first} from c1"), diff
