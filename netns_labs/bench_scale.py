"""Control-plane scale benchmarks (a command, not a test): how long `tna run`
takes to attach and to mirror a large table, its memory, and how fast it
follows a bulk change.  Results go to docs/benchmarks.md by hand.

  python -m netns_labs.bench_scale fdb --entries 0,100000,1000000 [--flush 100000]

fdb: a bridge br0 with two veth ports in a lab namespace; static entries
added with `bridge -batch` (N - flush on b-p0, flush on b-p1), timed `bridge
fdb show` (the kernel's dump, which `tna run` starts with too), then `tna run`:
seconds to the first program attached, to every entry mirrored (tna status:
mirrored == entries), the daemon's RSS then (and its peak), and the seconds
from `bridge fdb flush dev b-p1` to the flushed entries gone from the map.
One JSON object per size on stdout.  Other tables (routes) may add a
subcommand here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netns_labs.lab import Lab, Tna, wait_for

TIMEOUT_S = 900.0  # a million entries on a busy machine take minutes


def _macs(start: int, n: int) -> list[str]:
    return [f"02:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"
            for i in range(start, start + n)]


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _bridge(tna: Tna) -> dict[str, Any] | None:
    st = tna.state()
    if st is None or st["pid"] != tna.proc.pid:
        return None
    return st["bridges"].get("br0")


def fdb(entries: int, flush: int) -> dict[str, Any]:
    flush = min(flush, entries)
    with Lab() as lab:
        b, h = lab.add_ns("b"), lab.add_ns("h")
        lab.run(b, ["ip", "link", "add", "br0", "type", "bridge"])
        lab.run(b, ["ip", "link", "set", "br0", "up"])
        for port in ("p0", "p1"):
            lab.veth(b, f"b-{port}", h, f"h-{port}")
            lab.run(b, ["ip", "link", "set", f"b-{port}", "master", "br0"])
        t = time.monotonic()
        with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
            for port, macs in (("b-p0", _macs(0, entries - flush)), ("b-p1", _macs(entries - flush, flush))):
                f.writelines(f"fdb add {mac} dev {port} master static\n" for mac in macs)
            f.flush()
            lab.run(b, ["bridge", "-batch", f.name], timeout=TIMEOUT_S)
        added_s = time.monotonic() - t
        t = time.monotonic()  # the kernel's own dump, for reference: `tna run` starts with one
        lab.run(b, ["sh", "-c", "bridge fdb show br br0 > /dev/null"], timeout=TIMEOUT_S)
        show_s = time.monotonic() - t
        t0 = time.monotonic()
        tna = Tna(lab, b)
        try:
            if not wait_for(lambda: (st := tna.state()) is not None and st["pid"] == tna.proc.pid
                            and "b-p0" in st["ifaces"], TIMEOUT_S, 0.05):
                raise RuntimeError(f"tna did not attach:\n{tna.output()}")
            attached_s = time.monotonic() - t0
            if not wait_for(lambda: (br := _bridge(tna)) is not None and br["fdb"] >= entries
                            and br["fdb_mirrored"] == br["fdb"], TIMEOUT_S, 0.05):
                raise RuntimeError(f"tna did not mirror the FDB:\n{tna.output()}")
            mirrored_s = time.monotonic() - t0
            rss, hwm = _rss_kib(tna.proc.pid)
            br = _bridge(tna)
            assert br is not None
            total, capacity = br["fdb"], br["fdb_capacity"]
            flush_s = None
            if flush:
                t1 = time.monotonic()
                lab.run(b, ["bridge", "fdb", "flush", "dev", "b-p1", "master", "static"], timeout=TIMEOUT_S)
                if not wait_for(lambda: (br := _bridge(tna)) is not None and br["fdb"] == total - flush
                                and br["fdb_mirrored"] == br["fdb"], TIMEOUT_S, 0.02):
                    raise RuntimeError(f"tna did not follow the flush:\n{tna.output()}")
                flush_s = time.monotonic() - t1
            tna.stop()
        finally:
            log = tna.close()
    return {"entries": entries, "fdb_total": total, "map_capacity": capacity, "bridge_batch_s": round(added_s, 2),
            "bridge_fdb_show_s": round(show_s, 2),
            "attached_s": round(attached_s, 2), "mirrored_s": round(mirrored_s, 2),
            "rss_mib": round(rss / 1024, 1), "peak_rss_mib": round(hwm / 1024, 1),
            "flushed": flush, "flush_followed_s": None if flush_s is None else round(flush_s, 2),
            "resyncs": log.count("resynchronising")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns_labs.bench_scale", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="table", required=True)
    f = sub.add_parser("fdb", help="a bridge FDB of N static entries")
    f.add_argument("--entries", default="0,100000,1000000", help="comma-separated sizes")
    f.add_argument("--flush", type=int, default=100000, help="entries flushed at once after start-up")
    args = ap.parse_args(argv)
    try:
        sizes = [int(n) for n in args.entries.split(",")]
    except ValueError:
        ap.error(f"--entries: not a list of numbers: {args.entries!r}")
    for n in sizes:
        try:
            print(json.dumps(fdb(n, args.flush)), flush=True)
        except (RuntimeError, subprocess.SubprocessError) as e:
            print(f"bench_scale fdb {n}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
