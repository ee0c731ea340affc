"""`tna status` lists the expressible rules whose traffic always goes to
the kernel too: a destination type the fast path never knows (IPv6, and
PREROUTING, where a DNAT may still change the destination: hooks.py,
fw_dst_types()).  No root."""

from __future__ import annotations

from tests.test_tables_model import save
from tna.model.hooks import firewall_plan
from tna.model.iptables import parse_save
from tna.status import _firewall

TYPES = save(raw="-A PREROUTING -m addrtype --dst-type LOCAL -j ACCEPT",
             filter="-A FORWARD -m addrtype --dst-type UNICAST -j DROP")


def test_status_lists_destination_types_the_fast_path_never_knows() -> None:
    fw, _ = firewall_plan({4: parse_save(TYPES), 6: parse_save(TYPES)})
    st = _firewall(fw, {}, {})
    assert st is not None
    listed = {(r["family"], r["table"], r["chain"], r["index"]): r["why"] for r in st["kernel_rules"]}
    assert listed == {
        (4, "raw", "PREROUTING", 1): ["--dst-type in PREROUTING of a forwarded packet (a DNAT may follow)"],
        (6, "raw", "PREROUTING", 1): ["--dst-type in PREROUTING of a forwarded packet (a DNAT may follow)"],
        (6, "filter", "FORWARD", 1): ["--dst-type of IPv6 (not known to the fast path)"],
    }
