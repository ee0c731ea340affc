"""Is any netfilter rule set loaded in this namespace?

Until the firewall module exists, a fast path would skip those rules, so any
table at all keeps all traffic on the kernel path (the daemon sets the
datapath's DISABLED switch).  Polled: x_tables and nftables both report
through cheap reads.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

LEGACY_TABLES = {
    "iptables-legacy": Path("/proc/net/ip_tables_names"),
    "ip6tables-legacy": Path("/proc/net/ip6_tables_names"),
}


def rules_present() -> str | None:
    """Why the fast path must stay off, or None when no rule set exists."""
    for tool, path in LEGACY_TABLES.items():
        try:
            names = path.read_text().split()
        except OSError:
            names = []
        if names:
            return f"{tool} tables loaded ({', '.join(names)})"
    nft = shutil.which("nft")
    if nft is None:
        return "nft is not installed, so nftables rules cannot be ruled out"
    res = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, timeout=5)
    if res.returncode != 0:
        return f"nft list tables failed: {res.stderr.strip()}"
    tables = [line.split(None, 1)[1] for line in res.stdout.splitlines() if line.startswith("table ")]
    if tables:
        return f"nftables tables present ({', '.join(tables)})"
    return None
