"""Log lines on a terminal and in the journal (no root)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

CODE = ("import logging; from tna.logsetup import setup_logging; setup_logging(False); "
        "log = logging.getLogger('tna'); log.debug('hidden'); log.info('r-h1: attached'); "
        "log.error('r-h2: failed\\nverifier says no')")


def _stderr(tmp_path: Path, journal_stream: str | None) -> str:
    """What the snippet writes to stderr, a file, with JOURNAL_STREAM set to
    journal_stream ("this file": that file's device and inode, as systemd does)."""
    out = tmp_path / "stderr"
    with out.open("w") as f:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal_stream == "this file":
            st = os.fstat(f.fileno())
            journal_stream = f"{st.st_dev}:{st.st_ino}"
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        subprocess.run([sys.executable, "-c", CODE], stderr=f, env=env, check=True,
                       cwd=Path(__file__).resolve().parent.parent)
    return out.read_text()


def test_journal_lines_carry_priority_and_no_timestamp(tmp_path: Path) -> None:
    assert _stderr(tmp_path, "this file").splitlines() == [
        "<6>INFO r-h1: attached", "<3>ERROR r-h2: failed", "<3>verifier says no"]


def test_terminal_lines_are_timestamped(tmp_path: Path) -> None:
    lines = _stderr(tmp_path, None).splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} tna INFO r-h1: attached", lines[0]), lines
    assert "hidden" not in "".join(lines)


def test_journal_stream_of_another_file_is_not_the_journal(tmp_path: Path) -> None:
    """A child of a service inherits JOURNAL_STREAM while its stderr goes elsewhere."""
    assert _stderr(tmp_path, "1:1").splitlines()[0].endswith(" tna INFO r-h1: attached")
