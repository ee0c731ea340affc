"""Template rendering and the compile cache (clang, no root)."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2
import pytest

from tna.synth import compile as tna_compile
from tna.synth.render import _env, render


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_renders_one_program_per_hook(hook: str) -> None:
    src = render(hook, ("router",))
    assert f'#include "ctx_{hook}.h"' in src
    assert "SEC(TNA_SEC)" in src
    assert "v = tna_router(&pkt);" in src
    assert "SPDX-License-Identifier" in src.splitlines()[0]


def test_no_module_renders_a_pass_only_program() -> None:
    src = render("xdp", ())
    assert "tna_router" not in src and "TNA_R_NO_MODULE" in src


def test_unknown_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        render("sched", ("router",))
    with pytest.raises(ValueError):
        render("xdp", ("firewall9",))
    with pytest.raises(jinja2.UndefinedError):  # StrictUndefined: a missing variable is an error
        _env.get_template("main.c.j2").render(hook="xdp")


def test_compile_cache_hits_and_keys(tmp_path: Path) -> None:
    src = render("tc", ("router",))
    first = tna_compile.compile_source(src, tmp_path)
    mtime = first.stat().st_mtime_ns
    assert tna_compile.compile_source(src, tmp_path) == first
    assert first.stat().st_mtime_ns == mtime  # not rebuilt
    other = tna_compile.compile_source(src + "\n/* changed */\n", tmp_path)
    assert other != first
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_clang_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TNA_CLANG", "no-such-clang")
    with pytest.raises(tna_compile.CompileError, match=r"clang not found: install it"):
        tna_compile.compile_source(render("xdp", ("router",)), tmp_path)


def test_clang_error_is_reported(tmp_path: Path) -> None:
    with pytest.raises(tna_compile.CompileError, match="clang failed"):
        tna_compile.compile_source(render("xdp", ("router",)) + "\n#error broken\n", tmp_path)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".o")]


def test_every_kind_of_match_compiles(tmp_path: Path) -> None:
    """One rule per match kind, alone and negated, in FORWARD and INPUT
    chains for both families (clang runs with -Wall -Werror)."""
    from tna.model.hooks import firewall_plan
    from tna.model.iptables import parse_save

    matches = ["-p icmp", "-s 192.0.2.0/24", "-d 198.51.100.7", "-i eth+", "-o eth0", "-p tcp -m tcp --dport 80",
               "-p udp -m udp --sport 1:1023", "-p tcp -m multiport --ports 22,80", "-p tcp -m tcp --syn",
               "-p icmp -m icmp --icmp-type 3/1", "-f", "-m comment --comment x", "-p udp -m string --string y",
               "-m conntrack --ctstate INVALID", "-m state ! --state NEW,ESTABLISHED",
               "-p tcp -m conntrack --ctstate NEW -m string --string z"]
    rules4 = "".join(f"-A {c} {m} -j DROP\n-A {c} ! {m} -j RETURN\n" if not m.startswith(("-p", "-m"))
                     else f"-A {c} {m} -j DROP\n" for c in ("FORWARD", "INPUT") for m in matches)
    rules6 = ("-A FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT\n-A FORWARD -s 2001:db8::/32 -j DROP\n"
              "-A INPUT -m conntrack --ctstate INVALID -j DROP\n-A INPUT -p udp -m udp --dport 9999 -j DROP\n"
              + "".join(f"-A INPUT -s 2001:db8:{i}::/48 -j DROP\n" for i in range(5)))
    head = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    fw, why = firewall_plan({4: parse_save(head + rules4 + "COMMIT\n"), 6: parse_save(head + rules6 + "COMMIT\n")})
    assert why is None and fw is not None and fw.ct4 and fw.ct6 and fw.in6 is not None
    for hook in ("xdp", "tc"):
        tna_compile.compile_source(render(hook, ("firewall", "router"), firewall=fw), tmp_path)


def test_a_rule_joining_a_set_renders_the_same_program() -> None:
    """A rule inserted into a run of same-shaped rules is a map entry: the
    source (so the object: no clang run) stays the same, every counter id is
    used once, and the set's entries count the new rule under its own id."""
    from tna.model.hooks import firewall_plan
    from tna.model.iptables import parse_save
    from tna.synth.fwgen import all_set_entries, rule_refs

    def plan(blocked: int) -> tuple:
        block = "".join(f"-A FORWARD -s 203.0.113.{i}/32 -p udp -m udp --dport {1000 + i} -j DROP\n"
                        for i in range(blocked))
        save = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "-A INPUT -s 198.51.100.9/32 -j DROP\n"
                "-A FORWARD -m conntrack --ctstate INVALID -j DROP\n" + block +
                "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                "-A FORWARD -p udp -m udp --dport 9 -j ACCEPT\nCOMMIT\n")
        six = save.replace("203.0.113.", "2001:db8::").replace("198.51.100.9", "2001:db8:1::9")
        fw, why = firewall_plan({4: parse_save(save), 6: parse_save(six)})
        assert why is None and fw is not None
        return fw, render("xdp", ("firewall", "router"), firewall=fw)

    (small, src_small), (big, src_big) = plan(20), plan(21)
    assert src_big == src_small
    refs = rule_refs(big)
    assert sorted(r.id for r in refs) == list(range(len(refs))) == list(range(len(rule_refs(small)) + 2))
    assert [r.index for r in refs if r.family == 4 and r.chain == "FORWARD"] == [*range(1, 25), 0]  # shown in order
    new = {r.id for r in refs if r.chain == "FORWARD" and "--dport 1020" in r.text}
    assert len(new) == 2  # one per family
    counted = {int.from_bytes(v, "little") for entries in all_set_entries(big).values() for v in entries.values()}
    assert new <= counted
