"""The real tools' rule sets for netns_labs.hostlab, and what each tool
intends on the lab's traffic (netns_labs.transparency's outcomes).

The files in tests/data/rulesets/ are iptables-save -c text (NAME-v4.txt,
NAME-v6.txt, NAME.ipset); kube-proxy's, which grows with the services, is
generated here (`kube_proxy`), as kube-proxy writes it for N services.
Native nftables rule sets (tests/data/rulesets/nft/) are netns_labs.nft_rulesets'.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from netns_labs.hostlab import GHOST4, RULESETS

OK, FAIL = "ok", "fail"
# what the lab's real stacks do (transparency.OUTCOMES), with every path open
OPEN = {"tcp out v4": OK, "tcp out v6": OK, "tcp published v4": OK, "tcp published v6": OK,
        "tcp direct v4": OK, "udp out v4": OK, "udp out v6": OK, "udp published v4": OK,
        "udp published v6": OK, "udp one-way v4": OK, "ping out v4": OK, "ping out v6": OK,
        "ping direct v4": OK, "ping direct v6": OK, "ping isolated v4": OK, "ping isolated v6": OK}
# no IPv6 rules: no NAT, so the outside drops the containers' new connections
# and nothing listens on the host's own port
NO_V6 = {k: FAIL for k in ("tcp out v6", "tcp published v6", "udp out v6", "udp published v6", "ping out v6")}
# the outside cannot reach a container's own address, nor one bridge the other
GUARDED = {k: FAIL for k in ("tcp direct v4", "ping direct v4", "ping direct v6", "ping isolated v4",
                             "ping isolated v6")}


@dataclass(frozen=True)
class RuleSet:
    name: str
    bridges: tuple[str, str]
    expect: dict[str, str]  # outcome -> what the tool intends (and Linux does)


RULESETS_ALL = (
    # 20.10-27 lets the outside reach a published port at the container's own
    # address (the gap 28 closed with raw PREROUTING)
    RuleSet("docker-20.10", ("docker0", "br-app"),
            OPEN | {"ping direct v4": FAIL, "ping direct v6": FAIL,
                    "ping isolated v4": FAIL, "ping isolated v6": FAIL}),
    RuleSet("docker-28", ("docker0", "br-app"), OPEN | GUARDED),
    RuleSet("docker-28.0.0", ("docker0", "br-app"), OPEN | GUARDED),
    # kube-proxy filters nothing it does not serve; IPv4 only here
    RuleSet("kube-proxy-3", ("cni0", "cni1"), OPEN | NO_V6),
    # ufw routes echo requests (before-forward), and its route rule matches the
    # container's address whether or not DNAT put it there
    RuleSet("ufw", ("br-lan", "br-guest"), OPEN),
    RuleSet("home-router", ("br-lan", "br-guest"), OPEN | GUARDED),
)


def ruleset_texts(name: str) -> tuple[str, str, str]:
    """(ipset restore input, iptables-restore input, ip6tables-restore input), "" where none."""
    if name.startswith("kube-proxy-"):
        return "", kube_proxy(int(name.removeprefix("kube-proxy-"))), ""
    texts = []
    for suffix in (".ipset", "-v4.txt", "-v6.txt"):
        path = RULESETS / f"{name}{suffix}"
        texts.append(path.read_text() if path.exists() else "")
    if not texts[1]:
        raise FileNotFoundError(f"no rule set {name} in {RULESETS}")
    return texts[0], texts[1], texts[2]


def _chain(prefix: str, *key: str) -> str:
    """kube-proxy's chain naming: a prefix and the first 16 base32 characters
    of the SHA-256 of what the chain is for."""
    digest = hashlib.sha256("".join(key).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def service(i: int) -> tuple[str, str, str, int, list[str]]:
    """(name, protocol, cluster IP, port, endpoints) of service i. 0 and 1 are
    the lab's published TCP and UDP ports (a NodePort on the same number, one
    endpoint c1); the others spread over 127 cluster IPs in 203.0.113.128/25
    with two endpoints each, the last none (kube-proxy REJECTs it)."""
    if i < 2:
        proto, port = ("tcp", 5201) if i == 0 else ("udp", 5202)
        return f"default/svc{i}:{proto}", proto, "203.0.113.128", port, [f"192.0.2.2:{port}"]
    port = 6000 + i // 127
    return (f"default/svc{i}:tcp", "tcp", f"203.0.113.{128 + i % 127}", port,
            [f"192.0.2.2:{port}", f"192.0.2.3:{port}"])


def kube_proxy(n: int, pod_cidr: str = "192.0.2.0/25") -> str:
    """kube-proxy 1.28+ in iptables mode for n services (n >= 3; the last one
    without endpoints), plus the bridge CNI plugin's ipMasq rules for pods c1
    and c2, as iptables-save -c prints them. Written from the Kubernetes
    documentation ("Virtual IPs and Service Proxies", iptables proxy mode) and
    the iptables-save listings of the kube-proxy iptables-mode write-ups it
    links: KUBE-SERVICES, KUBE-SVC-* (-m statistic --mode random), KUBE-SEP-*
    DNAT, KUBE-MARK-MASQ/KUBE-POSTROUTING on mark 0x4000, KUBE-NODEPORTS
    behind addrtype LOCAL, KUBE-FORWARD with the mark and ctstate."""
    assert n >= 3
    c1 = "192.0.2.2"
    nat_chains = ["KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-SERVICES"]
    nat: list[str] = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    ]
    for pod, cid in ((c1, "c1"), ("192.0.2.3", "c2"), (GHOST4, "ghost")):
        cni = _chain("CNI-", cid)
        nat_chains.append(cni)
        nat += [f'-A POSTROUTING -s {pod}/32 -m comment --comment "name: \\"cbr0\\" id: \\"{cid}\\"" -j {cni}',
                f'-A {cni} -d {pod_cidr} -m comment --comment "name: \\"cbr0\\" id: \\"{cid}\\"" -j ACCEPT',
                f'-A {cni} ! -d 224.0.0.0/4 -m comment --comment "name: \\"cbr0\\" id: \\"{cid}\\"" -j MASQUERADE']
    nat += ["-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully"]
    services, nodeports, per_chain = [], [], []
    filter_services = []
    for i in range(n):
        name, proto, vip, port, endpoints = service(i)
        if i == n - 1:
            filter_services.append(f'-A KUBE-SERVICES -d {vip}/32 -p {proto} -m comment --comment "{name} has no '
                                   f'endpoints" -m {proto} --dport {port} '
                                   "-j REJECT --reject-with icmp-port-unreachable")
            continue
        svc = _chain("KUBE-SVC-", name, proto)
        nat_chains.append(svc)
        services.append(f'-A KUBE-SERVICES -d {vip}/32 -p {proto} -m comment --comment "{name} cluster IP" '
                        f"-m {proto} --dport {port} -j {svc}")
        per_chain.append(f'-A {svc} ! -s {pod_cidr} -d {vip}/32 -p {proto} -m comment --comment "{name} cluster IP" '
                         f"-m {proto} --dport {port} -j KUBE-MARK-MASQ")
        if i < 2:
            ext = _chain("KUBE-EXT-", name, proto)
            nat_chains.append(ext)
            nodeports.append(f'-A KUBE-NODEPORTS -p {proto} -m comment --comment "{name}" -m {proto} '
                             f"--dport {port} -j {ext}")
            per_chain += [f'-A {ext} -m comment --comment "masquerade traffic for {name} external destinations" '
                          "-j KUBE-MARK-MASQ", f"-A {ext} -j {svc}"]
        for k, ep in enumerate(endpoints):
            sep = _chain("KUBE-SEP-", name, proto, ep)
            nat_chains.append(sep)
            left = len(endpoints) - k
            pick = f"-m statistic --mode random --probability {1 / left:.11f} " if left > 1 else ""
            per_chain += [f'-A {svc} -m comment --comment "{name} -> {ep}" {pick}-j {sep}',
                          f'-A {sep} -s {ep.split(":")[0]}/32 -m comment --comment {name} -j KUBE-MARK-MASQ',
                          f"-A {sep} -p {proto} -m comment --comment {name} -m {proto} "
                          f"-j DNAT --to-destination {ep}"]
    services.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
                    'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    nat += services + nodeports + per_chain
    filt = [
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        *filter_services,
    ]
    filter_chains = ["KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL",
                     "KUBE-SERVICES"]
    header = (f"# kube-proxy (Kubernetes 1.28+) iptables mode, {n} services, generated by "
              "netns_labs.rulesets.kube_proxy\n")
    return header + _table("nat", ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"], nat_chains, nat) + \
        _table("filter", ["INPUT", "FORWARD", "OUTPUT"], filter_chains, filt)


def _table(name: str, builtins: list[str], chains: list[str], rules: list[str]) -> str:
    lines = [f"*{name}", *(f":{c} ACCEPT [0:0]" for c in builtins), *(f":{c} - [0:0]" for c in sorted(chains)),
             *(f"[0:0] {r}" for r in rules), "COMMIT"]
    return "\n".join(lines) + "\n"
