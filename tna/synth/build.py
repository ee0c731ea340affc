"""Synthesis' product for one interface plan: a compiled program and what
its rule-set maps must hold before it may run.  Deploy loads it (and
nothing of the renderer, the compiler or the rule-set code)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tna.model.firewall import Firewall
from tna.synth import setgen
from tna.synth.compile import CompileError, CompileObserver, compile_source, object_path
from tna.synth.fwgen import RuleRef, all_set_entries, rule_refs
from tna.synth.planner import IfacePlan
from tna.synth.render import render


@dataclass(frozen=True, eq=False)
class Artifact:
    obj: Path            # the BPF object (cached by source hash)
    source: Path         # the C it was compiled from (`tna source`)
    rule_counters: int   # entries of tna_fw_rules: one per counted filter rule and policy
    # the rule set the programs share set maps for, and those maps' entries
    # by map name (filled before the program can be attached)
    firewall: Firewall | None
    sets: dict[str, dict[bytes, bytes]]
    # the mirrored ipsets' maps and their capacities (the daemon fills them)
    ipset_maps: dict[str, int]
    refs: list[RuleRef]  # what each tna_fw_rules id counts (fwgen.rule_refs())


def render_plan(plan: IfacePlan) -> str:
    return render(plan.hook, plan.modules, dev_bound=plan.hook == "xdp", firewall=plan.firewall)


def build(plan: IfacePlan, cache_dir: Path | None = None, observe: CompileObserver | None = None,
          source: str | None = None) -> Artifact:
    """source: plan's, rendered already."""
    path = compile_source(render_plan(plan) if source is None else source, cache_dir, observe)
    refs = rule_refs(plan.firewall)
    return Artifact(path, path.with_suffix(".c"), max(1, len(refs)), plan.firewall, all_set_entries(plan.firewall),
                    setgen.map_sizes(plan.firewall.ipsets if plan.firewall else ()), refs)


def build_all(plans: Iterable[IfacePlan], cache_dir: Path | None = None, observe: CompileObserver | None = None,
              rendered: Callable[[dict[int, Path]], None] | None = None) -> dict[int, Artifact | Exception]:
    """Each plan's artifact by ifindex, or the error of its build.  An
    artifact depends on the program's shape only (ifindex and MAC are set
    at the load), so each shape is built once, and the shapes at once (each
    clang is a process of its own): an uplink's router program and the
    container ports' bridge program no longer wait for each other.
    rendered(sources): told each plan's Artifact.source before clang runs."""
    plans = list(plans)
    shapes: dict[tuple, IfacePlan] = {}
    for p in plans:
        shapes.setdefault((p.hook, p.modules, p.firewall), p)
    if not shapes:  # most reconciles (a route, an FDB entry) build nothing
        return {}
    sources: dict[tuple, str | Exception] = {}
    for shape, plan in shapes.items():
        try:
            sources[shape] = render_plan(plan)
        except Exception as e:  # raised again for each of its interfaces, where the caller handles it
            sources[shape] = e
    if rendered is not None:
        with contextlib.suppress(CompileError):  # no clang: each build says so
            paths = {shape: object_path(src, cache_dir).with_suffix(".c") for shape, src in sources.items()
                     if isinstance(src, str)}  # a hash of the source and the headers: once per shape
            rendered({p.ifindex: paths[shape] for p in plans if (shape := (p.hook, p.modules, p.firewall)) in paths})

    def one(shape: tuple) -> Artifact | Exception:
        source = sources[shape]
        try:
            return source if isinstance(source, Exception) else build(shapes[shape], cache_dir, observe, source)
        except Exception as e:  # raised again for each of its interfaces, where the caller handles it
            return e
    with ThreadPoolExecutor(max_workers=max(1, min(len(shapes), len(os.sched_getaffinity(0))))) as pool:
        built = dict(zip(shapes, pool.map(one, shapes), strict=True))
    return {p.ifindex: built[p.hook, p.modules, p.firewall] for p in plans}
