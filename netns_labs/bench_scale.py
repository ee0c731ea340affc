"""The control plane at scale (issue #13): a command, not a test.

    python -m netns_labs.bench_scale routes [--counts 0,100000,1000000] [--v6 200000] [--burst 100000]

One mode per kind of table (`routes` here); each prints one line per
measurement and a Markdown table for docs/benchmarks.md.

routes: a router lab (h1 - r - h2) whose r holds N IPv4 routes in
10.0.0.0/8 (and, at the largest N, --v6 IPv6 routes in 2001:db8::/32), all
via h2, added with `ip -batch` before `tna run` starts.  Measured: seconds
from start to "programs attached" (state.json says so) and to "routes
known" (no family loading), the daemon's peak RSS (VmHWM); at the --burst
point, a BGP-session-reset burst (every route deleted, then added again,
one `ip -batch`) ended by a marker route with an MTU: events/s = events /
seconds until the daemon publishes the marker's guard, and the reconciles
and resyncs it cost.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from netns_labs.lab import RouterLab, Tna, wait_for

METRICS = "127.0.0.1:9479"
MARKER = "203.0.113.0/24 via 198.51.100.2 mtu 1499"
COUNTS = ("tna_reconcile_duration_seconds_count", "tna_netlink_resyncs_total")


def _v4(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"


def _v6(i: int) -> str:
    return f"2001:db8:{0x100 + (i >> 16):x}:{i & 0xFFFF:x}::/64"


def _batch(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _rss_peak_mib(pid: int) -> float:
    m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) / 1024 if m else float("nan")


def _metric(lab: RouterLab, name: str) -> float:
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://{METRICS}/metrics', timeout=60).read().decode())")
    text = lab.run(lab.r, [sys.executable, "-c", code]).stdout
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def routes_point(n4: int, n6: int, burst: bool, tmp: Path) -> dict[str, float]:
    with RouterLab() as lab:
        if n4 or n6:
            lines = [f"route add {_v4(i)} via 198.51.100.2" for i in range(n4)]
            lines += [f"route add {_v6(i)} via 2001:db8:2::2" for i in range(n6)]
            lab.run(lab.r, ["ip", "-batch", str(_batch(tmp / "add", lines))], timeout=900)
        t0 = time.monotonic()
        tna = Tna(lab, lab.r, "--metrics", METRICS)
        try:
            # state.json, read directly: a `tna status` costs a Python start-up per poll
            def up() -> bool:
                st = tna.state()
                return st is not None and st["pid"] == tna.proc.pid and {"r-h1", "r-h2"} <= set(st["ifaces"])
            if not wait_for(up, 900, 0.05):
                raise RuntimeError(tna.output())
            attached = time.monotonic() - t0
            if not wait_for(lambda: (tna.state() or {}).get("routes_loading") == [], 1800, 0.2):
                raise RuntimeError(tna.output())
            known = time.monotonic() - t0
            pid = tna.state()["pid"]  # type: ignore[index]
            out = {"ipv4": n4, "ipv6": n6, "attached_s": attached, "known_s": known,
                   "rss_mib": _rss_peak_mib(pid)}
            if burst:
                out |= _burst(lab, tna, n4, tmp)
                out["rss_mib_after_burst"] = _rss_peak_mib(pid)
            return out
        finally:
            tna.stop()
            tna.close()


def _burst(lab: RouterLab, tna: Tna, n4: int, tmp: Path) -> dict[str, float]:
    lines = [f"route del {_v4(i)} via 198.51.100.2" for i in range(n4)]
    lines += [f"route add {_v4(i)} via 198.51.100.2" for i in range(n4)] + [f"route add {MARKER}"]
    batch = _batch(tmp / "burst", lines)
    reconciles, resyncs = (_metric(lab, m) for m in COUNTS)
    t0 = time.monotonic()
    lab.run(lab.r, ["ip", "-batch", str(batch)], timeout=900)
    kernel = time.monotonic() - t0
    if not wait_for(lambda: (tna.state() or {}).get("route_mtu", {}).get("ipv4") == 1499, 1800, 0.1):
        raise RuntimeError(tna.output())
    absorbed = time.monotonic() - t0
    return {"burst_events": len(lines), "burst_kernel_s": kernel, "burst_absorbed_s": absorbed,
            "events_per_s": len(lines) / absorbed,
            "burst_reconciles": _metric(lab, COUNTS[0]) - reconciles,
            "burst_resyncs": _metric(lab, COUNTS[1]) - resyncs,
            "routes_after": float((tna.state() or {}).get("routes", 0))}


def routes(args: argparse.Namespace) -> None:
    counts = [int(c) for c in args.counts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tna-bench-") as tmp:
        for n in counts:
            res = routes_point(n, args.v6 if n == max(counts) else 0, n == args.burst, Path(tmp))
            print(res, flush=True)
            rows.append(res)
    print("\n| IPv4 routes | IPv6 routes | attached (s) | routes known (s) | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['ipv4']:,} | {r['ipv6']:,} | {r['attached_s']:.1f} | {r['known_s']:.1f} | {r['rss_mib']:.0f} |")
    for r in rows:
        if "events_per_s" in r:
            print(f"\nburst at {r['ipv4']:,} routes: {r['burst_events']:,.0f} events, "
                  f"kernel {r['burst_kernel_s']:.1f} s, absorbed in {r['burst_absorbed_s']:.1f} s "
                  f"= {r['events_per_s']:,.0f} events/s; "
                  f"{r['burst_reconciles']:.0f} reconciles, {r['burst_resyncs']:.0f} resyncs, "
                  f"peak RSS {r['rss_mib_after_burst']:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m netns_labs.bench_scale", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("routes", help="start-up, RSS and bursts with large routing tables")
    r.add_argument("--counts", default="0,100000,1000000", help="IPv4 route counts, one lab each")
    r.add_argument("--v6", type=int, default=200000, help="IPv6 routes added at the largest count")
    r.add_argument("--burst", type=int, default=100000, help="the count at which the delete+add burst runs")
    r.set_defaults(run=routes)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
