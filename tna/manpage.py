r"""The tna(8) man page, generated from the command line itself (tna.cli.build_parser):

  python -m tna.manpage docs/tna.8        (needs argparse-manpage: pip install -e '.[test]')

The commands and options come from the parser (argparse-manpage renders
them); what --help cannot say is written here in roff: the description,
exit status, signals, environment, files, see also.  The examples are the
indented lines of the parser's epilog.  The page carries no date, so the
same code always gives the same page (tests/test_manpage.py compares it
with the committed one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tna import __version__
from tna.cli import build_parser

DESCRIPTION = r"""
.B tna
makes an ordinary Linux box forward packets faster without changing how it
is configured.
It watches the network namespace's configuration over netlink (links,
addresses, routes, neighbours, bridges and their FDBs, sysctls,
iptables/ip6tables filter rules), generates the minimal fast path for the
features in use, compiles it with clang and attaches it at XDP (frames from
a wire) or TC ingress (veths and taps facing a local stack).
Routes and neighbours are read from the kernel's own tables on every packet
(\fBbpf_fib_lookup\fR), bridge state is mirrored into maps, the raw, mangle, filter and security
rules are compiled into code and lookup tables, in the kernel's order, and connection state comes from the
kernel's conntrack table.
.PP
Every packet the fast path cannot handle exactly like Linux is passed to the
kernel untouched, counted by reason (\fBtna status\fR, \fBtna stats\fR).
While a netfilter rule set it does not model exists (native nftables
chains), all traffic stays on the kernel path.
.PP
.B tna run
accelerates the network namespace it runs in; start it with
\fBip netns exec\fR \fINAME\fR (or as \fBtna@\fR\fINAME\fR\fB.service\fR) for
another one.
The other commands read what the daemon of the current namespace publishes
and need no options of their own to find it.
"""

SECTIONS = {
    "EXIT STATUS": r"""
.TP
.B 0
Success.
For \fBtna run\fR: stopped by SIGTERM or SIGINT after detaching everything.
For \fBtna check\fR: \fBtna run\fR can work on this machine.
.TP
.B 1
An error, described on standard error: another \fBtna run\fR is active in
this network namespace, \fBtna\fR is not running (for \fBstatus\fR,
\fBstats\fR, \fBsource\fR), a bad configuration file or option value, or a
failed \fBtna check\fR.
.TP
.B 2
Wrong usage (an unknown command or option).
.TP
.B 130
Interrupted (Ctrl\-C, e.g. \fBtna stats \-\-watch\fR).
""",
    "SIGNALS": r"""
.TP
.BR SIGTERM ", " SIGINT
\fBtna run\fR detaches every program it attached, removes its state
directory and exits: the namespace is plain Linux again.
.TP
.B SIGHUP
\fBtna run\fR reads its configuration file again; an invalid new file keeps
the old settings, with a log message.
.TP
.B SIGUSR1
\fBtna run\fR writes the stack of each of its threads to its log (standard
error), and goes on: what a daemon that does not stop is doing.
.TP
.BR SIGKILL ", or a crash"
The kernel takes the programs off at once (they hang on BPF links, tcx at
TC, that the process held).
.TP
.B SIGSTOP
A stopped (or hung) \fBtna run\fR keeps its programs attached, but they pass
every packet to the kernel within about a second (a lease the daemon
renews every 200 ms).
""",
    "ENVIRONMENT": r"""
.TP
.B TNA_CONFIG
The configuration file (default \fI/etc/tna/tna.toml\fR); \fB\-\-config\fR wins.
.TP
.B TNA_CACHE_DIR
Where compiled programs are cached (default \fI/var/cache/tna\fR).
.TP
.B TNA_RUN_DIR
Where each namespace's daemon keeps its lock and state (default \fI/run/tna\fR).
.TP
.B TNA_CLANG
The clang to compile with (default: \fBclang\fR from \fBPATH\fR).
.TP
.B NOTIFY_SOCKET
Set by systemd for \fBType=notify\fR units: \fBtna run\fR reports ready once
the fast path is attached.
""",
    "FILES": r"""
.TP
.I /etc/tna/tna.toml
The configuration (TOML): \fBhook\fR, \fBlog_level\fR,
\fBmetrics\fR = "\fIHOST\fR:\fIPORT\fR", \fBignore\fR = [\fIglobs\fR] (interfaces
to leave alone), and an \fB[iface_hook]\fR table (\fIIFACE\fR = "xdp" or "tc").
Command\-line options win over the file.
.TP
.IR /run/tna/ NETNS /
Per network namespace (\fINETNS\fR is the inode of \fI/proc/self/ns/net\fR):
\fIlock\fR (held while a daemon runs; the kernel releases it if the daemon
dies), \fIstate.json\fR (what \fBtna status\fR reads) and, left by a \fBtna\fR
from before tcx links, \fIclsact\fR (the qdiscs it added). Removed on a clean stop.
.TP
.I /var/cache/tna/
Compiled programs, named by a hash of their source and compiler; safe to
delete at any time.
""",
}

SEE_ALSO = r"""
.BR ip (8),
.BR ip\-netns (8),
.BR bridge (8),
.BR tc (8),
.BR iptables (8),
.BR conntrack (8),
.BR bpftool (8),
.BR systemctl (1).
.PP
In the source: \fIdocs/operations.md\fR (install, upgrade, run as a service,
turn it off, what to look at when something is slow), \fIdocs/datapath.md\fR
(every reason a packet goes to the kernel), \fIdocs/usage.md\fR (a transcript).
"""


def examples(epilog: str) -> str:
    """The epilog's indented lines (the command examples), kept as lines."""
    lines = [line.strip().replace("\\", "\\\\").replace("-", r"\-") for line in epilog.splitlines()
             if line.startswith(" ")]
    return "\n".join([".nf", *lines, ".fi"])


def render() -> str:
    from argparse_manpage.manpage import Manpage

    parser = build_parser()
    epilog, description = parser.epilog or "", parser.description or ""
    parser.epilog = parser.description = None  # both are written below, in roff
    page = Manpage(parser, format="single-commands-section")
    page.section, page.manual, page.source, page.date = 8, "System Manager's Manual", f"tna {__version__}", ""
    page.description = description.rstrip(".").lower()
    page.add_section("description", "=", DESCRIPTION.strip())
    for heading, text in {**SECTIONS, "EXAMPLES": examples(epilog), "SEE ALSO": SEE_ALSO}.items():
        page.add_section(heading, "=", text.strip())
    return str(page)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the tna(8) man page (roff).")
    ap.add_argument("output", nargs="?", type=Path, help="file to write (default: standard output)")
    args = ap.parse_args(argv)
    try:
        text = render()
    except ImportError:
        sys.exit("tna.manpage needs argparse-manpage: pip install -e '.[test]' (or pip install argparse-manpage)")
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
