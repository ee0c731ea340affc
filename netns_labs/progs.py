"""Load the lab's helper XDP programs onto host interfaces.

  python -m netns_labs.progs attach DEV pass|sink   # run inside the host's namespace
  python -m netns_labs.progs count DEV              # frames the sink on DEV counted
  python -m netns_labs.progs detach DEV
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from tna.bpf import libbpf as bpf
from tna.synth.compile import compile_source

HERE = Path(__file__).resolve().parent / "bpf"


def build(name: str) -> Path:
    """Object file for netns_labs/bpf/<name>.c (same clang cache as tna)."""
    return compile_source((HERE / f"{name}.c").read_text())


def attach(dev: str, prog: str) -> int:
    ifindex = socket.if_nametoindex(dev)
    with bpf.BpfObject(str(build("lab_progs"))) as obj:
        obj.load()
        p = obj.program(f"lab_{prog}")
        bpf.xdp_attach(ifindex, p.fd)
        return p.id


def detach(dev: str) -> None:
    bpf.xdp_detach(socket.if_nametoindex(dev))


def count(dev: str) -> int:
    """Sum of the sink's counter, found through the program attached to dev."""
    prog = bpf.Program.from_id(bpf.xdp_query_id(socket.if_nametoindex(dev)))
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
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
