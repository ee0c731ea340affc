"""A container host as Docker, kube-proxy, ufw or a home router builds one:
bridges with containers (namespaces on veths) behind them, an uplink to the
outside, and real iptables or nftables rule sets loaded into the host
(`load_ruleset`).

    c1 [eth0] 192.0.2.2   2001:db8:c::2   -- [veth-c1] -+
    c2 [eth0] 192.0.2.3   2001:db8:c::3   -- [veth-c2] -+- bridges[0] 192.0.2.1/25 2001:db8:c::1/64
    c3 [eth0] 192.0.2.130 2001:db8:d::130 -- [veth-c3] -- bridges[1] 192.0.2.129/25 2001:db8:d::1/64
    host [eth0] 198.51.100.1/24 2001:db8:1::1/64 (default route via out)
      |
    out [out0] 198.51.100.2/24 2001:db8:1::2/64, lo 203.0.113.1 2001:db8:f::1

The outside answers from its loopback addresses, as a host beyond a router
would. It routes the container networks via the host, so direct access is
possible (what Docker 28 guards against), and its INPUT drops new
connections from their addresses, so only NATed ones reach its services.

GHOST4/GHOST6 (container side, permanent neighbours pointing at c1) and
FAR4/FAR6 (routed to the outside) are addresses no stack owns: crafted
frames of established flows use them, and no real stack answers them.
No br_netfilter: loading it would switch bridge-nf-call-iptables on in every
namespace on the machine (other labs' bridges), so traffic between the
containers of one bridge bypasses iptables here (the rule sets accept it).
"""

from __future__ import annotations

import subprocess
from contextlib import ExitStack
from pathlib import Path

from netns_labs.lab import Host, Lab

RULESETS = Path(__file__).resolve().parent.parent / "tests" / "data" / "rulesets"
UPLINK4, UPLINK6 = "198.51.100.1", "2001:db8:1::1"
FAR4, FAR6 = "203.0.113.99", "2001:db8:f::99"
GHOST4, GHOST6 = "192.0.2.99", "2001:db8:c::99"
TCP_PORT, UDP_PORT, CLOSED_PORT = 5201, 5202, 5203  # published TCP and UDP; one not published


class HostLab(Lab):
    """The lab above; bridges: the two bridges' names (docker0 and a second
    Docker network, a CNI bridge, a LAN)."""

    def __init__(self, bridges: tuple[str, str] = ("docker0", "br-app")) -> None:
        super().__init__()
        self.bridges = bridges
        with ExitStack() as on_failure:  # a lab that fails to build removes what it made
            on_failure.callback(self.close)
            self._build()
            on_failure.pop_all()

    def _build(self) -> None:
        self._gateways: list[tuple[str, str, str, str]] = []
        self.host = self.add_ns("host")
        br0, br1 = self.bridges
        for name, cidr4, cidr6 in ((br0, "192.0.2.1/25", "2001:db8:c::1/64"),
                                   (br1, "192.0.2.129/25", "2001:db8:d::1/64")):
            self.run(self.host, ["ip", "link", "add", name, "type", "bridge"])
            self.run(self.host, ["ip", "link", "set", name, "up"])
            self.addr(self.host, name, cidr4)
            self.addr(self.host, name, cidr6)
        self.c1 = self.container("c1", br0, "192.0.2.2", "2001:db8:c::2", "192.0.2.1", "2001:db8:c::1")
        self.c2 = self.container("c2", br0, "192.0.2.3", "2001:db8:c::3", "192.0.2.1", "2001:db8:c::1")
        self.c3 = self.container("c3", br1, "192.0.2.130", "2001:db8:d::130", "192.0.2.129", "2001:db8:d::1")
        # a bridge without a MAC of its own takes its numerically lowest
        # port's: a container that joined before another would send to a
        # port's MAC (the kernel takes it too, the fast path leaves it to it)
        for ns, bridge, gw4, gw6 in self._gateways:
            for gw in (gw4, gw6):
                self.neigh(ns, "eth0", gw, self.mac(self.host, bridge))
        out = self.add_ns("out")
        self.veth(self.host, "eth0", out, "out0")
        self.addr(self.host, "eth0", f"{UPLINK4}/24")
        self.addr(self.host, "eth0", f"{UPLINK6}/64")
        self.addr(out, "out0", "198.51.100.2/24")
        self.addr(out, "out0", "2001:db8:1::2/64")
        self.addr(out, "lo", "203.0.113.1/32")
        self.addr(out, "lo", "2001:db8:f::1/128")
        self.route(self.host, "default", via="198.51.100.2")
        self.route(self.host, "default", via="2001:db8:1::2")
        # the outside answers from its own address beyond the uplink
        for dst, via, src in (("192.0.2.0/24", UPLINK4, "203.0.113.1"), ("2001:db8:c::/63", UPLINK6, "2001:db8:f::1"),
                              (f"{UPLINK4}/32", None, "203.0.113.1"), (f"{UPLINK6}/128", None, "2001:db8:f::1")):
            self.run(out, ["ip", "route", "replace", dst, *(["via", via] if via else []), "dev", "out0", "src", src])
        for tool, src in (("iptables", "192.0.2.0/24"), ("ip6tables", "2001:db8:c::/63")):
            self.run(out, [tool, "-A", "INPUT", "-s", src, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"])
        self.out = Host(out, "out0", "203.0.113.1", "2001:db8:f::1", self.mac(out, "out0"))
        self.host_mac = self.mac(self.host, "eth0")
        for ip in ("198.51.100.2", "2001:db8:1::2"):
            self.neigh(self.host, "eth0", ip, self.out.mac)
        for ip in (UPLINK4, UPLINK6):
            self.neigh(out, "out0", ip, self.host_mac)
        self.neigh(self.host, br0, GHOST4, self.c1.mac)
        self.neigh(self.host, br0, GHOST6, self.c1.mac)
        self.sysctl(self.host, "net.ipv4.ip_forward", 1)
        self.sysctl(self.host, "net.ipv6.conf.all.forwarding", 1)
        self.ports = ["veth-c1", "veth-c2", "veth-c3", "eth0"]  # what tna accelerates

    def container(self, name: str, bridge: str, ip4: str, ip6: str, gw4: str, gw6: str) -> Host:
        ns, port = self.add_ns(name), f"veth-{name}"
        self.veth(self.host, port, ns, "eth0")
        self.run(self.host, ["ip", "link", "set", port, "master", bridge])
        self.addr(ns, "eth0", f"{ip4}/25")
        self.addr(ns, "eth0", f"{ip6}/64")
        self.route(ns, "default", via=gw4)
        self.route(ns, "default", via=gw6)
        mac = self.mac(ns, "eth0")
        self.neigh(self.host, bridge, ip4, mac)
        self.neigh(self.host, bridge, ip6, mac)
        self._gateways.append((ns, bridge, gw4, gw6))  # their MAC: once every port has joined (_build)
        return Host(ns, "eth0", ip4, ip6, mac)

    @property
    def containers(self) -> list[Host]:
        return [self.c1, self.c2, self.c3]

    def load_ruleset(self, name: str) -> None:
        """tests/data/rulesets/NAME: the ipsets first (NAME.ipset, `ipset
        restore` input), then NAME-v4.txt and NAME-v6.txt (those present), as
        the tool itself restores them; or kube-proxy-N, generated; or
        nft/NAME, a native nftables file (NAME.nft, `nft -f`)."""
        from netns_labs.rulesets import ruleset_texts

        if name.startswith("nft/"):
            try:
                self.run(self.host, ["nft", "-f", str(RULESETS / f"{name}.nft")])
            except subprocess.CalledProcessError as e:
                raise RuntimeError(f"{name}: nft failed: {e.stderr}") from e
            return
        ipsets, v4, v6 = ruleset_texts(name)
        for tool, text in (("ipset", ipsets), ("iptables-restore", v4), ("ip6tables-restore", v6)):
            if text:
                cmd = ["ipset", "restore"] if tool == "ipset" else [tool, "-c"]
                try:
                    self.run(self.host, cmd, input=text)
                except subprocess.CalledProcessError as e:
                    raise RuntimeError(f"{name}: {tool} failed: {e.stderr}") from e
