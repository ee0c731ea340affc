"""The Python mirrors of helpers/tna_abi.h match the C layout (compiled
with the host compiler) and the reason names match the enum values."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from tna import HELPERS_DIR
from tna.bpf import abi

STRUCTS = {
    "tna_state": abi.TnaState, "tna_config": abi.TnaConfig, "tna_counter": abi.TnaCounter,
    "tna_iface_cfg": abi.TnaIfaceCfg, "tna_neigh_key": abi.TnaNeighKey, "tna_egress": abi.TnaEgress,
    "tna_port": abi.TnaPort, "tna_fdb_key": abi.TnaFdbKey, "tna_fdb": abi.TnaFdb,
    "tna_ct_key": abi.TnaCtKey,
}


def test_layouts_and_reasons_match_the_header(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "tna_abi.h"', "int main(void) {"]
    for cname, py in STRUCTS.items():
        lines.append(f'printf("{cname} size %zu\\n", sizeof(struct {cname}));')
        for field, *_ in py._fields_:
            lines.append(f'printf("{cname}.{field} %zu\\n", offsetof(struct {cname}, {field}));')
    for i, name in enumerate(abi.REASONS):
        lines.append(f'printf("reason {name} %d {i}\\n", (int)TNA_R_{name});')
    lines.append(f'printf("reason MAX %d {len(abi.REASONS)}\\n", (int)TNA_R_MAX);')
    for name, bit in abi.PORT_FLAGS.items():
        lines.append(f'printf("reason PORT_{name} %d {bit}\\n", (int)TNA_PORT_{name});')
    lines.append(f'printf("reason FDB_LOCAL %d {abi.FDB_LOCAL}\\n", (int)TNA_FDB_LOCAL);')
    lines.append(f'printf("reason FDB_DYNAMIC %d {abi.FDB_DYNAMIC}\\n", (int)TNA_FDB_DYNAMIC);')
    lines.append(f'printf("reason IF_L2_EGRESS %d {abi.TNA_IF_L2_EGRESS}\\n", (int)TNA_IF_L2_EGRESS);')
    for name in ("GUARD_V4", "GUARD_V6", "INNER_V4", "INNER_V6", "ALL_V4", "ALL_V6", "ICMP6_LABEL"):
        lines.append(f'printf("reason MP_{name} %d {getattr(abi, "TNA_MP_" + name)}\\n", (int)TNA_MP_{name});')
    lines.append(f'printf("reason FW_V4 %d {abi.TNA_FW_V4}\\n", (int)TNA_FW_V4);')
    lines.append(f'printf("reason FW_V6 %d {abi.TNA_FW_V6}\\n", (int)TNA_FW_V6);')
    lines.append(f'printf("reason FW_RULES_MAX %d {abi.FW_RULES_MAX}\\n", TNA_FW_RULES_MAX);')
    lines.append(f'printf("reason PORTS_SIZE %d {abi.PORTS_SIZE}\\n", TNA_PORTS_SIZE);')
    lines.append(f'printf("reason LOCAL4_MAX %d {abi.LOCAL4_MAX}\\n", TNA_LOCAL4_MAX);')
    lines += ["return 0;", "}"]
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines))
    subprocess.run([cc, f"-I{HELPERS_DIR}", str(src), "-o", str(tmp_path / "abi")], check=True)
    out = subprocess.run([str(tmp_path / "abi")], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        what, *vals = line.split()
        if what == "reason":
            assert vals[1] == vals[2], f"TNA_R_{vals[0]} is {vals[1]} in C, {vals[2]} in Python"
        elif vals[0] == "size":
            assert ctypes.sizeof(STRUCTS[what]) == int(vals[1]), what
        else:
            cname, field = what.split(".")
            assert getattr(STRUCTS[cname], field).offset == int(vals[0]), what
