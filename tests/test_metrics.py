"""The Prometheus metrics (tna/metrics.py) and `tna stats --watch` rates
(tna/rates.py): address parsing, the collector against a fake daemon, the
rates; then a lab daemon's /metrics against its `tna status` (root)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from netns_labs.lab import Lab, RouterLab, ping, py
from netns_labs.tna_proc import Tna
from tna import __version__
from tna.bpf import abi
from tna.bpf.libbpf import LibbpfError
from tna.cli import _stats_json, main
from tna.deploy.links import ForeignProgram
from tna.deploy.rulecounts import RuleCounts
from tna.metrics import FAILURE_KINDS, Metrics, MetricsError, failure_kind, parse_addr
from tna.model.config import ARPHRD_ETHER, IFF_UP, Link, Model, Sysctls
from tna.model.hooks import firewall_plan
from tna.model.iptables import Table, parse_save
from tna.model.nftables import parse_ruleset
from tna.rates import Sample, iface_rates, si, total_rates
from tna.synth.compile import CompileError, compile_source
from tna.synth.fwgen import rule_refs
from tna.synth.planner import IFF_LOWER_UP, SKIP_KINDS, plan

ROOT = Path(__file__).resolve().parent.parent  # the checkout

# --- address parsing and serving -----------------------------------------


@pytest.mark.parametrize("text, addr", [
    ("127.0.0.1:9469", ("127.0.0.1", 9469)),
    ("[::1]:9469", ("::1", 9469)),
    ("[::]:1", ("::", 1)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ("localhost:9100", ("localhost", 9100)),
])
def test_addresses_parse(text: str, addr: tuple[str, int]) -> None:
    assert parse_addr(text) == addr


@pytest.mark.parametrize("text", ["9469", ":9469", "::1:9469", "[::1]", "[::1]9469", "host:0", "host:65536",
                                  "host:port", "", "a b:80", "[host]:80"])
def test_bad_addresses_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(MetricsError, match=r"expected HOST:PORT .*\[::1\]:9469"):
        parse_addr(text)


@pytest.mark.parametrize("addr", ["::1:9469", ""])
def test_a_bad_address_stops_tna_run_before_it_starts(addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "--metrics", addr])
    assert e.value.code == 2
    assert f"argument --metrics: {addr!r}: HOST:PORT with a port 1-65535" in capsys.readouterr().err


@pytest.mark.parametrize("watch", ["-1", "nan", "inf", "soon"])
def test_a_bad_watch_interval_is_refused_by_the_parser(watch: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["stats", "--watch", watch])
    assert "argument --watch:" in capsys.readouterr().err


def _idle_metrics() -> Metrics:
    return Metrics(fake_daemon([], None), read=lambda prog_id, name: {})


@pytest.mark.parametrize("family, host, url_host", [(socket.AF_INET, "127.0.0.1", "127.0.0.1"),
                                                   (socket.AF_INET6, "::1", "[::1]")])
def test_serves_on_its_own_registry_and_stops(family: socket.AddressFamily, host: str, url_host: str) -> None:
    try:
        with socket.socket(family) as s:  # a free port
            s.bind((host, 0))
            port = s.getsockname()[1]
    except OSError as e:
        pytest.skip(f"{host} cannot be bound here: {e}")
    m = _idle_metrics()
    m.serve(host, port)
    try:
        with urllib.request.urlopen(f"http://{url_host}:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
    finally:
        m.close()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"tna_info", "tna_reconcile_duration_seconds", "tna_packets"} <= names
    assert not any(n.startswith(("process_", "python_", "platform_")) for n in names), names
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{url_host}:{port}/metrics", timeout=30)


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(MetricsError, match="cannot listen: Address already in use"):
            _idle_metrics().serve("127.0.0.1", s.getsockname()[1])


@pytest.mark.parametrize("host", ["192.0.2.77", "name.invalid"])
def test_an_address_not_here_is_a_clear_error(host: str) -> None:
    with pytest.raises(MetricsError, match=f"metrics address {host}:9469: cannot listen: "):
        _idle_metrics().serve(host, 9469)


# --- the collector, against a fake daemon ------------------------------------

UP = IFF_UP | IFF_LOWER_UP
RULES = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
         "-A FORWARD -p udp -m udp --dport 5202 -j ACCEPT\n"
         "-A FORWARD -p tcp -m comment --comment \"" + "x" * 80 + "\" -j DROP\n"
         "-A FORWARD -p icmp -j ACCEPT\nCOMMIT\n")


def _model(tables: dict[int, dict[str, Table]] | None = None) -> Model:
    def veth(index: int, name: str, flags: int = UP) -> Link:
        return Link(index, name, "veth", f"02:00:00:00:00:{index:02x}", 1500, flags, ARPHRD_ETHER, qdisc="noqueue")
    m = Model(links={1: Link(1, "lo", None, "00:00:00:00:00:00", 65536, UP | 0x8, 772),
                     2: veth(2, "r-h1"), 3: veth(3, "r-h2"), 4: veth(4, "r-h3"), 5: veth(5, "r-down", 0)},
              sysctls=Sysctls(True, True))
    fw, why = firewall_plan(tables or {4: parse_save(RULES)})
    assert why is None
    m.set_firewall(fw)
    return m


def fake_daemon(attached: list[Any], p: Any, failed: dict[int, str] | None = None,
                failed_kind: dict[int, str] | None = None, disabled: str | None = None,
                model: Model | None = None, rule_counts: RuleCounts | None = None) -> Any:
    fill = {abi.MAP_EGRESS: (3, 1024), abi.MAP_FDB: (0, 65536), "fw4_set0": (2, 2)}
    dp = SimpleNamespace(attached={a.plan.ifindex: a for a in attached}, map_fill=lambda: fill,
                         fdb_waiting=lambda: 7, lease=SimpleNamespace(age=lambda: 0.125, held_flows=lambda: 2),
                         rule_counts=rule_counts or RuleCounts())
    return SimpleNamespace(dp=dp, plan=p, failed=failed or {}, failed_kind=failed_kind or {}, disabled_why=disabled,
                           model=model or Model())


def scrape(m: Metrics) -> dict[str, Any]:
    """Family name -> family, as Prometheus would parse the text."""
    return {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}


def values(family: Any, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == family.name + suffix}


@pytest.fixture
def scraped() -> dict[str, Any]:
    p = plan(_model(), "tc")
    h1, h2 = p.ifaces[2], p.ifaces[3]  # r-h3 (4) failed to compile: not attached
    counters = {  # what the kernel would hold, by program id
        (12, abi.MAP_STATS): {abi.REASON["FORWARDED"]: (10, 1000), abi.REASON["TTL"]: (2, 196)},
        (13, abi.MAP_STATS): {abi.REASON["FORWARDED"]: (7, 700)},
        (12, abi.MAP_FW_RULES): {0: (5, 500), 3: (3, 300)},  # ids: code rules, policy, then sets' rules
        (13, abi.MAP_FW_RULES): {0: (1, 100), 1: (2, 200)},
    }
    attached = [SimpleNamespace(plan=h1, prog_id=12, source=""), SimpleNamespace(plan=h2, prog_id=13, source="")]
    model = _model()
    counts = RuleCounts()
    counts.observe(rule_refs(model.firewall), {4: parse_save(RULES)}, dict, 0)
    for a in attached:
        counts.started(a.prog_id, rule_refs(model.firewall))
    m = Metrics(fake_daemon(attached, p, failed={4: "clang failed"}, failed_kind={4: "compile_failed", 9: "stale"},
                            disabled="nat table", rule_counts=counts),
                read=lambda prog_id, name: counters.get((prog_id, name), {}))
    m.compiled(None)
    m.compiled(None)
    m.compiled(1.5)
    m.reconcile_seconds.observe(0.003)
    m.resyncs.inc()
    return scrape(m)


def test_packets_and_bytes_by_interface_hook_and_reason(scraped: dict[str, Any]) -> None:
    pkts, byts = scraped["tna_packets"], scraped["tna_bytes"]
    assert pkts.type == byts.type == "counter"
    lab = (("hook", "tc"), ("iface", "r-h1"))
    assert values(pkts, "_total") == {(*lab, ("reason", "FORWARDED")): 10, (*lab, ("reason", "TTL")): 2,
                                      (("hook", "tc"), ("iface", "r-h2"), ("reason", "FORWARDED")): 7}
    assert values(byts, "_total")[(*lab, ("reason", "TTL"))] == 196


def test_rule_counters_add_up_the_programs_and_cut_long_rules(scraped: dict[str, Any]) -> None:
    rules = values(scraped["tna_rule_packets"], "_total")
    assert scraped["tna_rule_packets"].type == "counter"
    by_rule = {dict(k)["rule"]: (dict(k), v) for k, v in rules.items()}
    assert set(by_rule) == {"1", "2", "policy"}  # rule 3 counted nothing: no series
    udp, n = by_rule["1"]
    assert n == 6 and udp == {"family": "ipv4", "table": "filter", "chain": "FORWARD", "rule": "1",
                              "text": "-A FORWARD -p udp -m udp --dport 5202 -j ACCEPT"}  # 5 on r-h1, 1 on r-h2
    long, n = by_rule["2"]
    assert n == 2 and len(long["text"]) == 64 and long["text"].startswith("-A FORWARD -p tcp")
    assert long["text"].endswith("xxx...")
    assert by_rule["policy"][1] == 3 and by_rule["policy"][0]["text"] == "policy ACCEPT"
    assert values(scraped["tna_rule_bytes"], "_total")[tuple(sorted(udp.items()))] == 600


def test_daemon_state_metrics(scraped: dict[str, Any]) -> None:
    assert values(scraped["tna_interfaces"]) == {(("hook", "tc"),): 2, (("hook", "xdp"),): 0}
    alone = {dict(k)["reason"]: v for k, v in values(scraped["tna_interfaces_left_alone"]).items()}
    assert set(alone) == set(SKIP_KINDS + FAILURE_KINDS)
    assert {k: v for k, v in alone.items() if v} == {"loopback": 1, "down": 1, "compile_failed": 1}
    assert scraped["tna_fast_path_disabled"].samples[0].value == 1
    assert scraped["tna_lease_age_seconds"].type == "gauge"
    assert scraped["tna_lease_age_seconds"].samples[0].value == 0.125
    assert scraped["tna_fw_held_flows"].samples[0].value == 2
    assert values(scraped["tna_map_entries"])[(("map", "tna_egress"),)] == 3
    assert values(scraped["tna_map_capacity"])[(("map", "tna_fdb"),)] == 65536
    assert values(scraped["tna_map_capacity"])[(("map", "fw4_set0"),)] == 2
    assert scraped["tna_fdb_entries_waiting"].samples[0].value == 7
    assert values(scraped["tna_info"]) == {(("version", __version__),): 1}


def test_event_metrics(scraped: dict[str, Any]) -> None:
    assert scraped["tna_compile_cache_hits"].samples[0].value == 2
    assert scraped["tna_compile_cache_misses"].samples[0].value == 1
    assert scraped["tna_netlink_resyncs"].samples[0].value == 1
    compile_h = scraped["tna_compile_duration_seconds"]
    assert compile_h.type == "histogram"
    assert values(compile_h, "_count") == {(): 1} and values(compile_h, "_sum") == {(): 1.5}
    assert values(compile_h, "_bucket")[(("le", "1.0"),)] == 0 and values(compile_h, "_bucket")[(("le", "2.0"),)] == 1
    assert values(scraped["tna_reconcile_duration_seconds"], "_count") == {(): 1}


def test_every_metric_is_documented(scraped: dict[str, Any]) -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    # (the library's `_created` gauges depend on a process-wide switch serve() turns off)
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in scraped.values()
               if not f.name.endswith("_created")}
    assert len(exposed) == 22
    missing = [n for n in sorted(exposed) if f"| `{n}` |" not in doc]
    assert not missing, f"docs/metrics.md does not explain {missing}"


def test_a_program_whose_map_cannot_be_read_leaves_the_rest_of_the_scrape() -> None:
    p = plan(_model(), "tc")

    def read(prog_id: int, name: str) -> dict[int, tuple[int, int]]:
        if prog_id == 12:
            raise LibbpfError(1, "map id 7")
        return {abi.REASON["FORWARDED"]: (4, 400)} if name == abi.MAP_STATS else {}
    attached = [SimpleNamespace(plan=p.ifaces[2], prog_id=12, source=""),
                SimpleNamespace(plan=p.ifaces[3], prog_id=13, source="")]
    got = scrape(Metrics(fake_daemon(attached, p), read=read))
    assert values(got["tna_packets"], "_total") == {(("hook", "tc"), ("iface", "r-h2"), ("reason", "FORWARDED")): 4}


def test_rule_counters_add_what_programs_before_counted_less_a_kept_programs_base() -> None:
    """A program replaced (11) leaves its counts to the rule; one kept for
    new rules (12) counts them on from its base; the scrape adds the first
    and takes the second off (tna/deploy/rulecounts.py)."""
    m = _model()
    p = plan(m, "tc")
    h1, h2 = p.ifaces[2], p.ifaces[3]
    counts = RuleCounts()
    refs = rule_refs(m.firewall)
    counts.observe(refs, {4: parse_save(RULES)}, dict, 0)
    for prog_id in (11, 12):
        counts.started(prog_id, refs)
    counts.ended(11, {0: (4, 400)})
    counts.kept(12, {0: (5, 500)}, refs)  # the same ids name the same rules here

    def read(prog_id: int, name: str) -> dict[int, tuple[int, int]]:
        return {0: (7, 700)} if (prog_id, name) == (12, abi.MAP_FW_RULES) else {}
    attached = [SimpleNamespace(plan=h1, prog_id=12, source=""), SimpleNamespace(plan=h2, prog_id=13, source="")]
    got = scrape(Metrics(fake_daemon(attached, p, model=m, rule_counts=counts), read=read))
    assert [v for k, v in values(got["tna_rule_packets"], "_total").items() if dict(k)["rule"] == "1"] == [4 + 5 + 2]


VMAP = {"nftables": [
    {"table": {"family": "ip", "name": "t", "handle": 1}},
    {"chain": {"family": "ip", "table": "t", "name": "c", "handle": 1, "type": "filter", "hook": "forward",
               "prio": 0, "policy": "accept"}},
    {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 2, "expr": [
        {"vmap": {"key": {"meta": {"key": "l4proto"}},
                  "data": {"set": [["tcp", {"accept": None}], ["udp", {"drop": None}]]}}}]}},
]}


def test_a_verdict_maps_rule_is_one_series_through_program_changes() -> None:
    """Its Rules share the nft rule's one count, carried over as one (at
    the first Rule's id): the series stays one and never goes down."""
    tables = parse_ruleset(VMAP).tables
    m = _model(tables)
    p = plan(m, "tc")
    refs = [r for r in rule_refs(m.firewall) if r.handle == 2]
    assert len(refs) == 2
    counts = RuleCounts()
    counts.observe(rule_refs(m.firewall), tables, dict, 0)
    counts.started(11, rule_refs(m.firewall))
    counts.started(12, rule_refs(m.firewall))
    counts.ended(11, {refs[0].id: (3, 300), refs[1].id: (4, 400)})

    def read(prog_id: int, name: str) -> dict[int, tuple[int, int]]:
        return {refs[1].id: (1, 100)} if (prog_id, name) == (12, abi.MAP_FW_RULES) else {}
    attached = [SimpleNamespace(plan=p.ifaces[2], prog_id=12, source="")]
    got = scrape(Metrics(fake_daemon(attached, p, model=m, rule_counts=counts), read=read))
    assert {dict(k)["rule"]: v for k, v in values(got["tna_rule_packets"], "_total").items()
            if dict(k)["table"] == "ip t" and dict(k)["rule"] != "policy"} == {"1": 8}


def test_failure_kinds() -> None:
    assert [failure_kind(e) for e in (CompileError("x"), LibbpfError(22, "load"), ForeignProgram("x"),
                                      OSError(19, "gone"))] == list(FAILURE_KINDS)


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_compile_source_tells_its_observer_hit_or_clang_time(tmp_path: Any) -> None:
    seen: list[float | None] = []
    compile_source("int tna_metrics_test;\n", tmp_path, seen.append)
    compile_source("int tna_metrics_test;\n", tmp_path, seen.append)
    assert len(seen) == 2 and isinstance(seen[0], float) and seen[0] > 0 and seen[1] is None


# --- rates ---------------------------------------------------------------


def test_rates_per_interface_and_in_total() -> None:
    a = Sample(10.0, {"r-h1": (5, {"FORWARDED": (100, 10_000)}), "r-h2": (6, {"FORWARDED": (50, 5_000)})})
    b = Sample(12.0, {"r-h1": (5, {"FORWARDED": (300, 30_000), "TTL": (4, 400)}),
                      "r-h2": (7, {"FORWARDED": (20, 2_000)}),  # a new program: counts from zero
                      "r-h3": (8, {"FORWARDED": (2, 200)})})
    r = iface_rates(a, b)
    assert r["r-h1"] == {"FORWARDED": (100.0, 80_000.0), "TTL": (2.0, 1_600.0)}
    assert r["r-h2"] == {"FORWARDED": (10.0, 8_000.0)}
    assert r["r-h3"] == {"FORWARDED": (1.0, 800.0)}
    assert total_rates(r) == {"FORWARDED": (111.0, 88_800.0), "TTL": (2.0, 1_600.0)}


def test_a_counter_that_went_down_restarted_from_zero() -> None:
    a = Sample(0.0, {"r-h1": (5, {"FORWARDED": (1000, 100_000)})})
    b = Sample(1.0, {"r-h1": (5, {"FORWARDED": (10, 1_000)})})
    assert iface_rates(a, b)["r-h1"]["FORWARDED"] == (10.0, 8_000.0)
    with pytest.raises(ValueError):
        iface_rates(b, a)


def test_si_and_the_json_rates() -> None:
    assert [si(v) for v in (0, 999, 1500, 12_345_678, 6.5e9, 2e12)] == ["0", "999", "1.5k", "12.35M", "6.5G", "2T"]
    st = {"ifaces": {"r-h1": {"reasons": {"FORWARDED": {"packets": 300, "bytes": 30_000}}}}}
    first = json.loads(_stats_json({"FORWARDED": {"packets": 300, "bytes": 30_000}}, st, None, None))
    assert first["rates"] is None and first["total"]["FORWARDED"]["packets"] == 300
    later = json.loads(_stats_json({}, st, {"r-h1": {"FORWARDED": (100.0, 80_000.0)}}, 2.0))
    assert later["rates"] == {"interval_s": 2.0, "total": {"FORWARDED": {"pps": 100.0, "bps": 80_000.0}},
                              "ifaces": {"r-h1": {"FORWARDED": {"pps": 100.0, "bps": 80_000.0}}}}


# --- a lab daemon ------------------------------------------------------------

PORT = 9469  # a fresh namespace: nothing else listens there


def _fetch(lab: Lab, ns: str, port: int, host: str = "127.0.0.1") -> str:
    """GET /metrics from inside ns, where the daemon listens."""
    code = ("import sys, urllib.request; "
            f"sys.stdout.write(urllib.request.urlopen('http://{host}:{port}/metrics', timeout=30).read().decode())")
    return lab.run(ns, [sys.executable, "-c", code]).stdout


@pytest.mark.root
def test_lab_metrics_match_tna_status(router_lab: RouterLab, tmp_path: Any) -> None:
    lab = router_lab
    tna = Tna(lab, lab.r, "--metrics", f"127.0.0.1:{PORT}", env_extra={"TNA_CACHE_DIR": str(tmp_path)})
    try:
        tna.wait_attached(["r-h1", "r-h2"])
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 20).stdout
        before = tna.counters("r-h1")
        fams = {f.name: f for f in text_string_to_metric_families(_fetch(lab, lab.r, PORT))}
        after = tna.counters("r-h1")
        fwd = values(fams["tna_packets"], "_total")[(("hook", "tc"), ("iface", "r-h1"), ("reason", "FORWARDED"))]
        assert 20 <= before["FORWARDED"] <= fwd <= after["FORWARDED"]
        byts = values(fams["tna_bytes"], "_total")[(("hook", "tc"), ("iface", "r-h1"), ("reason", "FORWARDED"))]
        assert byts >= fwd * 84  # an ICMP echo of ping's default size is 84 bytes of IP
        assert values(fams["tna_interfaces"]) == {(("hook", "tc"),): 2, (("hook", "xdp"),): 0}
        assert values(fams["tna_interfaces_left_alone"])[(("reason", "loopback"),)] == 1
        assert values(fams["tna_reconcile_duration_seconds"], "_count")[()] >= 1
        # both ports run the same program: built once for both, clang ran once
        assert values(fams["tna_compile_duration_seconds"], "_count")[()] == 1
        assert fams["tna_compile_cache_misses"].samples[0].value == 1
        assert fams["tna_compile_cache_hits"].samples[0].value == 0
        assert values(fams["tna_map_entries"])[(("map", abi.MAP_EGRESS),)] == 2
        assert values(fams["tna_map_capacity"])[(("map", abi.MAP_EGRESS),)] == abi.DEFINES["TNA_EGRESS_SIZE"]
        # a live lease has an age (its value is checked against a fake lease in
        # test_daemon_state_metrics; a bound on it here would be a timed assert)
        assert fams["tna_lease_age_seconds"].samples[0].value >= 0
        assert fams["tna_fast_path_disabled"].samples[0].value == 0
    finally:
        assert tna.stop() == 0, tna.output()
        tna.close()


@pytest.mark.root
def test_lab_port_in_use_stops_tna_run_before_it_attaches(router_lab: RouterLab) -> None:
    lab = router_lab
    holder = lab.popen(lab.r, [sys.executable, "-c", "import socket, sys, time; s = socket.socket(); "
                               f"s.bind(('127.0.0.1', {PORT})); s.listen(); print('ready', flush=True); "
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    res = lab.run(lab.r, py("tna", "run", "--metrics", f"127.0.0.1:{PORT}"), check=False, cwd=Lab.repo, timeout=60)
    assert res.returncode != 0
    assert f"tna: metrics address 127.0.0.1:{PORT}: cannot listen: Address already in use" in res.stderr
    assert "Traceback" not in res.stderr
    links = lab.run(lab.r, ["ip", "-d", "link", "show"]).stdout
    assert "prog/xdp" not in links and "clsact" not in lab.run(lab.r, ["tc", "qdisc", "show"]).stdout


@pytest.mark.root
def test_lab_stats_watch_shows_rates(router_lab: RouterLab) -> None:
    lab = router_lab
    tna = Tna(lab, lab.r)
    try:
        tna.wait_attached(["r-h1", "r-h2"])
        # runs until stopped (at most 60 s), so traffic flows between any two reads
        pinger = lab.popen(lab.h1.ns, ["ping", "-c", "6000", "-i", "0.01", "-W", "1", lab.h2.ip4],
                           stdout=subprocess.DEVNULL)
        watch = lab.popen(lab.r, py("tna", "stats", "--json", "--watch", "0.5"), cwd=Lab.repo,
                          stdout=subprocess.PIPE, text=True)
        assert watch.stdout is not None
        first, second = json.loads(watch.stdout.readline()), json.loads(watch.stdout.readline())
        watch.kill()
        pinger.kill()
        assert first["rates"] is None
        rates = second["rates"]
        assert rates["interval_s"] >= 0.5
        assert rates["total"]["FORWARDED"]["pps"] > 0 and rates["total"]["FORWARDED"]["bps"] > 0
        assert rates["ifaces"]["r-h1"]["FORWARDED"]["pps"] > 0
        assert second["total"]["FORWARDED"]["packets"] > first["total"]["FORWARDED"]["packets"]
    finally:
        assert tna.stop() == 0, tna.output()
        tna.close()
