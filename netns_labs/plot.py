"""Charts of a benchmark run, from the JSON netns_labs/bench.py writes:

  python -m netns_labs.plot docs/bench/results.json [--out DIR]

PNG bar charts, beside the JSON unless --out says otherwise:
  frames.png    64-byte frames per lab: Mpps of Linux, TNA and the reference, labelled x Linux
  firewall.png  routing behind a stateful FORWARD chain: Mpps by rule count (log scale), x Linux
  tcp.png       TCP goodput: bulk through the router and the bridge, a service under a UDP flood

matplotlib is an optional extra: pip install -e '.[plots]'.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path
from typing import Any

Groups = dict[str, list[tuple[str, float, str]]]  # chart group -> bars: (variant, height, text above it)
FIREWALL = "routing+ct"  # bench scenarios routing+ct10 ... routing+ct10000
# bench_flood()'s goodput series -> (chart group, variant); its other keys ("tna: flood Mpps"...) are not Gbit/s
FLOOD_SERIES = {"linux, no flood": ("no flood", "linux"), "linux, flood": ("UDP flood", "linux"),
                "tna, flood": ("UDP flood", "tna")}


class ResultsError(Exception):
    pass


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def load(path: Path) -> dict[str, Any]:
    """The results, checked for what the charts read."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: {e}") from None
    if not isinstance(doc, dict):
        raise ResultsError(f"{path}: not a JSON object")
    missing = [k for k in ("command", "date", "kernel", "cpu", "pps", "tcp", "flood") if k not in doc]
    if missing:
        raise ResultsError(f"{path}: missing {', '.join(missing)} (is it netns_labs/bench.py's output?)")
    try:  # what render() reads, read the same way
        for firewall in (False, True):
            _pps_groups(doc["pps"], firewall)
        _tcp_panels(doc)
    except (AttributeError, KeyError, TypeError, ValueError, statistics.StatisticsError) as e:
        raise ResultsError(f"{path}: not the format netns_labs/bench.py writes ({type(e).__name__}: {e})") from None
    return doc


def _colour(variant: str) -> str:
    for prefix, colour in (("linux", "#9e9e9e"), ("tna", "#1f77b4"), ("reference", "#ff7f0e")):
        if variant.startswith(prefix):
            return colour
    return "#2ca02c"


def _bars(ax: Any, groups: Groups, unit: str, log: bool = False) -> None:
    """Grouped bars, one colour and legend entry per variant."""
    variants = list(dict.fromkeys(v for bars in groups.values() for v, _, _ in bars))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        xs, hs, texts = [], [], []
        for g, bars in enumerate(groups.values()):
            for v, h, text in bars:
                if v == variant:
                    xs.append(g - 0.4 + width * (i + 0.5))
                    hs.append(h)
                    texts.append(text)
        drawn = ax.bar(xs, hs, width, label=variant, color=_colour(variant))
        ax.bar_label(drawn, texts, fontsize=8, padding=2)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(unit)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.legend(fontsize=8)


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.3g}x"


def _pps_groups(pps: dict[str, list[dict]], firewall: bool) -> Groups:
    groups: Groups = {}
    for name, table in pps.items():
        if name.startswith(FIREWALL) != firewall:
            continue
        label = f"{int(name[len(FIREWALL):]):,} rules" if firewall else name
        if table:  # a group without bars has nothing to draw
            groups[label] = [(str(r["variant"]), float(r["mpps"]), _times(float(r["vs_linux"]))) for r in table]
    return groups


def _tcp_panels(doc: dict[str, Any]) -> tuple[Groups, Groups]:
    """(bulk transfer by lab, the service under the flood): medians, Gbit/s."""
    bulk: Groups = {}
    for lab, t in doc["tcp"].items():
        linux, tna = (float(statistics.median(t[v])) for v in ("linux", "tna"))
        bulk[lab] = [("linux", linux, f"{linux:.1f}"), ("tna", tna, f"{tna:.1f} ({_times(float(t['ratio']))})")]
    flood: Groups = {}
    for key, (group, variant) in FLOOD_SERIES.items():
        if doc["flood"].get(key):
            g = float(statistics.median(doc["flood"][key]))
            flood.setdefault(group, []).append((variant, g, f"{g:.1f}"))
    return bulk, flood


def render(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the charts doc has data for; their paths."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    run = f"{doc['date'][:10]}, kernel {doc['kernel']}, {doc['cpu']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.suptitle(f"{title}\n{run}", fontsize=10)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: reruns differ only in data
        plt.close(fig)
        written.append(path)

    for name, firewall, title in (
            ("frames.png", False, "64-byte frames, one CPU: median Mpps (labels: x Linux)"),
            ("firewall.png", True, "Routing behind a stateful FORWARD chain: median Mpps (labels: x Linux)")):
        groups = _pps_groups(doc["pps"], firewall)
        if groups:
            fig, ax = plt.subplots(figsize=(8, 4.5))
            _bars(ax, groups, "Mpps", log=firewall)
            save(fig, name, title)

    bulk, flood = _tcp_panels(doc)
    panels = [(groups, title) for groups, title in ((bulk, "bulk TCP through the box (tna: TC)"),
                                                    (flood, "a service on the box under a UDP flood")) if groups]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(8, 4.5), squeeze=False)
        for a, (groups, title) in zip(axes[0], panels, strict=True):
            _bars(a, groups, "Gbit/s (median)")
            a.set_title(title, fontsize=9)
        save(fig, "tcp.png", "TCP goodput, Linux vs TNA")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="the JSON netns_labs/bench.py wrote")
    ap.add_argument("--out", type=Path, help="directory for the PNGs (default: beside the JSON)")
    args = ap.parse_args(argv)
    if not available():
        sys.exit("matplotlib is not installed: pip install -e '.[plots]'")
    try:
        doc = load(args.results)
    except ResultsError as e:
        sys.exit(f"plot: {e}")
    for path in render(doc, args.out or args.results.parent):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
