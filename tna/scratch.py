"""`tna check`'s proof that TNA's programs work on this kernel: in a scratch
network namespace of its own (never this one), a veth pair, and on it real
TNA programs, made as the daemon makes them (snapshot -> plan -> build:
render + clang) and deployed as it deploys them (Datapath: load, attach at
XDP on one veth and at TC ingress on the other, query, detach).

The first programs carry the firewall with its conntrack part (stateful
rules of both families), so their load proves the conntrack kfuncs; should
that load fail, programs without the firewall are tried, which still prove
clang, the headers, the verifier, bpf_fib_lookup (the router) and both
attach points.

The work runs in a child process that enters the namespace: everything it
attached dies with it and the namespace, and nothing in this process (whose
/proc/self names this namespace's run directory) ever sees the scratch one.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from pyroute2 import IPRoute, netns

from tna.bpf.libbpf import LibbpfError
from tna.deploy.datapath import Datapath
from tna.deploy.links import ForeignProgram, attached_tna_prog
from tna.model.config import Model
from tna.model.firewall import Firewall
from tna.model.hooks import firewall_plan
from tna.model.iptables import parse_save
from tna.netlink.sysctls import read_sysctls
from tna.netlink.watch import Watcher
from tna.runstate import RUN_ROOT
from tna.snapshot import model_from
from tna.synth.build import build
from tna.synth.compile import CompileError
from tna.synth.planner import IfacePlan, plan

XDP_VETH, TC_VETH = "tnachk-xdp", "tnachk-tc"
TIMEOUT_S = 120.0  # compiling both shapes cold takes a few seconds; a loaded box, more
CT_KFUNCS = ("bpf_xdp_ct_lookup", "bpf_skb_ct_lookup", "bpf_ct_release", "bpf_ct_change_timeout")
# libbpf, when the kernel's BTF lacks a kfunc; the verifier, when the program type may not call it
_KFUNC_REFUSED = re.compile(r"extern \(func ksym\) '(\w+)': not found|calling kernel function (\w+) is not allowed")

_STATEFUL = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -p tcp -m tcp --dport 23 -j DROP
COMMIT
"""


@dataclass
class HookProof:
    iface: str
    prog_id: int = 0   # the program the kernel reported attached
    error: str = ""    # the step that failed and why ("" when all went well)


@dataclass
class Proof:
    """What happened in the scratch namespace."""

    netns: str
    error: str = ""            # the namespace, the veths or the plan could not be set up
    compile_error: str = ""
    hooks: dict[str, HookProof] = field(default_factory=dict)  # "xdp", "tc"
    ct_error: str = ""         # why the programs with the conntrack part did not load
    ct_missing: list[str] = field(default_factory=list)  # kfuncs the kernel refused
    modules: tuple[str, ...] = ()  # of the last programs tried (those the hooks' results are for)


def refused_kfuncs(log: str) -> list[str]:
    """The conntrack kfuncs a load failure names as missing or not allowed."""
    names = {a or b for a, b in _KFUNC_REFUSED.findall(log)}
    return [k for k in CT_KFUNCS if k in names]


def stateful_firewall() -> Firewall:
    """FORWARD rules of both families that make conntrack track them."""
    fw, why = firewall_plan({4: parse_save(_STATEFUL), 6: parse_save(_STATEFUL)})
    assert fw is not None and fw.ct4 and fw.ct6, why
    return fw


def prove(timeout: float = TIMEOUT_S) -> Proof:
    """Create the scratch namespace, run the proof in a child inside it, and
    remove the namespace again whatever happens (Ctrl-C included)."""
    name = f"tnacheck-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        netns.create(name)
    except OSError as e:
        if e.errno != errno.EEXIST:  # EEXIST: the name is another's; else a half-made one is ours
            _remove(name)
        raise
    try:
        run_dir = RUN_ROOT / str(os.stat(f"/run/netns/{name}").st_ino)
        try:
            return _in_child(name, timeout)
        finally:
            # whatever the deployer kept in the namespace's run directory
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        _remove(name)


def _remove(name: str) -> None:
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass


def _in_child(name: str, timeout: float) -> Proof:
    ctx = multiprocessing.get_context("fork")  # no thread runs yet: check starts it first
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(name, send), name="tna-check-scratch", daemon=True)
    child.start()
    send.close()
    try:
        if not recv.poll(timeout):
            return Proof(name, error=f"the scratch proof gave no answer within {timeout:g} s")
        try:
            return recv.recv()
        except EOFError:
            child.join(5)
            return Proof(name, error=f"the scratch proof died (exit status {child.exitcode})")
    finally:
        recv.close()
        child.join(5)  # after Ctrl-C it detaches what it attached first
        if child.is_alive():
            child.kill()
            child.join()


def _child(name: str, send: Connection) -> None:
    logging.getLogger("tna").setLevel(logging.WARNING)  # no per-attach chatter in the report
    proof = Proof(name)
    try:
        netns.setns(name, flags=0)
        _run(proof)
    except KeyboardInterrupt:
        proof.error = proof.error or "interrupted"
    except Exception as e:  # reported, not raised: the parent prints a verdict
        proof.error = proof.error or f"{type(e).__name__}: {e}"
    try:
        send.send(proof)
    except OSError:  # the parent stopped listening (Ctrl-C): nobody to tell
        pass
    send.close()


def _setup() -> Model:
    """The veth pair, forwarding on (this namespace is ours), and the
    namespace read as the daemon reads one."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=XDP_VETH, kind="veth", peer=TC_VETH)
        for dev in (XDP_VETH, TC_VETH):
            ipr.link("set", index=ipr.link_lookup(ifname=dev)[0], state="up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text("1")
    watcher = Watcher()
    try:
        model = model_from(watcher.snapshot())
    finally:
        watcher.close()
    model.set_sysctls(read_sysctls())
    return model


def _run(proof: Proof) -> None:
    model = _setup()
    for fw in (stateful_firewall(), None):
        model.set_firewall(fw)
        p = plan(model, "auto", {XDP_VETH: "xdp", TC_VETH: "tc"})
        planned = {ip.name: ip for ip in p.ifaces.values()}
        if set(planned) != {XDP_VETH, TC_VETH}:
            proof.error = "the veths were not planned: " + "; ".join(f"{s.name}: {s.why}" for s in p.skipped.values())
            return
        try:
            proof.hooks, logs = _deploy([planned[XDP_VETH], planned[TC_VETH]])
        except CompileError as e:
            proof.compile_error = str(e)
            return
        proof.modules = planned[XDP_VETH].modules
        failed = [hp for hp in proof.hooks.values() if hp.error]
        if fw is None or not failed:
            return
        # a program without the firewall shows whether it was the conntrack part
        proof.ct_error = "; ".join(f"{hp.iface}: {hp.error}" for hp in failed)
        proof.ct_missing = refused_kfuncs(logs)


def _deploy(plans: list[IfacePlan]) -> tuple[dict[str, HookProof], str]:
    """Build each plan's program (all before anything loads), then load,
    attach, query and detach it as the daemon does; per hook what went
    wrong, and what libbpf and the verifier said about it."""
    arts = [build(ip) for ip in plans]
    dp = Datapath()
    out: dict[str, HookProof] = {}
    logs = ""
    try:
        for ip, art in zip(plans, arts, strict=True):
            hp = out[ip.hook] = HookProof(ip.name)
            try:
                att = dp.attach(ip, art)
                hp.prog_id = attached_tna_prog(ip.ifindex, ip.hook)
                if hp.prog_id != att.prog_id:
                    hp.error = f"the kernel reports program {hp.prog_id} attached, not {att.prog_id}"
                    continue
                dp.remove(ip.ifindex, "tna check: the scratch attach is proven")
                if (left := attached_tna_prog(ip.ifindex, ip.hook)) != 0:
                    hp.error = f"program {left} is still attached after the detach"
            except (OSError, ForeignProgram) as e:  # LibbpfError is an OSError
                hp.error = str(e)
                if isinstance(e, LibbpfError) and e.log:
                    logs += e.log
                    hp.error += "\n" + e.log.strip()[-1500:]
    finally:
        dp.remove_all()
    return out, logs
