"""The daemon's Prometheus metrics at http://HOST:PORT/metrics (`tna run --metrics`).

What the datapath counts (packets and bytes by reason, per filter rule) is
read from the attached programs' maps at scrape time by a collector; what
the daemon itself does (reconciles, compiles, resyncs) is counted as it
happens.  Everything lives on a registry of its own: no process or platform
collectors, nothing of the library's global default registry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tna import __version__
from tna.bpf import abi
from tna.bpf.libbpf import LibbpfError
from tna.config import split_host_port
from tna.deploy.counters import program_counters
from tna.deploy.links import ForeignProgram
from tna.deploy.rulecounts import RuleCounts
from tna.model.config import Model
from tna.model.routes import AF_INET, AF_INET6, RouteTable
from tna.status import Running
from tna.synth.compile import CompileError
from tna.synth.planner import SKIP_KINDS, Plan

log = logging.getLogger(__name__)

# why an attach or detach failed (the daemon's `failed`), as a label
FAILURE_KINDS = ("compile_failed", "load_failed", "foreign_program", "attach_failed")
RULE_TEXT_MAX = 64  # a label value is stored with every sample: long rules are cut
# a reconcile without a change takes milliseconds, one that compiles seconds
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
COMPILE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class MetricsError(ValueError):
    """A metrics address that cannot be parsed or listened on."""


def parse_addr(text: str) -> tuple[str, int]:
    """HOST:PORT (tna.config's grammar) -> (host, port), or MetricsError."""
    addr = split_host_port(text)
    if addr is None:
        raise MetricsError(f"metrics address {text!r}: expected HOST:PORT with a port 1-65535, "
                           "e.g. 127.0.0.1:9469 or [::1]:9469 (0.0.0.0 or [::] for every address)")
    return addr


def failure_kind(e: Exception) -> str:
    """FAILURE_KINDS' class of an exception the daemon left an interface alone for."""
    if isinstance(e, CompileError):
        return "compile_failed"
    if isinstance(e, ForeignProgram):
        return "foreign_program"
    return "load_failed" if isinstance(e, LibbpfError) else "attach_failed"


class _Lease(Protocol):
    def age(self) -> float | None: ...

    def held_flows(self) -> int: ...


class _Datapath(Protocol):
    @property
    def attached(self) -> Mapping[int, Running]: ...

    @property
    def lease(self) -> _Lease: ...

    def map_fill(self) -> dict[str, tuple[int, int]]: ...

    def fdb_waiting(self) -> int: ...

    @property
    def rule_counts(self) -> RuleCounts: ...


class Observed(Protocol):
    """What the collector reads at scrape time: the daemon."""

    @property
    def dp(self) -> _Datapath: ...

    @property
    def plan(self) -> Plan | None: ...

    @property
    def failed(self) -> Mapping[int, str]: ...

    @property
    def failed_kind(self) -> Mapping[int, str]: ...

    @property
    def model(self) -> Model: ...

    @property
    def disabled_why(self) -> str | None: ...


# (program id, map name) -> index -> (packets, bytes), as the kernel counts them
Reader = Callable[[int, str], dict[int, tuple[int, int]]]


class Collector:
    """The metrics read when Prometheus scrapes.  The main loop changes the
    daemon meanwhile: containers are copied before they are walked (one C
    call under the GIL), and programs are opened by id, so one replaced
    meanwhile reads as gone rather than through a reused descriptor."""

    def __init__(self, daemon: Observed, read: Reader = program_counters) -> None:
        self.daemon, self.read = daemon, read
        self.lock = threading.Lock()  # held by a scrape; close() waits for it
        self.closed = False

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            if self.closed:
                return
            d = self.daemon
            attached = list(d.dp.attached.values())
            yield from self._packets(attached)
            yield from self._rules()
            yield from self._maps(d.dp.map_fill())
            yield GaugeMetricFamily("tna_fdb_entries_waiting", "FDB entries of accelerated bridges that did not "
                                    "fit in tna_fdb: their frames take the kernel path", d.dp.fdb_waiting())
            # failed_kind is looked up only for what failed still lists
            failed = [d.failed_kind.get(i, "attach_failed") for i in list(d.failed)]
            yield from self._interfaces(attached, d.plan, failed)
            age = d.dp.lease.age()
            lease = GaugeMetricFamily("tna_lease_age_seconds", "Time since the datapath's lease was last renewed "
                                      "(programs pass everything to the kernel once it passes 1 s)")
            if age is not None:
                lease.add_metric([], age)
            yield lease
            yield GaugeMetricFamily("tna_fw_held_flows", "Flows a narrowed hold keeps on the kernel path while "
                                    "the programs for changed rules load", d.dp.lease.held_flows())
            yield from self._routes(d.model.routes)
            yield GaugeMetricFamily("tna_fast_path_disabled", "1 while a netfilter rule set TNA does not model "
                                    "keeps all traffic on the kernel path", 1 if d.disabled_why else 0)

    def _counters(self, prog_id: int, map_name: str) -> dict[int, tuple[int, int]]:
        try:
            return self.read(prog_id, map_name)
        except OSError as e:  # one program's map: the others are still worth a scrape
            log.debug("metrics: program %d map %s: %s", prog_id, map_name, e)
            return {}

    def _packets(self, attached: list[Running]) -> Iterator[Metric]:
        labels = ["iface", "hook", "reason"]
        pkts = CounterMetricFamily("tna_packets", "Packets the fast path saw, by interface, hook and reason "
                                   "(FORWARDED: forwarded, FW_DROP and FW_INPUT_DROP: dropped, any other: "
                                   "handed to the kernel)", labels=labels)
        byts = CounterMetricFamily("tna_bytes", "Bytes of tna_packets_total", labels=labels)
        for att in attached:
            for i, (p, b) in self._counters(att.prog_id, abi.MAP_STATS).items():
                if i < len(abi.REASONS):
                    pkts.add_metric([att.plan.name, att.plan.hook, abi.REASONS[i]], p)
                    byts.add_metric([att.plan.name, att.plan.hook, abi.REASONS[i]], b)
        yield pkts
        yield byts

    def _rules(self) -> Iterator[Metric]:
        """Per filter rule, what the fast path applied over every program
        and the programs before them (the kernel counts the rest: iptables
        -L -v); by what each rule is (tna/deploy/rulecounts.py), labelled
        by the last rule sets read."""
        counts = self.daemon.dp.rule_counts
        version = counts.version
        running = self._rule_counters()  # outside the lock: an attach waits for none of it
        with counts.lock:
            if counts.version != version:  # counts moved between a program and the carried ones
                running = self._rule_counters()
            rules = counts.by_rule(running)
        totals: dict[tuple[str, ...], tuple[int, int]] = {}
        for r, (p, b) in rules:
            text = r.text if len(r.text) <= RULE_TEXT_MAX else r.text[:RULE_TEXT_MAX - 3] + "..."
            key = (f"ipv{r.family}", r.table, r.chain, str(r.index) if r.index else "policy", text)
            tp, tb = totals.get(key, (0, 0))
            totals[key] = (tp + p, tb + b)
        labels = ["family", "table", "chain", "rule", "text"]
        pkts = CounterMetricFamily("tna_rule_packets", "Packets a rule (rule: its position in the chain, "
                                   "or policy) matched on the fast path", labels=labels)
        byts = CounterMetricFamily("tna_rule_bytes", "Bytes of tna_rule_packets_total", labels=labels)
        for key, (p, b) in totals.items():
            pkts.add_metric(list(key), p)
            byts.add_metric(list(key), b)
        yield pkts
        yield byts

    def _rule_counters(self) -> dict[int, dict[int, tuple[int, int]]]:
        return {a.prog_id: self._counters(a.prog_id, abi.MAP_FW_RULES)
                for a in list(self.daemon.dp.attached.values()) if a.plan.firewall is not None}

    @staticmethod
    def _routes(routes: RouteTable) -> Iterator[Metric]:
        count = GaugeMetricFamily("tna_routes", "Routes in the kernel's tables, by family", labels=["family"])
        loading = GaugeMetricFamily("tna_routes_loading", "1 while the family's route dump is under way "
                                    "(its route MTU and multipath guards conservative)", labels=["family"])
        for family, name in ((AF_INET, "ipv4"), (AF_INET6, "ipv6")):
            count.add_metric([name], routes.count(family))
            loading.add_metric([name], 1 if routes.loading(family) else 0)
        yield count
        yield loading

    @staticmethod
    def _maps(fill: dict[str, tuple[int, int]]) -> Iterator[Metric]:
        entries = GaugeMetricFamily("tna_map_entries", "Entries the daemon keeps in a BPF map", labels=["map"])
        capacity = GaugeMetricFamily("tna_map_capacity", "Entries a BPF map can hold", labels=["map"])
        for name, (n, cap) in sorted(fill.items()):
            entries.add_metric([name], n)
            capacity.add_metric([name], cap)
        yield entries
        yield capacity

    @staticmethod
    def _interfaces(attached: list[Running], plan: Plan | None, failed: list[str]) -> Iterator[Metric]:
        hooks = GaugeMetricFamily("tna_interfaces", "Interfaces with a TNA program attached, by hook", labels=["hook"])
        for hook in ("xdp", "tc"):
            hooks.add_metric([hook], sum(1 for a in attached if a.plan.hook == hook))
        yield hooks
        alone = GaugeMetricFamily("tna_interfaces_left_alone", "Interfaces on the kernel path only, by reason "
                                  "(`tna status` says why in words)", labels=["reason"])
        kinds = [s.kind for s in list(plan.skipped.values())] if plan is not None else []
        kinds += failed
        for kind in SKIP_KINDS + FAILURE_KINDS:
            alone.add_metric([kind], kinds.count(kind))
        yield alone


class Metrics:
    """The daemon's registry: event counters the daemon feeds, the
    scrape-time collector, and the HTTP server once serve() runs."""

    def __init__(self, daemon: Observed, read: Reader = program_counters) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconcile_seconds = Histogram("tna_reconcile_duration_seconds", "Time to make the kernel match the "
                                           "configuration after a change", buckets=RECONCILE_BUCKETS, registry=r)
        self.compile_seconds = Histogram("tna_compile_duration_seconds", "Time clang took to compile a program "
                                         "(cache misses only)", buckets=COMPILE_BUCKETS, registry=r)
        self.cache_hits = Counter("tna_compile_cache_hits", "Programs found compiled in the cache", registry=r)
        self.cache_misses = Counter("tna_compile_cache_misses", "Programs clang had to compile", registry=r)
        self.resyncs = Counter("tna_netlink_resyncs", "Times the model was rebuilt from a full netlink dump "
                               "(events overran the socket)", registry=r)
        self.overruns = Counter("tna_netlink_overruns", "Times an event socket overran (ENOBUFS): events were "
                                "lost, so the datapath held (RESYNC) until a resync", registry=r)
        self.nft_commits = Counter("tna_nftables_commits", "nftables commits followed, by how: elements (set "
                                   "members only: a map update) or reread (the rule sets read again)", ["how"],
                                   registry=r)
        Info("tna", "The running tna", registry=r).info({"version": __version__})
        self.collector = Collector(daemon, read)
        r.register(self.collector)
        self._server: WSGIServer | None = None

    def compiled(self, seconds: float | None) -> None:
        """compile_source()'s observer: None for a cache hit, else clang's time."""
        if seconds is None:
            self.cache_hits.inc()
        else:
            self.cache_misses.inc()
            self.compile_seconds.observe(seconds)

    def serve(self, host: str, port: int) -> None:
        """Listen on host:port (a thread of the library's); MetricsError if
        that address cannot be had."""
        # no `_created` gauge beside every counter and histogram: a process-wide
        # switch of the library, and this process's metrics are all ours
        disable_created_metrics()
        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as e:  # a port in use, an address not on this box, a name that does not resolve
            raise MetricsError(f"metrics address {host}:{port}: cannot listen: {e.strerror or e}") from None
        log.info("metrics at http://%s/metrics", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def close(self) -> None:
        """Stop serving; a scrape under way finishes first (the datapath is
        torn down after this)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self.collector.lock:
            self.collector.closed = True
