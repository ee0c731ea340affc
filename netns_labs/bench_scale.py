"""The control plane at scale (issue #13): a command, not a test.

Results go to docs/benchmarks.md by hand.

    python -m netns_labs.bench_scale routes [--counts 0,100000,1000000] [--v6 200000] [--burst 100000]
    python -m netns_labs.bench_scale fdb [--entries 0,100000,1000000] [--flush 100000]

One mode per kind of table; each prints one JSON object per measurement
(`routes` then a Markdown table).  Both fill the table with a batch file
before `tna run` starts and time it from start to "programs attached"
(state.json says so), then to the whole table known.

routes: a router lab (h1 - r - h2) whose r holds N IPv4 routes in
10.0.0.0/8 (and, at the largest N, --v6 IPv6 routes in 2001:db8::/32), all
via h2, added with `ip -batch`.  Measured: seconds to attached and to
"routes known" (no family loading), the daemon's peak RSS (VmHWM); at the
--burst point, a BGP-session-reset burst (every route deleted, then added
again, one `ip -batch`) ended by a marker route with an MTU: events/s =
events / seconds until the daemon publishes the marker's guard, and the
reconciles and resyncs it cost.

fdb: a bridge br0 with two veth ports in a lab namespace; static entries
added with `bridge -batch` (N - flush on b-p0, flush on b-p1), timed `bridge
fdb show` (the kernel's dump, which `tna run` starts with too), then `tna run`:
seconds to attached, to every entry mirrored (tna status: mirrored ==
entries), the daemon's RSS then (and its peak), and the seconds from
`bridge fdb flush dev b-p1` to the flushed entries gone from the map.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netns_labs.lab import Lab, RouterLab, wait_for
from netns_labs.tna_proc import Tna

TIMEOUT_S = 900.0  # a million entries on a busy machine take minutes
METRICS = "127.0.0.1:9479"
MARKER = "203.0.113.0/24 via 198.51.100.2 mtu 1499"
COUNTS = ("tna_reconcile_duration_seconds_count", "tna_netlink_resyncs_total")


def _batch(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM: the peak) in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _state(tna: Tna) -> dict[str, Any] | None:
    """This daemon's state.json (None before it wrote one)."""
    st = tna.state()
    return st if st is not None and st["pid"] == tna.proc.pid else None


def _started(tna: Tna, ifaces: set[str]) -> float:
    """Seconds from now until ifaces have their programs attached."""
    t0 = time.monotonic()
    if not wait_for(lambda: (st := _state(tna)) is not None and ifaces <= set(st["ifaces"]), TIMEOUT_S, 0.05):
        raise RuntimeError(f"tna did not attach:\n{tna.output()}")
    return time.monotonic() - t0


def _until(what: str, tna: Tna, pred: Callable[[dict[str, Any]], bool], interval: float) -> None:
    if not wait_for(lambda: (st := _state(tna)) is not None and pred(st), 2 * TIMEOUT_S, interval):
        raise RuntimeError(f"tna did not {what}:\n{tna.output()}")


# --- routes -----------------------------------------------------------------

def _v4(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"


def _v6(i: int) -> str:
    return f"2001:db8:{0x100 + (i >> 16):x}:{i & 0xFFFF:x}::/64"


def _metric(lab: RouterLab, name: str) -> float:
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://{METRICS}/metrics', timeout=60).read().decode())")
    text = lab.run(lab.r, [sys.executable, "-c", code]).stdout
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def routes_point(n4: int, n6: int, burst: bool, tmp: Path) -> dict[str, Any]:
    with RouterLab() as lab:
        if n4 or n6:
            lines = [f"route add {_v4(i)} via 198.51.100.2" for i in range(n4)]
            lines += [f"route add {_v6(i)} via 2001:db8:2::2" for i in range(n6)]
            lab.run(lab.r, ["ip", "-batch", str(_batch(tmp / "add", lines))], timeout=TIMEOUT_S)
        t0 = time.monotonic()
        tna = Tna(lab, lab.r, "--metrics", METRICS)
        try:
            attached = _started(tna, {"r-h1", "r-h2"})
            _until("load the routes", tna, lambda st: st.get("routes_loading") == [], 0.2)
            out = {"ipv4": n4, "ipv6": n6, "attached_s": attached, "known_s": time.monotonic() - t0,
                   "rss_mib": _rss_mib(tna.proc.pid)[1]}
            if burst:
                out |= _burst(lab, tna, n4, tmp)
                out["rss_mib_after_burst"] = _rss_mib(tna.proc.pid)[1]
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
    lab.run(lab.r, ["ip", "-batch", str(batch)], timeout=TIMEOUT_S)
    kernel = time.monotonic() - t0
    _until("follow the burst", tna, lambda st: st.get("route_mtu", {}).get("ipv4") == 1499, 0.1)
    absorbed = time.monotonic() - t0
    return {"burst_events": len(lines), "burst_kernel_s": kernel, "burst_absorbed_s": absorbed,
            "events_per_s": len(lines) / absorbed,
            "burst_reconciles": _metric(lab, COUNTS[0]) - reconciles,
            "burst_resyncs": _metric(lab, COUNTS[1]) - resyncs,
            "routes_after": float((tna.state() or {}).get("routes", 0))}


def routes(args: argparse.Namespace, tmp: Path) -> None:
    counts = args.counts
    rows = []
    for n in counts:
        res = routes_point(n, args.v6 if n == max(counts) else 0, n == args.burst, tmp)
        print(json.dumps(res), flush=True)
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


# --- fdb --------------------------------------------------------------------

def _macs(start: int, n: int) -> list[str]:
    return [f"02:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"
            for i in range(start, start + n)]


def fdb_point(entries: int, flush: int, tmp: Path) -> dict[str, Any]:
    flush = min(flush, entries)
    with Lab() as lab:
        b, h = lab.add_ns("b"), lab.add_ns("h")
        lab.run(b, ["ip", "link", "add", "br0", "type", "bridge"])
        lab.run(b, ["ip", "link", "set", "br0", "up"])
        for port in ("p0", "p1"):
            lab.veth(b, f"b-{port}", h, f"h-{port}")
            lab.run(b, ["ip", "link", "set", f"b-{port}", "master", "br0"])
        lines = [f"fdb add {mac} dev {port} master static"
                 for port, macs in (("b-p0", _macs(0, entries - flush)), ("b-p1", _macs(entries - flush, flush)))
                 for mac in macs]
        t = time.monotonic()
        lab.run(b, ["bridge", "-batch", str(_batch(tmp / "fdb", lines))], timeout=TIMEOUT_S)
        added_s = time.monotonic() - t
        t = time.monotonic()  # the kernel's own dump, for reference: `tna run` starts with one
        lab.run(b, ["sh", "-c", "bridge fdb show br br0 > /dev/null"], timeout=TIMEOUT_S)
        show_s = time.monotonic() - t
        t0 = time.monotonic()
        tna = Tna(lab, b)
        try:
            attached_s = _started(tna, {"b-p0"})
            _until("mirror the FDB", tna, lambda st: (br := st["bridges"].get("br0")) is not None
                   and br["fdb"] >= entries and br["fdb_mirrored"] == br["fdb"], 0.05)
            mirrored_s = time.monotonic() - t0
            rss, hwm = _rss_mib(tna.proc.pid)
            st = _state(tna)
            assert st is not None  # it was there a moment ago
            total, capacity = st["bridges"]["br0"]["fdb"], st["bridges"]["br0"]["fdb_capacity"]
            flush_s = None
            if flush:
                t1 = time.monotonic()
                lab.run(b, ["bridge", "fdb", "flush", "dev", "b-p1", "master", "static"], timeout=TIMEOUT_S)
                _until("follow the flush", tna, lambda st: (br := st["bridges"].get("br0")) is not None
                       and br["fdb"] == total - flush and br["fdb_mirrored"] == br["fdb"], 0.02)
                flush_s = time.monotonic() - t1
            tna.stop()
        finally:
            log = tna.close()
    return {"entries": entries, "fdb_total": total, "map_capacity": capacity, "bridge_batch_s": round(added_s, 2),
            "bridge_fdb_show_s": round(show_s, 2),
            "attached_s": round(attached_s, 2), "mirrored_s": round(mirrored_s, 2),
            "rss_mib": round(rss, 1), "peak_rss_mib": round(hwm, 1),
            "flushed": flush, "flush_followed_s": None if flush_s is None else round(flush_s, 2),
            "resyncs": log.count("resynchronising")}


def fdb(args: argparse.Namespace, tmp: Path) -> None:
    for n in args.entries:
        print(json.dumps(fdb_point(n, args.flush, tmp)), flush=True)


def _sizes(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns_labs.bench_scale", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("routes", help="start-up, RSS and bursts with large routing tables")
    r.add_argument("--counts", type=_sizes, default="0,100000,1000000", help="IPv4 route counts, one lab each")
    r.add_argument("--v6", type=int, default=200000, help="IPv6 routes added at the largest count")
    r.add_argument("--burst", type=int, default=100000, help="the count at which the delete+add burst runs")
    r.set_defaults(run=routes)
    f = sub.add_parser("fdb", help="start-up, RSS and a bulk flush with a bridge FDB of N static entries")
    f.add_argument("--entries", type=_sizes, default="0,100000,1000000", help="FDB sizes, one lab each")
    f.add_argument("--flush", type=int, default=100000, help="entries flushed at once after start-up")
    f.set_defaults(run=fdb)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tna-bench-") as tmp:
        try:
            args.run(args, Path(tmp))
        except (RuntimeError, subprocess.SubprocessError) as e:
            print(f"bench_scale {args.mode}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
