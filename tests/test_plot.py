"""The benchmark's JSON results and the charts made from them (no root, no lab run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from netns_labs import bench, plot

ROOT = Path(__file__).resolve().parent.parent  # the checkout

PNG = b"\x89PNG\r\n\x1a\n"


def _row(variant: str, mpps: float, linux: float, ref: float) -> dict:
    """A row as bench_pps() makes it."""
    return {"variant": variant, "mpps": mpps, "runs": [mpps] * 3, "vs_linux": mpps / linux,
            "vs_reference": mpps / ref, "prog_ns": None}


def _written(path: Path) -> Path:
    """What bench.main() writes at the end of a run, from tables shaped as its measurements return them."""
    pps = {"routing": [_row("linux", 1.0, 1.0, 2.5), _row("tna --hook xdp", 2.2, 1.0, 2.5),
                       _row("reference", 2.5, 1.0, 2.5)],
           "routing+ct10000": [_row("linux", 0.01, 0.01, 2.5), _row("tna --hook xdp", 1.6, 0.01, 2.5),
                               _row("reference", 2.5, 0.01, 2.5)]}
    tcp = {"routing": {"linux": [20.0, 19.0], "tna": [21.0, 20.0], "ratio": 20.5 / 19.5}}
    flood = {"linux, no flood": [17.0], "linux, flood": [12.0], "tna, flood": [15.0],
             "linux: flood Mpps": [0.4], "tna: flood dropped at XDP": [2_000_000]}
    bench.write_results(path, ["--scenario", "routing", "routing+ct10000"], pps, tcp, flood)
    return path


def test_bench_writes_what_the_plotter_reads(tmp_path: Path) -> None:
    doc = plot.load(_written(tmp_path / "results.json"))
    assert doc["command"] == "python -m netns_labs.bench --scenario routing routing+ct10000"
    assert doc["kernel"] and doc["cpu"] and doc["date"]
    assert plot._pps_groups(doc["pps"], firewall=True) == {
        "10,000 rules": [("linux", 0.01, "1.00x"), ("tna --hook xdp", 1.6, "160x"), ("reference", 2.5, "250x")]}
    bulk, flood = plot._tcp_panels(doc)
    assert bulk == {"routing": [("linux", 19.5, "19.5"), ("tna", 20.5, "20.5 (1.05x)")]}
    assert flood == {"no flood": [("linux", 17.0, "17.0")],
                     "UDP flood": [("linux", 12.0, "12.0"), ("tna", 15.0, "15.0")]}


def test_plotter_renders_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is the optional `plots` extra")
    doc = plot.load(_written(tmp_path / "results.json"))
    pngs = plot.render(doc, tmp_path / "out")
    assert sorted(p.name for p in pngs) == ["firewall.png", "frames.png", "tcp.png"]
    for p in pngs:
        assert p.read_bytes().startswith(PNG) and p.stat().st_size > 10_000, p
    # a run of one scenario only: only its chart
    doc["pps"].pop("routing+ct10000")
    doc["tcp"], doc["flood"], doc["pps"]["routing+rule"] = {}, {}, []
    assert [p.name for p in plot.render(doc, tmp_path / "one")] == ["frames.png"]


def test_committed_results_are_readable_and_charted() -> None:
    """docs/benchmarks.md embeds charts of docs/bench/results.json."""
    doc = plot.load(ROOT / "docs" / "bench" / "results.json")
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    for name in ("frames.png", "firewall.png", "tcp.png"):
        assert (ROOT / "docs" / "bench" / name).read_bytes().startswith(PNG)
        assert f"](bench/{name})" in text, f"docs/benchmarks.md does not embed bench/{name}"
    assert doc["pps"]["routing"][1]["variant"] == "tna --hook xdp"
    assert doc["source"].startswith(("written by netns_labs/bench.py", "converted by hand")), \
        "say which run the JSON came from"


@pytest.mark.parametrize("content, why", [
    ("not json", "Expecting value"),
    ("[]", "not a JSON object"),
    ('{"command": "x"}', "missing date, kernel, cpu, pps, tcp, flood"),
    ('{"command": "", "date": "", "kernel": "", "cpu": "", "pps": {"routing": [{"variant": "linux"}]}, '
     '"tcp": {}, "flood": {}}', "KeyError: 'mpps'"),
    ('{"command": "", "date": "", "kernel": "", "cpu": "", "pps": {"routing+ctmany": []}, "tcp": {}, "flood": {}}',
     "ValueError"),
    ('{"command": "", "date": "", "kernel": "", "cpu": "", "pps": {}, "tcp": {"routing": {"linux": []}}, '
     '"flood": {}}', "StatisticsError"),
])
def test_bad_results_are_a_clear_error(tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(plot.ResultsError, match=why):
        plot.load(path)


def test_command_line_errors_without_traceback(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is the optional `plots` extra")
    with pytest.raises(SystemExit, match=r"^plot: .*none.json: .*No such file"):
        plot.main([str(tmp_path / "none.json")])
