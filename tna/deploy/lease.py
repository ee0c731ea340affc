"""tna_state: the lease and the global guards every program reads.

The daemon publishes a tna_config by running tna_renew on it (BPF test
run), the only writer of tna_state; each run also moves the lease deadline.
A hold (pass_reason != 0) sends every packet to the kernel with that reason
until the next set_guards() ends it.  Each publication replaces the whole
config under one lock, so the lease thread never renews a half-written one.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import threading
import time
from collections.abc import Callable

from tna.bpf import abi
from tna.bpf import libbpf as bpf
from tna.bpf.testrun import test_run
from tna.model.config import AF_INET, AF_INET6, Sysctls, XfrmPolicies
from tna.model.fwdiff import HeldFlow

LEASE_NS = 1_000_000_000
# how long the datapath sends a flow it just passed after its lookups straight to the kernel
# (passcache.c.j2): short, so a flow that becomes one to carry is carried soon after
PASS_CACHE_NS = 20_000_000


def renew(prog: bpf.Program, cfg: abi.TnaConfig) -> None:
    """Run tna_renew with cfg as its input frame."""
    ret, _, _ = test_run(prog, bytes(cfg).ljust(64, b"\0"))  # XDP test runs want >= 14 bytes
    if ret != 2:  # XDP_PASS
        raise OSError(f"tna_renew returned {ret}")


def jiffies_hz(prog: bpf.Program, state: bpf.Map) -> int:
    """The kernel's HZ (jiffies per second), measured: BPF sees jiffies,
    user space does not.  Rounded to the nearest configurable value."""
    def now() -> int:
        renew(prog, abi.TnaConfig(lease_jiffies=0, pass_reason=abi.REASON["DISABLED"]))
        raw = state.lookup(b"\0\0\0\0")
        assert isinstance(raw, bytes)
        return abi.TnaState.from_buffer_copy(raw).renewed_at

    t0, j0 = time.monotonic(), now()
    time.sleep(0.1)
    t1, j1 = time.monotonic(), now()
    measured = (j1 - j0) / (t1 - t0)
    return min((100, 250, 300, 1000), key=lambda hz: abs(hz - measured))


def family_bits(families: frozenset[int], v4: int, v6: int) -> int:
    return (v4 if AF_INET in families else 0) | (v6 if AF_INET6 in families else 0)


# fib_multipath_hash_policy -> the TNA_MP_* bits of the packets whose hash
# bpf_fib_lookup() cannot reproduce under it (tna_abi.h); IPv4's policy 0 is exact
_MP_BITS = {
    AF_INET: {1: abi.TNA_MP_GUARD_V4, 2: abi.TNA_MP_INNER_V4, 3: abi.TNA_MP_ALL_V4},
    AF_INET6: {0: abi.TNA_MP_ICMP6_LABEL, 1: abi.TNA_MP_GUARD_V6, 2: abi.TNA_MP_INNER_V6, 3: abi.TNA_MP_ALL_V6},
}


def mp_guard_bits(policies: dict[int, int]) -> int:
    """tna_config.mp_guard for Model.multipath_policies()."""
    bits = 0
    for family, policy in policies.items():
        bits |= _MP_BITS[family].get(policy, 0)
    return bits


def ct_config(sc: Sysctls) -> tuple[int, int, int, int, int, int, int]:
    """tna_config's (ct_flags, ct_timeout_tcp, ct_timeout_udp,
    ct_timeout_unack, ct_timeout_retrans, ct_max_retrans,
    ct_timeout_udp_unreplied): the conntrack behaviour the fast path repeats
    (timeouts in ms)."""
    flags = ((abi.TNA_CT_CSUM if sc.ct_checksum else 0) | (abi.TNA_CT_ACCT if sc.ct_acct else 0)
             | (abi.TNA_CT_TCP_LOOSE if sc.ct_tcp_loose else 0)
             | (abi.TNA_CT_TCP_LIBERAL if sc.ct_tcp_liberal else 0)
             | (abi.TNA_CT_IGNORE_INVALID_RST if sc.ct_tcp_ignore_invalid_rst else 0))

    def ms(s: int) -> int:
        return min(s * 1000, 0xFFFFFFFF)
    return (flags, ms(sc.ct_timeout_tcp), ms(sc.ct_timeout_udp), ms(sc.ct_timeout_unack),
            ms(sc.ct_timeout_retrans), sc.ct_tcp_max_retrans, ms(sc.ct_timeout_udp_unreplied))


def fw_hold(flow: HeldFlow) -> abi.TnaFwHold:
    """A narrowed hold's flow as the datapath reads it (firewall.c.j2)."""
    h = abi.TnaFwHold(family=flow.family, proto=flow.proto, sport_lo=flow.sport[0], sport_hi=flow.sport[1],
                      dport_lo=flow.dport[0], dport_hi=flow.dport[1])
    for net, addr, attr in ((flow.src, h.saddr, "src_len"), (flow.dst, h.daddr, "dst_len")):
        if net is not None:
            ctypes.memmove(addr, net.network_address.packed, len(net.network_address.packed))
            setattr(h, attr, net.prefixlen)
    return h


def held_flow(h: abi.TnaFwHold) -> HeldFlow:
    """fw_hold() read back."""
    size = 4 if h.family == 4 else 16
    nets = [ipaddress.ip_network((bytes(addr)[:size], length)) if length else None
            for addr, length in ((h.saddr, h.src_len), (h.daddr, h.dst_len))]
    return HeldFlow(h.family, h.proto, nets[0], nets[1], (h.sport_lo, h.sport_hi), (h.dport_lo, h.dport_hi))


def published_hold(state: bpf.Map) -> tuple[int, tuple[HeldFlow, ...]]:
    """What every program reads from tna_state (main.c.j2) now: the reason
    it passes all with (0: none; FW_CHANGED while the commit guard holds,
    commit_guard.h), and the flows a narrowed hold names."""
    raw = state.lookup(bytes(4))
    st = abi.TnaState.from_buffer_copy(raw) if isinstance(raw, bytes) else abi.TnaState()
    reason = st.cfg.pass_reason or (abi.REASON["FW_CHANGED"] if st.nft_seen != st.cfg.nft_heard else 0)
    return reason, tuple(held_flow(st.cfg.fw_hold[i]) for i in range(min(st.cfg.fw_hold_count, abi.FW_HOLD_MAX)))


def set_fw_hold(c: abi.TnaConfig, held: tuple[HeldFlow, ...]) -> None:
    assert len(held) <= abi.FW_HOLD_MAX
    c.fw_hold_count = len(held)
    for i in range(abi.FW_HOLD_MAX):
        c.fw_hold[i] = fw_hold(held[i]) if i < len(held) else abi.TnaFwHold()


class Lease:
    def __init__(self) -> None:
        self.cfg = abi.TnaConfig()
        self.hz = 0  # the kernel's jiffies per second, measured by start()
        self._prog: bpf.Program | None = None
        self._state: bpf.Map | None = None
        self._lock = threading.Lock()
        self._renewed: float | None = None  # time.monotonic() of the last publication

    def _publish(self, prog: bpf.Program, cfg: abi.TnaConfig) -> None:
        renew(prog, cfg)
        self._renewed = time.monotonic()

    def age(self) -> float | None:
        """Seconds since the lease was last renewed (None: not started)."""
        renewed = self._renewed
        return None if renewed is None else time.monotonic() - renewed

    def start(self, renew_prog: bpf.Program, state: bpf.Map) -> None:
        """Take tna_renew (a handle of our own) and publish the first lease.
        Call before any program is attached: calibrating briefly publishes
        DISABLED, and the lease must be valid before any program runs."""
        self.hz = jiffies_hz(renew_prog, state)
        with self._lock:
            self._prog, self._state = renew_prog, state
            self.cfg = abi.TnaConfig.from_buffer_copy(bytes(self.cfg))
            self.cfg.lease_jiffies = self.hz * LEASE_NS // 10**9
            self.cfg.hz = self.hz
            self.cfg.pass_cache_jiffies = max(1, self.hz * PASS_CACHE_NS // 10**9)
            self._publish(renew_prog, self.cfg)

    def renew(self) -> None:
        """Publish the config again: the lease runs another lease_jiffies."""
        with self._lock:
            if self._prog is not None:
                self._publish(self._prog, self.cfg)

    def _update(self, edit: Callable[[abi.TnaConfig], None]) -> None:
        """Publish a copy of the config as edit() leaves it, if it changed
        (copy, edit and publication under the lock: a hold from another
        thread is never lost)."""
        with self._lock:
            c = abi.TnaConfig.from_buffer_copy(bytes(self.cfg))
            edit(c)
            if bytes(c) == bytes(self.cfg):
                return
            self.cfg = c
            if self._prog is not None:
                self._publish(self._prog, c)

    def hold(self, reason: int) -> None:
        """Send everything to the kernel now (the next set_guards() ends it)."""
        self._update(lambda c: setattr(c, "pass_reason", reason))

    def narrow(self, held: tuple[HeldFlow, ...]) -> None:
        """The flows a narrowed hold keeps on the kernel path, published
        while the hold in place stays: the set_guards() that ends it with
        the same flows cannot be read half written as a hold of fewer."""
        self._update(lambda c: set_fw_hold(c, held))

    def held_flows(self) -> int:
        """The flows a narrowed hold names now (0: none)."""
        return self.cfg.fw_hold_count

    def nft_seen(self) -> int:
        """tna_state.nft_seen: what tna_nft_seen stored last (commit_guard.h)."""
        with self._lock:
            raw = self._state.lookup(b"\0\0\0\0") if self._state is not None else None
        return abi.TnaState.from_buffer_copy(raw).nft_seen if isinstance(raw, bytes) else 0

    def set_nft_heard(self, seen: int) -> None:
        """The nftables reader has taken every notification up to seen
        (an nft_seen()): the programs stop passing for commits it covers."""
        self._update(lambda c: setattr(c, "nft_heard", seen))

    def set_stale_count(self, n: int) -> None:
        self._update(lambda c: setattr(c, "stale_count", n))

    def set_guards(self, pass_reason: int, mp_policies: dict[int, int], route_mtu: tuple[int, int],
                   local: tuple[list[str], list[str]], fw_families: frozenset[int] = frozenset(),
                   sysctls: Sysctls | None = None, rpf_doubt: frozenset[int] = frozenset((AF_INET, AF_INET6)),
                   xfrm: XfrmPolicies | None = None, held: tuple[HeldFlow, ...] = ()) -> None:
        """Global switches; pass_reason 0 ends a hold, and with held (after
        narrow(held)) narrows it to those flows.  mp_policies:
        Model.multipath_policies(); local: the box's IPv4 and IPv6 addresses;
        fw_families: families whose bridged IP goes to the kernel; sysctls:
        the conntrack behaviour the fast path repeats; rpf_doubt:
        Model.rpf_doubt(); xfrm: the families IPsec policies may cover,
        and whether SAs exist."""
        local4, local6 = local
        packed4 = b"".join(socket.inet_aton(a) for a in local4[:abi.LOCAL4_MAX])
        packed6 = b"".join(socket.inet_pton(socket.AF_INET6, a) for a in local6[:abi.LOCAL6_MAX])

        def edit(c: abi.TnaConfig) -> None:
            c.pass_reason, c.route_mtu4, c.route_mtu6 = pass_reason, *route_mtu
            c.mp_guard = mp_guard_bits(mp_policies)
            c.rpf_doubt = family_bits(rpf_doubt, abi.TNA_FW_V4, abi.TNA_FW_V6)
            c.fw_families = family_bits(fw_families, abi.TNA_FW_V4, abi.TNA_FW_V6)
            xf = xfrm or XfrmPolicies()
            c.xfrm_families = (family_bits(xf.families, abi.TNA_FW_V4, abi.TNA_FW_V6)
                               | (abi.TNA_XFRM_SA if xf.sas else 0))
            (c.ct_flags, c.ct_timeout_tcp, c.ct_timeout_udp, c.ct_timeout_unack, c.ct_timeout_retrans,
             c.ct_max_retrans, c.ct_timeout_udp_unreplied) = ct_config(sysctls) if sysctls else (0,) * 7
            set_fw_hold(c, held)
            c.local4_count, c.local6_count = len(local4), len(local6)
            ctypes.memmove(c.local4, packed4.ljust(4 * abi.LOCAL4_MAX, b"\0"), 4 * abi.LOCAL4_MAX)
            ctypes.memmove(c.local6, packed6.ljust(16 * abi.LOCAL6_MAX, b"\0"), 16 * abi.LOCAL6_MAX)
        self._update(edit)

    def close(self) -> None:
        with self._lock:
            if self._prog is not None:
                self._prog.close()
                self._prog = None
            self._state = None  # the datapath's, closed after this
