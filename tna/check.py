"""`tna check`: can `tna run` work here?  A preflight that needs no daemon.

One verdict per check (OK, INFO, WARN, FAIL; why; what to do): the kernel,
BTF, privileges, clang, libbpf, the headers, bpffs; then real TNA programs
loaded and attached in a scratch namespace (tna/scratch.py); then this
namespace as `tna run` would see it, nothing attached: what it would
accelerate, what it would leave alone and why.  Exit status 0 when nothing
FAILs (WARNs allowed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tna import HELPERS_DIR, TEMPLATE_DIR, config
from tna.bpf import libbpf
from tna.config import Settings
from tna.runstate import lock_holder
from tna.scratch import CT_KFUNCS, Proof, prove
from tna.snapshot import take
from tna.synth.compile import CompileError, clang_version, compile_source
from tna.synth.planner import plan

OK, INFO, WARN, FAIL = "OK", "INFO", "WARN", "FAIL"

# XDP programs are bound to their device and ask the driver for out-of-band
# VLAN tags (bpf_xdp_metadata_rx_vlan_tag, Linux 6.8); TC programs need 6.3
# (bpf_cast_to_kern_ctx, the netdev family's xdp-features)
MIN_KERNEL = (6, 8)
MIN_LIBBPF = (1, 0)   # tna/bpf/libbpf.py binds the 1.x API
TESTED_CLANG = 14     # what the project is developed and tested with
# netlink, attaching and conntrack (NET_ADMIN); programs and maps by id,
# replacing and detaching (SYS_ADMIN, which also grants what CAP_BPF and
# CAP_PERFMON would: the kernel's bpf_capable()/perfmon_capable())
NEEDED_CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}
CAP_NET_RAW = 13      # iptables-legacy-save reads x_tables through a raw socket
BTF = Path("/sys/kernel/btf/vmlinux")
BPFFS = "/sys/fs/bpf"
# the Debian packages behind the headers clang may miss
HEADER_PACKAGES = {"bpf/": "libbpf-dev", "linux/": "linux-libc-dev", "asm/": "linux-libc-dev"}


@dataclass(frozen=True)
class Result:
    name: str
    status: str   # OK, INFO, WARN or FAIL
    detail: str   # what was found (the first line is what the text report shows)
    hint: str = ""  # what to do about a WARN or FAIL


# --- this machine ----------------------------------------------------------

def kernel(release: str) -> Result:
    m = re.match(r"(\d+)\.(\d+)", release)
    need = ".".join(map(str, MIN_KERNEL))
    why = f"TNA needs >= {need}: its XDP programs read the driver's VLAN tag hint"
    if m is None:
        return Result("kernel", FAIL, f"Linux {release}: version not understood ({why})", f"run Linux >= {need}")
    if (int(m[1]), int(m[2])) < MIN_KERNEL:
        return Result("kernel", FAIL, f"Linux {release} ({why})", f"run Linux >= {need}")
    return Result("kernel", OK, f"Linux {release} ({why})")


def btf(present: bool) -> Result:
    if present:
        return Result("btf", OK, f"{BTF} present (CO-RE reads kernel structs at this kernel's offsets)")
    return Result("btf", FAIL, f"{BTF} missing: CO-RE and the kfuncs need the kernel's BTF",
                  "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (every distribution kernel is)")


def privileges(euid: int, cap_eff: int) -> Result:
    """cap_eff: the CapEff mask of /proc/self/status."""
    missing = [name for name, bit in NEEDED_CAPS.items() if not cap_eff >> bit & 1]
    who = "root" if euid == 0 else f"uid {euid}"
    if missing:
        return Result("privileges", FAIL, f"{who} without {', '.join(missing)}",
                      f"grant {', '.join(missing)} (root in a container or under systemd may lack them)")
    if not cap_eff >> CAP_NET_RAW & 1:
        return Result("privileges", WARN, f"{who}: no CAP_NET_RAW, so iptables-legacy rules cannot be read",
                      "grant CAP_NET_RAW if iptables-legacy is in use (the fast path stays off otherwise)")
    return Result("privileges", OK, f"{who} with {', '.join(NEEDED_CAPS)}")


def cap_eff() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def clang(version: str | None) -> Result:
    """version: the first line of `clang --version`, None if there is no clang."""
    if version is None:
        return Result("clang", FAIL, "clang not found (TNA compiles its programs at run time)",
                      "apt-get install clang (or point TNA_CLANG at one)")
    m = re.search(r"version (\d+)", version)
    if m is None or int(m[1]) < TESTED_CLANG:
        return Result("clang", WARN, f"{version}: older than clang {TESTED_CLANG}, untested",
                      f"install clang >= {TESTED_CLANG} if the programs fail to compile")
    return Result("clang", OK, version)


def libbpf_result(version: str) -> Result:
    m = re.match(r"v?(\d+)\.(\d+)", version)
    if m is None or (int(m[1]), int(m[2])) < MIN_LIBBPF:
        return Result("libbpf", FAIL, f"libbpf {version}: TNA needs >= 1.0", "apt-get install libbpf1")
    return Result("libbpf", OK, f"libbpf {version}, loaded through tna/bpf/libbpf.py")


def system_headers() -> list[str]:
    """Every <header> the templates and TNA's headers include (linux/ first:
    libbpf's helper prototypes name its structs)."""
    pat = re.compile(r"^\s*#include <([^>]+)>", re.M)
    found = {h for f in (*HELPERS_DIR.glob("*.h"), *TEMPLATE_DIR.glob("*.j2")) for h in pat.findall(f.read_text())}
    return sorted(found, key=lambda h: (not h.startswith("linux/"), h))


def headers() -> Result:
    """TNA's templates and headers, and a probe that includes every system
    header they use, compiled as the programs are (tna/synth/compile.py)."""
    for f in (TEMPLATE_DIR / "main.c.j2", HELPERS_DIR / "tna_abi.h"):
        if not f.is_file():
            return Result("headers", FAIL, f"{f} missing: TNA's own templates and headers are not installed",
                          "reinstall tna")
    includes = system_headers()
    probe = "".join(f"#include <{h}>\n" for h in includes) + '#include "tna_abi.h"\n' \
        'char _license[] SEC("license") = "GPL";\n'
    try:
        compile_source(probe)
    except CompileError as e:
        return Result("headers", FAIL, f"{e}", compile_hint(str(e)))
    except OSError as e:  # the cache directory
        return Result("headers", FAIL, f"cannot compile into the cache: {e}",
                      "run as root, or set TNA_CACHE_DIR to a writable directory")
    return Result("headers", OK, f"templates in {TEMPLATE_DIR}, headers in {HELPERS_DIR}; "
                  f"{len(includes)} system headers compile")


def compile_hint(error: str) -> str:
    if "clang not found" in error:
        return "apt-get install clang"
    m = re.search(r"'([^']+)' file not found", error)
    if m is None:
        return "clang refused TNA's C: a bug, please report it with this output"
    pkg = next((p for prefix, p in HEADER_PACKAGES.items() if m[1].startswith(prefix)), None)
    return f"apt-get install {pkg}" if pkg else f"install the package that provides <{m[1]}>"


def bpffs(mounts: str) -> Result:
    """mounts: /proc/self/mounts.  Informational: TNA pins nothing (`tna
    status` finds maps through the attached programs)."""
    if any(f[1:3] == [BPFFS, "bpf"] for f in (line.split() for line in mounts.splitlines()) if len(f) > 2):
        return Result("bpffs", OK, f"mounted at {BPFFS} (TNA pins nothing: not needed)")
    return Result("bpffs", INFO, f"not mounted at {BPFFS}: not needed, TNA pins nothing",
                  f"only for bpftool users: mount -t bpf bpf {BPFFS}")


def machine() -> list[Result]:
    try:
        cv: str | None = clang_version()
    except CompileError:
        cv = None
    results = [kernel(os.uname().release), btf(BTF.exists()), privileges(os.geteuid(), cap_eff()),
               clang(cv), libbpf_result(libbpf.version())]
    results.append(headers() if cv is not None else
                   Result("headers", FAIL, "not checked: there is no clang to compile with", "install clang"))
    results.append(bpffs(Path("/proc/self/mounts").read_text()))
    return results


# --- the scratch namespace ----------------------------------------------------

def judge(proof: Proof, mode: str) -> list[Result]:
    """Verdicts on the scratch proof.  A hook `tna run --hook MODE` would
    not use only WARNs."""
    if proof.error:
        return [Result("scratch", FAIL, f"scratch namespace {proof.netns}: {proof.error}",
                       "run tna check with the privileges tna run has")]
    if proof.compile_error:
        return [Result("compile", FAIL, proof.compile_error, compile_hint(proof.compile_error))]
    out = [Result("compile", OK, f"programs ({', '.join(proof.modules)}) planned, rendered and compiled "
                  "as tna run builds them")]
    for hook, where in (("xdp", "XDP"), ("tc", "TC ingress")):
        hp = proof.hooks[hook]
        if hp.error:
            used = mode in ("auto", hook)
            out.append(Result(hook, FAIL if used else WARN, f"{where} on {hp.iface}: {hp.error}",
                              "such interfaces would stay on the kernel path (the whole message, the "
                              "verifier's included, is in tna check --json)"
                              + ("" if used else f"; --hook {mode} does not use {hook}")))
        else:
            out.append(Result(hook, OK, f"loaded (verifier OK), attached at {where} on {hp.iface} "
                              f"(program {hp.prog_id}), queried, detached"))
    loaded = [h for h in proof.hooks.values() if not h.error]
    out.append(Result("bpf_fib_lookup", OK, "called by the router module of the programs the verifier accepted")
               if loaded else Result("bpf_fib_lookup", FAIL, "not proven: no program loaded"))
    out.append(_conntrack(proof, bool(loaded)))
    return out


def _conntrack(proof: Proof, loaded: bool) -> Result:
    names = ", ".join(CT_KFUNCS)
    if not proof.ct_error and "firewall" in proof.modules:
        return Result("conntrack", OK, f"{names}: programs with stateful rules loaded")
    hint = ("modprobe nf_conntrack (it loads with the first stateful iptables rule), then check again"
            if not Path("/sys/module/nf_conntrack").exists()
            else "a kernel with CONFIG_NF_CONNTRACK and its BPF kfuncs (CONFIG_DEBUG_INFO_BTF_MODULES=y)")
    if proof.ct_missing:
        return Result("conntrack", WARN, f"conntrack kfuncs missing ({', '.join(proof.ct_missing)}): "
                      "stateful rules will stay on the kernel path", hint)
    if not loaded:
        return Result("conntrack", WARN, "not proven: no program loaded", "see the xdp and tc checks")
    return Result("conntrack", WARN, f"programs with stateful rules did not load: {proof.ct_error}",
                  "stateful rules will stay on the kernel path; please report this output")


def scratch(mode: str) -> tuple[list[Result], str | None]:
    try:
        proof = prove()
    except OSError as e:  # the namespace itself could not be made
        return [Result("scratch", FAIL, f"cannot create a scratch network namespace: {e}",
                       "run tna check with the privileges tna run has")], None
    return judge(proof, mode), proof.netns


# --- this namespace ---------------------------------------------------------

def namespace(settings: Settings) -> tuple[list[Result], dict[str, Any]]:
    """What `tna run` with these settings would do here, from one snapshot
    taken as it takes it; nothing is attached."""
    pid = lock_holder()
    results = [Result("daemon", INFO, f"`tna run` (pid {pid}) is active in this namespace; a second "
                      "would refuse to start", "tna status shows what it does") if pid is not None
               else Result("daemon", OK, "no `tna run` active in this namespace")]
    try:
        model, disabled = take()
    except Exception as e:  # netlink through pyroute2 (KeyError when a group may not be joined), the tools
        results.append(Result("namespace", WARN, f"this namespace could not be read: {type(e).__name__}: {e}",
                              "run tna check with the privileges tna run has"))
        return results, {}
    mode = settings.hook
    p = plan(model, mode, settings.iface_hook, settings.ignore)
    ifaces = {ip.name: {"hook": ip.hook, "why": ip.hook_why, "modules": list(ip.modules)} for ip in p.ifaces.values()}
    left = {s.name: s.why for s in p.skipped.values()}
    if disabled:
        results.append(Result("netfilter", WARN, f"the fast path would be disabled: {disabled}",
                              "all traffic stays on the kernel path while that rule set exists"))
    else:
        results.append(Result("netfilter", OK, "filter rules would be compiled into the fast path"
                              if model.firewall else "no filter rules to compile in"))
    if not ifaces:
        results.append(Result("accelerate", WARN, "no interface would be accelerated", "see why below"))
    elif disabled:
        results.append(Result("accelerate", INFO, f"{len(ifaces)} interfaces would get programs, passing all "
                              "traffic to the kernel while the fast path is disabled"))
    else:
        results.append(Result("accelerate", OK, f"{len(ifaces)} interfaces would be accelerated"))
    return results, {"mode": mode, "disabled": disabled, "ifaces": ifaces, "left_alone": left}


# --- the report -------------------------------------------------------------

def exit_status(checks: list[Result]) -> int:
    return 1 if any(r.status == FAIL for r in checks) else 0


def report(checks: list[Result], ns: dict[str, Any], scratch_netns: str | None) -> dict[str, Any]:
    return {"ok": exit_status(checks) == 0, "checks": [asdict(r) for r in checks], "namespace": ns,
            "scratch_netns": scratch_netns}


def text(rep: dict[str, Any]) -> str:
    lines = []
    for r in rep["checks"]:
        hint = f" -> {r['hint']}" if r["hint"] and r["status"] in (WARN, FAIL) else ""
        lines.append(f"{r['status']:<4} {r['name']:<14} {r['detail'].splitlines()[0]}{hint}")
    ns = rep["namespace"]
    if ns:
        lines.append(f"this namespace under `tna run --hook {ns['mode']}`:")
        for name, i in sorted(ns["ifaces"].items()):
            lines.append(f"     {name:<14} {i['hook']} ({','.join(i['modules'])}): {i['why']}")
        for name, why in sorted(ns["left_alone"].items()):
            lines.append(f"     {name:<14} left alone: {why}")
    lines.append("tna run can work here" if rep["ok"] else "tna run cannot work here: fix what FAILs")
    return "\n".join(lines)


def settings_for(args: argparse.Namespace) -> tuple[Settings | None, Result]:
    """The settings `tna run` would start with (the same file, --hook winning),
    and the verdict on the file."""
    src = config.source(args.config, os.environ)
    try:
        settings = config.merge(config.read(src), config.Flags(hook=args.hook))
    except config.ConfigError as e:
        return None, Result("config", FAIL, str(e), "fix the file: tna run would refuse to start")
    found = f"{src.path}" if src.path.exists() else f"none ({src.path} does not exist): the defaults"
    return settings, Result("config", OK, f"configuration: {found}")


def main(args: argparse.Namespace) -> int:
    settings, verdict = settings_for(args)
    checks = [*machine(), verdict]
    found, netns = scratch(settings.hook if settings else "auto")
    checks += found
    ns_checks, ns = namespace(settings) if settings else ([], {})
    rep = report(checks + ns_checks, ns, netns)
    print(json.dumps(rep, indent=1) if args.json else text(rep))
    return exit_status(checks + ns_checks)
