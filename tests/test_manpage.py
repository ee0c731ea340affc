"""docs/tna.8 is what tna.manpage makes of the current command line (no root)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tna import manpage
from tna.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent  # the checkout

PAGE = ROOT / "docs" / "tna.8"
REGENERATE = "python -m tna.manpage docs/tna.8"


def test_committed_page_is_generated_from_the_parser() -> None:
    assert PAGE.read_text() == manpage.render(), (
        f"docs/tna.8 is not what the command line gives now: regenerate it from the repository root with "
        f"`{REGENERATE}` (argparse-manpage comes with the test extra) and commit it")


def test_page_has_every_command_option_and_section() -> None:
    page = manpage.render()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    for name, p in sub.choices.items():
        assert f".SS \\fBtna {name}\\fR" in page, name
        for action in p._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"\\fB{opt.replace('-', chr(92) + '-')}\\fR" in page, (name, opt)
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "SIGNALS", "ENVIRONMENT",
                    "FILES", "EXAMPLES", "SEE ALSO"):
        assert re.search(rf"^\.SH\s+{heading}$", page, re.MULTILINE), heading  # argparse-manpage: ".SH\nCOMMANDS"
    assert ".TH TNA \"8\"" in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_page_is_clean_roff() -> None:
    out = subprocess.run(["groff", "-man", "-ww", "-z", str(PAGE)], capture_output=True, text=True, check=True)
    assert out.stderr == ""


def test_writes_the_file(tmp_path: Path) -> None:
    assert manpage.main([str(tmp_path / "tna.8")]) == 0
    assert (tmp_path / "tna.8").read_text() == manpage.render()
