"""The daemon's life cycle and its guards, on real traffic in a netns lab."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from netns_labs.lab import Lab, RouterLab, ping, py, wait_for
from netns_labs.tna_proc import Tna, host_xdp, tna_leftovers
from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.deploy.counters import read_program_map
from tna.deploy.fdbmap import map_size

pytestmark = pytest.mark.root


def _leftovers(lab: RouterLab) -> str:
    """Anything of TNA still in the router namespace."""
    return tna_leftovers(lab, lab.r)


def test_stop_leaves_plain_linux(accelerated):
    lab, tna = accelerated
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    assert tna.stop() == 0
    assert _leftovers(lab) == ""
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip6, 3).stdout


def test_hung_daemon_fails_safe_killed_leaves_nothing_then_restart_takes_over(router_lab):
    lab = router_lab
    tna = Tna(lab, lab.r)
    first = tna.wait_attached(["r-h1", "r-h2"])
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    # a hung daemon: its programs stay attached, but pass everything once
    # the 1 s lease runs out
    os.killpg(tna.proc.pid, signal.SIGSTOP)
    time.sleep(1.5)
    before = tna.counters()
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 10).stdout
    after = tna.counters()
    assert after.get("LEASE_EXPIRED", 0) - before.get("LEASE_EXPIRED", 0) >= 20
    assert after.get("FORWARDED", 0) == before.get("FORWARDED", 0)
    # the routing change made behind the daemon's back is honoured
    lab.run(lab.r, ["ip", "route", "replace", "blackhole", "198.51.100.0/25"])
    assert " 100% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 2).stdout
    lab.run(lab.r, ["ip", "route", "del", "blackhole", "198.51.100.0/25"])
    # a dead one: its links close with it, no program stays (only the run
    # directory, which the next daemon takes over)
    tna.stop(signal.SIGKILL)
    tna.close()
    assert wait_for(lambda: _leftovers(lab) == "/run/tna state left", 10, 0.1), _leftovers(lab)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout

    second = Tna(lab, lab.r)
    try:
        st = second.wait_attached(["r-h1", "r-h2"])
        assert st["ifaces"]["r-h1"]["prog_id"] != first["ifaces"]["r-h1"]["prog_id"]
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 10).stdout
        assert second.counters().get("FORWARDED", 0) >= 20
    finally:
        assert second.stop() == 0, second.close()
    second.close()
    assert _leftovers(lab) == ""


def test_second_instance_refused(accelerated):
    lab, _tna = accelerated
    res = lab.run(lab.r, py("tna", "run"), check=False, cwd=Lab.repo, timeout=30)
    assert res.returncode != 0
    assert "another `tna run`" in res.stderr


def test_unresolved_neighbour_resolved_by_kernel_then_fast_path():
    with RouterLab(permanent_neighbours=False) as lab:
        tna = Tna(lab, lab.r)
        try:
            tna.wait_attached(["r-h1", "r-h2"])
            assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 10).stdout
            c = tna.counters()
            assert c.get("NO_NEIGH", 0) >= 1
            assert c.get("FORWARDED", 0) >= 15
        finally:
            assert tna.stop() == 0
            tna.close()


def stale_map_room(tna: Tna) -> int | None:
    """tna_stale's max_entries, through the program on r-h1."""
    prog_id = (tna.status() or {})["ifaces"]["r-h1"]["prog_id"]
    return read_program_map(prog_id, abi.MAP_STALE, lambda m: bpf.map_info(m.fd).max_entries)


def neighbours_kept(lab: RouterLab) -> int:
    """gc_thresh3 of the IPv4 and IPv6 neighbour tables (global: a namespace reads, cannot set them)."""
    out = lab.run(lab.r, ["ip", "ntable", "show"]).stdout
    return sum(int(n) for n in re.findall(r"thresh3 (\d+)", out))


def test_stale_neighbour_is_revalidated_by_kernel():
    with RouterLab(permanent_neighbours=False) as lab:
        tna = Tna(lab, lab.r)
        try:
            tna.wait_attached(["r-h1", "r-h2"])
            # room for every neighbour the kernel may keep: no STALE one is ever left out
            assert stale_map_room(tna) == map_size(neighbours_kept(lab), abi.STALE_SIZE) >= neighbours_kept(lab)
            assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
            lab.run(lab.r, ["ip", "neigh", "change", lab.h2.ip4, "dev", "r-h2", "nud", "stale"])
            assert wait_for(lambda: (tna.status() or {}).get("neighbours", 0) > 0, 30)
            time.sleep(0.5)  # let the daemon mirror the STALE state
            before = tna.counters()
            assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 10).stdout
            after = tna.counters()
            # the first packet after STALE goes to the kernel (which moves the
            # entry to DELAY and probes it); the rest take the fast path again
            assert after.get("NEIGH_STALE", 0) - before.get("NEIGH_STALE", 0) >= 1
            assert after.get("FORWARDED", 0) - before.get("FORWARDED", 0) >= 15
        finally:
            assert tna.stop() == 0
            tna.close()


def test_netfilter_rules_keep_traffic_on_kernel_path(accelerated):
    lab, tna = accelerated
    lab.run(lab.r, ["nft", "add", "table", "inet", "guard"])  # no chain: touches no packet
    # an empty nat table, ACCEPT policies
    lab.run(lab.r, ["iptables-restore"], input="*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
    assert wait_for(lambda: not tna.status()["disabled"] and tna.status()["firewall"], 30, 0.2)
    # a bridge family chain: not modelled (an inet one is compiled in)
    lab.run(lab.r, ["nft", "add", "table", "bridge", "guard"])
    lab.run(lab.r, ["nft", "add", "chain", "bridge", "guard", "fw", "{ type filter hook forward priority 0; }"])
    assert wait_for(lambda: "bridge guard" in (tna.status()["disabled"] or ""), 30, 0.2), tna.status()["disabled"]
    before = tna.counters()
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
    after = tna.counters()
    assert after.get("DISABLED", 0) - before.get("DISABLED", 0) >= 10
    assert after.get("FORWARDED", 0) == before.get("FORWARDED", 0)
    lab.run(lab.r, ["nft", "delete", "table", "inet", "guard"])
    lab.run(lab.r, ["nft", "delete", "table", "bridge", "guard"])
    lab.run(lab.r, ["nft", "delete", "table", "ip", "nat"])  # even empty, it makes conntrack track IPv4
    assert wait_for(lambda: not tna.status()["disabled"] and not tna.status()["firewall"], 30, 0.2)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
    assert tna.counters().get("FORWARDED", 0) - after.get("FORWARDED", 0) >= 10


def test_missing_clang_leaves_traffic_on_kernel_path(router_lab, tmp_path):
    lab = router_lab
    tna = Tna(lab, lab.r, env_extra={"TNA_CLANG": "clang-that-does-not-exist",
                                     "TNA_CACHE_DIR": str(tmp_path)})
    try:
        assert wait_for(lambda: len((tna.status() or {}).get("failed", {})) == 2, 30, 0.2), tna.output()
        st = tna.status()
        assert "clang not found" in st["failed"]["r-h1"]
        assert st["ifaces"] == {}
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
        assert "traffic stays on the kernel path" in tna.output()
    finally:
        assert tna.stop() == 0
        tna.close()
    assert _leftovers(lab) == ""


def test_foreign_xdp_program_is_left_alone(router_lab):
    lab = router_lab
    host_xdp(lab, lab.r, "r-h1")  # someone else's program on the router
    for dev in (lab.h1.dev, lab.h2.dev):
        host_xdp(lab, lab.h1.ns if dev == lab.h1.dev else lab.h2.ns, dev)
    tna = Tna(lab, lab.r, "--hook", "xdp")
    try:
        tna.wait_attached(["r-h2"])
        st = tna.status()
        assert "foreign" in st["failed"]["r-h1"]
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    finally:
        assert tna.stop() == 0
        tna.close()
    links = lab.run(lab.r, ["ip", "-d", "link", "show", "r-h1"]).stdout
    assert "prog/xdp" in links  # still theirs, untouched


def test_per_interface_override_status_and_source(router_lab):
    lab = router_lab
    host_xdp(lab, lab.h1.ns, lab.h1.dev)
    tna = Tna(lab, lab.r, "--iface-hook", "r-h2=xdp")
    try:
        st = tna.wait_attached(["r-h1", "r-h2"])
        assert (st["ifaces"]["r-h1"]["hook"], st["ifaces"]["r-h2"]["hook"]) == ("tc", "xdp")
        assert st["ifaces"]["r-h2"]["hook_why"] == "per-interface override"
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
        text = lab.run(lab.r, py("tna", "status"), cwd=Lab.repo).stdout
        assert "r-h2         xdp" in text and "FORWARDED" in text and "lo           left alone: loopback" in text
        source = lab.run(lab.r, py("tna", "source", "r-h2"), cwd=Lab.repo).stdout
        assert '#include "ctx_xdp.h"' in source and "tna_router(&pkt)" in source
        stats = json.loads(lab.run(lab.r, py("tna", "stats", "--json"), cwd=Lab.repo).stdout)
        assert stats["total"]["FORWARDED"]["packets"] >= 5
    finally:
        assert tna.stop() == 0
        tna.close()


def test_mac_change_reloads_without_recompiling(accelerated):
    lab, tna = accelerated
    old = tna.status()["ifaces"]["r-h1"]
    new_mac = "02:00:00:00:00:42"
    lab.run(lab.r, ["ip", "link", "set", "r-h1", "address", new_mac])
    lab.neigh(lab.h1.ns, lab.h1.dev, "192.0.2.1", new_mac)
    assert wait_for(lambda: tna.status()["ifaces"]["r-h1"]["prog_id"] != old["prog_id"], 30, 0.2)
    now = tna.status()["ifaces"]["r-h1"]
    assert now["source"] == old["source"]  # same object: a reload, not a recompile
    before = tna.counters().get("FORWARDED", 0)
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
    # the address change makes the kernel re-resolve r-h1's neighbour once
    assert tna.counters().get("FORWARDED", 0) - before >= 8


def test_xdp_egress_follows_the_peer_at_once(router_lab):
    """Under --hook xdp, r-h2 may carry redirected frames only while h2's
    veth runs XDP.  The kernel announces the change (netdev xdp-features);
    a ping running across both changes loses nothing."""
    lab = router_lab
    host_xdp(lab, lab.h1.ns, lab.h1.dev)
    tna = Tna(lab, lab.r, "--hook", "xdp")
    try:
        tna.wait_attached(["r-h1", "r-h2"])
        assert not tna.status()["ifaces"]["r-h2"]["xdp_egress"]
        # runs until stopped (at most 60 s): however slow the machine, both
        # changes happen while it runs
        pinger = lab.popen(lab.h1.ns, ["ping", "-c", "6000", "-i", "0.01", "-W", "1", lab.h2.ip4],
                           stdout=subprocess.PIPE, text=True)

        def moved(reason: str, since: int) -> bool:
            return tna.status()["ifaces"]["r-h1"]["reasons"].get(reason, {}).get("packets", 0) > since + 10
        assert wait_for(lambda: moved("EGRESS_UNSUPPORTED", 0), 30, 0.1)
        host_xdp(lab, lab.h2.ns, lab.h2.dev)
        assert wait_for(lambda: tna.status()["ifaces"]["r-h2"]["xdp_egress"], 30, 0.05)
        assert wait_for(lambda: moved("FORWARDED", 0), 30, 0.1)
        lab.run(lab.h2.ns, py("netns_labs.progs", "detach", lab.h2.dev), cwd=Lab.repo)
        assert wait_for(lambda: not tna.status()["ifaces"]["r-h2"]["xdp_egress"], 30, 0.05)
        unsupported = tna.status()["ifaces"]["r-h1"]["reasons"]["EGRESS_UNSUPPORTED"]["packets"]
        assert wait_for(lambda: moved("EGRESS_UNSUPPORTED", unsupported), 30, 0.1)
        pinger.send_signal(signal.SIGINT)
        out, _ = pinger.communicate(timeout=30)
        # the request in flight when ping was stopped may go unanswered
        counts = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert counts is not None, out
        sent, received = int(counts[1]), int(counts[2])
        assert received >= sent - 1 and "DUP" not in out, out
    finally:
        assert tna.stop() == 0
        tna.close()
