"""Benchmarks behind native nftables rule sets (issue #12), one run:

  python -m netns_labs.bench_nft [--count 1000000] [--rounds 3] [--scenario ...]
                                 [--elements 10000] [--react-pps 100000] [--react-seconds 4]
                                 [--no-react] [--json FILE]

In the router lab (netns_labs.lab.RouterLab: h1 -- r -- h2, r forwards),
64-byte UDP frames h1 -> h2 with netns_labs.bench's machinery (live-frames
generator on h1's veth, XDP sink on h2's, alternating variants, medians,
delivered must equal sent): plain Linux, `tna run --hook xdp` and the
hand-written reference forwarder (the ceiling: it has no firewall).

- debian-stock: tests/data/rulesets/nft/debian-stock.nft in r (Debian's
  /etc/nftables.conf: empty inet filter base chains, all accepting).
- router: the filter table of tests/data/rulesets/nft/router-wiki.nft (the
  nftables wiki's home router: a prerouting drop of the sources in the
  named interval set `blocked`, `ct state vmap`, `iifname vmap` jumps,
  counters, policy drop), with WAN = r-h1 and LAN = r-h2, without the nat
  table (the frames' path stays routing). h2 on the LAN starts the flow, so
  h1's frames are its replies: an ASSURED, established entry, as a
  download's. `blocked` has 10 elements: the file's two documentation-range
  ones and 10.x.y.0/24 prefixes no packet uses.
- router+set: the same with --elements elements in `blocked` (default
  10,000: flat means >= 0.9x the 10-element speed).
- router+rpf: router with the nftables wiki's reverse-path filter first in
  its prerouting chain (RPF_RULE: a second FIB lookup per frame, the
  source's, in Linux and in tna alike).

Before each, `tna run` is checked once to compile the rules in (a firewall
module on r-h1, not disabled). Then (unless --no-react) the reaction, in a
fresh router+set lab: h1 floods the flow at --react-pps for
--react-seconds; a second in, an admin command blocks it:
`nft add element inet filter blocked { h1 }`, then (undone between)
`nft insert rule inet filter forward ip saddr h1 counter drop`.
Per command, Linux (an XDP_PASS program on r-h1) and `tna run --hook xdp`:
how long the command took, the frames h2 received after it returned and
when the last of them arrived (the block took effect by then; the flood
sends what is due in batches of 10 ms or more, in a burst when it was kept
off its CPU, so frames / rate is no time), whether the flow stopped (no
frame in the flood's last 0.5 s; the JSON also has each change of h2's
count: ms, frames since), and tna's r-h1 program id before and after (the same for a set member: a map
update, no recompile; a new one for the rule, held meanwhile) and its
r-h1 reasons over the flood (forwarded, dropped, passed to the kernel;
a new program's own counts).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from netns_labs import progs as lab_progs
from netns_labs.bench import FRAME_DPORT, FRAME_SPORT, GEN_CPU, Scenario, bench_pps, frame64, progs, variants, write_doc
from netns_labs.lab import Lab, RouterLab, in_netns, py, wait_for
from netns_labs.tna_proc import Tna

SCENARIOS = ("debian-stock", "router", "router+set", "router+rpf")
# the nftables wiki's reverse-path filter, first in the router's prerouting chain
RPF_RULE = "fib saddr . iif oif missing drop"
NFT = Lab.repo / "tests" / "data" / "rulesets" / "nft"
WAN, LAN = "r-h1", "r-h2"
DOC_BLOCKED = "203.0.113.64/26, 198.51.100.200-198.51.100.250"  # router-wiki.nft's own elements
SETTLE = 60.0  # s: tna compiling the rules in on a busy machine


def router_ruleset(elements: int, rpf: bool = False) -> str:
    """router-wiki.nft's filter table for the router lab, `blocked` holding
    `elements` elements (its two and unused 10/8 prefixes); rpf: RPF_RULE
    first in its prerouting chain."""
    text = (NFT / "router-wiki.nft").read_text().split("table inet nat", 1)[0]
    first = "\t\tiifname $DEV_WAN ip saddr @blocked"
    if rpf and first not in text:
        raise SystemExit(f"router-wiki.nft changed: no {first.strip()!r} to put {RPF_RULE!r} before")
    if rpf:
        text = text.replace(first, f"\t\t{RPF_RULE}\n{first}", 1)
    extra = "".join(f", 10.{i >> 8}.{i & 255}.0/24" for i in range(max(0, elements - 2)))
    for old, new in (('"br-lan"', f'"{LAN}"'), ('"eth0"', f'"{WAN}"'), ('"br-guest"', '"r-guest"'),
                     (f"elements = {{ {DOC_BLOCKED} }}", f"elements = {{ {DOC_BLOCKED}{extra} }}")):
        if old not in text:
            raise SystemExit(f"router-wiki.nft changed: no {old!r} to replace")
        text = text.replace(old, new)
    return text


def reply_flow(r: RouterLab) -> None:
    """h2 (LAN) starts the UDP flow, h1 answers, h2 again 2 s later: an
    ASSURED entry whose reply direction is the benchmark's frames."""
    for ns, dst, dport, sport in ((r.h2.ns, r.h1.ip4, FRAME_SPORT, FRAME_DPORT),
                                  (r.h1.ns, r.h2.ip4, FRAME_DPORT, FRAME_SPORT),
                                  (r.h2.ns, r.h1.ip4, FRAME_SPORT, FRAME_DPORT)):
        r.run(ns, py("netns_labs.xfer", "udp-send", dst, str(dport), str(sport), "1"), cwd=r.repo)
        if ns == r.h1.ns:
            time.sleep(2.2)
    if "ASSURED" not in r.run(r.r, ["conntrack", "-L", "-p", "udp", "--dport", str(FRAME_SPORT)]).stdout:
        raise SystemExit("the benchmark flow did not become an ASSURED conntrack entry")


def compiled_in(r: RouterLab, firewall: bool) -> None:
    """`tna run` once: attached, not disabled and (firewall) the rules compiled in."""
    tna = Tna(r, r.r, "--hook", "xdp")
    try:
        tna.wait_attached([WAN, LAN], timeout=SETTLE)
        ok = wait_for(lambda: (st := tna.status()) is not None and not st["disabled"]
                      and (not firewall or "firewall" in st["ifaces"][WAN]["modules"]), SETTLE, 0.5)
        if not ok:
            raise SystemExit(f"tna did not compile the rule set in: {tna.status()}\n{tna.output()[-2000:]}")
    finally:
        tna.stop()
        tna.close()


def open_router(elements: int, rpf: bool = False) -> Iterator[Scenario]:
    with RouterLab() as r:
        if elements:
            r.run(r.r, ["nft", "-f", "-"], input=router_ruleset(elements, rpf))
            reply_flow(r)
        else:
            r.run(r.r, ["nft", "-f", str(NFT / "debian-stock.nft")])
        compiled_in(r, firewall=bool(elements))
        yield Scenario("nft", r, r.r, WAN, LAN, r.h1, r.h2, frame64(r.h1.mac, r.r_h1_mac, r.h1, r.h2),
                       [WAN, LAN], ["reference", WAN, LAN])


def scenarios(elements: int) -> Callable[[str], AbstractContextManager[Scenario]]:
    """bench_pps's open_scenario for SCENARIOS; router+set holds `elements` elements."""
    @contextmanager
    def open_scenario(name: str) -> Iterator[Scenario]:
        yield from open_router({"debian-stock": 0, "router": 10, "router+set": elements, "router+rpf": 10}[name],
                               rpf=name == "router+rpf")
    return open_scenario


def delivered(dst_ns: str, dev: str) -> int:
    with in_netns(dst_ns):
        return lab_progs.count(dev)


def react(sc: Scenario, cmd: list[str], pps: int, seconds: float) -> tuple[dict, str]:
    """The flood, cmd in r a second in: what reached h2 after it returned
    (and cmd's output)."""
    lab, dst = sc.lab, sc.dst
    gen = lab.popen(sc.src.ns, ["taskset", "-c", GEN_CPU, *py("netns_labs.progs", "flood", sc.src.dev,
                                                               sc.frame.hex(), str(pps), str(seconds))],
                    cwd=lab.repo, stdout=subprocess.PIPE, text=True)
    start = delivered(dst.ns, dst.dev)
    time.sleep(1.0)
    if delivered(dst.ns, dst.dev) == start:
        raise SystemExit(f"{shlex.join(cmd)}: the flow did not arrive before the command")
    t0 = time.monotonic()
    res = lab.run(sc.ns, cmd)
    t1 = time.monotonic()
    at_return = last = delivered(dst.ns, dst.dev)
    last_change, arrivals = t1, []
    while gen.poll() is None:  # each change of the count, to within a poll
        now = delivered(dst.ns, dst.dev)
        if now != last:
            last, last_change = now, time.monotonic()
            arrivals.append(((last_change - t1) * 1e3, now - at_return))
        time.sleep(0.0005)
    sent = int(gen.communicate(timeout=30)[0])
    after = delivered(dst.ns, dst.dev) - at_return
    return {"command_ms": (t1 - t0) * 1e3, "sent": sent, "after_return": after,
            "last_arrival_ms": (last_change - t1) * 1e3,
            "stopped": time.monotonic() - last_change > 0.5,
            "arrivals": arrivals[:50]}, res.stdout


def blocks(h1: str) -> dict[str, list[str]]:
    """The admin's commands blocking h1's flow (the rule's echo carries its handle)."""
    return {"nft add element": ["add", "element", "inet", "filter", "blocked", "{", h1, "}"],
            "nft insert rule": ["-e", "-a", "insert", "rule", "inet", "filter", "forward", "ip", "saddr", h1,
                                "counter", "drop"]}


def undo(what: str, h1: str, echo: str) -> list[str]:
    if what == "nft add element":
        return ["delete", "element", "inet", "filter", "blocked", "{", h1, "}"]
    handle = re.search(r"# handle (\d+)", echo)
    if handle is None:
        raise SystemExit(f"no handle in nft's echo: {echo!r}")
    return ["delete", "rule", "inet", "filter", "forward", "handle", handle[1]]


def reaction(elements: int, pps: int, seconds: float) -> dict[str, dict[str, dict]]:
    """react() to each of blocks(), Linux and tna, in a fresh router+set lab."""
    out: dict[str, dict[str, dict]] = {}
    with scenarios(elements)("router+set") as sc:
        progs(sc.lab, sc.dst.ns, "attach", sc.dst.dev, "sink")
        for v in (v for v in variants(sc) if v.name in ("linux", "tna --hook xdp")):
            handle = v.up()
            tna = handle if isinstance(handle, Tna) else None
            try:
                if tna and not wait_for(lambda t=tna: "firewall" in t.status()["ifaces"][WAN]["modules"], SETTLE, 0.5):
                    raise SystemExit("the rules were not compiled in")
                rows = out[v.name] = {}
                for what, cmd in blocks(sc.src.ip4).items():
                    before = tna.status()["ifaces"][WAN]["prog_id"] if tna else None
                    reasons = tna.counters(WAN) if tna else {}
                    rows[what], echo = react(sc, ["nft", *cmd], pps, seconds)
                    if tna:
                        rows[what]["prog_id_same"] = tna.status()["ifaces"][WAN]["prog_id"] == before
                        # where the flood went: FORWARDED, dropped by the fast path, or passed while held
                        # (a new program counts from 0: then its counts alone)
                        base = reasons if rows[what]["prog_id_same"] else {}
                        rows[what]["tna_reasons"] = {r: n - base.get(r, 0) for r, n in tna.counters(WAN).items()
                                                     if n != base.get(r, 0)}
                    sc.lab.run(sc.ns, ["nft", *undo(what, sc.src.ip4, echo)])
                    time.sleep(3)  # tna settles (a new program for the rule) before the next flood
            finally:
                v.down(handle)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000, help="frames per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per scenario (medians reported)")
    ap.add_argument("--scenario", nargs="*", choices=SCENARIOS, default=list(SCENARIOS),
                    help="scenarios to measure (none: only the reaction)")
    ap.add_argument("--elements", type=int, default=10_000, help="elements of `blocked` in router+set")
    ap.add_argument("--react-pps", type=int, default=100_000, help="the reaction's flood rate")
    ap.add_argument("--react-seconds", type=float, default=4.0, help="the reaction's flood length")
    ap.add_argument("--no-react", action="store_true", help="skip the reaction measurement")
    ap.add_argument("--json", type=Path, default=Lab.repo / "docs" / "bench" / "nft.json", metavar="FILE",
                    help="where to write the results")
    args = ap.parse_args(argv)
    open_scenario = scenarios(args.elements)
    pps = {}
    for name in args.scenario:
        table = pps[name] = bench_pps(name, args.count, args.rounds, open_scenario)
        print(f"\n{name}: 64-byte UDP h1 -> h2 through r, median of {args.rounds} rounds of {args.count}")
        for row in table:
            print(f"  {row['variant']:<16} {row['mpps']:6.2f} Mpps  {row['vs_linux']:.2f}x Linux", flush=True)
    react_rows = {} if args.no_react else reaction(args.elements, args.react_pps, args.react_seconds)
    for variant, rows in react_rows.items():
        print(f"\nreaction, {variant} ({args.elements} elements, flood {args.react_pps} pps):")
        for what, row in rows.items():
            same = "" if "prog_id_same" not in row else \
                f", program id {'same' if row['prog_id_same'] else 'new'}, r-h1 reasons {row['tna_reasons']}"
            print(f"  {what:<16} command {row['command_ms']:.1f} ms; through after it returned: "
                  f"{row['after_return']} frames, the last at +{row['last_arrival_ms']:.1f} ms; "
                  f"{'stopped' if row['stopped'] else 'NOT stopped'}{same}", flush=True)
    write_doc(args.json, "bench_nft", sys.argv[1:] if argv is None else argv, elements=args.elements,
              pps=pps, reaction=react_rows)
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
