"""The configuration file on a running daemon: SIGHUP applies a new file
(an interface left alone is detached, another moves to its new hook) and
keeps the old settings when the new file is invalid."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from netns_labs.lab import RouterLab, ping, py, wait_for
from netns_labs.tna_proc import Tna, host_xdp

pytestmark = pytest.mark.root


def _tna_on(lab: RouterLab, dev: str) -> str:
    """What of TNA the kernel shows on dev: XDP and TC ingress programs."""
    link = lab.run(lab.r, ["ip", "-d", "link", "show", "dev", dev]).stdout
    tc = lab.run(lab.r, ["tc", "filter", "show", "dev", dev, "ingress"], check=False).stdout
    return ("xdp " if "prog/xdp" in link else "") + ("tc" if "bpf" in tc else "")


def _forwarded(st: dict, dev: str) -> int:
    return st["ifaces"][dev]["reasons"].get("FORWARDED", {}).get("packets", 0)


def test_sighup_applies_a_new_file_and_keeps_it_when_the_next_is_invalid(router_lab: RouterLab,
                                                                           tmp_path: Path) -> None:
    lab = router_lab
    host_xdp(lab, lab.h1.ns, lab.h1.dev)  # r-h1 would be a valid XDP egress: ignore is what keeps it out
    cfg = tmp_path / "tna.toml"
    cfg.write_text('hook = "tc"\n')
    tna = Tna(lab, lab.r, "--config", str(cfg))
    try:
        st = tna.wait_attached(["r-h1", "r-h2"])
        assert st["ifaces"]["r-h1"]["hook"] == st["ifaces"]["r-h2"]["hook"] == "tc"
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
        assert _forwarded(tna.status() or {}, "r-h1") >= 5

        cfg.write_text('hook = "tc"\nignore = ["r-h1"]\n[iface_hook]\nr-h2 = "xdp"\n')
        tna.proc.send_signal(signal.SIGHUP)

        def applied() -> bool:
            st = tna.status() or {"ifaces": {}, "skipped": {}}
            h2 = st["ifaces"].get("r-h2", {})
            return ("r-h1" not in st["ifaces"] and st["skipped"].get("r-h1") is not None
                    and h2.get("hook") == "xdp" and h2.get("attached", False))
        assert wait_for(applied, 60, 0.5), tna.output()
        st = tna.status() or {}
        assert st["skipped"]["r-h1"] == "left alone by configuration (ignore = r-h1)"
        assert _tna_on(lab, "r-h1") == "" and _tna_on(lab, "r-h2") == "xdp "
        text = lab.run(lab.r, py("tna", "status"), cwd=RouterLab.repo).stdout
        assert "  r-h1         left alone by configuration (ignore = r-h1)\n" in text
        # plain Linux for everything touching r-h1: r-h2's program redirects nothing into it
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip6, 5).stdout
        after = tna.status() or {}
        assert _forwarded(after, "r-h2") == 0 and sum(
            c["packets"] for c in after["ifaces"]["r-h2"]["reasons"].values()) >= 10
        assert f"configuration: {cfg}\n" in tna.output()
        assert ('SIGHUP: configuration re-read: ignore: [] -> ["r-h1"]; iface_hook: {} -> {"r-h2": "xdp"}'
                in tna.output())

        cfg.write_text('hook = "xpd"\n')
        tna.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "keeping the previous settings" in tna.output(), 60, 0.2), tna.output()
        assert f'{cfg}: hook: expected "auto", "xdp" or "tc", got "xpd"' in tna.output()
        assert tna.proc.poll() is None
        st = tna.status() or {}
        assert st["skipped"]["r-h1"] == "left alone by configuration (ignore = r-h1)"
        assert st["ifaces"]["r-h2"]["hook"] == "xdp" and st["ifaces"]["r-h2"]["attached"]
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    finally:
        assert tna.stop() == 0, tna.output()
        tna.close()
    assert _tna_on(lab, "r-h1") == _tna_on(lab, "r-h2") == ""


def test_a_bad_file_at_start_attaches_nothing(router_lab: RouterLab, tmp_path: Path) -> None:
    lab = router_lab
    cfg = tmp_path / "tna.toml"
    cfg.write_text("ignore = r-h1\n")
    res = lab.run(lab.r, ["env", f"TNA_CONFIG={cfg}", *py("tna", "run")], check=False, cwd=RouterLab.repo)
    assert res.returncode == 2 and "not valid TOML" in res.stderr and "Traceback" not in res.stderr
    assert _tna_on(lab, "r-h1") == _tna_on(lab, "r-h2") == ""
