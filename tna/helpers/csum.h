/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * csum.h - Internet checksum arithmetic for the datapath.
 * All sums work on 16-bit words as they sit in memory (network order), so
 * no byte swapping is needed.  tests/test_router_props.py checks the TTL
 * update against a full recomputation; the lab tests check the rest on
 * real stacks' packets.
 */
#ifndef TNA_CSUM_H
#define TNA_CSUM_H
#include <linux/types.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* True when the IPv4 header checksum verifies (ip_fast_csum() == 0).
 * Only called for ihl == 5, so exactly ten words. */
static __always_inline int ipv4_csum_ok(const struct iphdr *iph)
{
	const __u16 *w = (const __u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return csum_fold32(sum) == 0xffff;
}

/* ip_decrease_ttl() of include/net/ip.h, bit for bit, so the checksum on the
 * wire is the one the kernel would have written (an RFC 1624 update can
 * differ from it in the 0x0000/0xffff representation). */
static __always_inline void ipv4_decrease_ttl(struct iphdr *iph)
{
	__u32 check = iph->check;

	check += bpf_htons(0x0100);
	iph->check = (__u16)(check + (check >= 0xffff));
	iph->ttl--;
}

/* Folded, NOT inverted, pseudo-header sum: exactly what a stack that leaves
 * the L4 checksum to offload (CHECKSUM_PARTIAL) writes into the checksum
 * field (tcp_v4_send_check(), udp4_hwcsum(), and their IPv6 twins). */
static __always_inline __u16 pseudo_csum_v4(const struct iphdr *iph, __u16 l4len)
{
	__u32 sum = (iph->saddr & 0xffff) + (iph->saddr >> 16) +
		    (iph->daddr & 0xffff) + (iph->daddr >> 16) +
		    bpf_htons(iph->protocol) + bpf_htons(l4len);
	return csum_fold32(sum);
}

static __always_inline __u16 pseudo_csum_v6(const struct ipv6hdr *ip6h, __u8 proto, __u16 l4len)
{
	const __u16 *s = (const __u16 *)&ip6h->saddr;
	const __u16 *d = (const __u16 *)&ip6h->daddr;
	__u32 sum = bpf_htons(proto) + bpf_htons(l4len);

#pragma unroll
	for (int i = 0; i < 8; i++)
		sum += s[i] + d[i];
	return csum_fold32(sum);
}

/* A TCP/UDP checksum left to offload holds the folded pseudo-header sum; a
 * redirected XDP frame loses the skb state that says so and would arrive
 * corrupt, so callers hand such frames to the kernel (which still has the
 * skb).  A header out of bounds also counts as "cannot tell". */
static __always_inline int l4_csum_partial(void *l4, void *end, __u8 proto, __u16 pseudo)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		return (void *)(th + 1) > end || th->check == pseudo;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		return (void *)(uh + 1) > end || uh->check == pseudo;
	}
	return 0;
}

#endif
