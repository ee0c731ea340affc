"""The libbpf binding on its own: errors, verifier logs, pins, maps."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tna.bpf import libbpf as bpf
from tna.synth.compile import compile_source

pytestmark = pytest.mark.root

MAPS_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
         __type(key, __u32); __type(value, __u64); } kv SEC(".maps");
SEC("xdp") int ok(struct xdp_md *ctx) { return XDP_PASS; }
char _license[] SEC("license") = "GPL";
"""

# reads past the packet without a bounds check: the verifier must refuse it
BAD_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int bad(struct xdp_md *ctx) { unsigned char *p = (void *)(long)ctx->data; return p[100]; }
char _license[] SEC("license") = "GPL";
"""


@pytest.fixture
def bpffs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_verifier_rejection_carries_the_log() -> None:
    obj = bpf.BpfObject(str(compile_source(BAD_C)))
    with pytest.raises(bpf.LibbpfError) as err:
        obj.load()
    obj.close()
    assert err.value.errno == 13  # EACCES: the verifier said no
    assert "invalid access to packet" in err.value.log


def test_missing_object_is_an_oserror() -> None:
    with pytest.raises(bpf.LibbpfError) as err:
        bpf.BpfObject("/nonexistent/tna.o")
    assert err.value.errno == 2


def test_map_ops_batch_and_pins(bpffs: Path) -> None:
    with bpf.BpfObject(str(compile_source(MAPS_C))) as obj:
        obj.load()
        kv = obj.map("kv")
        for i in range(40):
            kv.update(i.to_bytes(4, "little"), (i * i).to_bytes(8, "little"))
        assert kv.lookup((7).to_bytes(4, "little")) == (49).to_bytes(8, "little")
        assert kv.lookup((99).to_bytes(4, "little")) is None
        assert kv.delete((7).to_bytes(4, "little")) and not kv.delete((7).to_bytes(4, "little"))
        items = dict(kv.items())  # one batch syscall
        assert len(items) == 39 and items[(6).to_bytes(4, "little")] == (36).to_bytes(8, "little")
        assert sorted(kv.keys()) == sorted(items)
        assert dict(kv.items(nonzero=True)) == {k: v for k, v in items.items() if k != bytes(4)}  # 0 * 0
        pin = str(bpffs / "kv")
        kv.pin(pin)
        fd = bpf.obj_get(pin)
        assert bpf.map_info(fd).id == bpf.map_info(kv.fd).id
        bpf.unpin(pin)
        assert not Path(pin).exists()
        prog = obj.program("ok")
        assert obj.program("ok").id == prog.id and prog.map_ids() == []


def test_batch_update_and_delete_stop_where_the_kernel_does() -> None:
    with bpf.BpfObject(str(compile_source(MAPS_C))) as obj:
        obj.load()
        kv = obj.map("kv")
        keys = b"".join(i.to_bytes(4, "little") for i in range(80))
        values = b"".join((i + 1).to_bytes(8, "little") for i in range(80))
        assert kv.update_batch(keys, values) == 64  # max_entries 64: the 65th does not fit
        assert kv.lookup((63).to_bytes(4, "little")) == (64).to_bytes(8, "little")
        assert kv.lookup((64).to_bytes(4, "little")) is None
        assert kv.update_batch(keys[:16], values[32:64]) == 4  # existing keys fit in a full map
        assert kv.lookup((0).to_bytes(4, "little")) == (5).to_bytes(8, "little")
        # a missing key stops a batch delete: what came before it is deleted
        assert kv.delete_batch(keys[:40] + (200).to_bytes(4, "little") + keys[40:44]) == 10
        assert len(kv.items()) == 54 and kv.lookup((10).to_bytes(4, "little")) is not None


def test_a_per_cpu_value_is_one_per_cpu_on_one_cpu_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """read_counters() sums a per-CPU map's values: a box with one possible
    CPU gets a list of one, not the bare value."""
    monkeypatch.setattr(bpf, "num_possible_cpus", lambda: 1)
    counter = bpf.Map(-1, 4, 16, "tna_fw_rules", percpu=True)
    assert counter._split(bytes(range(16))) == [bytes(range(16))]
    assert bpf.Map(-1, 4, 16, "tna_state")._split(bytes(16)) == bytes(16)


def test_nonzero_entries_are_found_where_a_run_of_bytes_crosses_entries() -> None:
    raw = bytes(8) + b"\0\0\0\x01" + b"\x02\0\0\0" + bytes(4) + b"\x05" * 4 + bytes(8)
    assert bpf._nonzero_entries(raw, 4, 8) == [2, 3, 5]
    assert bpf._nonzero_entries(raw, 4, 3) == [2]  # only the first count entries
