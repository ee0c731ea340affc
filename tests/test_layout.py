"""The layout docs/architecture.md describes, pinned (no root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tna

TNA_DIR = Path(tna.__file__).parent


def test_deploy_runs_no_synthesis_code() -> None:
    """Deploy loads artifacts: importing it pulls in neither the renderer,
    the compiler nor the rule-set code (the CLI reads counters through it)."""
    code = ("import sys, tna.deploy.datapath, tna.deploy.lease, tna.deploy.counters; "
            "print(' '.join(m for m in ('tna.synth.render', 'tna.synth.compile', 'tna.synth.fwgen', "
            "'tna.synth.build') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=TNA_DIR.parent).stdout
    assert out.strip() == ""


def test_model_uses_nothing_of_the_datapath() -> None:
    for path in (TNA_DIR / "model").glob("*.py"):
        assert "tna.bpf" not in path.read_text(), path


def test_no_module_over_500_lines() -> None:
    long = {str(p.relative_to(TNA_DIR)): n for p in TNA_DIR.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
