"""The real tools' native nftables rule sets for netns_labs.hostlab
(tests/data/rulesets/nft/NAME.nft, loaded as `lab.load_ruleset("nft/NAME")`),
and what each tool intends on the lab's traffic (netns_labs.transparency's
outcomes, as netns_labs.rulesets has them for the iptables rule sets).

Each file names its sources in its header; each replaces only what its tool
owns (Debian's and the router's flush the ruleset, firewalld, fw4 and Docker
their own tables), so `unload` resets the host between rule sets in one lab.
"""

from __future__ import annotations

from netns_labs.hostlab import HostLab
from netns_labs.rulesets import FAIL, GUARDED, NO_V6, OK, OPEN, RuleSet

DOCKER, LAN = ("docker0", "br-app"), ("br-lan", "br-guest")
# no NAT anywhere: the outside drops the containers' new connections, and
# nothing on the host serves the published ports
_NO_NAT = NO_V6 | {k: FAIL for k in ("tcp out v4", "tcp published v4", "udp out v4", "udp published v4",
                                     "udp one-way v4", "ping out v4")}

NFT_RULESETS = (
    # three empty base chains, policy accept: Linux routes everything, NATs nothing
    RuleSet("nft/debian-stock", DOCKER, OPEN | _NO_NAT),
    # the same intent as the iptables home-router, IPv6 masqueraded and forwarded too
    RuleSet("nft/router-wiki", LAN, OPEN | GUARDED),
    # fw4 masquerades and forwards ports for IPv4 only; IPv6 is routed, and
    # its default rules let echo requests from wan through to the LAN
    RuleSet("nft/fw4", LAN, OPEN | NO_V6 | GUARDED | {"ping direct v6": OK}),
    # firewalld masquerades and forwards ports for IPv4 (public zone); the
    # policy lets internal and dmz out to public, no zone into another
    RuleSet("nft/firewalld", LAN, OPEN | NO_V6 | GUARDED),
    RuleSet("nft/docker-29", DOCKER, OPEN | GUARDED),
)


def unload(lab: HostLab) -> None:
    """Back to a host without rules or connections (the next rule set in the
    same lab starts as on a fresh host)."""
    lab.run(lab.host, ["nft", "flush", "ruleset"])
    lab.run(lab.host, ["conntrack", "-F"], check=False)  # exits 1 when the table was empty
