"""A BPF ring buffer read through libbpf (ring_buffer__new/poll): how the
datapath wakes the daemon instead of being polled.  The rest of the binding
is tna/bpf/libbpf.py."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from ctypes import CFUNCTYPE, c_int, c_size_t, c_void_p

from tna.bpf.libbpf import LibbpfError, _errno_ptr, _lib

_SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
_lib.ring_buffer__new.restype, _lib.ring_buffer__new.argtypes = c_void_p, [c_int, _SAMPLE_FN, c_void_p, c_void_p]
_lib.ring_buffer__poll.restype, _lib.ring_buffer__poll.argtypes = c_int, [c_void_p, c_int]
_lib.ring_buffer__free.restype, _lib.ring_buffer__free.argtypes = None, [c_void_p]


class RingBuffer:
    """Records of one BPF_MAP_TYPE_RINGBUF map, handed to on_record(bytes).
    The GIL is released while poll() waits (ctypes)."""

    def __init__(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        def sample(_ctx: int | None, data: int, size: int) -> int:
            on_record(ctypes.string_at(data, size))
            return 0

        self._cb = _SAMPLE_FN(sample)  # kept alive as long as the ring buffer
        self._rb: int | None = _errno_ptr(_lib.ring_buffer__new(map_fd, self._cb, None, None), "ring buffer")

    def poll(self, timeout_s: float) -> int:
        """Wait up to timeout_s for records; the number consumed."""
        if self._rb is None:
            raise ValueError("ring buffer is closed")
        n = _lib.ring_buffer__poll(self._rb, int(timeout_s * 1000))
        if n < 0 and -n != errno.EINTR:
            raise LibbpfError(-n, "ring buffer poll")
        return max(n, 0)

    def close(self) -> None:
        if self._rb is not None:
            _lib.ring_buffer__free(self._rb)
            self._rb = None
