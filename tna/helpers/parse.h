/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h - address classification and L4 field access shared by modules.
 * Addresses are classified the way the kernel's input path does before it
 * would forward (ip_route_input_slow(), ipv6_rcv(), ip6_forward()).
 */
#ifndef TNA_PARSE_H
#define TNA_PARSE_H
#include <linux/types.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>

/* Two MAC addresses are equal (memcmp is not inlined). */
static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b && *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

/* Protocols whose first four bytes are source and destination port, as the
 * flow dissector reads them for multipath hashing. */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

static __always_inline int proto_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE ||
	       proto == IPPROTO_SCTP || proto == IPPROTO_DCCP;
}

/* Where the flow dissector reads the four bytes it hashes as ports
 * (proto_ports_offset()): the ports, or ESP's or AH's SPI; -1: none. */
static __always_inline int proto_ports_off(__u8 proto)
{
	if (proto_has_ports(proto) || proto == IPPROTO_ESP)
		return 0;
	return proto == IPPROTO_AH ? 4 : -1;
}

/* Encapsulations the flow dissector walks into unless told to stop there
 * (FLOW_DISSECTOR_F_STOP_AT_ENCAP): hash policy 2 hashes their inner header. */
static __always_inline int proto_is_tunnel(__u8 proto)
{
	return proto == IPPROTO_IPIP || proto == IPPROTO_IPV6 || proto == IPPROTO_GRE ||
	       proto == IPPROTO_MPLS;
}

/* Sources and destinations the IPv4 input path never forwards. */
static __always_inline int ipv4_martian(__be32 saddr, __be32 daddr)
{
	__u32 s = bpf_ntohl(saddr), d = bpf_ntohl(daddr);

	return (s >> 28) == 0xe || s == 0xffffffff || (s >> 24) == 0 || (s >> 24) == 127 ||
	       (d >> 28) == 0xe || d == 0xffffffff || (d >> 24) == 0 || (d >> 24) == 127;
}

/* The flow label (ip6_flowlabel()), network order. */
static __always_inline __be32 ipv6_label(const void *ip6h)
{
	return *(const __be32 *)ip6h & bpf_htonl(0x000fffff);
}

/* Multicast, link-local, unspecified, loopback, v4-mapped: not for the
 * unicast forwarding path. */
static __always_inline int ipv6_addr_special(const struct in6_addr *a)
{
	__u32 w0 = bpf_ntohl(a->in6_u.u6_addr32[0]);
	__u32 w3 = bpf_ntohl(a->in6_u.u6_addr32[3]);

	if ((w0 >> 24) == 0xff || (w0 & 0xffc00000) == 0xfe800000)
		return 1;
	if (w0 == 0 && a->in6_u.u6_addr32[1] == 0) {
		__u32 w2 = bpf_ntohl(a->in6_u.u6_addr32[2]);
		return w2 == 0xffff || (w2 == 0 && w3 <= 1);
	}
	return 0;
}

/* IPv6 extension headers the router would have to walk or process. */
static __always_inline int ipv6_is_exthdr(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_DSTOPTS ||
	       nexthdr == IPPROTO_AH || nexthdr == IPPROTO_MH ||
	       nexthdr == 139 /* HIP */ || nexthdr == 140 /* shim6 */ ||
	       nexthdr == 253 || nexthdr == 254 /* experiments */;
}

/* ICMP types that carry an offending packet (the kernel hashes these by the
 * inner header for multipath) - RFC 792. */
static __always_inline int icmp4_is_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/* ICMPv6 errors (type < 128) and neighbour discovery (133-137), which the
 * kernel may deliver locally (proxy_ndp) instead of forwarding. */
static __always_inline int icmp6_is_special(__u8 type)
{
	return type < 128 || (type >= 133 && type <= 137);
}

#endif
