"""The Python side of tna/helpers/tna_abi.h matches the C: struct layouts
(compiled with the host compiler), the reason enum, every #define abi.py
reads, and the map, program and section names a real program has."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from tna import HELPERS_DIR
from tna.bpf import abi
from tna.bpf import libbpf as bpf

STRUCTS = {
    "tna_state": abi.TnaState, "tna_config": abi.TnaConfig, "tna_fw_hold": abi.TnaFwHold, "tna_counter": abi.TnaCounter,
    "tna_iface_cfg": abi.TnaIfaceCfg, "tna_neigh_key": abi.TnaNeighKey, "tna_egress": abi.TnaEgress,
    "tna_port": abi.TnaPort, "tna_fdb_key": abi.TnaFdbKey, "tna_fdb": abi.TnaFdb,
    "tna_ct_key": abi.TnaCtKey,
}


def _host_program(tmp_path: Path, body: list[str]) -> str:
    cc = shutil.which("cc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "abi.c"
    src.write_text("\n".join(['#include <stdio.h>', '#include <stddef.h>', '#include "tna_abi.h"',
                              "#define STR_(x) #x", "#define STR(x) STR_(x)", "int main(void) {", *body,
                              "return 0;", "}"]))
    subprocess.run([cc, f"-I{HELPERS_DIR}", str(src), "-o", str(tmp_path / "abi")], check=True)
    return subprocess.run([str(tmp_path / "abi")], capture_output=True, text=True, check=True).stdout


def test_layouts_and_reasons_match_the_header(tmp_path: Path) -> None:
    lines = []
    for cname, py in STRUCTS.items():
        lines.append(f'printf("{cname} size %zu\\n", sizeof(struct {cname}));')
        for field, *_ in py._fields_:
            lines.append(f'printf("{cname}.{field} %zu\\n", offsetof(struct {cname}, {field}));')
    for i, name in enumerate(abi.REASONS):
        lines.append(f'printf("reason {name} %d {i}\\n", (int)TNA_R_{name});')
    lines.append(f'printf("reason MAX %d {len(abi.REASONS)}\\n", (int)TNA_R_MAX);')
    for line in _host_program(tmp_path, lines).splitlines():
        what, *vals = line.split()
        if what == "reason":
            assert vals[1] == vals[2], f"TNA_R_{vals[0]} is {vals[1]} in C, {vals[2]} in Python"
        elif vals[0] == "size":
            assert ctypes.sizeof(STRUCTS[what]) == int(vals[1]), what
        else:
            cname, field = what.split(".")
            assert getattr(STRUCTS[cname], field).offset == int(vals[0]), what


def test_every_define_is_what_c_sees(tmp_path: Path) -> None:
    """abi.py's reading of each #define against the preprocessor's (a
    string's or a name's text through STR())."""
    lines = [f'printf("{name} %llu\\n", (unsigned long long)({name}));' if isinstance(value, int)
             else f'printf("{name} %s\\n", STR({name}));' for name, value in abi.DEFINES.items()]
    seen = dict(line.split(" ", 1) for line in _host_program(tmp_path, lines).splitlines())
    assert seen == {name: str(value) if isinstance(value, int) else f'"{value}"' if value.startswith(".")
                    else value for name, value in abi.DEFINES.items()}


def test_python_constants_come_from_the_header() -> None:
    """The constants the daemon uses are the header's (not copies)."""
    d = abi.DEFINES
    for name in ("TNA_IF_CHECK_CSUM_PARTIAL", "TNA_IF_RP_STRICT", "TNA_IF_RP_LOOSE", "TNA_IF_L2_EGRESS",
                 "TNA_MP_GUARD_V4", "TNA_MP_GUARD_V6", "TNA_FW_V4", "TNA_FW_V6", "TNA_SET_MATCH",
                 "TNA_SET_NOMATCH", "TNA_CT_CSUM", "TNA_CT_ACCT",
                 "TNA_CT_TCP_LOOSE", "TNA_TC_PRIORITY", "TNA_TC_HANDLE"):
        assert getattr(abi, name) == d[name], name
    assert (abi.LOCAL4_MAX, abi.LOCAL6_MAX) == (d["TNA_LOCAL4_MAX"], d["TNA_LOCAL6_MAX"])
    assert (abi.PORTS_SIZE, abi.FW_RULES_MAX, abi.FDB_SIZE) == (d["TNA_PORTS_SIZE"], d["TNA_FW_RULES_MAX"],
                                                             d["TNA_FDB_SIZE"])
    assert (abi.FDB_LOCAL, abi.FDB_DYNAMIC) == (d["TNA_FDB_LOCAL"], d["TNA_FDB_DYNAMIC"])
    assert abi.PORT_FLAGS == {k[len("TNA_PORT_"):]: v for k, v in d.items()
                              if k.startswith("TNA_PORT_") and k != "TNA_PORTS_SIZE"}
    assert abi.FW_CT == {k[len("FW_CT_"):]: v for k, v in d.items() if k.startswith("FW_CT_")}
    assert (abi.PROGRAM_NAME, abi.RENEW_PROGRAM, abi.SECTION_IFACE) == (
        d["TNA_PROGRAM"], d["TNA_RENEW_PROGRAM"], d["TNA_SECTION_IFACE"])


@pytest.mark.root
def test_a_built_program_has_the_names_python_looks_up(tmp_path: Path) -> None:
    """Every map abi.py names, both programs and the .rodata section, in a
    real object, loaded."""
    from tna.synth.compile import compile_source
    from tna.synth.render import render

    path = compile_source(render("tc", ("fdb", "bridge", "router")), tmp_path)
    maps = [v for k, v in vars(abi).items() if k.startswith("MAP_") and k != "MAP_NAMES"]
    assert set(maps) == set(abi.MAP_NAMES) and set(abi.SHARED_MAPS) < set(maps)
    with bpf.BpfObject(str(path)) as obj:
        obj.set_initial_value(abi.SECTION_IFACE, bytes(abi.TnaIfaceCfg()))
        obj.load()
        for name in abi.MAP_NAMES:
            assert obj.map(name).name == name
        for prog in (abi.PROGRAM_NAME, abi.RENEW_PROGRAM):
            assert obj.program(prog).name == prog
