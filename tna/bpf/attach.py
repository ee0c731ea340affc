"""Attaching programs to hooks through libbpf: XDP (netlink or a BPF link),
tcx (a BPF link) and TC clsact filters.  The rest of the binding is
tna/bpf/libbpf.py."""

from __future__ import annotations

import errno
from ctypes import Structure, byref, c_int, c_size_t, c_uint32, sizeof

from tna.bpf import abi
from tna.bpf.libbpf import Program, _check, _lib

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

BPF_XDP = 37  # enum bpf_attach_type
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_F_REPLACE = 1 << 2

BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
BPF_TC_F_REPLACE = 1 << 0


class _XdpAttachOpts(Structure):
    _fields_ = [("sz", c_size_t), ("old_prog_fd", c_int), ("_pad", c_int)]


class _LinkCreateOpts(Structure):
    _fields_ = [("sz", c_size_t), ("flags", c_uint32), ("_pad", c_uint32)]


class _LinkUpdateOpts(Structure):
    _fields_ = [("sz", c_size_t), ("flags", c_uint32), ("old_prog_fd", c_uint32), ("old_map_fd", c_uint32),
                ("_pad", c_uint32)]


class _TcHook(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("ifindex", c_int),
        ("attach_point", c_int),
        ("parent", c_uint32),
        ("_pad", c_uint32),
    ]


class _TcOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
        ("_pad", c_uint32),
    ]


# --- XDP -----------------------------------------------------------------

def xdp_attach(ifindex: int, prog_fd: int, old_prog_fd: int = -1, mode: int = XDP_FLAGS_DRV_MODE) -> None:
    """Attach in native mode.  With old_prog_fd the kernel swaps programs
    atomically, and only if old_prog_fd is what is attached now."""
    opts = _XdpAttachOpts(sz=sizeof(_XdpAttachOpts), old_prog_fd=old_prog_fd)
    flags = mode | (XDP_FLAGS_REPLACE if old_prog_fd >= 0 else 0)
    _check(_lib.bpf_xdp_attach(ifindex, prog_fd, flags, byref(opts)), f"attach XDP to ifindex {ifindex}")


def xdp_detach(ifindex: int, mode: int = XDP_FLAGS_DRV_MODE) -> None:
    _check(_lib.bpf_xdp_detach(ifindex, mode, None), f"detach XDP from ifindex {ifindex}")


def xdp_query_id(ifindex: int, mode: int = XDP_FLAGS_DRV_MODE) -> int:
    """Id of the XDP program attached in that mode, 0 if none."""
    prog_id = c_uint32(0)
    _check(_lib.bpf_xdp_query_id(ifindex, mode, byref(prog_id)), f"query XDP on ifindex {ifindex}")
    return prog_id.value


def xdp_link(ifindex: int, prog_fd: int, mode: int = XDP_FLAGS_DRV_MODE) -> int:
    """Attach through a BPF link (BPF_LINK_CREATE); returns the link's fd.
    The program stays attached while the link is open, and only until then."""
    opts = _LinkCreateOpts(sz=sizeof(_LinkCreateOpts), flags=mode)
    return _check(_lib.bpf_link_create(prog_fd, ifindex, BPF_XDP, byref(opts)), f"XDP link on ifindex {ifindex}")


def link_update(link_fd: int, prog_fd: int, old_prog_fd: int) -> None:
    """Swap a link's program atomically, only if old_prog_fd is what it runs."""
    opts = _LinkUpdateOpts(sz=sizeof(_LinkUpdateOpts), flags=BPF_F_REPLACE, old_prog_fd=old_prog_fd)
    _check(_lib.bpf_link_update(link_fd, prog_fd, byref(opts)), "update BPF link")


def link_detach(link_fd: int) -> None:
    _check(_lib.bpf_link_detach(link_fd), "detach BPF link")


# --- tcx (kernel >= 6.6: TC programs without a qdisc) -------------------

def tcx_link(ifindex: int, prog_fd: int, attach_type: int = BPF_TCX_INGRESS) -> int:
    """Append prog to ifindex's tcx hook through a BPF link; returns the
    link's fd.  libbpf 1.1 has no tcx call, but bpf_link_create passes the
    attach type through, and zeroed tcx options mean "last in the list"."""
    opts = _LinkCreateOpts(sz=sizeof(_LinkCreateOpts))
    return _check(_lib.bpf_link_create(prog_fd, ifindex, attach_type, byref(opts)),
                  f"tcx link on ifindex {ifindex}")


def tcx_prog_ids(ifindex: int, attach_type: int = BPF_TCX_INGRESS) -> list[int]:
    """Ids of the programs on ifindex's tcx hook, in the order they run."""
    ids, count = (c_uint32 * 64)(), c_uint32(64)
    ret = _lib.bpf_prog_query(ifindex, attach_type, 0, None, ids, byref(count))
    if ret == -errno.ENODEV:
        return []
    _check(ret, f"query tcx on ifindex {ifindex}")
    return list(ids[: count.value])


def is_tna(prog_id: int) -> bool:
    """Whether the program of that id is a TNA datapath program."""
    prog = Program.from_id(prog_id)
    try:
        return prog.name == abi.PROGRAM_NAME
    finally:
        prog.close()


def split_tna(prog_ids: list[int]) -> tuple[list[int], list[int]]:
    """(TNA's, others') among prog_ids, leaving out 0 and the programs
    gone since the ids were read (detached and freed in between)."""
    ours: list[int] = []
    others: list[int] = []
    for prog_id in filter(None, prog_ids):
        try:
            (ours if is_tna(prog_id) else others).append(prog_id)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
    return ours, others


def foreign_tcx(ifindex: int, attach_type: int) -> list[int]:
    """Ids of the programs on ifindex's tcx hook that are not TNA's."""
    return split_tna(tcx_prog_ids(ifindex, attach_type))[1]


# --- TC (clsact) ---------------------------------------------------------

def _tc_hook(ifindex: int, point: int) -> _TcHook:
    return _TcHook(sz=sizeof(_TcHook), ifindex=ifindex, attach_point=point)


def tc_hook_create(ifindex: int, point: int = BPF_TC_INGRESS) -> bool:
    """Add the clsact qdisc; False if it already existed."""
    ret = _lib.bpf_tc_hook_create(byref(_tc_hook(ifindex, point)))
    if ret == -errno.EEXIST:
        return False
    _check(ret, f"create clsact on ifindex {ifindex}")
    return True


def tc_hook_destroy(ifindex: int) -> None:
    """Remove the clsact qdisc and every filter on it."""
    ret = _lib.bpf_tc_hook_destroy(byref(_tc_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)))
    if ret not in (0, -errno.ENOENT, -errno.EINVAL):
        _check(ret, f"destroy clsact on ifindex {ifindex}")


def tc_attach(ifindex: int, prog_fd: int, handle: int, priority: int, replace: bool = False,
              point: int = BPF_TC_INGRESS) -> int:
    """Attach a direct-action filter; with replace the kernel swaps the
    program of that handle/priority in place (no window without one)."""
    opts = _TcOpts(sz=sizeof(_TcOpts), prog_fd=prog_fd, handle=handle, priority=priority,
                   flags=BPF_TC_F_REPLACE if replace else 0)
    _check(_lib.bpf_tc_attach(byref(_tc_hook(ifindex, point)), byref(opts)), f"attach TC to ifindex {ifindex}")
    return opts.prog_id


def tc_detach(ifindex: int, handle: int, priority: int, point: int = BPF_TC_INGRESS) -> None:
    opts = _TcOpts(sz=sizeof(_TcOpts), handle=handle, priority=priority)
    ret = _lib.bpf_tc_detach(byref(_tc_hook(ifindex, point)), byref(opts))
    if ret != -errno.ENOENT:
        _check(ret, f"detach TC from ifindex {ifindex}")


def tc_query(ifindex: int, handle: int, priority: int, point: int = BPF_TC_INGRESS) -> int:
    """Id of the program on that filter, 0 if there is none."""
    opts = _TcOpts(sz=sizeof(_TcOpts), handle=handle, priority=priority)
    ret = _lib.bpf_tc_query(byref(_tc_hook(ifindex, point)), byref(opts))
    if ret in (-errno.ENOENT, -errno.EINVAL):
        return 0
    _check(ret, f"query TC on ifindex {ifindex}")
    return opts.prog_id
