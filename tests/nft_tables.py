"""Native nftables tables for tests, written as iptables-save text (the
rules' matches) with each base chain's hook, priority and type given
beside it: what tna.model.nftables makes of `nft -j list ruleset`, built
by hand."""

from __future__ import annotations

from tna.model.iptables import Table, parse_save


def native(name: str, body: str, hooks: dict[str, tuple[str, int] | tuple[str, int, str]]) -> Table:
    """A table `name` ("inet filter") whose chains are declared and filled
    in body (":chain POLICY", "-A chain ..."); hooks: base chain -> (hook,
    priority[, type]); a chain not there is a regular chain."""
    table = parse_save(f"*t\n{body.strip()}\nCOMMIT\n")["t"]
    table.name = name
    for chain, (hook, priority, *kind) in hooks.items():
        c = table.chains[chain]
        c.hook, c.priority, c.kind = hook, priority, kind[0] if kind else "filter"
        c.policy = c.policy or "ACCEPT"
    return table
