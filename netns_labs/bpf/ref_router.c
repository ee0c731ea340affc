/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ref_router.c - the benchmark's reference: the smallest sensible IPv4 XDP
 * forwarder (parse, TTL check, bpf_fib_lookup, TTL/checksum and MAC rewrite,
 * devmap redirect).  No lease, no counters, no transparency checks: it shows
 * how fast a fast path can be on this machine, not what TNA may do.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include "ref_ports.h"
#include <bpf/bpf_endian.h>

#define AF_INET 2

SEC("xdp")
int ref_router(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct bpf_fib_lookup fib = {};

	if ((void *)(iph + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || iph->ttl <= 1)
		return XDP_PASS;
	fib.family = AF_INET;
	fib.tos = iph->tos;
	fib.l4_protocol = iph->protocol;
	fib.tot_len = bpf_ntohs(iph->tot_len);
	fib.ipv4_src = iph->saddr;
	fib.ipv4_dst = iph->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;
	if (bpf_redirect_map(&ref_ports, fib.ifindex, 0) != XDP_REDIRECT)
		return XDP_PASS;
	__u32 check = iph->check;
	check += bpf_htons(0x0100);
	iph->check = (__u16)(check + (check >= 0xffff));
	iph->ttl--;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return XDP_REDIRECT;
}

char _license[] SEC("license") = "Dual BSD/GPL";
