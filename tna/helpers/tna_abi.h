/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tna_abi.h - the ONE contract between the datapath (C) and the daemon (Python).
 *
 * Used by both sides: every BPF program includes it, and tna/bpf/abi.py reads
 * the reason enum, every #define and the map names from this file at import
 * time and mirrors the structs with ctypes (tests/test_abi.py compiles this
 * header and checks every value, size and offset).  Change a struct here and
 * the test tells you what to update.  abi.py parses one #define a line, of
 * an integer, (1U << n), a string or a name.
 *
 * Maps (declared below, BPF side only):
 *   tna_state     ARRAY[1]           shared   lease deadline + config (written by tna_renew), the
 *                                            last nftables generation notified (tna_nft_seen)
 *   tna_devmap    DEVMAP_HASH        shared   XDP egress ports known to take XDP frames
 *   tna_egress    HASH ifindex       shared   egress ports the TC hook may redirect to
 *   tna_stale     HASH tna_neigh_key shared   STALE neighbours: the next packet goes to the
 *                                            kernel, which deletes the entry (datapath writes)
 *   tna_ports     ARRAY port slot    shared   accelerated bridge ports: bridge, state, policy
 *   tna_fdb       HASH tna_fdb_key   shared   bridge FDBs mirrored from netlink (datapath
 *                                            writes only `refreshed`)
 *   tna_l3br      HASH ifindex       shared   bridges with an L3 side: their address + flags
 *   tna_fw_ifaces HASH ifindex       shared   bit k: the interface matches filter rules'
 *                                            interface pattern k (-i/-o, '+' wildcards)
 *   tna_ct_sync   LRU_HASH tna_ct_key shared  established TCP connections the datapath asks
 *                                            the daemon to free from window tracking
 *   tna_ct_bell   RINGBUF            shared   one record per new tna_ct_sync entry: wakes the
 *                                            daemon (which then drains tna_ct_sync) instead of
 *                                            a poll
 *   tna_ct_win    LRU_HASH tna_ct_key shared  the TCP window state conntrack would hold for
 *                                            each connection the fast path carries
 *                                            (datapath only; key: original direction)
 *   tna_stats     PERCPU_ARRAY       per program: packets/bytes per reason
 *   tna_fw_rules  PERCPU_ARRAY       per program: packets/bytes per counted FORWARD/INPUT rule
 *                                            (ids in the order tna/synth/fwgen.py numbers them)
 *   .rodata.tna   tna_iface          per program: ingress interface constants
 */
#ifndef TNA_ABI_H
#define TNA_ABI_H

#include <linux/types.h>

/* Verdict reasons.  0 is the fast path's success; every other value is why a
 * packet went to the kernel (or was dropped).  Keep names stable: they are
 * what `tna stats` prints.  Python parses this enum, so one entry a line. */
enum tna_reason {
	TNA_R_FORWARDED = 0,     /* fast path redirected the packet */
	TNA_R_LEASE_EXPIRED,     /* daemon silent > 1 s: fail safe to the kernel */
	TNA_R_DISABLED,          /* daemon switched the fast path off (e.g. netfilter rules) */
	TNA_R_NOT_IP,            /* not IPv4/IPv6 (ARP, VLAN-tagged, LLDP, ...) */
	TNA_R_OTHERHOST,         /* dst MAC is not this interface: kernel drops or floods */
	TNA_R_IP_INVALID,        /* bad version/length/header checksum: kernel drops */
	TNA_R_IP_OPTIONS,        /* IPv4 options or IPv6 extension headers */
	TNA_R_FRAGMENT,          /* fragments: kernel forwards/refragments them */
	TNA_R_TTL,               /* TTL/hop limit <= 1: kernel sends ICMP time exceeded */
	TNA_R_MARTIAN,           /* multicast/loopback/link-local/unspecified addresses */
	TNA_R_LOCAL_SOURCE,      /* IPv4 source is this box's own address: kernel drops it */
	TNA_R_RP_FILTER,         /* rp_filter: the reverse path does not (provably) check out */
	TNA_R_SOURCE_CHECK,      /* full source check (ip rules or local routes were ever set up): the
	                            route back to the source is not unicast (local, broadcast) or none */
	TNA_R_REALM,             /* routes or rules use realms: the kernel tags and counts by them (rt_acct) */
	TNA_R_ICMP_SPECIAL,      /* ICMP errors (hashed by inner header), neighbour discovery */
	TNA_R_CSUM_PARTIAL,      /* L4 checksum left to offload (XDP on veth): redirecting would corrupt it */
	TNA_R_NOT_FWDED,         /* for this box, a broadcast address, or no route: kernel delivers/replies */
	TNA_R_BLACKHOLE,         /* blackhole route */
	TNA_R_UNREACHABLE,       /* unreachable route: kernel sends ICMP */
	TNA_R_PROHIBIT,          /* prohibit route: kernel sends ICMP */
	TNA_R_NO_ROUTE,          /* fib lookup failed otherwise (lwt encapsulation, ...) */
	TNA_R_FWD_DISABLED,      /* forwarding off for this interface/family */
	TNA_R_FRAG_NEEDED,       /* larger than the egress MTU: kernel fragments or sends "too big" */
	TNA_R_ROUTE_MTU,         /* larger than some route's own MTU: the kernel checks it */
	TNA_R_NO_NEIGH,          /* next hop not resolved: kernel resolves it */
	TNA_R_NEIGH_STALE,       /* next hop STALE: kernel re-validates it, then fast path resumes */
	TNA_R_SAME_IFACE,        /* egress == ingress: kernel also sends an ICMP redirect */
	TNA_R_EGRESS_UNSUPPORTED,/* egress port not usable by this hook (not in devmap/egress map) */
	TNA_R_GSO,               /* GSO packet whose segment size this module cannot check */
	TNA_R_MULTI_BUFFER,      /* XDP frame spread over several buffers (jumbo): kernel path */
	TNA_R_MULTIPATH_HASH,    /* L4 multipath hashing may use the skb's own hash: kernel picks the path */
	TNA_R_MULTIPATH_POLICY,  /* the hash policy takes what bpf_fib_lookup() cannot be given (a
	                            tunnel's inner header, a dissected flow label, policy 3) */
	TNA_R_NO_MODULE,         /* no module took a decision */
	TNA_R_VLAN,              /* VLAN tag this module leaves to the kernel (or held out of band by XDP) */
	TNA_R_ARP,               /* ARP on a bridge: proxy ARP, suppression, arptables are the kernel's */
	TNA_R_BR_PORT_UNKNOWN,   /* bridge port not (yet) in tna_ports: unsupported bridge or a race */
	TNA_R_BR_LINK_LOCAL,     /* 01:80:c2:00:00:0X (STP BPDU, LLDP, pause): bridge consumes or forwards */
	TNA_R_BR_MULTICAST,      /* broadcast/multicast destination: the kernel floods or snoops */
	TNA_R_BR_LEARN,          /* source MAC not in the FDB on this port (new, moved, local): kernel learns */
	TNA_R_BR_REFRESH,        /* this source MAC's refresh is due: the kernel renews its FDB entry */
	TNA_R_BR_UNKNOWN_DST,    /* destination MAC not in the FDB: the kernel floods */
	TNA_R_BR_LOCAL,          /* to the bridge itself and no routing here: the kernel delivers it */
	TNA_R_BR_PORT_STATE,     /* ingress or egress port not forwarding (STP, down): kernel decides */
	TNA_R_BR_PORT_POLICY,    /* locked/MAB ingress, isolated pair, neighbour suppression */
	TNA_R_BR_SAME_PORT,      /* destination behind the ingress port: kernel drops or hairpins */
	TNA_R_BR_MTU,            /* frame too long for the egress port: the kernel drops it */
	TNA_R_BR_NETFILTER,      /* br_netfilter would send this frame through iptables (VLAN/PPPoE,
	                            or IP while FORWARD rules exist) */
	TNA_R_FW_DROP,           /* an iptables FORWARD rule or policy drops it: dropped here too */
	TNA_R_FW_KERNEL,         /* a FORWARD rule TNA cannot express could match: the kernel decides */
	TNA_R_FW_CHANGED,        /* the rule set changed: all to the kernel until it is compiled in (or,
	                            a narrowed hold, what a changed rule could match) */
	TNA_R_FW_INPUT_DROP,     /* an INPUT rule or policy drops this packet to the box: early drop */
	TNA_R_CT_NEW,            /* conntrack has no entry and the rules accept: the kernel creates it */
	TNA_R_CT_STATE,          /* conntrack entry in a state the fast path does not keep (handshake,
	                            closing, SYN/FIN/RST, a reply to an unreplied entry, unassured, NAT,
	                            helper, related) */
	TNA_R_CT_SYNC,           /* established TCP entry not yet freed from window tracking (the
	                            daemon marks it, like a flowtable offload): the kernel meanwhile */
	TNA_R_CT_PROTO,          /* conntrack tracks this family and the protocol is not TCP/UDP */
	TNA_R_CT_CSUM,           /* conntrack would verify an L4 checksum the fast path cannot */
	TNA_R_CT_WINDOW,         /* a carried TCP segment conntrack's window tracking would not take
	                            as in window: the kernel (window-liberal) decides */
	TNA_R_RESYNC,            /* netlink events were lost (overrun): all to the kernel until the
	                            daemon's resync has rewritten every map from a new dump */
	TNA_R_NAT_STATE,         /* NAT entry the fast path cannot rewrite exactly (a manip not done, a
	                            helper extension, an extension it cannot read) */
	TNA_R_NAT_MASQ_OIF,      /* MASQUERADE entry routed out of another interface: the kernel drops
	                            the packet and kills the entry (nf_nat_oif_changed()) */
	TNA_R_NAT_CHANGED,       /* the entry changed between the lookup the route was chosen by and
	                            the one conntrack refreshes: the kernel decides */
	TNA_R_NAT_REWRITE,       /* a NAT rewrite of the frame failed midway: dropped, never passed half
	                            rewritten */
	TNA_R_NAT_INVALID,       /* conntrack calls a packet of a NAT entry whose destination it translates
	                            INVALID: the kernel un-tracks it and routes it by the received one */
	TNA_R_PENDING,           /* netlink changes arrived while the daemon was busy (compiling): all
	                            to the kernel until its maps have them (a host moved to another port) */
	TNA_R_XFRM,              /* IPsec policies may cover this family's forwarded packets (decrypted
	                            only, encrypted, or blocked by a default policy): the kernel's */
	TNA_R_BR_PROMISC,        /* the bridge device is promiscuous (tcpdump -i br0): the kernel also
	                            hands its frames up the bridge, where the capture sees them */
	TNA_R_MAX
};

/* Names the daemon looks programs and sections up by. */
#define TNA_PROGRAM tna_main          /* every module chain's entry (XDP or TC) */
#define TNA_RENEW_PROGRAM tna_renew   /* the lease's writer (lease.h) */
#define TNA_NFT_SEEN_PROGRAM tna_nft_seen /* the nftables reader's socket filter (commit_guard.h) */
#define TNA_SECTION_IFACE ".rodata.tna"
/* TNA's own TC filter: one fixed priority/handle on clsact ingress, so a
 * restarted daemon finds (and replaces) what an earlier one attached. */
#define TNA_TC_PRIORITY 0x7A
#define TNA_TC_HANDLE 0x7A

#define TNA_LOCAL4_MAX 32
#define TNA_LOCAL6_MAX 16

/* A flow a changed rule could match (tna/model/fwdiff.py: HeldFlow). */
#define TNA_FW_HOLD_MAX 16
struct tna_fw_hold {
	__u32 saddr[4];      /* network order, IPv4 in [0], masked to its prefix */
	__u32 daddr[4];
	__u16 sport_lo;      /* host order; 0-65535: any */
	__u16 sport_hi;
	__u16 dport_lo;
	__u16 dport_hi;
	__u8 family;         /* 4 or 6 */
	__u8 proto;          /* 0: any */
	__u8 src_len;        /* prefix lengths, 0: any */
	__u8 dst_len;
};

/* What the daemon publishes: the input of the tna_renew program, which it
 * runs (BPF_PROG_TEST_RUN) every ~200 ms; tna_renew copies it into tna_state
 * and moves the lease deadline.  Only tna_renew writes tna_state's config. */
struct tna_config {
	__u64 lease_jiffies; /* the lease runs out this long after the last renewal */
	__u32 pass_reason;   /* 0: active; otherwise pass all with this reason */
	__u32 stale_count;   /* entries the daemon put in tna_stale (an upper bound once the
	                        datapath deletes some); 0 skips the lookup */
	__u32 mp_guard;      /* TNA_MP_*: multipath hashes bpf_fib_lookup() cannot reproduce,
	                        per family with multipath routes (by its hash policy) */
	__u32 route_mtu4;    /* smallest `mtu` metric on any IPv4/IPv6 route, 0 if none: */
	__u32 route_mtu6;    /* forwarding honours it, bpf_fib_lookup() only when locked */
	__u32 local4_count;  /* > TNA_LOCAL4_MAX: too many to list, IPv4 goes to the kernel */
	__be32 local4[TNA_LOCAL4_MAX]; /* this namespace's IPv4 addresses (127/8 aside): a packet
	                        from one of them is a martian source to the kernel */
	__u32 fw_families;   /* TNA_FW_V4/V6: iptables FORWARD rules filter this family, or
	                        conntrack tracks it (bridged IP then goes to the kernel) */
	__u32 ct_flags;      /* TNA_CT_*: the namespace's conntrack sysctls */
	__u32 ct_timeout_tcp; /* ms: nf_conntrack_tcp_timeout_established */
	__u32 ct_timeout_udp; /* ms: nf_conntrack_udp_timeout_stream */
	__u32 local6_count;  /* > TNA_LOCAL6_MAX: too many to list (no IPv6 early drop) */
	__u32 ct_max_retrans; /* nf_conntrack_tcp_max_retrans */
	__be32 local6[TNA_LOCAL6_MAX][4]; /* this namespace's global IPv6 addresses */
	__u32 ct_timeout_unack;   /* ms: nf_conntrack_tcp_timeout_unacknowledged */
	__u32 ct_timeout_retrans; /* ms: nf_conntrack_tcp_timeout_max_retrans */
	__u32 hz;            /* the kernel's jiffies per second (measured): the datapath turns
	                        a timeout into the deadline the kernel would store (0: unknown) */
	__u32 ct_timeout_udp_unreplied; /* ms: nf_conntrack_udp_timeout (a UDP entry with no reply) */
	__u32 pass_cache_jiffies; /* how long a flow the firewall passed skips its lookups (0: never) */
	__u32 rpf_doubt;     /* TNA_FW_V4/V6: the family's routes are such that bpf_fib_lookup()
	                        may find another route back than nft's `fib saddr . iif`
	                        (firewall.c.j2 fw_rpf()) */
	__u32 xfrm_families; /* TNA_FW_V4/V6: IPsec policies may cover the family's forwarded
	                        packets (tna/netlink/xfrm.py): the router passes them;
	                        TNA_XFRM_SA: SAs exist, so a packet received with a
	                        secpath (decrypted, seen again at TC) is passed too */
	__u32 nft_heard;     /* the tna_state.nft_seen the daemon's nftables reader has taken
	                        every notification up to (commit_guard.h) */
	__u32 fw_hold_count; /* a narrowed hold: while programs for changed rules load, the
	                        packets of these flows go to the kernel (FW_CHANGED), the others
	                        are decided by the programs of the old rules (0: none) */
	struct tna_fw_hold fw_hold[TNA_FW_HOLD_MAX];
};
#define TNA_XFRM_SA (1U << 2)
#define TNA_CT_CSUM (1U << 0) /* nf_conntrack_checksum: bad L4 checksums are INVALID */
#define TNA_CT_ACCT (1U << 1) /* nf_conntrack_acct: per-connection counters (kernel path only) */
#define TNA_CT_TCP_LOOSE (1U << 2) /* nf_conntrack_tcp_loose: a plain ACK may start a connection */
#define TNA_CT_TCP_LIBERAL (1U << 3) /* nf_conntrack_tcp_be_liberal: no segment is out of window */
#define TNA_CT_IGNORE_INVALID_RST (1U << 4) /* nf_conntrack_tcp_ignore_invalid_rst: an RST before the
                                              peer's maxack is no INVALID */
#define TNA_FW_V4 (1U << 0)
#define TNA_FW_V6 (1U << 1)
/* values of an ipset's trie (ipset.c.j2): the entry the packet falls in */
#define TNA_SET_MATCH 1
#define TNA_SET_NOMATCH 2   /* a `nomatch` entry: an exception inside a matching net */

/* The single entry of tna_state.  If the daemon dies (kill -9, crash) no
 * renewal comes, jiffies pass the deadline and every module hands all
 * traffic to the kernel.  (jiffies, not a BPF timer: the kernel cancels a
 * map's timers when its last user reference - the dead daemon's - goes;
 * bpf_jiffies64() is inlined to one load on 64-bit JITs.) */
struct tna_state {
	__u64 deadline;      /* jiffies */
	__u64 renewed_at;    /* jiffies at the last renewal: lets the daemon learn HZ */
	struct tna_config cfg;
	__u32 nft_seen;      /* TNA_NFT_SEEN | the generation of the last nftables notification
	                        the kernel delivered to the daemon's reader (tna_nft_seen) */
	__u32 pad;
};
#define TNA_NFT_SEEN (1U << 16) /* so that no generation seen is the 0 nothing seen is */
/* Multipath hashes bpf_fib_lookup() cannot reproduce: it hashes a flowi of
 * outer addresses, protocol, ports (or ESP/AH SPI: the router fills them as
 * the flow dissector reads them) and IPv6 flow label, the kernel the skb.
 * Set per family that has multipath routes, by fib_multipath_hash_policy:
 *   GUARD  1: the kernel reuses a packet's L4 hash (socket txhash, NIC RSS):
 *          a packet that may carry one goes to it (MULTIPATH_HASH).
 *   INNER  2: the dissector hashes IPIP/IPv6/GRE/MPLS by the inner header,
 *          and IPv6's flow label in host order (bpf_fib_lookup(): as sent):
 *          tunnels and flow-labelled IPv6 go to it (MULTIPATH_POLICY).
 *   ALL    3: the skb hash mixes an inner-header hash (0 without one) into
 *          the outer one, the flowi hash does not: all go to it.
 *   ICMP6_LABEL  IPv6, 0: with fib rules on ports or protocol the kernel
 *          hashes ICMPv6 from that early dissection (label in host order):
 *          flow-labelled ICMPv6 goes to it. */
#define TNA_MP_GUARD_V4 (1U << 0)
#define TNA_MP_GUARD_V6 (1U << 1)
#define TNA_MP_INNER_V4 (1U << 2)
#define TNA_MP_INNER_V6 (1U << 3)
#define TNA_MP_ALL_V4 (1U << 4)
#define TNA_MP_ALL_V6 (1U << 5)
#define TNA_MP_ICMP6_LABEL (1U << 6)
#define TNA_MP_V4 (TNA_MP_GUARD_V4 | TNA_MP_INNER_V4 | TNA_MP_ALL_V4)
#define TNA_MP_V6 (TNA_MP_GUARD_V6 | TNA_MP_INNER_V6 | TNA_MP_ALL_V6)

/* Per-program counters, index = enum tna_reason. */
struct tna_counter {
	__u64 packets;
	__u64 bytes;
};

/* Per-program constants (.rodata, set before load; a change means reload,
 * never recompile). */
#define TNA_IF_CHECK_CSUM_PARTIAL (1U << 0) /* XDP on a veth: frames may carry CHECKSUM_PARTIAL */
#define TNA_IF_RP_STRICT (1U << 1) /* rp_filter 1 (or 2 without an IPv4 address): source via this port */
#define TNA_IF_RP_LOOSE (1U << 2)  /* rp_filter 2: a unicast route back to the source */
#define TNA_IF_L2_EGRESS (1U << 3) /* tna_l3br: a routed packet may leave through this bridge's
                                      FDB (no qdisc or tc egress filter on the bridge device) */
struct tna_iface_cfg {
	__u32 ifindex;
	__u8 mac[6];
	__u16 flags;
	__u16 port_slot;     /* a bridge port's index in tna_ports, 0 otherwise */
	__u16 pad;
};

/* Key of tna_stale: a next hop as bpf_fib_lookup reports it. */
struct tna_neigh_key {
	__u32 ifindex;
	__u32 family;        /* AF_INET or AF_INET6 */
	__u32 addr[4];       /* IPv4 in addr[0], network byte order */
};

/* Value of tna_egress. */
struct tna_egress {
	__u32 flags;         /* reserved, 0 */
};

/* Bridge port: the value of tna_ports at the port's slot (a small index the
 * daemon assigns; an array lookup is inlined, a hash lookup costs ~30 ns).
 * Slot 0 is never used: an FDB entry for a port without a slot names it. */
#define TNA_PORT_FORWARDING (1U << 0) /* STP state forwarding, port and bridge up */
#define TNA_PORT_ISOLATED   (1U << 1) /* isolated: never to another isolated port */
#define TNA_PORT_HAIRPIN    (1U << 2) /* may send back out of the ingress port */
#define TNA_PORT_LOCKED     (1U << 3) /* locked or MAB: the kernel authorises sources */
#define TNA_PORT_NEIGH_SUPPRESS (1U << 4) /* ARP/ND may be answered by the bridge */
#define TNA_PORT_NF_IP4     (1U << 5) /* br_netfilter: IPv4 through iptables (validated) */
#define TNA_PORT_NF_IP6     (1U << 6) /* br_netfilter: IPv6 through ip6tables (validated) */
#define TNA_PORT_NF_VLAN    (1U << 7) /* br_netfilter also takes VLAN-tagged IP (filter-vlan-tagged) */
#define TNA_PORT_NF_PPPOE   (1U << 8) /* ... and PPPoE-tagged IP (filter-pppoe-tagged) */
#define TNA_PORT_ROUTER     (1U << 9) /* the bridge routes: frames to br.mac go to the router */
#define TNA_PORT_LEARNING   (1U << 10) /* the kernel learns (and moves) sources from this port */
#define TNA_PORT_BR_PROMISC (1U << 11) /* the bridge device is promiscuous (a capture on it) */
struct tna_port {
	__u32 ifindex;       /* the port this slot holds now (0: free) */
	__u32 flags;         /* TNA_PORT_* */
	__u32 mtu;           /* the bridge forwards frames up to mtu + 18 bytes (is_skb_forwardable) */
	__u32 refresh_jiffies; /* hand a source MAC's frame to the kernel this often, so its
	                        FDB entry never ages out under a fast-pathed flow */
	struct tna_iface_cfg br; /* the bridge: ifindex (the FDB's key), and with ROUTER its
	                        MAC (a local FDB entry) and L3 flags, so a routed frame
	                        costs no lookup of its own */
};

/* The FDB of every accelerated bridge (key: bridge, VLAN (0: not VLAN-aware), MAC). */
struct tna_fdb_key {
	__u32 bridge;
	__u16 vid;
	__u8 mac[6];
};
#define TNA_FDB_LOCAL   (1U << 0) /* the bridge's own address: delivered up, never forwarded */
#define TNA_FDB_DYNAMIC (1U << 1) /* learned: ages unless traffic through the kernel renews it */
#define TNA_FDB_STICKY  (1U << 2) /* the kernel never moves it to another port */
struct tna_fdb {
	__u32 port;          /* egress port ifindex */
	__u16 port_slot;     /* its slot in tna_ports (0: not an accelerated port) */
	__u16 flags;         /* TNA_FDB_* */
	__u64 refreshed;     /* jiffies when a frame from this MAC last went to the kernel
	                        (written by the datapath; the daemon writes 0) */
};

/* A connection as a packet of it shows it (either direction). */
struct tna_ct_key {
	__u32 saddr[4];      /* network order; IPv4 in [0] */
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 family;         /* AF_INET or AF_INET6 */
	__u8 proto;
	__u16 pad;
};

#define TNA_DEVMAP_SIZE 1024
#define TNA_EGRESS_SIZE 1024
#define TNA_STALE_SIZE 4096     /* the smallest tna_stale: sized for the neighbours the kernel may hold */
#define TNA_PORTS_SIZE 1024     /* the smallest tna_ports: sized from the bridge ports too */
#define TNA_FDB_SIZE 65536      /* the smallest tna_fdb: the daemon sizes it from the kernel's FDB */
#define TNA_L3BR_SIZE 256
#define TNA_FW_IFACES_SIZE 4096
#define TNA_FW_RULES_MAX 16384
#define TNA_CT_SYNC_SIZE 4096
#define TNA_CT_SYNC_LIBERAL 1   /* tna_ct_sync: mark the connection window-liberal (both directions) */
#define TNA_CT_SYNC_CLOSE 2     /* ... move it to CLOSE with the close timeout (an RST Linux alone
                                   would close it with, judged by the window copy) */
#define TNA_CT_BELL_SIZE 4096   /* bytes: a page; a lost record is harmless (the drain takes all) */
#define TNA_CT_WIN_SIZE 65536
#define TNA_CT_WIN_ORPHAN 4     /* tna_ct_win.liberal: made after the mark, every segment moves it on */

/* The conntrack states a packet could have (the firewall's fw_pkt.ct, which
 * conntrack.c.j2 fills and fwgen's --ctstate conditions test). */
#define FW_CT_NEW (1U << 0)
#define FW_CT_ESTABLISHED (1U << 1)
#define FW_CT_RELATED (1U << 2)
#define FW_CT_INVALID (1U << 3)
#define FW_CT_UNTRACKED (1U << 4)

#ifdef __BPF__
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tna_state);
} tna_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, TNA_DEVMAP_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} tna_devmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TNA_EGRESS_SIZE);
	__type(key, __u32);
	__type(value, struct tna_egress);
} tna_egress SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TNA_STALE_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* room for every neighbour, memory for the STALE ones */
	__type(key, struct tna_neigh_key);
	__type(value, __u8);
} tna_stale SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TNA_PORTS_SIZE);
	__type(key, __u32);
	__type(value, struct tna_port);
} tna_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TNA_FDB_SIZE);
	__type(key, struct tna_fdb_key);
	__type(value, struct tna_fdb);
} tna_fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TNA_L3BR_SIZE);
	__type(key, __u32);
	__type(value, struct tna_iface_cfg);
} tna_l3br SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TNA_FW_IFACES_SIZE);
	__type(key, __u32);
	__type(value, __u64);
} tna_fw_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TNA_CT_SYNC_SIZE);
	__type(key, struct tna_ct_key);
	__type(value, __u8);  /* TNA_CT_SYNC_*: what the daemon is asked to do */
} tna_ct_sync SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TNA_CT_BELL_SIZE);
} tna_ct_bell SEC(".maps");

/* struct ip_ct_tcp_state's window fields, as conntrack would hold them. */
struct tna_ct_dir {
	__u32 td_end;
	__u32 td_maxend;
	__u32 td_maxwin;
	__u32 td_maxack;
	__u8 td_scale;
	__u8 flags;          /* IP_CT_TCP_FLAG_*, without the BE_LIBERAL TNA set */
	__u16 pad;
};
/* What conntrack's TCP tracking would hold for a carried connection
 * (ct_tcp.c.j2): the kernel's copy goes stale while the fast path carries
 * the flow, so the datapath keeps this one and chooses timeouts and window
 * verdicts from it.  No lock (an LRU map cannot hold a bpf_spin_lock): the
 * two directions on two CPUs may each lose the other's update of a shared
 * field, which ct_tcp.c.j2 allows for. */
struct tna_ct_win {
	__u8 seeded;         /* the kernel's state was copied in (0: asked to sync only) */
	__u8 liberal;        /* bit d: direction d was window-liberal before TNA marked it;
	                        TNA_CT_WIN_ORPHAN: made after the mark, from a stale record */
	__u8 last_dir;       /* ip_ct_tcp's retransmission detection */
	__u8 retrans;
	__u32 last_seq;
	__u32 last_ack;
	__u32 last_end;
	__u16 last_win;
	__u8 lagged;         /* a segment far out of the copy's window came: it missed segments
	                        the kernel handled (jumbo frames, ...), so it judges no FIN */
	__u8 reset;          /* an RST came: nothing more of the connection is carried */
	__u32 remembered;    /* jiffies | 1 when a pass of it was last remembered (passcache.c.j2),
	                        0 never: the copy is seeded once that has lapsed */
	struct tna_ct_dir seen[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TNA_CT_WIN_SIZE);
	__type(key, struct tna_ct_key);
	__type(value, struct tna_ct_win);
} tna_ct_win SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TNA_R_MAX);
	__type(key, __u32);
	__type(value, struct tna_counter);
} tna_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TNA_FW_RULES_MAX);
	__type(key, __u32);
	__type(value, struct tna_counter);
} tna_fw_rules SEC(".maps");

/* Its own section, so the daemon finds the struct at offset 0 of the map. */
const volatile struct tna_iface_cfg tna_iface SEC(TNA_SECTION_IFACE) = {};
#endif /* __BPF__ */

#endif /* TNA_ABI_H */
