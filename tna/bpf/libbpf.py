"""A small, typed ctypes binding to the system libbpf.so.1 (libbpf >= 1.0).

Only what TNA needs: objects, programs, maps, BPF_PROG_TEST_RUN and object
ids; attaching to XDP and TC hooks is tna/bpf/attach.py.  libbpf does every bpf() syscall; failures
become LibbpfError with the errno and, for loads, the verifier log that
libbpf printed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import threading
from collections.abc import Iterator
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_int,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
    create_string_buffer,
    sizeof,
)

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

class LibbpfError(OSError):
    """A libbpf call failed; .errno is set, .log holds what libbpf printed."""

    def __init__(self, err: int, what: str, log: str = "") -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.log = log


class _BatchOpts(Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class _ProgInfo(Structure):
    """The head of struct bpf_prog_info (the kernel accepts a short info_len)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class _MapInfo(Structure):
    """The head of struct bpf_map_info."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", ctypes.c_char * 16),
    ]


BPF_F_XDP_DEV_BOUND_ONLY = 1 << 6

_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


def _load() -> ctypes.CDLL:
    path = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError as e:
        raise LibbpfError(errno.ENOENT, f"cannot load libbpf ({path}); install libbpf1") from e
    sig = {
        "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
        "bpf_object__load": (c_int, [c_void_p]),
        "bpf_object__close": (None, [c_void_p]),
        "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
        "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
        "bpf_program__set_autoload": (c_int, [c_void_p, ctypes.c_bool]),
        "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
        "bpf_program__fd": (c_int, [c_void_p]),
        "bpf_program__set_ifindex": (None, [c_void_p, c_uint32]),
        "bpf_program__flags": (c_uint32, [c_void_p]),
        "bpf_program__set_flags": (c_int, [c_void_p, c_uint32]),
        "bpf_map__fd": (c_int, [c_void_p]),
        "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
        "bpf_map__set_initial_value": (c_int, [c_void_p, c_void_p, c_size_t]),
        "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
        "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
        "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
        "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_lookup_batch": (
            c_int,
            [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), c_void_p],
        ),
        "bpf_map_update_batch": (c_int, [c_int, c_void_p, c_void_p, POINTER(c_uint32), c_void_p]),
        "bpf_map_delete_batch": (c_int, [c_int, c_void_p, POINTER(c_uint32), c_void_p]),
        "bpf_obj_pin": (c_int, [c_int, c_char_p]),
        "bpf_obj_get": (c_int, [c_char_p]),
        "bpf_xdp_attach": (c_int, [c_int, c_int, c_uint32, c_void_p]),
        "bpf_xdp_detach": (c_int, [c_int, c_uint32, c_void_p]),
        "bpf_xdp_query_id": (c_int, [c_int, c_int, POINTER(c_uint32)]),
        "bpf_link_create": (c_int, [c_int, c_int, c_int, c_void_p]),
        "bpf_link_update": (c_int, [c_int, c_int, c_void_p]),
        "bpf_link_detach": (c_int, [c_int]),
        "bpf_prog_query": (c_int, [c_int, c_int, c_uint32, c_void_p, POINTER(c_uint32), POINTER(c_uint32)]),
        "bpf_tc_hook_create": (c_int, [c_void_p]),
        "bpf_tc_hook_destroy": (c_int, [c_void_p]),
        "bpf_tc_attach": (c_int, [c_void_p, c_void_p]),
        "bpf_tc_detach": (c_int, [c_void_p, c_void_p]),
        "bpf_tc_query": (c_int, [c_void_p, c_void_p]),
        "bpf_prog_test_run_opts": (c_int, [c_int, c_void_p]),
        "bpf_prog_get_fd_by_id": (c_int, [c_uint32]),
        "bpf_map_get_fd_by_id": (c_int, [c_uint32]),
        "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
        "libbpf_num_possible_cpus": (c_int, []),
        "libbpf_version_string": (c_char_p, []),
        "libbpf_set_print": (c_void_p, [_PRINT_FN]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


_lib = _load()
_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]

# libbpf prints warnings and verifier logs through one global callback, in
# the thread whose call prints them: each thread collects its own while a
# call that may fail runs, so the error carries them (and loads in several
# threads, whose verifier runs release the GIL, keep their logs apart).
_log = threading.local()


def _log_lines() -> list[str]:
    if not hasattr(_log, "lines"):
        _log.lines = []
    return _log.lines


@_PRINT_FN
def _print_cb(level: int, fmt: bytes, args: int) -> int:
    if level > 1:  # DEBUG chatter, hundreds of lines a load: dropped before any work
        return 0
    buf = create_string_buffer(1 << 20)  # LIBBPF_WARN, LIBBPF_INFO; a verifier log arrives in one message
    _libc.vsnprintf(buf, sizeof(buf), fmt, args)
    _log_lines().append(buf.value.decode(errors="replace"))
    return 0


_lib.libbpf_set_print(_print_cb)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise LibbpfError(-ret, what)
    return ret


def _errno_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        raise LibbpfError(ctypes.get_errno() or errno.EINVAL, what, "".join(_log_lines()))
    return ptr


def num_possible_cpus() -> int:
    return _check(_lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def version() -> str:
    """The loaded libbpf's version ("v1.1")."""
    return _lib.libbpf_version_string().decode()


_NONZERO = re.compile(rb"[^\x00]+")


def _nonzero_entries(raw: bytes, size: int, count: int) -> list[int]:
    """Which of raw's first count size-byte entries have a byte that is not 0."""
    return sorted({i for m in _NONZERO.finditer(raw, 0, size * count)
                   for i in range(m.start() // size, (m.end() - 1) // size + 1)})


class Map:
    """A map by fd, with fixed key/value sizes; keys and values are bytes."""

    def __init__(self, fd: int, key_size: int, value_size: int, name: str = "",
                 percpu: bool = False, owned: bool = False) -> None:
        self.fd, self.key_size, self.name = fd, key_size, name
        self.value_size = value_size
        # a per-CPU map returns one value per possible CPU, each 8-byte aligned
        self.ncpu = num_possible_cpus() if percpu else 1
        self.percpu = percpu
        self._slot = (value_size + 7) & ~7 if percpu else value_size
        self._owned = owned

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        fd = _check(_lib.bpf_map_get_fd_by_id(map_id), f"map id {map_id}")
        info = map_info(fd)
        percpu = info.type in (5, 6, 10)  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
        return cls(fd, info.key_size, info.value_size, info.name.decode(), percpu, owned=True)

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def entry_bytes(self) -> int:
        """Bytes of one entry's value as lookups and batches carry it (a
        per-CPU map's: one 8-byte aligned slot per possible CPU)."""
        return self._slot * self.ncpu

    def _vbuf(self) -> ctypes.Array:
        return create_string_buffer(self.entry_bytes)

    def _split(self, raw: bytes) -> bytes | list[bytes]:
        if not self.percpu:  # a per-CPU map's value is a list, also on one CPU
            return raw
        return [raw[i * self._slot:i * self._slot + self.value_size] for i in range(self.ncpu)]

    def lookup(self, key: bytes) -> bytes | list[bytes] | None:
        """The value, a list of per-CPU values for per-CPU maps, or None."""
        v = self._vbuf()
        if _lib.bpf_map_lookup_elem(self.fd, key, v) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise LibbpfError(err, f"lookup in map {self.name}")
        return self._split(v.raw)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if self.ncpu > 1 and len(value) == self.value_size:
            value = value.ljust(self._slot, b"\0") * self.ncpu
        _check(_lib.bpf_map_update_elem(self.fd, key, value, flags), f"update map {self.name}")

    def delete(self, key: bytes) -> bool:
        """Delete key; False if it was not there."""
        if _lib.bpf_map_delete_elem(self.fd, key) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            raise LibbpfError(err, f"delete from map {self.name}")
        return True

    def update_batch(self, keys: bytes, values: bytes) -> int:
        """Write len(keys) // key_size entries (keys and values concatenated)
        in one syscall; returns how many were written.  The kernel stops at
        the first entry it cannot take: the caller sees a short count (and
        the error as LibbpfError only if none was written)."""
        count = c_uint32(len(keys) // self.key_size)
        opts = _BatchOpts(sz=sizeof(_BatchOpts))
        if _lib.bpf_map_update_batch(self.fd, keys, values, byref(count), byref(opts)) < 0 and not count.value:
            raise LibbpfError(ctypes.get_errno(), f"batch update of map {self.name}")
        return count.value

    def delete_batch(self, keys: bytes) -> int:
        """Delete len(keys) // key_size entries in one syscall; returns how
        many were deleted (the kernel stops at the first missing key)."""
        count = c_uint32(len(keys) // self.key_size)
        opts = _BatchOpts(sz=sizeof(_BatchOpts))
        if _lib.bpf_map_delete_batch(self.fd, keys, byref(count), byref(opts)) < 0 and not count.value:
            raise LibbpfError(ctypes.get_errno(), f"batch delete from map {self.name}")
        return count.value

    def keys(self) -> Iterator[bytes]:
        cur, nxt = None, create_string_buffer(self.key_size)
        while _lib.bpf_map_get_next_key(self.fd, cur, nxt) == 0:
            cur = create_string_buffer(nxt.raw, self.key_size)
            yield nxt.raw

    def items(self, nonzero: bool = False) -> list[tuple[bytes, bytes | list[bytes]]]:
        """All entries (nonzero: entries whose value is all zeros may be left
        out, found at C speed - a rule set's counters are mostly zeros); one
        batch syscall where the map type supports it."""
        n = 4096
        keys, vals = create_string_buffer(self.key_size * n), create_string_buffer(self.entry_bytes * n)
        out_batch, count = create_string_buffer(max(self.key_size, 8)), c_uint32(n)
        opts = _BatchOpts(sz=sizeof(_BatchOpts))
        result: list[tuple[bytes, bytes | list[bytes]]] = []
        in_batch = None
        while True:
            count.value = n
            ret = _lib.bpf_map_lookup_batch(self.fd, in_batch, out_batch, keys, vals, byref(count), byref(opts))
            err = ctypes.get_errno() if ret < 0 else 0
            if ret < 0 and err not in (errno.ENOENT,):
                if err in (errno.EINVAL, errno.ENOTSUPP, 524):  # no batch ops: walk the keys
                    return [(k, v) for k in self.keys() if (v := self.lookup(k)) is not None]
                raise LibbpfError(err, f"batch lookup in map {self.name}")
            vs, ks = self.entry_bytes, self.key_size
            kraw, vraw = keys.raw, vals.raw  # each .raw is a copy of the whole buffer: once per batch
            taken = _nonzero_entries(vraw, vs, count.value) if nonzero else range(count.value)
            result += [(kraw[i * ks:(i + 1) * ks], self._split(vraw[i * vs:(i + 1) * vs])) for i in taken]
            if ret < 0:  # ENOENT: that was the last batch
                return result
            in_batch = create_string_buffer(out_batch.raw, len(out_batch))

    def pin(self, path: str) -> None:
        _check(_lib.bpf_obj_pin(self.fd, path.encode()), f"pin {path}")


class Program:
    def __init__(self, fd: int, name: str, owned: bool = False) -> None:
        self.fd, self.name, self._owned = fd, name, owned

    @classmethod
    def from_id(cls, prog_id: int) -> Program:
        fd = _check(_lib.bpf_prog_get_fd_by_id(prog_id), f"program id {prog_id}")
        return cls(fd, prog_info(fd).name.decode(), owned=True)

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def id(self) -> int:
        return prog_info(self.fd).id

    def map_ids(self) -> list[int]:
        n = prog_info(self.fd).nr_map_ids
        ids = (c_uint32 * n)()
        info = _ProgInfo(nr_map_ids=n, map_ids=ctypes.addressof(ids))
        size = c_uint32(sizeof(info))
        _check(_lib.bpf_obj_get_info_by_fd(self.fd, byref(info), byref(size)), "program info")
        return list(ids[: info.nr_map_ids])

    def find_map(self, name: str) -> Map:
        """The map called name among those this program uses."""
        for map_id in self.map_ids():
            m = Map.from_id(map_id)
            if m.name == name[:15]:
                return m
            m.close()
        raise LibbpfError(errno.ENOENT, f"program {self.name} has no map {name}")

    def pin(self, path: str) -> None:
        _check(_lib.bpf_obj_pin(self.fd, path.encode()), f"pin {path}")


def prog_info(fd: int) -> _ProgInfo:
    info, size = _ProgInfo(), c_uint32(sizeof(_ProgInfo))
    _check(_lib.bpf_obj_get_info_by_fd(fd, byref(info), byref(size)), "program info")
    return info


def map_info(fd: int) -> _MapInfo:
    info, size = _MapInfo(), c_uint32(sizeof(_MapInfo))
    _check(_lib.bpf_obj_get_info_by_fd(fd, byref(info), byref(size)), "map info")
    return info


def obj_get(path: str) -> int:
    """fd of a pinned object."""
    return _check(_lib.bpf_obj_get(path.encode()), f"open pinned {path}")


def unpin(path: str) -> None:
    """Remove a pin (the object lives on while anything else holds it)."""
    os.unlink(path)


class BpfObject:
    """An ELF object: open, adjust (shared maps, .rodata), load, use, close.

    The object owns its fds; programs that are attached stay in the kernel
    after close() (the attachment holds them).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        _log_lines().clear()
        self._obj = _errno_ptr(_lib.bpf_object__open_file(path.encode(), None), f"open {path}")
        self.loaded = False

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._obj:
            _lib.bpf_object__close(self._obj)
            self._obj = None

    def _map_ptr(self, name: str) -> int:
        ptr = _lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not ptr:
            raise LibbpfError(errno.ENOENT, f"{self.path}: no map {name}")
        return ptr

    def reuse_map(self, name: str, fd: int) -> None:
        """Before load: use an existing map (shared between programs) for name."""
        _check(_lib.bpf_map__reuse_fd(self._map_ptr(name), fd), f"reuse map {name}")

    def bind_to_device(self, prog: str, ifindex: int) -> None:
        """Before load: make an XDP program device-bound, so it may call the
        driver's metadata kfuncs; it can then attach only to that device
        (and BPF_PROG_TEST_RUN refuses it)."""
        ptr = _lib.bpf_object__find_program_by_name(self._obj, prog.encode())
        if not ptr:
            raise LibbpfError(errno.ENOENT, f"{self.path}: no program {prog}")
        _lib.bpf_program__set_ifindex(ptr, ifindex)
        flags = _lib.bpf_program__flags(ptr) | BPF_F_XDP_DEV_BOUND_ONLY
        _check(_lib.bpf_program__set_flags(ptr, flags), f"bind {prog} to ifindex {ifindex}")

    def set_max_entries(self, name: str, n: int) -> None:
        """Before load: the size of a map (e.g. one counter per compiled rule)."""
        _check(_lib.bpf_map__set_max_entries(self._map_ptr(name), n), f"size map {name}")

    def set_initial_value(self, name: str, data: bytes) -> None:
        """Before load: the contents of a global data section (.rodata.*)."""
        _check(_lib.bpf_map__set_initial_value(self._map_ptr(name), data, len(data)), f"set {name}")

    def maps_only(self) -> None:
        """Before load: load no program, only create the maps (no verifier run)."""
        prog = _lib.bpf_object__next_program(self._obj, None)
        while prog:
            _check(_lib.bpf_program__set_autoload(prog, False), f"{self.path}: autoload")
            prog = _lib.bpf_object__next_program(self._obj, prog)

    def load(self) -> None:
        _log_lines().clear()
        ret = _lib.bpf_object__load(self._obj)
        log = "".join(_log_lines())
        if ret < 0:
            raise LibbpfError(-ret, f"load {self.path} (verifier or kernel refused it)", log)
        self.loaded = True

    def program(self, name: str) -> Program:
        ptr = _lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not ptr:
            raise LibbpfError(errno.ENOENT, f"{self.path}: no program {name}")
        return Program(_check(_lib.bpf_program__fd(ptr), f"fd of {name}"), name)

    def map(self, name: str) -> Map:
        ptr = self._map_ptr(name)
        fd = _check(_lib.bpf_map__fd(ptr), f"fd of map {name}")
        info = map_info(fd)
        return Map(fd, info.key_size, info.value_size, name, percpu=info.type in (5, 6, 10))
