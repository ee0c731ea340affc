"""clang -> BPF object, cached by a hash of everything that affects the bytes.

The key covers the rendered source, every header in tna/helpers/, the flags and
the clang version, so an unchanged plan never recompiles and any change to a
header does.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tna import HELPERS_DIR

CLANG_FLAGS = ("-O2", "-g", "-target", "bpf", "-D__BPF__", "-Wall", "-Werror", "-mcpu=v3")


# Told of every compile_source(): None for a cache hit, else how long clang ran
# (seconds); the daemon's metrics count them (synthesis imports nothing of them).
CompileObserver = Callable[[float | None], None]


class CompileError(RuntimeError):
    """clang is missing or refused the generated C."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("TNA_CACHE_DIR", "/var/cache/tna"))


def _include_flags() -> list[str]:
    # <asm/types.h> lives in the multiarch include dir on Debian.
    multiarch = f"/usr/include/{platform.machine()}-linux-gnu"
    return [f"-I{HELPERS_DIR}", f"-I{multiarch}"]


def _clang() -> str:
    clang = shutil.which(os.environ.get("TNA_CLANG", "clang"))
    if clang is None:
        raise CompileError("clang not found: install it (apt-get install clang)")
    return clang


def _clang_version(clang: str) -> str:
    return _version(clang, os.stat(clang).st_mtime_ns)


@functools.cache
def _version(clang: str, mtime_ns: int) -> str:
    """Asked once per binary (a program load should not wait for a fork)."""
    return subprocess.run([clang, "--version"], capture_output=True, text=True, check=True).stdout


def clang_version() -> str:
    """The first line of `clang --version` of the clang TNA compiles with
    (CompileError if there is none)."""
    return _clang_version(_clang()).splitlines()[0]


def cache_key(source: str, clang: str) -> str:
    h = hashlib.sha256()
    h.update(source.encode())
    for header in sorted(HELPERS_DIR.glob("*.h")):
        h.update(header.name.encode())
        h.update(header.read_bytes())
    h.update(" ".join(CLANG_FLAGS + tuple(_include_flags())).encode())
    h.update(_clang_version(clang).encode())
    return h.hexdigest()[:24]


def object_path(source: str, cache_dir: Path | None = None) -> Path:
    """Where the object for source is (or will be, once compiled)."""
    return (cache_dir or default_cache_dir()) / f"{cache_key(source, _clang())}.o"


def compile_source(source: str, cache_dir: Path | None = None, observe: CompileObserver | None = None) -> Path:
    """Path of the object for source; compiles only on a cache miss."""
    clang = _clang()
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    obj = object_path(source, cache_dir)
    key = obj.stem
    if obj.exists():
        if observe is not None:
            observe(None)
        return obj
    src = cache_dir / f"{key}.c"
    # both written to a temp name and renamed: a crash never leaves a torn
    # object, and another daemon compiling the same source never reads half
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".c.tmp")
    with os.fdopen(fd, "w") as f:
        f.write(source)
    os.replace(tmp, src)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".o.tmp")
    os.close(fd)
    try:
        t0 = time.monotonic()
        res = subprocess.run([clang, *CLANG_FLAGS, *_include_flags(), "-c", str(src), "-o", tmp],
                             capture_output=True, text=True)
        if observe is not None:
            observe(time.monotonic() - t0)
        if res.returncode != 0:
            raise CompileError(f"clang failed for {src}:\n{res.stderr.strip()}")
        os.replace(tmp, obj)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return obj
