"""BPF_PROG_TEST_RUN through libbpf: a program run on a frame (tests, the
lease's config writes, benchmarks), and the live-frames mode that sends
what an XDP program returns as real frames (the labs' generator).  The
rest of the binding is tna/bpf/libbpf.py."""

from __future__ import annotations

import ctypes
from ctypes import (
    Structure,
    byref,
    c_int,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
    create_string_buffer,
    sizeof,
)

from tna.bpf.libbpf import Program, _check, _lib

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


class _TestRunOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class XdpMd(Structure):
    """struct xdp_md, the ctx_in of an XDP test run."""

    _fields_ = [
        ("data", c_uint32),
        ("data_end", c_uint32),
        ("data_meta", c_uint32),
        ("ingress_ifindex", c_uint32),
        ("rx_queue_index", c_uint32),
        ("egress_ifindex", c_uint32),
    ]


class SkBuff(Structure):
    """struct __sk_buff, the ctx_in of a TC test run (only some fields may be set)."""

    _fields_ = [
        ("len", c_uint32), ("pkt_type", c_uint32), ("mark", c_uint32), ("queue_mapping", c_uint32),
        ("protocol", c_uint32), ("vlan_present", c_uint32), ("vlan_tci", c_uint32), ("vlan_proto", c_uint32),
        ("priority", c_uint32), ("ingress_ifindex", c_uint32), ("ifindex", c_uint32), ("tc_index", c_uint32),
        ("cb", c_uint32 * 5), ("hash", c_uint32), ("tc_classid", c_uint32), ("data", c_uint32),
        ("data_end", c_uint32), ("napi_id", c_uint32), ("family", c_uint32), ("remote_ip4", c_uint32),
        ("local_ip4", c_uint32), ("remote_ip6", c_uint32 * 4), ("local_ip6", c_uint32 * 4),
        ("remote_port", c_uint32), ("local_port", c_uint32), ("data_meta", c_uint32), ("flow_keys", c_uint64),
        ("tstamp", c_uint64), ("wire_len", c_uint32), ("gso_segs", c_uint32), ("sk", c_uint64),
        ("gso_size", c_uint32), ("tstamp_type", c_uint8), ("_pad", c_uint8 * 3), ("hwtstamp", c_uint64),
    ]


def test_run(prog: Program, data: bytes, repeat: int = 1, ctx: Structure | None = None,
             flags: int = 0, batch_size: int = 0, out_size: int = 0) -> tuple[int, bytes, int]:
    """BPF_PROG_TEST_RUN: (return value, output packet, duration in ns)."""
    out = create_string_buffer(out_size or len(data) + 256) if not flags & BPF_F_TEST_XDP_LIVE_FRAMES else None
    opts = _TestRunOpts(
        sz=sizeof(_TestRunOpts), data_in=ctypes.cast(data, c_void_p), data_size_in=len(data),
        data_out=ctypes.cast(out, c_void_p) if out else None, data_size_out=len(out) if out else 0,
        repeat=repeat, flags=flags, batch_size=batch_size,
    )
    if ctx is not None:
        opts.ctx_in, opts.ctx_size_in = ctypes.addressof(ctx), sizeof(ctx)
    _check(_lib.bpf_prog_test_run_opts(prog.fd, byref(opts)), f"test run of {prog.name}")
    return opts.retval, out.raw[: opts.data_size_out] if out else b"", opts.duration
