"""The campaign command (root; builds and removes its own namespaces):

  python -m netns_labs.difftest --seed S --cases N [--first K] [--frames F]
         [--hook auto --hook xdp] [--exclude-known] [--only I,J]

Case K of seed S is the same configuration and frames on every run.  Each
difference is printed with the case's configuration, the frames involved
and the command that reproduces it; a case with differences is re-run with
only those frames (all of them, for a state difference) to confirm a minimal
reproduction.  Exit status 1 if any difference was found, 2 if a case
could not be run (its lab broke: printed as ERROR).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass, field

from netns_labs.difftest.compare import Difference, compare, show
from netns_labs.difftest.gen import KNOWN_OPEN, Case, generate, kind_of
from netns_labs.difftest.run import LINUX, Runner, apply, lab_for

HOOKS = ("auto", "xdp")


@dataclass
class Result:
    case: Case
    diffs: dict[str, list[Difference]] = field(default_factory=dict)  # hook -> differences
    not_attached: dict[str, dict[str, str]] = field(default_factory=dict)  # hook -> interface -> why
    packets: int = 0  # frames sent, over all modes


def run_case(seed: int, index: int, hooks: tuple[str, ...] = HOOKS, nframes: int = 40,
             excluded: frozenset[str] = frozenset(), only: set[int] | None = None) -> Result:
    """Case index of seed through Linux, then each hook; a hook that leaves
    the kernel's state changed after it exits gets its successors a fresh lab."""
    kind = kind_of(seed, index)
    result: Result | None = None
    todo = list(hooks)
    while todo:
        with lab_for(kind) as topo:
            case = generate(seed, index, kind, topo.macs(), nframes, excluded)
            result = result or Result(case)
            apply(topo, case.setup)
            runner = Runner(topo, case)
            own4 = topo.own4()
            base = runner.observe(LINUX, only)
            sent = len(case.sends) if only is None else len(only)
            result.packets += sent
            while todo:
                hook = todo.pop(0)
                obs = runner.observe(hook, only)
                result.packets += sent
                if obs.not_attached:
                    result.not_attached[hook] = obs.not_attached
                diffs = compare(base, obs, own4)
                if diffs:
                    result.diffs[hook] = diffs
                if any(d.where.endswith("after exit") for d in diffs):
                    break
    assert result is not None
    return result


def report(result: Result, hook: str, confirmed: Result | None, only: set[int] | None, excluded: bool) -> str:
    case = result.case
    lines = [f"=== DIFFERENCE seed={case.seed} case={case.index} kind={case.kind} hook={hook} "
             f"features={','.join(sorted(case.features)) or '-'}"]
    for d in result.diffs[hook]:
        lines.append(f"- {d.where}" + (f" (frames {sorted(d.frames)})" if d.frames else ""))
        lines.append(d.detail)
    lines.append("configuration (after the lab's own setup, see netns_labs/lab.py):")
    lines += [f"  {c}" for c in case.setup]
    for i in sorted(only or ()):
        s = case.sends[i]
        lines.append(f"frame {i} from {s.host}: {show(s.frame)}")
    ok = confirmed is not None and hook in confirmed.diffs
    lines.append(f"reproduce: python -m netns_labs.difftest --seed {case.seed} --first {case.index} --cases 1 "
                 f"--hook {hook}" + ("" if only is None else f" --only {','.join(map(str, sorted(only))) or 'none'}")
                 + (" --exclude-known" if excluded else "")
                 + ("   (confirmed on a re-run)" if ok else "   (NOT confirmed on a re-run)"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns_labs.difftest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--frames", type=int, default=40, help="random frames per case")
    ap.add_argument("--hook", action="append", choices=("auto", "xdp", "tc", LINUX),
                    help="modes compared with Linux (default: auto and xdp; linux: a self-check)")
    ap.add_argument("--exclude-known", action="store_true", help="leave out KNOWN_OPEN features")
    ap.add_argument("--only", help="send only these frame indexes (comma-separated, or 'none')")
    args = ap.parse_args(argv)
    # a stopped campaign still removes its namespaces and daemons (the labs' finally blocks;
    # pyroute2's forked children do not run this: netns_labs/lab.py)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hooks = tuple(args.hook or HOOKS)
    excluded = KNOWN_OPEN if args.exclude_known else frozenset()
    only = None if args.only is None else {int(i) for i in args.only.split(",") if i.isdigit()}
    found = packets = 0
    t0 = time.monotonic()
    errors = 0
    for index in range(args.first, args.first + args.cases):
        try:
            result = run_case(args.seed, index, hooks, args.frames, excluded, only)
        except Exception as e:  # a lab that broke under the case: say so, go on with the next
            print(f"case {index}: ERROR, not compared: {type(e).__name__}: {e}"
                  f"{getattr(e, 'stderr', '') or ''}", flush=True)
            errors += 1
            continue
        packets += result.packets
        print(f"case {index} ({result.case.kind}, {len(result.case.sends)} frames, {result.packets} sent): "
              f"{'DIFFERENT on ' + ','.join(result.diffs) if result.diffs else 'same'}", flush=True)
        for hook, why in result.not_attached.items():
            print(f"  note: --hook {hook} left to the kernel: {why}")
        for hook, diffs in result.diffs.items():
            # a state difference may need every frame; a frame difference names its frames
            involved = only if only is not None or any(not d.frames for d in diffs) \
                else set().union(*(d.frames for d in diffs))
            try:
                confirmed: Result | None = run_case(args.seed, index, (hook,), args.frames, excluded, involved)
            except Exception as e:  # the lab broke: the difference stands unconfirmed
                print(f"  (re-run failed: {type(e).__name__}: {e})", flush=True)
                confirmed = None
            print(report(result, hook, confirmed, involved, bool(excluded)), flush=True)
            found += 1
    print(f"{args.cases - errors} cases compared, {packets} frames sent, {found} differences, {errors} errors, "
          f"{time.monotonic() - t0:.0f} s")
    return 1 if found else 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
