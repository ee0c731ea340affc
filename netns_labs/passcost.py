"""What a packet the fast path hands to the kernel costs TNA's program, alone
(BPF_PROG_TEST_RUN, repeated, no traffic), on the benchmark's `passed`
frame (netns_labs/bench.py: an ASSURED flow that a rule TNA cannot express
accepts, so every packet is FW_KERNEL):

  python -m netns_labs.passcost [--rounds 15] [--dnat] [--carried]

per hook, the median ns per packet of: an empty program (netns_labs/bpf's
lab_pass / lab_tc_pass: what any program costs, test-run overhead
included), TNA's program passing at its entry (a hold), the full path
without the pass cache (FIB lookup, conntrack lookup and refresh, the
chain), and a pass-cache hit. The modes alternate round by round on one
loaded program (the empty one beside it).  --dnat: the flow is sent to
PUBLISHED, which a nat rule (and its entry's binding) translates to h2:
the path also looks up the binding, and a hit is one on the received
destination.  --carried: the chain without that rule, so the flow is
carried (FORWARDED, redirected): what a carried packet costs, in single
runs (a repeated run is fed the frame it rewrote, to another MAC: not the
router's to forward), their kernel-measured durations in steps of ~10 ns,
so the mean of the middle 80 % of 3,000 of them.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.bench import FRAME_DPORT, FRAME_SPORT, forward_rules
from netns_labs.lab import RouterLab, in_netns
from netns_labs.progs import build
from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.bpf.testrun import SkBuff, XdpMd, test_run
from tna.deploy.datapath import iface_cfg
from tna.deploy.lease import jiffies_hz, renew
from tna.deploy.mapwrite import load_with_sets
from tna.model.hooks import firewall_plan
from tna.model.iptables import parse_save
from tna.synth.compile import compile_source
from tna.synth.fwgen import all_set_entries, rule_refs
from tna.synth.render import render

PUBLISHED = "203.0.113.80"
MODES = {"pass at entry": {"pass_reason": abi.REASON["FW_CHANGED"]}, "full path, no cache": {},
         "pass-cache hit": {"pass_cache_jiffies": 1 << 30}}

EMPTY = "empty program"
CARRIED = {"carried (forwarded)": {}}


def _median_ns(prog: bpf.Program, frame: bytes, ctx: XdpMd | SkBuff) -> float:
    return statistics.median(test_run(prog, frame, repeat=2000, ctx=ctx)[2] for _ in range(5))


def _single_runs_ns(prog: bpf.Program, frame: bytes, ctx: XdpMd | SkBuff, runs: int = 3000) -> float:
    ns = sorted(test_run(prog, frame, ctx=ctx)[2] for _ in range(runs))
    return statistics.mean(ns[runs // 10: runs - runs // 10])


def measure(lab: RouterLab, hook: str, frame: bytes, rounds: int, dnat: bool,
            carried: bool = False) -> dict[str, float]:
    nat = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
           f"-A PREROUTING -d {PUBLISHED} -j DNAT --to-destination {lab.h2.ip4}\nCOMMIT\n") if dnat else ""
    fw, why = firewall_plan({4: parse_save(forward_rules(10, kernel_rule=not carried) + nat)})
    assert fw is not None, why
    modes = CARRIED if carried else MODES
    ifindex, egress = lab.ifindex(lab.r, "r-h1"), lab.ifindex(lab.r, "r-h2")
    obj = bpf.BpfObject(str(compile_source(render(hook, ("firewall", "router"), firewall=fw))))
    obj.set_initial_value(abi.SECTION_IFACE, iface_cfg(ifindex, lab.r_h1_mac, 0))
    obj.set_max_entries(abi.MAP_FW_RULES, max(1, len(rule_refs(fw))))
    runs: dict[str, list[float]] = {m: [] for m in (EMPTY, *modes)}
    with in_netns(lab.r), obj:
        sets = load_with_sets(obj, all_set_entries(fw))
        u32 = ctypes.c_uint32
        obj.map(abi.MAP_DEVMAP).update(bytes(u32(egress)), bytes(u32(egress)))
        obj.map(abi.MAP_EGRESS).update(bytes(u32(egress)), bytes(abi.TnaEgress()))
        hz = jiffies_hz(obj.program(abi.RENEW_PROGRAM), obj.map(abi.MAP_STATE))
        prog = obj.program(abi.PROGRAM_NAME)
        ctx = XdpMd(data_end=len(frame), ingress_ifindex=ifindex) if hook == "xdp" else SkBuff(ifindex=ifindex)
        empty_obj = bpf.BpfObject(str(build("lab_progs")))
        empty_obj.load()
        empty = empty_obj.program("lab_pass" if hook == "xdp" else "lab_tc_pass")
        timed = _single_runs_ns if carried else _median_ns
        for _ in range(rounds):
            runs[EMPTY].append(timed(empty, frame, ctx))
            for mode, cfg in modes.items():
                # conntrack as the daemon publishes it by default (checksums verified, the timeouts)
                renew(obj.program(abi.RENEW_PROGRAM), abi.TnaConfig(
                    lease_jiffies=3600 * hz, ct_flags=abi.TNA_CT_CSUM, ct_timeout_udp=120_000,
                    ct_timeout_udp_unreplied=30_000, **cfg))
                test_run(prog, frame, ctx=ctx)  # a hit needs the flow remembered first
                runs[mode].append(timed(prog, frame, ctx))
        empty_obj.close()
        for m in sets.values():
            m.close()
    return {mode: statistics.median(r) for mode, r in runs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--dnat", action="store_true", help=f"the flow DNAT'd from {PUBLISHED} to h2")
    ap.add_argument("--carried", action="store_true", help="no rule TNA cannot express: the flow is carried")
    args = ap.parse_args(argv)
    with RouterLab() as lab:
        lab.neigh(lab.r, "r-h2", lab.h2.ip4, lab.h2.mac)
        dst = PUBLISHED if args.dnat else lab.h2.ip4
        flow = ["-p", "udp", "-s", lab.h1.ip4, "-d", dst, "--sport", str(FRAME_SPORT), "--dport", str(FRAME_DPORT)]
        if args.dnat:  # the kernel's NAT (loaded by listing its table) sets the entry's binding
            lab.run(lab.r, ["iptables", "-t", "nat", "-S"])
            flow += ["--dst-nat", lab.h2.ip4]
        lab.run(lab.r, ["conntrack", "-I", *flow, "--timeout", "600", "--status", "SEEN_REPLY,ASSURED"])
        frame = bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / IP(src=lab.h1.ip4, dst=dst, ttl=64)
                      / UDP(sport=FRAME_SPORT, dport=FRAME_DPORT) / Raw(b"\0" * 18))
        print(f"{'hook':<5} {'mode':<22} {'ns/packet (' + ('trimmed mean' if args.carried else 'median') + ')':>25}")
        for hook in ("xdp", "tc"):
            for mode, ns in measure(lab, hook, frame, args.rounds, args.dnat, args.carried).items():
                print(f"{hook:<5} {mode:<22} {ns:>25.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
