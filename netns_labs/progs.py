"""Load the lab's helper XDP programs (run inside the namespace of DEV).

  python -m netns_labs.progs attach DEV pass|sink   # on a host's veth
  python -m netns_labs.progs count DEV              # frames the sink on DEV counted
  python -m netns_labs.progs reference DEV EGRESS...  # the reference forwarder on a router port
  python -m netns_labs.progs reference-bridge DEV MAC=PORT...  # the reference FDB-map bridge on a port
  python -m netns_labs.progs generate DEV FRAMEHEX COUNT [START]  # frames out of DEV; prints ns taken
                                                    # (START: a time.time() to begin at, once loaded)
  python -m netns_labs.progs flood DEV FRAMEHEX PPS SECONDS  # the same, paced; prints frames sent
  python -m netns_labs.progs detach DEV
  python -m netns_labs.progs generator              # which generator this kernel allows
  python -m netns_labs.progs tc-drop DEV ingress|egress PRIO   # an admin's tc filter dropping all
  python -m netns_labs.progs tc-pass DEV ingress|egress PRIO   # one passing all (the hook's own cost)
  python -m netns_labs.progs tc-clear DEV ingress|egress PRIO
  python -m netns_labs.progs tcx DEV ingress|egress pass|drop  # a tcx program (as TNA attaches at TC
                                                    # and others may), until terminated
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tna.bpf import attach as hooks
from tna.bpf import libbpf as bpf
from tna.bpf.testrun import BPF_F_TEST_XDP_LIVE_FRAMES, XdpMd, test_run
from tna.synth.compile import compile_source, default_cache_dir

HERE = Path(__file__).resolve().parent / "bpf"


def build(name: str) -> Path:
    """Object file for netns_labs/bpf/<name>.c (same clang cache as tna).
    Local headers are inlined, so the cache key covers them too."""
    source = re.sub(r'^#include "([\w.]+)"$', lambda m: (HERE / m.group(1)).read_text(),
                    (HERE / f"{name}.c").read_text(), flags=re.M)
    return compile_source(source)


def attach(dev: str, prog: str) -> int:
    ifindex = socket.if_nametoindex(dev)
    with bpf.BpfObject(str(build("lab_progs"))) as obj:
        obj.load()
        p = obj.program(f"lab_{prog}")
        hooks.xdp_attach(ifindex, p.fd)
        return p.id


def reference(dev: str, egress: list[str]) -> int:
    with bpf.BpfObject(str(build("ref_router"))) as obj:
        obj.load()
        ports = obj.map("ref_ports")
        for name in egress:
            i = socket.if_nametoindex(name).to_bytes(4, "little")
            ports.update(i, i)
        p = obj.program("ref_router")
        hooks.xdp_attach(socket.if_nametoindex(dev), p.fd)
        return p.id


def reference_bridge(dev: str, fdb: list[str]) -> int:
    """fdb: MAC=PORT items; every PORT is also a redirect target."""
    with bpf.BpfObject(str(build("ref_bridge"))) as obj:
        obj.load()
        fdb_map, ports = obj.map("ref_fdb"), obj.map("ref_ports")
        for item in fdb:
            mac, port = item.split("=")
            i = socket.if_nametoindex(port).to_bytes(4, "little")
            fdb_map.update(bytes.fromhex(mac.replace(":", "")).ljust(8, b"\0"), i)
            ports.update(i, i)
        p = obj.program("ref_bridge")
        hooks.xdp_attach(socket.if_nametoindex(dev), p.fd)
        return p.id


@functools.cache
def live_frames() -> bool:
    """Whether this kernel runs live-frame test runs: some builds refuse
    them (EPERM) while plain test runs work.  Probed with the sink, which
    drops the frame inside the test run: nothing leaves it."""
    with bpf.BpfObject(str(build("lab_progs"))) as obj:
        obj.load()
        try:
            test_run(obj.program("lab_sink"), bytes(64), flags=BPF_F_TEST_XDP_LIVE_FRAMES)
        except bpf.LibbpfError as e:
            if e.errno == errno.EPERM:
                return False
            raise
    return True


def generator_kind() -> str:
    return "live frames" if live_frames() else "AF_PACKET sendmmsg (this kernel refuses live frames)"


def _packet_gen() -> ctypes.CDLL:
    """netns_labs/packet_gen.c as a shared library, built once per source
    (by content) into tna's compile cache."""
    source = (Path(__file__).resolve().parent / "packet_gen.c").read_bytes()
    lib = default_cache_dir() / f"packet_gen-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["clang", "-O2", "-shared", "-fPIC", "-x", "c", "-", "-o", str(tmp)], input=source,
                       check=True, capture_output=True)
        os.replace(tmp, lib)
    so = ctypes.CDLL(str(lib), use_errno=True)
    so.pg_open.argtypes, so.pg_open.restype = [ctypes.c_char_p], ctypes.c_int
    so.pg_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_long]
    so.pg_send.restype = ctypes.c_long
    return so


def _check_gen(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


@contextmanager
def _generator(dev: str, frame: bytes) -> Iterator[Callable[[int], object]]:
    """A function sending n copies of frame out of dev: BPF_PROG_TEST_RUN
    live frames (the peer's stack handles them in softirq on this CPU) or,
    where the kernel refuses those, packet_gen.c (the same, plus the cost
    of an skb per frame on the sender's side)."""
    if not live_frames():
        so = _packet_gen()
        fd = _check_gen(so.pg_open(dev.encode()), f"AF_PACKET socket on {dev}")
        try:
            yield lambda n: _check_gen(so.pg_send(fd, frame, len(frame), n), f"send on {dev}")
        finally:
            os.close(fd)
        return
    cfg = bytes(frame).ljust(128, b"\0")
    with bpf.BpfObject(str(build("lab_progs"))) as obj:
        obj.set_initial_value(".rodata.gen", len(frame).to_bytes(4, "little") + cfg)
        obj.load()
        p = obj.program("lab_gen")
        ctx = XdpMd(data_end=len(frame), ingress_ifindex=socket.if_nametoindex(dev))
        yield lambda n: test_run(p, frame, repeat=n, ctx=ctx, flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64)


def generate(dev: str, frame: bytes, count: int, start: float = 0.0) -> int:
    """Push count copies of frame out of dev as fast as they go, from the
    time start on (generators on two CPUs begin together); returns the
    nanoseconds the kernel took."""
    with _generator(dev, frame) as send:
        time.sleep(max(0.0, start - time.time()))
        t0 = time.perf_counter_ns()
        send(count)
        return time.perf_counter_ns() - t0


def flood(dev: str, frame: bytes, pps: int, seconds: float) -> int:
    """Send frame out of dev at pps on average for seconds: whenever it gets
    the CPU it sends what the schedule says is due (a flood does not slow
    down for the box); returns frames sent."""
    sent = 0
    batch = max(64, pps // 100)  # each test run sets up a page pool: ~10 ms of frames at a time
    with _generator(dev, frame) as send:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(pps * elapsed) - sent
            if due >= batch:
                send(due)
                sent += due
            else:
                time.sleep(1e-3)
    return sent


TC_POINTS = {"ingress": hooks.BPF_TC_INGRESS, "egress": hooks.BPF_TC_EGRESS}


def tc_filter(dev: str, point: str, prio: int, prog: str) -> None:
    """lab_tc_<prog> as a tc filter (handle 1) on dev's clsact point."""
    ifindex = socket.if_nametoindex(dev)
    with bpf.BpfObject(str(build("lab_progs"))) as obj:
        obj.load()
        hooks.tc_hook_create(ifindex, TC_POINTS[point])
        hooks.tc_attach(ifindex, obj.program(f"lab_tc_{prog}").fd, 1, prio, point=TC_POINTS[point])


def tc_clear(dev: str, point: str, prio: int) -> None:
    hooks.tc_detach(socket.if_nametoindex(dev), 1, prio, point=TC_POINTS[point])


TCX_POINTS = {"ingress": hooks.BPF_TCX_INGRESS, "egress": hooks.BPF_TCX_EGRESS}


def tcx(dev: str, point: str, prog: str) -> None:
    """lab_tc_<prog> on dev's tcx point until SIGTERM: a tcx link lives as
    long as its descriptor."""
    with bpf.BpfObject(str(build("lab_progs"))) as obj:
        obj.load()
        hooks.tcx_link(socket.if_nametoindex(dev), obj.program(f"lab_tc_{prog}").fd, TCX_POINTS[point])
        print("attached", flush=True)
        signal.sigwait({signal.SIGTERM})


def detach(dev: str) -> None:
    hooks.xdp_detach(socket.if_nametoindex(dev))


def count(dev: str) -> int:
    """Sum of the sink's counter, found through the program attached to dev."""
    prog = bpf.Program.from_id(hooks.xdp_query_id(socket.if_nametoindex(dev)))
    try:
        m = prog.find_map("sink_count")
        values = m.lookup(b"\0\0\0\0") or []
        m.close()
        return sum(int.from_bytes(v, "little") for v in values)
    finally:
        prog.close()


def main(argv: list[str]) -> None:
    if argv[:1] == ["attach"]:
        print(attach(argv[1], argv[2]))
    elif argv[:1] == ["detach"]:
        detach(argv[1])
    elif argv[:1] == ["count"]:
        print(count(argv[1]))
    elif argv[:1] in (["tc-drop"], ["tc-pass"]):
        tc_filter(argv[1], argv[2], int(argv[3]), argv[0].removeprefix("tc-"))
    elif argv[:1] == ["tcx"]:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        tcx(argv[1], argv[2], argv[3])
    elif argv[:1] == ["tc-clear"]:
        tc_clear(argv[1], argv[2], int(argv[3]))
    elif argv[:1] == ["reference"]:
        print(reference(argv[1], argv[2:]))
    elif argv[:1] == ["reference-bridge"]:
        print(reference_bridge(argv[1], argv[2:]))
    elif argv[:1] == ["generate"]:
        print(generate(argv[1], bytes.fromhex(argv[2]), int(argv[3]), float(argv[4]) if len(argv) > 4 else 0.0))
    elif argv[:1] == ["generator"]:
        print(generator_kind())
    elif argv[:1] == ["flood"]:
        print(flood(argv[1], bytes.fromhex(argv[2]), int(argv[3]), float(argv[4])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
