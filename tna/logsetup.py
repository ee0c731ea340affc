"""Log lines for a terminal or for the journal.

On a terminal or into a file: timestamped lines.  When stderr is the journal
(a systemd service's default: `$JOURNAL_STREAM` names its device and inode,
systemd.exec(5)) the journal stamps each line itself, so no timestamp, and
each line starts with its syslog priority `<N>`, which journald strips and
records, so `journalctl -p warning` works.  (A unit that sends stderr to a
file keeps the timestamps: the file has no others.)
"""

from __future__ import annotations

import logging
import os
import sys

# logging level -> syslog priority (sd-daemon(3) prefixes)
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        # journald makes each line its own entry: every line of a verifier log keeps the priority
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def stderr_is_journal() -> bool:
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s tna %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
