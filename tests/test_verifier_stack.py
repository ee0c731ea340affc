"""Every module chain the planner can emit loads: the verifier accepts it
(its 512-byte stack is the limit a new field or inlined call can cross),
for both hooks, with the largest firewall shapes: raw, mangle and filter
chains, conntrack and NAT in both families, or NAT in one and INPUT's early
drops in the other (a family with NAT rules has none)."""

from __future__ import annotations

import pytest

from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.model.firewall import Firewall
from tna.model.hooks import firewall_plan
from tna.model.iptables import parse_save
from tna.synth.compile import compile_source
from tna.synth.render import HOOKS, render

pytestmark = pytest.mark.root

FILTER = ("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
          "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
          "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
          "-A FORWARD -m conntrack --ctstate INVALID -j DROP\n"
          "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
          "-A FORWARD -i br0 ! -o br0 -j ACCEPT\n"
          "-A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT\nCOMMIT\n"
          "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -p udp -m udp --dport 7 -j DROP\n"
          "COMMIT\n"
          "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
          ":POSTROUTING ACCEPT [0:0]\n-A FORWARD -p tcp -m tcp --dport 81 -j DROP\nCOMMIT\n")
NAT = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
       "-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT --to-destination {to}\n"
       "-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n")

# planner.plan()'s chains: a routed port, one whose routes lead into a
# bridge (fdb), a bridge port, a port of a routed bridge; each with and
# without the firewall
CHAINS = [("router",), ("fdb", "router"), ("fdb", "bridge"), ("fdb", "bridge", "router")]


def firewall(nat: tuple[int, ...]) -> Firewall:
    to = {4: "192.0.2.10:80", 6: "[2001:db8::10]:80"}
    fw, why = firewall_plan({v: parse_save(FILTER + (NAT.format(to=to[v]) if v in nat else "")) for v in (4, 6)})
    assert why is None and fw is not None and fw.ct4 and fw.ct6
    assert (fw.nat4, fw.nat6, fw.in4 is None, fw.in6 is None) == (4 in nat, 6 in nat, 4 in nat, 6 in nat)
    return fw


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize(("chain", "nat"), [(c, ()) for c in CHAINS] +
                         [(("firewall", *c), nat) for c in CHAINS if "router" in c for nat in ((4, 6), (4,))],
                         ids=lambda c: "+".join(map(str, c)) or "-")
def test_every_planned_chain_loads(hook: str, chain: tuple[str, ...], nat: tuple[int, ...]) -> None:
    fw = firewall(nat) if "firewall" in chain else None
    with bpf.BpfObject(str(compile_source(render(hook, chain, firewall=fw)))) as obj:
        obj.set_max_entries(abi.MAP_FW_RULES, 16)
        try:
            obj.load()
        except bpf.LibbpfError as e:
            pytest.fail(f"{hook} {chain}: {e}\n" + "\n".join(e.log.splitlines()[-5:]))
