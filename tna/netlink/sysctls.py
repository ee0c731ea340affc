"""The namespace's forwarding and conntrack sysctls, read from /proc/sys/net
(per netns: the namespace this process is in)."""

from __future__ import annotations

from pathlib import Path

from tna.model.config import Sysctls


def read_int(path: str, default: int = 0) -> int:
    try:
        return int(Path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return default


def read_rp_filter(names: dict[int, str]) -> dict[int, int]:
    """Effective IPv4 rp_filter per ifindex: the kernel uses max(all, dev);
    a device whose file is gone meanwhile (renamed, deleted) counts as
    strict until the next read."""
    base = read_int("/proc/sys/net/ipv4/conf/all/rp_filter")
    return {i: max(base, read_int(f"/proc/sys/net/ipv4/conf/{name}/rp_filter", 1)) for i, name in names.items()}


def _any_conf(family: str, name: str) -> bool:
    """Whether net.<family>.conf.<any device, all, default>.<name> is set."""
    return any(read_int(str(p)) for p in Path(f"/proc/sys/net/{family}/conf").glob(f"*/{name}"))


def _accepts_ra() -> bool:
    """Whether some device takes router advertisements: accept_ra 2, or 1
    while it does not forward (ipv6_accept_ra())."""
    for conf in Path("/proc/sys/net/ipv6/conf").glob("*"):
        if conf.name in ("all", "default", "lo"):
            continue
        ra = read_int(str(conf / "accept_ra"))
        if ra == 2 or (ra == 1 and not read_int(str(conf / "forwarding"))):
            return True
    return False


def read_sysctls(route_checks: bool = True) -> Sysctls:
    """Forwarding switches of the namespace this process is in (/proc/sys/net
    is per netns).  route_checks False: the per-device ones only nft's
    reverse-path check needs (four files per device, every second) are not
    read and stated as set, which keeps that check on the kernel path until
    a poll reads them."""
    return Sysctls(
        ipv4_forward=read_int("/proc/sys/net/ipv4/ip_forward") != 0,
        ipv6_forward=read_int("/proc/sys/net/ipv6/conf/all/forwarding") != 0,
        ipv4_mp_hash_policy=read_int("/proc/sys/net/ipv4/fib_multipath_hash_policy"),
        ipv6_mp_hash_policy=read_int("/proc/sys/net/ipv6/fib_multipath_hash_policy"),
        br_nf_iptables=read_int("/proc/sys/net/bridge/bridge-nf-call-iptables") != 0,
        br_nf_ip6tables=read_int("/proc/sys/net/bridge/bridge-nf-call-ip6tables") != 0,
        br_nf_vlan=read_int("/proc/sys/net/bridge/bridge-nf-filter-vlan-tagged") != 0,
        br_nf_pppoe=read_int("/proc/sys/net/bridge/bridge-nf-filter-pppoe-tagged") != 0,
        br_netfilter=Path("/proc/sys/net/bridge").is_dir(),
        ipv6=Path("/proc/sys/net/ipv6").is_dir(),
        ct_checksum=read_int(f"{_NF}/nf_conntrack_checksum", 1) != 0,
        ct_acct=read_int(f"{_NF}/nf_conntrack_acct") != 0,
        ct_tcp_loose=read_int(f"{_NF}/nf_conntrack_tcp_loose", 1) != 0,
        ct_timeout_tcp=read_int(f"{_NF}/nf_conntrack_tcp_timeout_established", 432000),
        ct_timeout_udp=read_int(f"{_NF}/nf_conntrack_udp_timeout_stream", 120),
        ct_tcp_liberal=read_int(f"{_NF}/nf_conntrack_tcp_be_liberal") != 0,
        ct_tcp_ignore_invalid_rst=read_int(f"{_NF}/nf_conntrack_tcp_ignore_invalid_rst") != 0,
        ct_tcp_max_retrans=read_int(f"{_NF}/nf_conntrack_tcp_max_retrans", 3),
        ct_timeout_unack=read_int(f"{_NF}/nf_conntrack_tcp_timeout_unacknowledged", 300),
        ct_timeout_retrans=read_int(f"{_NF}/nf_conntrack_tcp_timeout_max_retrans", 300),
        ct_timeout_udp_unreplied=read_int(f"{_NF}/nf_conntrack_udp_timeout", 30),
        ipv4_ignore_linkdown=not route_checks or _any_conf("ipv4", "ignore_routes_with_linkdown"),
        ipv6_ignore_linkdown=not route_checks or _any_conf("ipv6", "ignore_routes_with_linkdown"),
        ipv6_accept_ra=not route_checks or _accepts_ra(),
    )


_NF = "/proc/sys/net/netfilter"
