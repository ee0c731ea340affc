"""ipsets on real traffic: `tna run` (both hooks, IPv4 and IPv6) with a
FORWARD chain that drops a hash:net blocklist's sources and accepts a
hash:ip,port set's destinations.  The fast path applies both (its
counters), `ipset add`/`del` (a nomatch exception, a new port) takes
effect without a new program, and a set with a timeout keeps its rule's
traffic on the kernel path."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netns_labs.lab import RouterLab, wait_for
from netns_labs.tna_proc import tna_running
from tests.test_firewall_lab import MARK, send_frames

pytestmark = pytest.mark.root

ADDR = {4: {"blocked": "192.0.2.70", "net": "192.0.2.64/26", "ok": "192.0.2.2", "slow": "192.0.2.200",
            "dst": "198.51.100.2", "family": "inet", "save": "iptables-restore"},
        6: {"blocked": "2001:db8:1::70", "net": "2001:db8:1::40/122", "ok": "2001:db8:1::2",
            "slow": "2001:db8:1::200", "dst": "2001:db8:2::2", "family": "inet6", "save": "ip6tables-restore"}}
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m set --match-set blocklist src -j DROP
-A FORWARD -p udp -m udp --dport 6000 -m set --match-set slow src -j DROP
-A FORWARD -p udp -m set --match-set allowed dst,dst -j ACCEPT
-A FORWARD -p udp -m udp --dport 6000 -j ACCEPT
COMMIT
"""


def probe(lab: RouterLab, family: int, src: str, dport: int, n: int) -> bytes:
    ip = IP(src=src, dst=ADDR[family]["dst"]) if family == 4 else IPv6(src=src, dst=ADDR[family]["dst"])
    return bytes(Ether(src=lab.h1.mac, dst=lab.r_h1_mac) / ip / UDP(sport=40000, dport=dport)
                 / Raw(MARK + b"%04d" % n))


def setup(lab: RouterLab, family: int) -> None:
    a = ADDR[family]
    cmds = [f"create blocklist hash:net family {a['family']}", f"add blocklist {a['net']}",
            f"create allowed hash:ip,port family {a['family']}", f"add allowed {a['dst']},udp:5000",
            f"create slow hash:net family {a['family']} timeout 600", f"add slow {a['slow']}"]
    lab.run(lab.r, ["ipset", "restore"], input="".join(f"{c}\n" for c in cmds))
    lab.run(lab.r, [a["save"]], input=RULES)
    # h2 answers nothing: every packet r forwards is a probe
    lab.run(lab.h2.ns, ["iptables" if family == 4 else "ip6tables", "-P", "OUTPUT", "DROP"])


@pytest.mark.parametrize("family", [4, 6])
def test_sets_decided_in_the_fast_path_and_followed(router_lab: RouterLab, hook: str, family: int) -> None:
    lab, a = router_lab, ADDR[family]
    setup(lab, family)
    frames = [probe(lab, family, a["blocked"], 5000, 0),  # blocklisted source: dropped by the set
              probe(lab, family, a["ok"], 5000, 1),       # allowed destination port: accepted by the set
              probe(lab, family, a["ok"], 5001, 2),       # in neither: the policy drops it
              probe(lab, family, a["slow"], 6000, 3)]     # the timeout set's rule: the kernel's

    def moved(action: Callable[[], set[int]]) -> tuple[set[int], dict[str, int]]:
        before = tna.counters("r-h1")
        got = action()
        after = tna.counters("r-h1")
        return got, {r: after.get(r, 0) - before.get(r, 0) for r in ("FORWARDED", "FW_DROP", "FW_KERNEL")}

    with tna_running(lab, lab.r, hook, ["r-h1", "r-h2"], [lab.h1, lab.h2]) as tna:
        assert wait_for(lambda: "firewall" in tna.status()["ifaces"]["r-h1"]["modules"], 30, 0.2), tna.output()
        prog = tna.status()["ifaces"]["r-h1"]["prog_id"]
        sets = tna.status()["firewall"]["ipsets"]
        assert sets["blocklist"]["mirrored"] and sets["allowed"]["mirrored"]
        assert not sets["slow"]["mirrored"] and "timeout" in sets["slow"]["kernel_path"][0]

        arrived, counts = moved(lambda: send_frames(lab, frames, 2))
        assert arrived == {1}
        # the slow set's probe goes to the kernel, which drops it (the set holds its source)
        assert counts == {"FORWARDED": 1, "FW_DROP": 2, "FW_KERNEL": 1}, counts

        took = {}
        for what, cmd, entries, want in (
                ("nomatch exception added", ["add", "blocklist", a["blocked"], "nomatch"], 2, {0, 1}),
                ("port added", ["add", "allowed", f"{a['dst']},udp:5001"], 2, {0, 1, 2}),
                ("exception deleted", ["del", "blocklist", a["blocked"]], 1, {1, 2})):
            t0 = time.monotonic()
            lab.run(lab.r, ["ipset", *cmd])

            def mirrored(name: str = cmd[1], entries: int = entries) -> bool:
                """The daemon publishes its status once the maps are written."""
                st = tna.state()
                return st is not None and st["firewall"]["ipsets"][name]["entries"] == entries
            assert wait_for(mirrored, 30, 0.01), (what, tna.output())
            took[what] = round(time.monotonic() - t0, 3)
            assert wait_for(lambda want=want: send_frames(lab, frames[:3], 1) == want, 30, 0.05), \
                (what, tna.output())
            # decided by the fast path, with the same program
            arrived, counts = moved(lambda: send_frames(lab, frames[:3], 2))
            assert arrived == want
            assert counts == {"FORWARDED": len(want), "FW_DROP": 3 - len(want), "FW_KERNEL": 0}, (what, counts)
            assert tna.status()["ifaces"]["r-h1"]["prog_id"] == prog, what
        print(f"ipset command -> in the maps (state.json published after the write): {took} s")
