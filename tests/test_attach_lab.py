"""Attaching and detaching TNA changes no kernel configuration, on both hooks.

An XDP program attached by netlink makes the kernel announce NETDEV_CHANGE:
the bridge turns a port the admin disabled back on and IPv6 re-sends MLD
reports (tna/deploy/xdplink.py).  What an admin can see is compared before,
during and after `tna run`, and after a killed daemon and its successor.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

import pytest

from netns_labs.lab import BridgeLab, Lab, in_netns, ping, wait_for
from netns_labs.tna_proc import Tna, host_xdp, tna_running
from tna.bpf import abi, attach
from tna.bpf import libbpf as bpf

pytestmark = pytest.mark.root

PORTS = ["b-h1", "b-h2", "b-h3"]
# the kernel's own clocks, not configuration
TIMERS = {"hold_timer", "message_age_timer", "forward_delay_timer", "gc_timer", "hello_timer", "tcn_timer",
          "topology_change_timer"}


def _disabled_port_lab() -> BridgeLab:
    lab = BridgeLab()
    for a, b in ((lab.h1, lab.h2), (lab.h1, lab.h3), (lab.h2, lab.h3)):  # learned FDB entries
        ping(lab, a.ns, b.ip4, 1)
    lab.run(lab.b, ["bridge", "link", "set", "dev", "b-h2", "state", "0"])
    lab.run(lab.b, ["bridge", "link", "set", "dev", "b-h3", "cost", "7", "hairpin", "on"])
    return lab


def _assert_h2_cut_off(lab: BridgeLab) -> None:
    """b-h2 is disabled, as the admin set it: nothing crosses it."""
    port = json.loads(lab.run(lab.b, ["bridge", "-j", "link", "show", "dev", "b-h2"]).stdout)[0]
    assert port["state"] == "disabled", port
    assert " 100% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h3.ip4, 3).stdout


def _scrub(obj: object) -> object:
    """JSON without the kernel's running timers and the XDP program itself."""
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k not in TIMERS and k != "xdp"}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def _admin_view(lab: BridgeLab) -> dict[str, Any]:
    """Bridge ports, devices, offloads of both ends of every port."""
    view: dict[str, Any] = {
        "ports": _scrub(json.loads(lab.run(lab.b, ["bridge", "-d", "-j", "link", "show"]).stdout)),
        "links": _scrub(json.loads(lab.run(lab.b, ["ip", "-d", "-j", "link", "show"]).stdout)),
    }
    for h in lab.hosts:
        port = "b-" + h.dev.split("-")[0]  # h2-b -> b-h2
        view[port] = lab.run(lab.b, ["ethtool", "-k", port]).stdout
        view[h.dev] = lab.run(h.ns, ["ethtool", "-k", h.dev]).stdout
        view[h.dev + " link"] = _scrub(json.loads(lab.run(h.ns, ["ip", "-d", "-j", "link", "show", h.dev]).stdout))
    return view


def _fdb(lab: BridgeLab) -> set[str]:
    return {line for line in lab.run(lab.b, ["bridge", "fdb", "show", "br", "br0"]).stdout.splitlines()
            if "permanent" not in line}


def test_disabled_port_stays_disabled_during_and_after(hook):
    with _disabled_port_lab() as lab:
        _assert_h2_cut_off(lab)
        with tna_running(lab, lab.b, hook, PORTS, lab.hosts):
            _assert_h2_cut_off(lab)
        _assert_h2_cut_off(lab)


def test_killed_daemon_and_its_successor_keep_a_disabled_port_disabled(hook):
    with _disabled_port_lab() as lab:
        if hook == "xdp":
            for h in lab.hosts:
                host_xdp(lab, h.ns, h.dev)
        first = Tna(lab, lab.b, "--hook", hook)
        first.wait_attached(PORTS)
        first.stop(signal.SIGKILL)
        first.close()
        if hook == "xdp":  # its XDP links died with it: the kernel took the programs off
            assert wait_for(lambda: "prog/xdp" not in lab.run(lab.b, ["ip", "-d", "link", "show"]).stdout, 10)
        _assert_h2_cut_off(lab)
        second = Tna(lab, lab.b, "--hook", hook)
        try:
            second.wait_attached(PORTS)
            _assert_h2_cut_off(lab)
        finally:
            assert second.stop() == 0, second.close()
        second.close()
        _assert_h2_cut_off(lab)


def test_nothing_an_admin_sees_changes_but_the_program(hook):
    """Port states, flags and costs, device flags, carrier, MTUs, offloads
    of the ports, FDB entries: as before attaching, while attached and
    after.  The ports' peers lose TSO/GSO while an XDP program is on a veth
    (drivers/net/veth.c; docs/datapath.md); the kernel gives them back."""
    with _disabled_port_lab() as lab:
        if hook == "xdp":  # the hosts' XDP programs are the lab's, attached before the first look
            for h in lab.hosts:
                host_xdp(lab, h.ns, h.dev)
        before, fdb = _admin_view(lab), _fdb(lab)
        tna = Tna(lab, lab.b, "--hook", hook)
        try:
            tna.wait_attached(PORTS)
            during = _admin_view(lab)
            if hook == "xdp":
                for h in lab.hosts:  # the kernel's price of XDP on a veth, the only difference
                    assert "tcp-segmentation-offload: off" in during[h.dev], h.dev
                    assert during[h.dev + " link"][0]["max_mtu"] != before[h.dev + " link"][0]["max_mtu"]
                    during[h.dev], during[h.dev + " link"] = before[h.dev], before[h.dev + " link"]
            assert during == before
            assert fdb <= _fdb(lab)
        finally:
            assert tna.stop() == 0, tna.close()
        tna.close()
        assert _admin_view(lab) == before
        assert fdb <= _fdb(lab)


def _mld_reports(lab: Lab, ns: str, devs: list[str]) -> int:
    total = 0
    for dev in devs:
        for line in lab.run(ns, ["cat", f"/proc/net/dev_snmp6/{dev}"]).stdout.splitlines():
            name, value = line.split()
            if name in ("Icmp6OutMLDv2Reports", "Icmp6OutGroupMembResponses"):
                total += int(value)
    return total


def test_attach_and_detach_send_no_mld_reports(router_lab, hook):
    """IPv6 re-announces a device's multicast groups on NETDEV_CHANGE."""
    lab, devs = router_lab, ["r-h1", "r-h2"]

    def quiet() -> bool:  # the reports that followed the lab's own address setup are sent
        n = _mld_reports(lab, lab.r, devs)
        time.sleep(2.5)
        return _mld_reports(lab, lab.r, devs) == n
    assert wait_for(quiet, 30)
    before = _mld_reports(lab, lab.r, devs)
    with tna_running(lab, lab.r, hook, devs, [lab.h1, lab.h2]):
        assert not wait_for(lambda: _mld_reports(lab, lab.r, devs) != before, 2)
    assert not wait_for(lambda: _mld_reports(lab, lab.r, devs) != before, 2)


def test_tc_attaches_through_tcx_and_an_admins_empty_clsact_survives(router_lab):
    """TC attachment is a tcx link: no qdisc is added, and an admin's clsact
    (here with no filter on it) stays as it was."""
    lab = router_lab
    lab.run(lab.r, ["tc", "qdisc", "add", "dev", "r-h1", "clsact"])
    with tna_running(lab, lab.r, "auto", ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        st = tna.status()["ifaces"]
        with in_netns(lab.r):
            for dev in ("r-h1", "r-h2"):
                assert attach.tcx_prog_ids(socket.if_nametoindex(dev)) == [st[dev]["prog_id"]]
        assert "clsact" not in lab.run(lab.r, ["tc", "qdisc", "show", "dev", "r-h2"]).stdout
        assert lab.run(lab.r, ["tc", "filter", "show", "dev", "r-h1", "ingress"]).stdout == ""
    assert "clsact" in lab.run(lab.r, ["tc", "qdisc", "show", "dev", "r-h1"]).stdout


def _program_of_a_killed_tna(lab: Lab, hook: str) -> tuple[bpf.Program, int, int]:
    """(program, its id, ifindex of r-h1) of a `tna run --hook hook` killed
    after attaching; its link died with it, so nothing is attached."""
    first = Tna(lab, lab.r, "--hook", hook)
    old_id = first.wait_attached(["r-h1", "r-h2"])["ifaces"]["r-h1"]["prog_id"]
    old = bpf.Program.from_id(old_id)
    first.stop(signal.SIGKILL)
    first.close()
    with in_netns(lab.r):
        ifindex = socket.if_nametoindex("r-h1")
        assert wait_for(lambda: attach.xdp_query_id(ifindex) == 0 and attach.tcx_prog_ids(ifindex) == [], 10)
    return old, old_id, ifindex


def test_a_clsact_attached_tna_program_is_replaced_by_a_tcx_link(router_lab):
    """What a TNA from before tcx links left behind (a direct-action filter
    at TNA's handle and priority) is taken off, and its program replaced."""
    lab = router_lab
    old, old_id, ifindex = _program_of_a_killed_tna(lab, "tc")
    with in_netns(lab.r):
        attach.tc_hook_create(ifindex)
        attach.tc_attach(ifindex, old.fd, abi.TNA_TC_HANDLE, abi.TNA_TC_PRIORITY)
    old.close()
    second = Tna(lab, lab.r)
    try:
        new_id = second.wait_attached(["r-h1", "r-h2"])["ifaces"]["r-h1"]["prog_id"]
        assert new_id != old_id
        with in_netns(lab.r):
            assert attach.tc_query(ifindex, abi.TNA_TC_HANDLE, abi.TNA_TC_PRIORITY) == 0
            assert attach.tcx_prog_ids(ifindex) == [new_id]
        assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    finally:
        assert second.stop() == 0, second.close()
    second.close()


def test_a_netlink_attached_tna_program_is_replaced_by_a_link(router_lab):
    """What a TNA from before links left behind: only netlink can take it off."""
    lab = router_lab
    old, old_id, ifindex = _program_of_a_killed_tna(lab, "xdp")
    with in_netns(lab.r):
        attach.xdp_attach(ifindex, old.fd)
    old.close()
    second = Tna(lab, lab.r, "--hook", "xdp")
    try:
        assert second.wait_attached(["r-h1", "r-h2"])["ifaces"]["r-h1"]["prog_id"] != old_id
        assert "removing a netlink-attached TNA program" in second.output()
    finally:
        assert second.stop() == 0, second.close()
    second.close()
    assert "prog/xdp" not in lab.run(lab.r, ["ip", "-d", "link", "show"]).stdout
