"""The control plane's own costs (issue #13 items 4 and 5), one run:

  python -m netns_labs.bench_control [--idle-seconds 30] [--commits 20] [--rules 10 10000]
                                     [--ipset-members N] [--element-commits 20] [--host-commits 10]
                                     [--busy-commits 10] [--busy-rules 10000] [--json FILE]

In the router lab with the stateful FORWARD chain of netns_labs/bench.py
(forward_rules(N): INVALID dropped, N - 3 blocklist rules, ESTABLISHED and
the service accepted), `tna run` (auto hooks: TC on the veths):

1. Idle CPU (behind the smallest N): the daemon attached and settled, then
   nothing changes for --idle-seconds: the utime + stime of the daemon (all
   its threads, and children it reaped) over that time, as % of one core.
   With --ipset-members N, the IPv6 FORWARD chain drops the sources of a
   hash:net set of N members (the daemon polls the sets its rules use).
2. Commit latency behind each N: --commits commits, each `iptables -I
   FORWARD 2` of a new blocklist rule (the shape of the others: a member of
   their set, so the code and the programs stay; its map entries change).
   From `iptables` returning:
   - hold: until the datapath holds (tna_state's pass reason, or the
     commit guard's FW_CHANGED, read through the program attached to r-h1;
     negative when it held before iptables returned);
   - heard: until the daemon's own hold is up (tna_config.pass_reason: its
     nftables reader took the commit);
   - program: until a new program is attached to r-h1 (its id changed;
     none is expected here, and a commit that brings one is counted);
   - narrowed: until the hold is narrowed to the flows a changed rule
     could match (tna/narrow.py; pass reason 0, tna_config.fw_hold_count
     set), if it is;
   - release: until the hold is released (pass reason 0, no flow held).
   p50 / p90 / p99 of each; polled every 1 ms (flat out, the polls would
   take a CPU from the daemon, which reads the rules meanwhile).
3. With --element-commits N, then: a native table (inet tnabench: a forward
   base chain at filter + 10 dropping the sources in the interval set bl)
   is added, and N commits `nft add element inet tnabench bl { 203.0.113.k }`
   are timed the same way (hold and release, polled flat out: no new
   program is expected, a set's members are a map).
4. With --host-commits N (Docker host: every program reloads), in the host
   lab of netns_labs/hostlab.py with Docker 28's rules (four interfaces
   accelerated, `tna run` auto) N pairs of commits: `iptables -I
   DOCKER-USER 1 -s 203.0.113.k/32 -j DROP` (a rule of its own: a new
   source; the daemon gets a compile cache of its own, so clang runs) and
   its `iptables -D` (the object compiled before):
   hold, program (veth-c1's), release as above, the inserts and deletes
   apart.  Every interface's program is loaded again for each.
5. With --busy-commits N, behind --busy-rules rules: N commits as in 2.,
   each started as soon as the commit before it is released (back to back,
   as Docker's `iptables` runs are), while the daemon is still busy with
   that one's aftermath (and holds the GIL): hold against heard shows what
   the commit guard (tna/helpers/commit_guard.h) spares.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from netns_labs.bench import forward_rules, write_doc
from netns_labs.hostlab import HostLab
from netns_labs.lab import Lab, RouterLab, in_netns, wait_for
from netns_labs.tna_proc import Tna, pass_reason, read_state
from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.deploy.links import attached_tna_prog

COMMIT_TIMEOUT = 120.0  # s: a commit behind 10,000 rules on a busy machine takes seconds
PHASES = ("hold", "heard", "narrowed", "program", "release")


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of a process (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class Datapath:
    """What dev in ns runs now: its TC program's id, and the pass reason the
    datapath reads (tna_state is shared, so it outlives every program)."""

    def __init__(self, lab: Lab, ns: str, dev: str) -> None:
        self.ns, self.ifindex = ns, lab.ifindex(ns, dev)
        prog = bpf.Program.from_id(self.prog_id())
        self.state = prog.find_map(abi.MAP_STATE)
        prog.close()

    def prog_id(self) -> int:
        with in_netns(self.ns):
            return attached_tna_prog(self.ifindex, "tc")

    def pass_reason(self) -> int:
        return pass_reason(self.state)

    def daemons_reason(self) -> int:
        """The daemon's own hold (tna_config.pass_reason), without the commit guard's."""
        return read_state(self.state).cfg.pass_reason

    def held_flows(self) -> int:
        """The flows a narrowed hold names (0: none, or code without them)."""
        return getattr(read_state(self.state).cfg, "fw_hold_count", 0)


ELEMENT_TABLE = """table inet tnabench {
	set bl {
		type ipv4_addr
		flags interval
		elements = { 198.51.100.200 }
	}
	chain forward {
		type filter hook forward priority filter + 10; policy accept;
		ip saddr @bl drop
	}
}
"""


def rule_commit(k: int) -> list[str]:
    return ["iptables", "-I", "FORWARD", "2", "-s", f"203.0.113.{k % 250}/32", "-p", "udp", "-m", "udp",
            "--dport", str(30000 + k), "-j", "DROP"]


def element_commit(k: int) -> list[str]:
    return ["nft", "add", "element", "inet", "tnabench", "bl", "{", f"203.0.113.{k % 250}", "}"]


def commit(lab: Lab, dp: Datapath, cmd: list[str], program: bool, poll: float) -> dict[str, float | None]:
    """cmd run in dp's namespace; seconds from it returning to hold, program (waited
    for if one is expected, else None unless one came), release; polled every poll s."""
    old = dp.prog_id()
    proc = lab.popen(dp.ns, cmd)
    held = heard = narrowed = prog = released = returned = None
    deadline = time.monotonic() + COMMIT_TIMEOUT
    while time.monotonic() < deadline:
        now = time.monotonic()
        if returned is None and proc.poll() is not None:
            if proc.returncode:
                raise SystemExit(f"{shlex.join(cmd)} failed")
            returned = now
        reason = dp.pass_reason()
        if held is None and reason:
            held = now
        if heard is None and dp.daemons_reason():
            heard = now
        if prog is None and dp.prog_id() not in (old, 0):
            prog = now
        flows = dp.held_flows() if held is not None and not reason else 0
        if held is not None and narrowed is None and not reason and flows:
            narrowed = now
        if held is not None and released is None and not reason and not flows:
            released = now
        settled = released is not None or (held is None and returned is not None and now - returned > 1)
        if returned is not None and settled and (prog is not None or not program):
            break
        if poll:
            time.sleep(poll)
    else:
        raise SystemExit(f"{shlex.join(cmd)}: not settled within {COMMIT_TIMEOUT} s")
    assert returned is not None
    return {what: None if t is None else t - returned for what, t in
            (("hold", held), ("heard", heard), ("narrowed", narrowed), ("program", prog), ("release", released))}


def timed(lab: Lab, dp: Datapath, cmds: list[list[str]], poll: float) -> dict:
    """No program expected: a set's entries change (a rule's, an element's)."""
    samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for cmd in cmds:
        for what, t in commit(lab, dp, cmd, False, poll).items():
            if t is not None:
                samples[what].append(t)
        time.sleep(0.5)  # commits apart, as an operator's are
    return summary(samples)


def busy_bench(commits: int, rules: int) -> dict:
    """Behind `rules` rules, commits back to back (as Docker's dozens of
    `iptables` runs at a container start are): each timed one starts as
    soon as the one before it is released, while the daemon is still busy
    with its aftermath (the status, the counts): hold (the datapath's)
    against heard (the daemon's own hold: when its nftables reader took
    the commit)."""
    with RouterLab() as lab:
        lab.run(lab.r, ["iptables-restore"], input=forward_rules(rules))
        with router_tna(lab) as (_, dp):
            time.sleep(5)
            samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
            for k in range(commits):
                commit(lab, dp, rule_commit(2 * k), False, 0.001)
                for what, t in commit(lab, dp, rule_commit(2 * k + 1), False, 0.001).items():
                    if t is not None:
                        samples[what].append(t)
                time.sleep(0.5)
    return {"commits": commits, "rules": rules, "latency_s": summary(samples)}


@contextlib.contextmanager
def router_tna(lab: RouterLab) -> Iterator[tuple[Tna, Datapath]]:
    """`tna run` on r, its FORWARD rules compiled in, and r-h1's datapath."""
    tna = Tna(lab, lab.r)
    try:
        tna.wait_attached(["r-h1", "r-h2"], timeout=COMMIT_TIMEOUT)
        if not wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], COMMIT_TIMEOUT, 0.5):
            raise SystemExit("the FORWARD rules were not compiled in")
        dp = Datapath(lab, lab.r, "r-h1")
        try:
            yield tna, dp
        finally:
            dp.state.close()
    finally:
        tna.stop()
        tna.close()


def summary(samples: dict[str, list[float]]) -> dict:
    return {what: {"n": len(xs), "runs": xs, **(percentiles(xs) if len(xs) > 1 else {})}
            for what, xs in samples.items()}


def percentiles(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return {"p50": statistics.median(xs), "p90": q[89], "p99": q[98]}


def bench(rules: int, commits: int, idle_seconds: float, ipset_members: int = 0,
          element_commits: int = 0) -> dict:
    with RouterLab() as lab:
        lab.run(lab.r, ["iptables-restore"], input=forward_rules(rules))
        if ipset_members:
            lab.run(lab.r, ["ipset", "restore"], input="create bench_bl hash:net family inet6\n" + "".join(
                f"add bench_bl 2001:db8:{i:x}::/48\n" for i in range(ipset_members)))
            lab.run(lab.r, ["ip6tables", "-A", "FORWARD", "-m", "set", "--match-set", "bench_bl", "src", "-j", "DROP"])
        with router_tna(lab) as (tna, dp):
            out: dict = {"rules": rules, "ipset_members": ipset_members}
            if idle_seconds:
                time.sleep(5)  # settled: the first reconcile's aftermath (status, sysctl reads) is over
                before = cpu_seconds(tna.proc.pid)
                time.sleep(idle_seconds)
                out["idle_cpu_percent"] = (cpu_seconds(tna.proc.pid) - before) / idle_seconds * 100
            out["commits"] = commits
            out["latency_s"] = timed(lab, dp, [rule_commit(k) for k in range(commits)], poll=0.001)
            if element_commits:
                lab.run(lab.r, ["nft", "-f", "-"], input=ELEMENT_TABLE)
                time.sleep(5)  # its own commit compiled in (a new program)
                out["element_commits"] = element_commits
                # holds ~1 ms: polled flat out
                out["element_latency_s"] = timed(lab, dp, [element_commit(k) for k in range(element_commits)],
                                                 poll=0)
    return out


def host_bench(commits: int) -> dict:
    with HostLab() as lab, tempfile.TemporaryDirectory(prefix="tna-cache-") as cache:
        lab.load_ruleset("docker-28")
        # a cache of its own: every insert compiles, as a new rule does
        tna = Tna(lab, lab.host, env_extra={"TNA_CACHE_DIR": str(cache)})
        try:
            tna.wait_attached(lab.ports, timeout=COMMIT_TIMEOUT)
            if not wait_for(lambda: "firewall" in tna.status()["ifaces"]["veth-c1"]["modules"], COMMIT_TIMEOUT, 0.5):
                raise SystemExit("Docker's rules were not compiled in")
            dp = Datapath(lab, lab.host, "veth-c1")
            time.sleep(5)  # settled
            rule = ["DOCKER-USER", "1", "-s", "", "-j", "DROP"]
            inserts: list[list[str]] = []
            deletes: list[list[str]] = []
            for k in range(commits):
                rule[3] = f"203.0.113.{k % 250 + 1}/32"
                inserts.append(["iptables", "-I", *rule])
                deletes.append(["iptables", "-D", *rule[:1], *rule[2:]])
            out: dict = {"commits": commits, "ports": lab.ports}
            samples: dict[str, dict[str, list[float]]] = {w: {phase: [] for phase in PHASES}
                                                          for w in ("insert", "delete")}
            for pair in zip(inserts, deletes, strict=True):
                for what, cmd in zip(("insert", "delete"), pair, strict=True):
                    for phase, t in commit(lab, dp, cmd, True, 0.001).items():
                        if t is not None:
                            samples[what][phase].append(t)
                    time.sleep(0.5)
            for what, phases in samples.items():
                out[f"{what}_latency_s"] = summary(phases)
            dp.state.close()
        finally:
            tna.stop()
            tna.close()
    return out


def show(latency: dict, commits: int) -> None:
    for what, s in latency.items():
        pct = " / ".join(f"{s[p]:.4f}" for p in ("p50", "p90", "p99")) if "p50" in s else "-"
        print(f"  {what:<8} {pct}  ({s['n']} of {commits})", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle-seconds", type=float, default=30)
    ap.add_argument("--commits", type=int, default=20)
    ap.add_argument("--rules", type=int, nargs="*", default=[10, 10_000],
                    help="rule counts of the router lab (none: skip it)")
    ap.add_argument("--ipset-members", type=int, default=0)
    ap.add_argument("--element-commits", type=int, default=20, help="nft add element commits timed (0: none)")
    ap.add_argument("--host-commits", type=int, default=10,
                    help="insert/delete pairs timed on the Docker host lab (0: none)")
    ap.add_argument("--busy-commits", type=int, default=10,
                    help="commits timed while the daemon absorbs a burst of route changes (0: none)")
    ap.add_argument("--busy-rules", type=int, default=10_000)
    ap.add_argument("--json", type=Path, default=RouterLab.repo / "docs" / "bench" / "control.json", metavar="FILE")
    args = ap.parse_args(argv)
    load = [os.getloadavg()[0]]
    results = []
    for i, n in enumerate(args.rules):
        res = bench(n, args.commits, args.idle_seconds if i == 0 else 0, args.ipset_members, args.element_commits)
        results.append(res)
        if "idle_cpu_percent" in res:
            print(f"idle, {n} rules: {res['idle_cpu_percent']:.2f} % of a core over {args.idle_seconds:.0f} s")
        print(f"{n} rules, {args.commits} commits, seconds from iptables returning (p50 / p90 / p99):")
        show(res["latency_s"], args.commits)
        if "element_latency_s" in res:
            print(f"  then {args.element_commits} `nft add element` commits:")
            show(res["element_latency_s"], args.element_commits)
    host = host_bench(args.host_commits) if args.host_commits else None
    if host is not None:
        for what in ("insert", "delete"):
            print(f"Docker host ({len(host['ports'])} programs), {args.host_commits} `iptables -{what[0].upper()}`:")
            show(host[f"{what}_latency_s"], args.host_commits)
    busy = busy_bench(args.busy_commits, args.busy_rules) if args.busy_commits else None
    if busy is not None:
        print(f"{args.busy_rules} rules, {args.busy_commits} commits each right after another's release:")
        show(busy["latency_s"], args.busy_commits)
    load.append(os.getloadavg()[0])
    write_doc(args.json, "bench_control", sys.argv[1:] if argv is None else argv, loadavg_1min=load, results=results,
              host=host, busy=busy)
    print(f"\nload average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}; results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
