"""No program decides with maps that do not match the rules it was built
for: a reconcile holds the fast path (FW_CHANGED) from before it attaches
programs for new rules until every map - tna_fw_ifaces last - is written.

The window between an attach and the tna_fw_ifaces write lasts a few map
updates; tests/tna_paused.py holds it open, deterministically, and real
traffic is sent through it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path

import pytest

from netns_labs.lab import RouterLab, wait_for
from netns_labs.tna_proc import Tna, tna_running
from tests.test_firewall_lab import send_probes, setup
from tna.model.firewall import Packet

pytestmark = pytest.mark.root

# one interface pattern, r-h2 (bit 0); traffic from h1 is accepted
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i r-h2 -j DROP
COMMIT
"""


def test_new_interface_pattern_is_never_judged_with_stale_masks(router_lab: RouterLab, hook: str,
                                                                  tmp_path: Path) -> None:
    """`-I FORWARD -i r-h1 -j DROP` adds a pattern that sorts first: r-h1
    becomes bit 0 and r-h2 bit 1.  A program built for the new rules that
    ran with the old masks (r-h2 = bit 0, r-h1 = none) would forward what
    Linux now drops."""
    lab = router_lab
    setup(lab, RULES)
    pkts = [Packet(ip_address(lab.h1.ip4), ip_address(lab.h2.ip4), "r-h1", "r-h2", 17, 1000, 2000 + i)
            for i in range(4)]
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2], module="tests.tna_paused",
                     env_extra={"TNA_PAUSE_DIR": str(tmp_path)}) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 10, 0.2), tna.output()
        before = tna.counters("r-h1")
        assert send_probes(lab, pkts) == {0, 1, 2, 3}
        assert tna.counters("r-h1").get("FORWARDED", 0) - before.get("FORWARDED", 0) == len(pkts)
        old_id = tna.status()["ifaces"]["r-h1"]["prog_id"]
        (tmp_path / "arm").touch()
        lab.run(lab.r, ["iptables", "-I", "FORWARD", "-i", "r-h1", "-j", "DROP"])
        assert wait_for((tmp_path / "paused").exists, 30, 0.05), tna.output()
        # the new program is attached, tna_fw_ifaces still holds the old masks
        in_window = send_probes(lab, pkts)
        (tmp_path / "resume").touch()
        assert in_window == set(), (in_window, tna.output())
        # state.json names the new program once the reconcile is done: it
        # held the window's probes and forwarded none
        assert wait_for(lambda: tna.status()["ifaces"]["r-h1"]["prog_id"] != old_id, 30, 0.1), tna.output()
        held = tna.counters("r-h1")
        # held by the rules' change, or already by the reader (PENDING: the
        # loop was busy when the events came)
        assert held.get("FW_CHANGED", 0) + held.get("PENDING", 0) >= len(pkts), held
        assert held.get("FORWARDED", 0) == 0, held
        # and with the masks written the fast path drops them itself
        assert send_probes(lab, pkts) == set()
        assert tna.counters("r-h1").get("FW_DROP", 0) - held.get("FW_DROP", 0) == len(pkts)


def test_a_commit_holds_the_programs_before_the_reader_hears_of_it(router_lab: RouterLab, hook: str,
                                                                    tmp_path: Path) -> None:
    """The kernel applies a commit, then notifies it.  Here the reader is
    paused before it takes the notification (as a main loop holding the GIL
    would keep it waiting): nothing in the daemon knows of the commit, and
    the programs built for the old rules run on.  The commit guard
    (commit_guard.h) holds from the notification itself."""
    lab = router_lab
    setup(lab, RULES)
    pkts = [Packet(ip_address(lab.h1.ip4), ip_address(lab.h2.ip4), "r-h1", "r-h2", 17, 1000, 3000 + i)
            for i in range(4)]
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2], module="tests.tna_paused",
                     env_extra={"TNA_PAUSE_DIR": str(tmp_path), "TNA_PAUSE_AT": "nft_reader"}) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 10, 0.2), tna.output()
        assert send_probes(lab, pkts) == {0, 1, 2, 3}
        before = tna.counters("r-h1")
        (tmp_path / "arm").touch()
        lab.run(lab.r, ["iptables", "-I", "FORWARD", "-i", "r-h1", "-j", "DROP"])
        assert wait_for((tmp_path / "paused").exists, 30, 0.05), tna.output()
        in_window = send_probes(lab, pkts)
        held = tna.counters("r-h1")
        (tmp_path / "resume").touch()
        assert in_window == set(), (in_window, tna.output())
        assert held.get("FORWARDED", 0) == before.get("FORWARDED", 0), (before, held)
        assert held.get("FW_CHANGED", 0) - before.get("FW_CHANGED", 0) >= len(pkts), (before, held)
        # once the reader has heard, the daemon compiles the new rules in: the fast path drops them itself
        assert wait_for(lambda: send_probes(lab, pkts[:1]) == set()
                        and tna.counters("r-h1").get("FW_DROP", 0) > held.get("FW_DROP", 0), 30, 0.2), tna.output()


def udp(lab: RouterLab, sport: int, dport: int) -> Packet:
    """UDP from h1 to h2."""
    return Packet(ip_address(lab.h1.ip4), ip_address(lab.h2.ip4), "r-h1", "r-h2", 17, sport, dport)


@contextmanager
def loading_new_rules(lab: RouterLab, hook: str, tmp_path: Path) -> Iterator[Tna]:
    """tna on RULES, then a DROP for UDP port 3001 inserted: the reconcile
    for it paused before the attach (the programs for the old rules run
    while the new ones load) until the test ends."""
    setup(lab, RULES)
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2], module="tests.tna_paused",
                     env_extra={"TNA_PAUSE_DIR": str(tmp_path), "TNA_PAUSE_AT": "attach"}) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 10, 0.2), tna.output()
        (tmp_path / "arm").touch()
        lab.run(lab.r, ["iptables", "-I", "FORWARD", "-p", "udp", "--dport", "3001", "-j", "DROP"])
        assert wait_for((tmp_path / "paused").exists, 30, 0.05), tna.output()
        try:
            yield tna
        finally:  # a failed assertion must not leave the daemon paused (its stop would hide it)
            (tmp_path / "resume").touch()


def test_while_new_rules_load_only_what_they_could_match_is_held(router_lab: RouterLab, hook: str,
                                                                 tmp_path: Path) -> None:
    """An inserted DROP for UDP port 3001: while the programs for it load
    (paused before the attach), those built for the old rules still run.
    They go on forwarding h1's other UDP, which no inserted rule could
    match, and pass port 3001 to the kernel (which drops it by the new
    rule) - never forwarding it.  Then the new program drops it itself."""
    lab = router_lab
    other = [udp(lab, 1000, 5000 + i) for i in range(4)]
    blocked = [udp(lab, 1000 + i, 3001) for i in range(4)]
    with loading_new_rules(lab, hook, tmp_path) as tna:
        old_id = tna.status()["ifaces"]["r-h1"]["prog_id"]
        before = tna.counters("r-h1")
        # the narrowed hold comes with the commit's reconcile, before the loads
        assert wait_for(lambda: send_probes(lab, other[:1]) == {0}
                        and tna.counters("r-h1").get("FORWARDED", 0) > before.get("FORWARDED", 0), 20, 0.2), \
            tna.output()
        mid = tna.counters("r-h1")
        carried, stopped = send_probes(lab, other), send_probes(lab, blocked)
        held, status = tna.counters("r-h1"), tna.status()
        text = lab.run(lab.r, [*tna.tna, "status"], cwd=tna.cwd).stdout
        (tmp_path / "resume").touch()
        assert status["ifaces"]["r-h1"]["prog_id"] == old_id  # the old rules' program decided
        # what `tna status` reads from tna_state: the flow held; all of it
        # only if a lab neighbour turned STALE meanwhile (PENDING)
        assert status["hold"]["flows"] == ["IPv4 udp any -> any dport 3001"], status["hold"]
        assert status["hold"]["reason"] in (None, "PENDING"), status["hold"]
        assert ("loading: what those rules could match stays on the kernel path meanwhile (FW_CHANGED): "
                "IPv4 udp any -> any dport 3001") in text or "HOLDING: every packet goes to the kernel path now " \
               "(PENDING" in text, text  # read after the JSON: a hold may have come or gone between
        assert (carried, stopped) == ({0, 1, 2, 3}, set()), tna.output()
        assert held.get("FORWARDED", 0) - mid.get("FORWARDED", 0) == len(other), (mid, held)
        assert held.get("FW_CHANGED", 0) - mid.get("FW_CHANGED", 0) == len(blocked), (mid, held)
        assert wait_for(lambda: send_probes(lab, blocked[:1]) == set()
                        and tna.counters("r-h1").get("FW_DROP", 0) > held.get("FW_DROP", 0), 30, 0.2), tna.output()
        assert tna.status()["ifaces"]["r-h1"]["prog_id"] != old_id
        assert tna.status()["hold"] == {"reason": None, "flows": []}


def test_a_neighbour_turning_stale_while_programs_load_holds_nothing_else(router_lab: RouterLab, hook: str,
                                                                         tmp_path: Path) -> None:
    """While a reconcile loads programs (paused before the attach), the
    kernel makes h2 STALE.  The reader thread puts it into tna_stale at
    once: h2's next packet goes to the kernel, which re-validates h2, and
    the rest is carried - not every packet held until the loads end
    (PENDING), as it was."""
    lab = router_lab
    pkts = [udp(lab, 1000, 5000 + i) for i in range(4)]
    with loading_new_rules(lab, hook, tmp_path) as tna:
        assert wait_for(lambda: send_probes(lab, pkts[:1]) == {0} and tna.pass_reason() == 0, 20, 0.2), \
            tna.output()  # the narrowed hold, the old program carrying
        before = tna.counters("r-h1")
        lab.run(lab.r, ["ip", "neigh", "replace", lab.h2.ip4, "lladdr", lab.h2.mac, "nud", "stale", "dev", "r-h2"])
        assert wait_for(lambda: send_probes(lab, pkts[:1]) == {0}
                        and tna.counters("r-h1").get("NEIGH_STALE", 0) > before.get("NEIGH_STALE", 0), 20, 0.2), \
            (tna.counters("r-h1"), tna.output())
        mid = tna.counters("r-h1")
        carried, reason, after = send_probes(lab, pkts[1:]), tna.pass_reason(), tna.counters("r-h1")
        # and the kernel, handed that packet, re-validated h2 (DELAY, then a probe)
        h2 = ["ip", "neigh", "show", lab.h2.ip4, "dev", "r-h2"]
        assert wait_for(lambda: "STALE" not in lab.run(lab.r, h2).stdout, 20, 0.2), lab.run(lab.r, h2).stdout
        (tmp_path / "resume").touch()
        assert carried == {0, 1, 2} and reason == 0, (carried, reason)
        assert after.get("FORWARDED", 0) - mid.get("FORWARDED", 0) == 3, (mid, after)


def test_a_commit_the_reader_lost_in_an_overrun_holds_until_the_rules_are_read(
        router_lab: RouterLab, hook: str, tmp_path: Path) -> None:
    """A commit of thousands of rules overruns the paused reader's socket:
    its last notifications are lost, and with them what the reader would
    have been told.  The guard still holds from them (the filter runs before
    the kernel drops a datagram), the reader's overrun makes the rules read
    whole, and then the fast path carries again: no hold is left behind."""
    lab = router_lab
    setup(lab, RULES)
    pkts = [Packet(ip_address(lab.h1.ip4), ip_address(lab.h2.ip4), "r-h1", "r-h2", 17, 1000, 4000 + i)
            for i in range(4)]
    many = "".join(f"-A FORWARD -p tcp -m tcp --dport {port} -j DROP\n" for port in range(1, 3001))
    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2], module="tests.tna_paused",
                     env_extra={"TNA_PAUSE_DIR": str(tmp_path), "TNA_PAUSE_AT": "nft_reader"}) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 10, 0.2), tna.output()
        (tmp_path / "arm").touch()
        lab.run(lab.r, ["iptables-restore"], input=RULES.replace("COMMIT\n", many + "COMMIT\n"))
        assert wait_for((tmp_path / "paused").exists, 30, 0.05), tna.output()
        assert send_probes(lab, pkts) == {0, 1, 2, 3}  # the kernel forwards them: the rules accept h1's UDP
        held = tna.counters("r-h1")
        (tmp_path / "resume").touch()
        assert held.get("FW_CHANGED", 0) >= len(pkts), held
        assert wait_for(lambda: send_probes(lab, pkts[:1]) == {0}
                        and tna.counters("r-h1").get("FORWARDED", 0) > held.get("FORWARDED", 0), 30, 0.2), \
            tna.output()
        assert "overran" in tna.output(), tna.output()


SET_TABLE = """table inet t {
	set bl {
		type ipv4_addr
	}
	chain gate {
		type filter hook forward priority filter + 10; policy accept;
		ip saddr @bl drop
	}
}
"""


def test_the_first_attach_after_a_followed_set_commit_holds_only_until_a_read(router_lab: RouterLab, hook: str) -> None:
    """Nothing to attach (forwarding off) while a commit of set elements
    is followed without a read: the generation moved since the rules were
    read.  The first attach, which comes with the commit guard, holds for
    that and reads the rules again at once - no commit is coming to make
    it, and without the read the hold would last until one did."""
    import time

    from netns_labs.tna_proc import Tna, host_xdp

    lab = router_lab
    setup(lab, RULES.replace("-A FORWARD -i r-h2 -j DROP\n", ""))
    lab.run(lab.r, ["nft", "-f", "-"], input=SET_TABLE)
    forwarding = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]
    lab.run(lab.r, ["sysctl", "-qw", *(f"{k}=0" for k in forwarding)])
    pkts = [Packet(ip_address(lab.h1.ip4), ip_address(lab.h2.ip4), "r-h1", "r-h2", 17, 1000, 5000)]
    if hook == "xdp":
        for h in (lab.h1, lab.h2):
            host_xdp(lab, h.ns, h.dev)
    tna = Tna(lab, lab.r, "--hook", hook)
    try:
        assert wait_for(lambda: (st := tna.status()) is not None and not st["ifaces"], 30, 0.1), tna.output()
        lab.run(lab.r, ["nft", "add", "element", "inet", "t", "bl", "{ 203.0.113.9 }"])
        time.sleep(2)  # followed as a set change, not read (were it read, the test would show nothing)
        lab.run(lab.r, ["sysctl", "-qw", *(f"{k}=1" for k in forwarding)])
        tna.wait_attached(["r-h1", "r-h2"], 30)
        assert wait_for(lambda: send_probes(lab, pkts) == {0} and tna.counters("r-h1").get("FORWARDED", 0) > 0,
                        30, 0.2), (tna.counters("r-h1"), tna.output())
    finally:
        tna.stop()
        tna.close()
