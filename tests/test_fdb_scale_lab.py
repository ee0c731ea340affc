"""The FDB map at small scale, on real kernels: sized from what the kernel
holds at start, full (the rest stays on the kernel path, and says so),
and a bulk flush or move followed exactly.  A test-only smallest map size
(TNA_TEST_FDB_SIZE) lets a few dozen entries stand for a million; the
benchmark at scale is netns_labs/bench_scale.py."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator

import pytest

from netns_labs.lab import BridgeLab, ping, py, wait_for
from netns_labs.tna_proc import Tna, tna_running
from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.deploy.datapath import FDB_SIZE_ENV
from tna.deploy.fdbmap import KEY, VALUE, map_size

pytestmark = pytest.mark.root

PORTS = ["b-h1", "b-h2", "b-h3"]
SMALLEST = 16


def fake_macs(n: int, start: int = 0) -> list[str]:
    return [f"02:fd:00:00:{(i >> 8) & 255:02x}:{i & 255:02x}" for i in range(start, start + n)]


def batch(lab: BridgeLab, cmd: str, port: str, macs: list[str]) -> None:
    """`bridge -batch` of `fdb CMD MAC dev PORT master static` lines."""
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
        f.writelines(f"fdb {cmd} {mac} dev {port} master static\n" for mac in macs)
        f.flush()
        lab.run(lab.b, ["bridge", "-batch", f.name])


def kernel_fdb(lab: BridgeLab) -> dict[tuple[int, str], int]:
    """br0's FDB as the kernel holds it: (vid, mac) -> port ifindex."""
    index = {link.get("IFLA_IFNAME"): link["index"] for link in lab.ipr(lab.b).get_links()}
    out = json.loads(lab.run(lab.b, ["bridge", "-j", "fdb", "show", "br", "br0"]).stdout)
    return {(e.get("vlan", 0), e["mac"]): index[e["ifname"]] for e in out if e.get("master") == "br0"}


def fdb_map(tna: Tna) -> tuple[dict[tuple[int, str], int], int]:
    """tna_fdb as the datapath reads it: (vid, mac) -> port, and its capacity."""
    st = tna.state()
    assert st is not None
    prog = bpf.Program.from_id(st["ifaces"]["b-h1"]["prog_id"])
    try:
        m = prog.find_map(abi.MAP_FDB)
    finally:
        prog.close()
    try:
        entries = {}
        for k, v in m.items():
            _, vid, mac = KEY.unpack(k)
            entries[(vid, mac.hex(":"))] = VALUE.unpack(v)[0]  # type: ignore[arg-type]
        return entries, bpf.map_info(m.fd).max_entries
    finally:
        m.close()


def br0(tna: Tna) -> dict:
    st = tna.state()
    assert st is not None
    return st["bridges"]["br0"]


@pytest.fixture
def small_map() -> Iterator[tuple[BridgeLab, Tna]]:
    with BridgeLab() as lab, tna_running(lab, lab.b, "auto", PORTS, lab.hosts,
                                         env_extra={FDB_SIZE_ENV: str(SMALLEST)}) as tna:
        yield lab, tna


def test_the_map_is_sized_for_what_the_kernel_holds_at_start() -> None:
    with BridgeLab() as lab:
        batch(lab, "add", "b-h3", fake_macs(100))
        held = len(kernel_fdb(lab))  # what the map is sized from
        with tna_running(lab, lab.b, "auto", PORTS, lab.hosts, env_extra={FDB_SIZE_ENV: str(SMALLEST)}) as tna:
            def mirrored() -> bool:
                """Everything the kernel holds by now: it may learn a host's
                frame (its first ND, say) after `held` was counted."""
                b = br0(tna)
                return b["fdb_mirrored"] == b["fdb"] == len(kernel_fdb(lab))
            assert wait_for(mirrored, 30), (held, br0(tna))
            b = br0(tna)
            assert b["fdb"] >= held and b["fdb_capacity"] == map_size(held, SMALLEST) >= 2 * held
            entries, capacity = fdb_map(tna)
            assert entries == kernel_fdb(lab) and capacity == b["fdb_capacity"]
            line = f"FDB {b['fdb']} entries, {b['fdb']} mirrored, map capacity {capacity}"
            assert line in lab.run(lab.b, py("tna", "status"), cwd=lab.repo).stdout


def test_a_full_map_leaves_the_rest_to_the_kernel_and_says_so(small_map: tuple[BridgeLab, Tna]) -> None:
    lab, tna = small_map
    capacity = br0(tna)["fdb_capacity"]
    assert capacity == SMALLEST  # a handful of local entries at start
    batch(lab, "add", "b-h3", fake_macs(capacity))  # fills the map: the hosts' entries will not fit
    assert wait_for(lambda: br0(tna)["fdb"] > capacity, 30)
    # h2 is learned again by the kernel now, with no room in the map (its
    # old entry's place went to an entry waiting longer)
    lab.run(lab.b, ["bridge", "fdb", "del", lab.h2.mac, "dev", "b-h2", "master"])
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 3).stdout
    assert wait_for(lambda: (b := br0(tna))["fdb"] == len(kernel_fdb(lab)) and b["fdb_mirrored"] == capacity, 30)
    entries, _ = fdb_map(tna)
    assert lab.h2.mac not in {mac for _, mac in entries} and len(entries) == capacity
    assert all(kernel_fdb(lab).get(k) == port for k, port in entries.items())  # nothing stale
    before = tna.counters()
    res = ping(lab, lab.h1.ns, lab.h2.ip4, 5)
    assert " 0% packet loss" in res.stdout and "DUP" not in res.stdout, res.stdout
    after = tna.counters()
    assert after.get("BR_UNKNOWN_DST", 0) - before.get("BR_UNKNOWN_DST", 0) >= 5  # Linux forwarded them
    # room again: the waiting entries go in, and h1 <-> h2 is fast-pathed
    batch(lab, "del", "b-h3", fake_macs(capacity))
    assert wait_for(lambda: fdb_map(tna)[0] == kernel_fdb(lab), 30)
    before = tna.counters()
    assert " 0% packet loss" in ping(lab, lab.h1.ns, lab.h2.ip4, 5).stdout
    assert tna.counters().get("FORWARDED", 0) - before.get("FORWARDED", 0) >= 8


def test_a_bulk_move_and_flush_are_followed_exactly() -> None:
    with BridgeLab() as lab, tna_running(lab, lab.b, "auto", PORTS, lab.hosts) as tna:
        macs = fake_macs(5000)
        batch(lab, "add", "b-h3", macs)
        assert wait_for(lambda: fdb_map(tna)[0] == kernel_fdb(lab), 30)
        batch(lab, "replace", "b-h2", macs[:2500])  # half of them move to another port at once
        assert wait_for(lambda: fdb_map(tna)[0] == kernel_fdb(lab), 30)
        assert sum(1 for p in fdb_map(tna)[0].values() if p == lab.ifindex(lab.b, "b-h2")) >= 2500
        lab.run(lab.b, ["bridge", "fdb", "flush", "dev", "b-h3", "master", "static"])
        lab.run(lab.b, ["bridge", "fdb", "flush", "dev", "b-h2", "master", "static"])
        assert wait_for(lambda: fdb_map(tna)[0] == kernel_fdb(lab), 30), tna.output()
        assert len(fdb_map(tna)[0]) < 20
        assert "resynchronising" not in tna.output()  # followed by events, not a fresh dump
