"""The `tna` command.

Examples:
  ip netns exec R tna run                 # accelerate namespace R (hook per interface)
  ip netns exec R tna run --hook xdp      # force XDP everywhere
  ip netns exec R tna run --iface-hook eth1=tc
  ip netns exec R tna run --config /etc/tna/R.toml   # settings from a file (SIGHUP re-reads it)
  ip netns exec R tna status [--json]     # interfaces, hooks, programs, packets by reason
  ip netns exec R tna stats [--json] [--watch 1]
  ip netns exec R tna stats --rules [--json]   # per FORWARD/INPUT rule: kernel + fast path
  ip netns exec R tna source r-h1         # the exact C running on r-h1
  tna check [--json]                      # preflight: can `tna run` work here, what it would do
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from tna import __version__, config
from tna.bpf import abi
from tna.deploy.counters import program_counters, program_stats, read_program_map, summed
from tna.deploy.lease import published_hold
from tna.deploy.links import ForeignProgram, attached_tna_prog
from tna.deploy.rulecounts import kernel_rules
from tna.logsetup import setup_logging
from tna.model.iptables import Table
from tna.rates import Rates, Sample, iface_rates, si, total_rates
from tna.runstate import AlreadyRunning, read_state
from tna.synth.fwgen import RuleRef

# what a hold (every packet to the kernel, tna_config.pass_reason) waits for
HOLDS = {
    "FW_CHANGED": "the rules, their interfaces or the filtered families changed; until programs built for them run "
                  "with every map written",
    "RESYNC": "netlink events were lost; until a new dump has rewritten every map",
    "PENDING": "changes arrived while the daemon was busy; until its maps have them",
}


def _running_state() -> dict[str, Any]:
    state = read_state()
    if state is None:
        sys.exit("tna is not running in this network namespace (no state in /run/tna)")
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        state["stale"] = True
    return state


def _attached_id(ifindex: int, hook: str) -> int:
    try:
        return attached_tna_prog(ifindex, hook)
    except (ForeignProgram, OSError):
        return 0


def collect(state: dict[str, Any]) -> dict[str, Any]:
    """state.json plus live counters, read through each interface's attached
    program (maps are global; the program is what ties them to this lab)."""
    out = dict(state)
    hold = None
    for iface in state["ifaces"].values():
        live = _attached_id(iface["ifindex"], iface["hook"])
        iface["attached"] = live == iface["prog_id"]
        stats = program_stats(live) if iface["attached"] else {}
        iface["reasons"] = {r: {"packets": p, "bytes": b} for r, (p, b) in stats.items()}
        if iface["attached"] and hold is None:  # one tna_state, which every program of the daemon reads
            hold = read_program_map(live, abi.MAP_STATE, published_hold)
    if hold is not None:
        out["hold"] = {"reason": abi.REASONS[hold[0]] if hold[0] else None, "flows": [str(f) for f in hold[1]]}
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from tna.check import FAIL, cap_eff, privileges
    from tna.daemon import Daemon
    from tna.metrics import MetricsError

    src = config.source(args.config, os.environ)
    flags = config.Flags(hook=args.hook, log_level=args.log_level or ("debug" if args.verbose else None),
                         metrics=args.metrics, ignore=tuple(args.ignore), iface_hook=dict(args.iface_hook))

    def settings() -> config.Settings:
        """The file as it is now, the flags winning (at start and on SIGHUP)."""
        return config.merge(config.read(src), flags)

    try:
        first = settings()
    except config.ConfigError as e:
        print(f"tna: {e}", file=sys.stderr)
        return 2
    if (priv := privileges(os.geteuid(), cap_eff())).status == FAIL:
        print(f"tna: cannot run as {priv.detail}: {priv.hint}; nothing attached", file=sys.stderr)
        return 1
    logging.getLogger("tna").info("configuration: %s", src.path if src.path.exists()
                                  else f"none ({src.path} does not exist): the defaults and the flags")
    try:
        Daemon(first, reread=settings).run()
    except (AlreadyRunning, MetricsError) as e:
        sys.exit(f"tna: {e}")
    return 0


def _checked(why: Callable[[str], str | None]) -> Callable[[str], str]:
    """An argparse type: the value itself, or its error from why(value)."""
    def check(value: str) -> str:
        if err := why(value):
            raise argparse.ArgumentTypeError(f"{value!r}: {err}")
        return value
    return check


def _iface_hook(item: str) -> tuple[str, str]:
    name, _, hook = item.partition("=")
    if hook not in config.IFACE_HOOKS or config.ifname_error(name):
        raise argparse.ArgumentTypeError(f"{item!r}: expected IFACE=xdp or IFACE=tc")
    return name, hook


def cmd_status(args: argparse.Namespace) -> int:
    st = collect(_running_state())
    if args.json:
        print(json.dumps(st, indent=1, sort_keys=True))
        return 0
    stale = " (daemon DEAD: programs are in fail-safe pass mode)" if st.get("stale") else ""
    print(f"tna pid {st['pid']}, hook mode {st['mode']}{stale}")
    fwd = st["forwarding"]
    print(f"forwarding: ipv4 {'on' if fwd['ipv4'] else 'off'}, ipv6 {'on' if fwd['ipv6'] else 'off'}; "
          f"{st['routes']} routes, {st['neighbours']} neighbours")
    if st.get("routes_loading"):
        print(f"routes still loading ({', '.join(st['routes_loading'])}): their route MTU and multipath "
              "guards are conservative until then")
    rpf = {r["family"] for r in st.get("firewall_rules", ()) if "fib saddr" in r["text"]}
    if doubted := [f for f in st.get("rpf_doubt", ()) if int(f[-1]) in rpf]:
        print(f"`fib saddr . iif` checks of {', '.join(doubted)} on the kernel path: routes the fast path's "
              "lookup could choose otherwise (multipath, shared prefixes, expiry, TOS, source prefixes, VRF, "
              "ignore_routes_with_linkdown; docs/datapath.md)")
    if st.get("xfrm"):
        why = (f"; default policies blocking: {', '.join(st['xfrm_blocking_defaults'])}"
               if st.get("xfrm_blocking_defaults") else "")
        print(f"IPsec (xfrm) policies: forwarded {', '.join(st['xfrm'])} on the kernel path (XFRM){why}")
    if st["disabled"]:
        print(f"FAST PATH DISABLED: {st['disabled']}")
    elif (hold := st.get("hold") or {}).get("reason"):
        print(f"HOLDING: every packet goes to the kernel path now ({hold['reason']}: {HOLDS.get(hold['reason'], '')})")
    elif hold.get("flows"):
        print(f"the programs for changed rules are loading: what those rules could match stays on the kernel "
              f"path meanwhile (FW_CHANGED): {'; '.join(hold['flows'])}")
    if st.get("firewall"):
        fw = st["firewall"]
        chains = ", ".join(f"{name} {n} rules" for name, n in fw["chains"].items()) or "no chains"
        print(f"iptables compiled into the fast path: {chains} (tna stats --rules)")
        for name, s in sorted(fw.get("ipsets", {}).items()):
            how = "mirrored into the fast path" if s["mirrored"] else "not mirrored"
            if s["kernel_path"]:
                how += f"; its rules stay on the kernel path: {'; '.join(s['kernel_path'])}"
            elif s.get("stale_s"):  # the terse header misses a del and an add between two polls
                how += f"; a change keeping its count is seen within {s['stale_s']:.1f} s (a whole listing's budget)"
            print(f"ipset {name} ({s['type']}, {s['entries']} entries): {how}")
        for r in fw.get("kernel_rules", []):
            print(f"  kernel path for what IPv{r['family']} {r['table']} {r['chain']} rule {r['index']} could match "
                  f"({', '.join(r['why'])}): {r['text']}")
        if fw["conntrack"]:
            print(f"conntrack tracks {' and '.join(fw['conntrack'])}: established connections are fast-pathed "
                  "(window-liberal, as a flowtable offload), everything else goes to the kernel (CT_* reasons)")
    for name, b in sorted(st.get("bridges", {}).items()):
        what = "accelerated" if b["accelerated"] else f"kernel path: {b['why_not']}"
        routed = ", routes" if b["routed"] else ""
        fdb = f"FDB {b['fdb']} entries"
        if b.get("accelerated"):
            fdb += f", {b.get('fdb_mirrored', 0)} mirrored, map capacity {b.get('fdb_capacity', 0)}"
        print(f"bridge {name}: {what}{routed}; {fdb}, ageing {b['ageing_s']:g} s")
        if b.get("promiscuous"):
            print("  promiscuous (a capture on it?): its frames take the kernel path meanwhile (BR_PROMISC)")
        for port, p in sorted(b["ports"].items()):
            print(f"  port {port:<12} {p['state']:<10} {'tna attached' if p['accelerated'] else 'kernel only'}")
    for name, i in sorted(st["ifaces"].items()):
        flag = "" if i["attached"] else "  (NOT ATTACHED)"
        print(f"  {name:<12} {i['hook']:<3} prog {i['prog_id']:<6} modules {','.join(i['modules'])}"
              f"  xdp-egress {'yes' if i['xdp_egress'] else 'no'}{flag}")
        print(f"  {'':<12} hook: {i['hook_why']}")
        for reason, c in sorted(i["reasons"].items(), key=lambda kv: -kv[1]["packets"]):
            print(f"  {'':<12}   {reason:<20} {c['packets']:>12} pkts {c['bytes']:>14} bytes")
    for name, why in sorted(st["failed"].items()):
        print(f"  {name:<12} FAILED, kernel path: {why.splitlines()[0]}")
    for name, why in sorted(st["skipped"].items()):
        print(f"  {name:<12} {why if why.startswith('left alone') else f'left alone: {why}'}")
    return 0


def fast_path_rule_counters(state: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """Counter id -> (packets, bytes) the fast path applied, over every
    interface's program (each has its own tna_fw_rules) and what programs
    before them counted (state.json "carried": tna/deploy/rulecounts.py).
    By program id, attached or not: one replaced since the state was written
    stays loaded until the daemon names its successor (Datapath.release_retired())."""
    ids = [i["prog_id"] for i in state["ifaces"].values() if "firewall" in i["modules"]]
    carried = {int(i): (p, b) for i, (p, b) in state.get("carried", {}).items()}
    return summed([*(program_counters(p, abi.MAP_FW_RULES) for p in ids), carried])


def _numbering(state: dict[str, Any]) -> tuple[Any, ...]:
    """What says which rule a program's counter id is: the rules, the programs
    and how often a program was kept for new rules (an A -> B -> A change)."""
    return (state.get("firewall_rules"), sorted(i["prog_id"] for i in state["ifaces"].values()),
            state.get("renumbered"), state.get("carried"))


def rule_rows(refs: list[dict[str, Any]], tables: dict[int, dict[str, Table]],
              fast: dict[int, tuple[int, int]]) -> list[dict[str, Any]]:
    """One row per rule the kernel counts: its counters and the fast path's.
    The Rules one nft rule became (a verdict map's, an inet table's two
    versions) share that rule's one kernel counter: one row, the fast path's
    counts of all of them summed (families: the versions it covers)."""
    rows: list[dict[str, Any]] = []
    by_nft_rule: dict[tuple[str, str, int], dict[str, Any]] = {}
    named = kernel_rules([RuleRef(**ref) for ref in refs], tables)
    for ref, (rule, kernel) in zip(refs, named, strict=True):
        fp = fast.get(ref["id"], (0, 0))
        key = (ref["table"], ref["chain"], rule.handle) if rule is not None and rule.handle is not None else None
        if key in by_nft_rule:
            row = by_nft_rule[key]
            row["fast_path"] = {"packets": row["fast_path"]["packets"] + fp[0],
                                "bytes": row["fast_path"]["bytes"] + fp[1]}
            if ref["family"] not in row["families"]:
                row["families"].append(ref["family"])
            continue
        row = {**ref, "families": [ref["family"]], "kernel": {"packets": kernel[0], "bytes": kernel[1]},
               "fast_path": {"packets": fp[0], "bytes": fp[1]}}
        if key is not None:
            by_nft_rule[key] = row
        rows.append(row)
    return rows


def cmd_rules(state: dict[str, Any], as_json: bool) -> None:
    """Each counted rule (and policy) of every table's chains the fast path evaluates: the kernel's
    counters (iptables-save -c; a native nft rule's `counter`, from the JSON) and the fast path's,
    so the sum is what the rule really matched."""
    from tna.netlink.netfilter import read_rulesets

    for _ in range(5):
        tables = read_rulesets().tables  # the kernel's counters, by the rules' places
        fast = fast_path_rule_counters(state)
        # the same rules and programs after the read: the counters are numbered
        # by those rules (a program kept for new rules renumbers them; the
        # daemon names them before the hold that covers the change ends)
        again = _running_state()
        if _numbering(again) == _numbering(state):
            break
        state = again
    else:  # the rules change faster than this reads them
        print("tna: the rules kept changing: the fast path's counts are left out", file=sys.stderr)
        fast = {}
    rows = rule_rows(state.get("firewall_rules", []), tables, fast)
    if as_json:
        print(json.dumps(rows, sort_keys=True))
        return
    print(f"{'':<6} {'table':<12} {'chain':<12} {'#':>3} {'kernel pkts':>12} {'fast pkts':>12} "
          f"{'total bytes':>14}  rule")
    for r in rows:
        total_bytes = r["kernel"]["bytes"] + r["fast_path"]["bytes"]
        versions = "IPv" + "/".join(map(str, r["families"]))
        print(f"{versions:<6} {r['table']:<12} {r['chain']:<12} {r['index'] or '-':>3} {r['kernel']['packets']:>12} "
              f"{r['fast_path']['packets']:>12} {total_bytes:>14}  {r['text']}")


def _stats_json(totals: dict[str, dict[str, int]], st: dict[str, Any], per_iface: dict[str, Rates] | None,
                interval: float | None) -> str:
    out: dict[str, Any] = {"total": totals, "ifaces": {n: i["reasons"] for n, i in st["ifaces"].items()}}
    out["rates"] = None if per_iface is None else {  # bps: bits per second
        "interval_s": interval,
        "total": {r: {"pps": p, "bps": b} for r, (p, b) in total_rates(per_iface).items()},
        "ifaces": {n: {r: {"pps": p, "bps": b} for r, (p, b) in rates.items()} for n, rates in per_iface.items()},
    }
    return json.dumps(out, sort_keys=True)


def _stats_text(totals: dict[str, dict[str, int]], rates: Rates | None) -> str:
    rate_cols = f" {'pps':>10} {'bit/s':>10}" if rates is not None else ""
    lines = [f"{'reason':<20} {'packets':>14} {'bytes':>16}{rate_cols}"]
    for reason in abi.REASONS:
        if reason in totals:
            line = f"{reason:<20} {totals[reason]['packets']:>14} {totals[reason]['bytes']:>16}"
            if rates is not None:
                pps, bps = rates.get(reason, (0.0, 0.0))
                line += f" {si(pps):>10} {si(bps):>10}"
            lines.append(line)
    if rates is not None:
        all_pps, all_bps = sum(p for p, _ in rates.values()), sum(b for _, b in rates.values())
        lines.append(f"{'all':<52} {si(all_pps):>10} {si(all_bps):>10}")
    return "\n".join(lines) + "\n"


def cmd_stats(args: argparse.Namespace) -> int:
    """Packets and bytes by reason; with --watch, from the second read on,
    the rates since the read before."""
    if args.rules:
        cmd_rules(_running_state(), args.json)
        return 0
    prev: Sample | None = None
    while True:
        st = collect(_running_state())
        sample = Sample.of(time.monotonic(), st)
        per_iface = iface_rates(prev, sample) if prev is not None else None
        totals: dict[str, dict[str, int]] = {}
        for i in st["ifaces"].values():
            for reason, c in i["reasons"].items():
                t = totals.setdefault(reason, {"packets": 0, "bytes": 0})
                t["packets"] += c["packets"]
                t["bytes"] += c["bytes"]
        if args.json:
            interval = sample.at - prev.at if prev is not None else None
            print(_stats_json(totals, st, per_iface, interval), flush=True)
        else:
            print(_stats_text(totals, total_rates(per_iface) if per_iface is not None else None), flush=True)
        if not args.watch:
            return 0
        prev = sample
        time.sleep(args.watch)


def cmd_source(args: argparse.Namespace) -> int:
    st = _running_state()
    iface = st["ifaces"].get(args.iface)
    if iface is None:
        sys.exit(f"tna: {args.iface} is not accelerated (see `tna status`)")
    with open(iface["source"]) as f:
        sys.stdout.write(f.read())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from tna.check import main as check

    return check(args)


def seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds, 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (also the source of the tna(8) man page)."""
    ap = argparse.ArgumentParser(prog="tna", description="Transparent network acceleration.",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    ap.add_argument("--version", action="version", version=f"tna {__version__}")
    sub = ap.add_subparsers(title="commands", dest="cmd", required=True)
    run = sub.add_parser("run", help="run the daemon in this network namespace (foreground)")
    run.add_argument("--config", metavar="FILE",
                     help=f"settings file (TOML; default ${config.ENV_VAR}, else {config.DEFAULT_PATH}, "
                          "each read only if it exists); flags win over it; SIGHUP re-reads it")
    run.add_argument("--hook", choices=config.HOOK_MODES,
                     help="auto: XDP on wire-facing NICs, TC on veth/tap (default)")
    run.add_argument("--iface-hook", action="append", default=[], metavar="IFACE=xdp|tc", type=_iface_hook,
                     help="per-interface hook override (repeatable)")
    run.add_argument("--ignore", action="append", default=[], metavar="IFACE", type=_checked(config.glob_error),
                     help="leave IFACE alone: no program, no fast path into it (a shell glob; repeatable)")
    run.add_argument("--metrics", metavar="HOST:PORT", type=_checked(config.host_port_error),
                     help="serve Prometheus /metrics on HOST:PORT ([::1]:9469 for IPv6)")
    run.add_argument("--log-level", choices=config.LOG_LEVELS, help="default info (-v: debug)")
    run.set_defaults(fn=cmd_run)
    status = sub.add_parser("status", help="interfaces, hooks, programs and counters")
    status.add_argument("--json", action="store_true", help="print the whole status as JSON")
    status.set_defaults(fn=cmd_status)
    stats = sub.add_parser("stats", help="packets and bytes by reason")
    stats.add_argument("--json", action="store_true", help="print the counters as JSON (one line per refresh)")
    stats.add_argument("--watch", type=seconds, default=0, metavar="SECONDS",
                       help="refresh every SECONDS, with the rates (packets/s, bit/s) since the last read")
    stats.add_argument("--rules", action="store_true",
                       help="per FORWARD and INPUT rule: the kernel's counters and the fast path's")
    stats.set_defaults(fn=cmd_stats)
    check = sub.add_parser("check", help="preflight: can `tna run` work here, and what would it accelerate")
    check.add_argument("--json", action="store_true")
    check.add_argument("--config", metavar="FILE",
                       help="judge with this settings file, as `tna run --config FILE` (default as for tna run)")
    check.add_argument("--hook", choices=("auto", "xdp", "tc"),
                       help="judge as for `tna run --hook HOOK` (default: the file's, else auto)")
    check.set_defaults(fn=cmd_check)
    source = sub.add_parser("source", help="print the C program running on IFACE")
    source.add_argument("iface", help="an accelerated interface (see tna status)")
    source.set_defaults(fn=cmd_source)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
