"""`tna check`: the verdicts and the exit status on fake findings (no root),
and the whole preflight run inside a lab namespace (root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netns_labs.lab import Lab, RouterLab, py
from tests.test_model import model_after
from tna import check, runstate
from tna.check import FAIL, INFO, OK, WARN, Result
from tna.cli import build_parser
from tna.config import Settings
from tna.model.config import Sysctls
from tna.scratch import HookProof, Proof, refused_kfuncs, stateful_firewall

ALL_CAPS = (1 << 41) - 1


def _proof(**kw: object) -> Proof:
    p = Proof("tnacheck-1-abc", modules=("firewall", "router"),
              hooks={"xdp": HookProof("tnachk-xdp", 7), "tc": HookProof("tnachk-tc", 8)})
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def _statuses(results: list[Result]) -> dict[str, str]:
    return {r.name: r.status for r in results}


def test_exit_status_fails_only_on_fail() -> None:
    fine = [Result("a", OK, "x"), Result("b", WARN, "y", "do z"), Result("c", INFO, "w")]
    assert check.exit_status(fine) == 0
    assert check.exit_status([*fine, Result("d", FAIL, "broken", "fix it")]) == 1
    assert check.report(fine, {}, None)["ok"] is True


def test_text_is_one_line_per_check_with_what_to_do() -> None:
    results = [Result("kernel", OK, "Linux 6.18"), Result("clang", FAIL, "clang not found\nmore", "install clang"),
               Result("bpffs", INFO, "not mounted", "only for bpftool users")]
    ns = {"mode": "auto", "disabled": None, "ifaces": {"r-h1": {"hook": "tc", "why": "veth", "modules": ["router"]}},
          "left_alone": {"lo": "loopback"}}
    out = check.text(check.report(results, ns, "tnacheck-1-abc")).splitlines()
    assert out[0].startswith("OK   kernel") and "->" not in out[0]
    assert out[1].startswith("FAIL clang") and out[1].endswith("clang not found -> install clang")
    assert "->" not in out[2]  # an INFO needs nothing done
    assert any("r-h1" in line and "tc (router): veth" in line for line in out)
    assert any("lo" in line and "left alone: loopback" in line for line in out)
    assert out[-1] == "tna run cannot work here: fix what FAILs"


def test_kernel_version() -> None:
    assert check.kernel("6.18.44-fc-v857").status == OK
    assert check.kernel("6.8.0-1-amd64").status == OK
    assert check.kernel("6.7.12").status == FAIL
    assert check.kernel("5.15.0").status == FAIL
    assert check.kernel("banana").status == FAIL


def test_btf() -> None:
    assert check.btf(True).status == OK
    missing = check.btf(False)
    assert missing.status == FAIL and "CONFIG_DEBUG_INFO_BTF" in missing.hint


def test_privileges_are_capabilities_not_uid() -> None:
    assert check.privileges(0, ALL_CAPS).status == OK
    no_sys_admin = check.privileges(0, ALL_CAPS & ~(1 << 21))
    assert no_sys_admin.status == FAIL and "CAP_SYS_ADMIN" in no_sys_admin.detail
    # what the systemd units grant: CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON
    assert check.privileges(0, 1 << 12 | 1 << 13 | 1 << 21).status == OK
    assert check.privileges(1000, ALL_CAPS).status == OK
    assert check.privileges(1000, 0).status == FAIL
    assert check.privileges(0, ALL_CAPS & ~(1 << check.CAP_NET_RAW)).status == WARN


def test_toolchain_versions() -> None:
    assert check.clang(None).status == FAIL
    assert check.clang("Debian clang version 14.0.6").status == OK
    assert check.clang("clang version 11.1.0").status == WARN
    assert check.libbpf_result("v1.1").status == OK
    assert check.libbpf_result("v0.8").status == FAIL


def test_bpffs_is_informational() -> None:
    mounted = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n"
    assert check.bpffs(mounted).status == OK
    assert check.bpffs("sysfs /sys sysfs rw 0 0\n").status == INFO


def test_compile_hints_name_the_package() -> None:
    missing = "x.c:9:10: fatal error: 'bpf/bpf_helpers.h' file not found"
    assert check.compile_hint(missing) == "apt-get install libbpf-dev"
    assert check.compile_hint("fatal error: 'asm/types.h' file not found") == "apt-get install linux-libc-dev"
    assert check.compile_hint("clang not found: install it") == "apt-get install clang"
    assert "bug" in check.compile_hint("error: use of undeclared identifier 'x'")


def test_system_headers_are_what_the_templates_include() -> None:
    found = check.system_headers()
    assert {"linux/bpf.h", "bpf/bpf_helpers.h", "linux/pkt_cls.h"} <= set(found)
    assert found[0].startswith("linux/")


def test_a_clean_proof_is_all_ok() -> None:
    results = check.judge(_proof(), "auto")
    assert _statuses(results) == {"compile": OK, "xdp": OK, "tc": OK, "bpf_fib_lookup": OK, "conntrack": OK}
    assert "program 7" in next(r for r in results if r.name == "xdp").detail


def test_missing_conntrack_kfuncs_warn_only() -> None:
    results = check.judge(_proof(modules=("router",), ct_error="load failed",
                                 ct_missing=["bpf_xdp_ct_lookup"]), "auto")
    ct = next(r for r in results if r.name == "conntrack")
    assert ct.status == WARN and "stateful rules will stay on the kernel path" in ct.detail
    assert "bpf_xdp_ct_lookup" in ct.detail
    assert check.exit_status(results) == 0


def test_a_refused_hook_fails_only_when_the_mode_uses_it() -> None:
    broken = {"xdp": HookProof("tnachk-xdp", error="attach XDP to ifindex 2: Operation not supported"),
              "tc": HookProof("tnachk-tc", 8)}
    assert _statuses(check.judge(_proof(hooks=broken), "auto"))["xdp"] == FAIL
    assert _statuses(check.judge(_proof(hooks=broken), "xdp"))["xdp"] == FAIL
    tc_only = check.judge(_proof(hooks=broken), "tc")
    assert _statuses(tc_only)["xdp"] == WARN and check.exit_status(tc_only) == 0


def test_nothing_loaded_fails() -> None:
    broken = {h: HookProof(f"tnachk-{h}", error="load: Permission denied") for h in ("xdp", "tc")}
    st = _statuses(check.judge(_proof(hooks=broken, modules=("router",), ct_error="load: Permission denied"), "auto"))
    assert st["bpf_fib_lookup"] == FAIL and st["conntrack"] == WARN


def test_scratch_trouble_is_one_failure() -> None:
    results = check.judge(_proof(error="PermissionError: [Errno 1] Operation not permitted"), "auto")
    assert [(r.name, r.status) for r in results] == [("scratch", FAIL)]
    results = check.judge(_proof(compile_error="fatal error: 'linux/bpf.h' file not found"), "auto")
    assert [(r.name, r.status) for r in results] == [("compile", FAIL)]
    assert results[0].hint == "apt-get install linux-libc-dev"


def test_refused_kfuncs_are_read_from_the_logs() -> None:
    libbpf_log = "libbpf: extern (func ksym) 'bpf_skb_ct_lookup': not found in kernel or module BTFs\n"
    verifier_log = "0: R1=ctx() R10=fp0\ncalling kernel function bpf_xdp_ct_lookup is not allowed\n"
    assert refused_kfuncs(libbpf_log) == ["bpf_skb_ct_lookup"]
    assert refused_kfuncs(verifier_log) == ["bpf_xdp_ct_lookup"]
    # a verifier log lists every call it walked: naming a kfunc is no refusal
    assert refused_kfuncs("42: (85) call bpf_ct_release#12345\nR0 invalid mem access\n") == []


def test_the_scratch_firewall_tracks_both_families() -> None:
    fw = stateful_firewall()
    assert fw.ct4 and fw.ct6 and fw.fwd4 and fw.fwd6


def test_lock_holder_reads_proc_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runstate, "RUN_ROOT", tmp_path)
    assert runstate.lock_holder() is None
    lock = runstate.RunLock()
    try:
        assert runstate.lock_holder() == os.getpid()
    finally:
        lock.release()
    assert runstate.lock_holder() is None
    line = "3: FLOCK  ADVISORY  WRITE 5620 fe:00:1450019 0 EOF\n4: -> FLOCK  ADVISORY  WRITE 77 fe:00:1450019 0 EOF\n"
    assert runstate.flock_holder(line, 0xFE, 0, 1450019) == 5620
    assert runstate.flock_holder(line, 0xFE, 0, 1450018) is None


def test_saved_rule_counts_are_taken_once_and_only_in_their_namespace(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """They live beside the run directory (a stop removes that) and carry
    the namespace's cookie: an inode number can be another namespace's
    later in the same boot."""
    monkeypatch.setattr(runstate, "RUN_ROOT", tmp_path)
    runstate.save_rule_counts({"genid": 3, "carried": []})
    assert runstate.take_rule_counts() == {"genid": 3, "carried": [], "netns": runstate._netns_cookie()}
    assert runstate.take_rule_counts() is None
    runstate.save_rule_counts({"genid": 3})
    monkeypatch.setattr(runstate, "_netns_cookie", lambda: 1)
    assert runstate.take_rule_counts() is None
    runstate.save_rule_counts(None)
    assert list(tmp_path.iterdir()) == []


def test_the_command_line() -> None:
    args = build_parser().parse_args(["check", "--json", "--hook", "tc"])
    assert args.json and args.hook == "tc" and args.fn.__name__ == "cmd_check"


def test_this_namespace_as_tna_run_would_see_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "lock_holder", lambda: 4242)
    monkeypatch.setattr(check, "take", lambda: (model_after("dump"), None))
    results, ns = check.namespace(Settings())
    assert _statuses(results) == {"daemon": INFO, "netfilter": OK, "accelerate": OK}
    assert "pid 4242" in results[0].detail
    assert {n: i["hook"] for n, i in ns["ifaces"].items()} == {"r-h1": "tc", "r-h2": "tc"}
    assert ns["left_alone"] == {"lo": "loopback"}

    nat = "the IPv4 nat table has rules (not modelled)"
    monkeypatch.setattr(check, "take", lambda: (model_after("dump"), nat))
    results, ns = check.namespace(Settings(hook="xdp"))
    assert _statuses(results)["netfilter"] == WARN and nat in results[1].detail
    assert _statuses(results)["accelerate"] == INFO and ns["disabled"] == nat
    assert {i["hook"] for i in ns["ifaces"].values()} == {"xdp"}

    no_forwarding = model_after("dump")
    no_forwarding.set_sysctls(Sysctls())
    monkeypatch.setattr(check, "take", lambda: (no_forwarding, None))
    results, ns = check.namespace(Settings())
    assert _statuses(results)["accelerate"] == WARN and not ns["ifaces"]
    assert ns["left_alone"]["r-h1"].startswith("forwarding is disabled")


def test_an_unreadable_namespace_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "lock_holder", lambda: None)

    def fail() -> None:
        raise KeyError("no free address available")
    monkeypatch.setattr(check, "take", fail)
    results, ns = check.namespace(Settings())
    assert _statuses(results) == {"daemon": OK, "namespace": WARN} and ns == {}


_HOLD_LOCK = ("import sys; from tna.runstate import RunLock; lock = RunLock(); print('locked', flush=True); "
              "sys.stdin.read(); lock.release()")


@pytest.mark.root
def test_check_in_a_lab_namespace() -> None:
    """The whole preflight on this machine, run inside the lab's router
    while something holds the daemon's lock there: it passes, reports that
    `tna run`, its scratch namespace is gone afterwards, and it lists the
    router's veths as TC interfaces."""
    with RouterLab() as lab:
        holder = lab.popen(lab.r, [sys.executable, "-c", _HOLD_LOCK], cwd=Lab.repo, text=True,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        before = set(os.listdir("/run/netns"))
        res = lab.run(lab.r, py("tna", "check", "--json"), check=False, cwd=Lab.repo, timeout=120)
        after = set(os.listdir("/run/netns"))
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        assert res.returncode == 0, res.stdout + res.stderr
        rep = json.loads(res.stdout)
        assert rep["ok"]
        bad = [c for c in rep["checks"] if c["status"] not in (OK, WARN, INFO)]
        assert not bad, bad
        st = {c["name"]: c for c in rep["checks"]}
        for name in ("kernel", "btf", "privileges", "clang", "libbpf", "headers", "compile", "xdp", "tc",
                     "bpf_fib_lookup", "netfilter", "accelerate"):
            assert st[name]["status"] == OK, rep["checks"]
        assert st["daemon"]["status"] == INFO and f"pid {holder.pid}" in st["daemon"]["detail"]
        scratch = rep["scratch_netns"]
        assert scratch.startswith("tnacheck-") and scratch not in before and scratch not in after
        ns = rep["namespace"]
        assert ns["disabled"] is None
        for dev in ("r-h1", "r-h2"):
            assert ns["ifaces"][dev]["hook"] == "tc" and "router" in ns["ifaces"][dev]["modules"]
        assert ns["left_alone"]["lo"] == "loopback"


def test_the_settings_are_tna_runs(tmp_path: Path) -> None:
    """tna check judges with the file tna run would read, --hook winning; a
    bad file is a FAIL (tna run would refuse to start)."""
    conf = tmp_path / "tna.toml"
    conf.write_text('hook = "tc"\nignore = ["r-h2"]\n')
    settings, verdict = check.settings_for(build_parser().parse_args(["check", "--config", str(conf)]))
    assert verdict.status == OK and settings == Settings(hook="tc", ignore=("r-h2",))
    settings, _ = check.settings_for(build_parser().parse_args(["check", "--config", str(conf), "--hook", "xdp"]))
    assert settings is not None and settings.hook == "xdp"
    conf.write_text('hook = "fast"\n')
    settings, verdict = check.settings_for(build_parser().parse_args(["check", "--config", str(conf)]))
    assert settings is None and verdict.status == FAIL and "hook" in verdict.detail


def test_an_ignored_interface_is_left_alone_in_the_survey(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "lock_holder", lambda: None)
    monkeypatch.setattr(check, "take", lambda: (model_after("dump"), None))
    _, ns = check.namespace(Settings(ignore=("r-h2",)))
    assert list(ns["ifaces"]) == ["r-h1"] and "left alone by configuration" in ns["left_alone"]["r-h2"]


@pytest.mark.root
def test_tna_run_without_the_capabilities_refuses_clearly(router_lab: RouterLab) -> None:
    """Root without CAP_NET_ADMIN (a container, a unit with a narrow bounding
    set): one line naming what is missing, nothing attached, no traceback."""
    lab = router_lab
    res = lab.run(lab.r, ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-all",
                          *py("tna", "run")], check=False, cwd=Lab.repo, timeout=60)
    assert res.returncode == 1, res.stderr
    assert "tna: cannot run as root without CAP_NET_ADMIN" in res.stderr and "Traceback" not in res.stderr
    assert "prog/xdp" not in lab.run(lab.r, ["ip", "-d", "link", "show"]).stdout
    assert "clsact" not in lab.run(lab.r, ["tc", "qdisc", "show"]).stdout
