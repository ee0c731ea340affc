"""Routes changed in bulk are followed (issue #13): the guards the daemon
publishes track the few routes that matter among thousands, traffic over a
route with a small MTU goes to the kernel while it exists, and routes that
move no guard cost no reconcile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from netns_labs.lab import RouterLab, ping, wait_for
from netns_labs.tna_proc import Tna
from tests.test_metrics import _fetch

pytestmark = pytest.mark.root
PORT = 9477
BULK = 5000


def _batch(path: Path, verb: str, extra: list[str]) -> Path:
    lines = [f"route {verb} 10.{i >> 8 & 255}.{i & 255}.0/24 via 198.51.100.2" for i in range(BULK)]
    path.write_text("\n".join(lines + [f"route {verb} {e}" for e in extra]) + "\n")
    return path


def _reconciles(lab: RouterLab) -> float:
    text = _fetch(lab, lab.r, PORT)
    return float(re.search(r"^tna_reconcile_duration_seconds_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def _guards(tna: Tna) -> tuple[Any, Any, Any]:
    st = tna.state() or {}
    return st.get("routes"), st.get("route_mtu", {}).get("ipv4"), st.get("multipath")


def _pin_link_local(lab: RouterLab) -> None:
    """The hosts' router solicitations, seconds after their links come up,
    teach r their link-local neighbours: a model change, so a reconcile in
    whatever the test measures then.  Pinned first, they never change."""
    for host, dev in ((lab.h1, "r-h1"), (lab.h2, "r-h2")):
        out = lab.run(host.ns, ["ip", "-6", "-o", "addr", "show", "dev", host.dev, "scope", "link"]).stdout
        lab.neigh(lab.r, dev, out.split()[3].split("/")[0], host.mac)


def test_routes_changed_in_bulk_are_followed(router_lab: RouterLab, tmp_path: Path) -> None:
    lab = router_lab
    _pin_link_local(lab)
    lab.addr(lab.h2.ns, "lo", "203.0.113.5/32")
    lab.route(lab.r, "203.0.113.0/24", via=lab.h2.ip4)
    tna = Tna(lab, lab.r, "--metrics", f"127.0.0.1:{PORT}", env_extra={"TNA_CACHE_DIR": str(tmp_path)})
    try:
        tna.wait_attached(["r-h1", "r-h2"])
        assert wait_for(lambda: (tna.state() or {}).get("routes_loading") == [], 30, 0.1), tna.output()
        base = tna.state()["routes"]  # type: ignore[index]
        assert _guards(tna)[1:] == (0, {})

        # thousands of routes that move no guard: followed, and no reconcile
        before = _reconciles(lab)
        lab.run(lab.r, ["ip", "-batch", str(_batch(tmp_path / "add", "add", []))])
        assert wait_for(lambda: _guards(tna)[0] == base + BULK, 60, 0.2), (_guards(tna), tna.output())
        assert _reconciles(lab) == before, tna.output()

        # one with an MTU, one multipath among them: the guards follow
        special = ["203.0.113.0/28 via 198.51.100.2 mtu 1400",
                   "10.250.0.0/16 nexthop via 198.51.100.2 nexthop via 192.0.2.2"]
        lab.run(lab.r, ["ip", "-batch", str(_batch(tmp_path / "del", "del", []))])
        lab.run(lab.r, ["ip", "-batch", str(_batch(tmp_path / "readd", "add", special))])
        assert wait_for(lambda: _guards(tna) == (base + BULK + 2, 1400, {"ipv4": 0}), 60, 0.2), \
            (_guards(tna), tna.output())
        assert _reconciles(lab) - before <= 10  # bursts coalesce

        # traffic over the small-MTU route goes to the kernel, which says why
        assert wait_for(lambda: " 0% packet loss" in ping(lab, lab.h1.ns, "203.0.113.5", 1).stdout, 30)
        res = ping(lab, lab.h1.ns, "203.0.113.5", 2, "-M", "do", "-s", "1450")
        assert "Frag needed and DF set (mtu = 1400)" in res.stdout, res.stdout
        assert tna.counters().get("ROUTE_MTU", 0) >= 1

        # all deleted in bulk: the guards are off again
        lab.run(lab.r, ["ip", "-batch", str(_batch(tmp_path / "delall", "del", special))])
        assert wait_for(lambda: _guards(tna) == (base, 0, {}), 60, 0.2), (_guards(tna), tna.output())
        assert " 0% packet loss" in ping(lab, lab.h1.ns, "203.0.113.5", 2, "-s", "1450").stdout
    finally:
        assert tna.stop() == 0, tna.output()
        tna.close()
