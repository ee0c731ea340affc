/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lab_progs.c - XDP programs the labs put on *host* interfaces (never on the
 * router under test):
 *   lab_pass  XDP_PASS everything: makes a veth accept redirected frames
 *             (like a NIC would) without changing what its stack sees.
 *   lab_sink  count UDP frames to or from SINK_PORT in sink_count, drop
 *             them; all else passes.  The benchmark's receiver (from: the
 *             replies of a two-way flow, netns_labs/bench_cores.py).
 *   lab_tc_drop  a tc filter that drops everything (an admin's egress policy
 *             in the tests: XDP redirects must not bypass it).
 *   lab_tc_pass  a tc filter that lets everything through: what the TC hook
 *             itself costs, measured against TNA's TC program.
 *   lab_gen   the live-frames generator: restore the frame template (the
 *             device under test rewrites frames in place and pages are
 *             recycled), then XDP_TX it out of the generator's veth.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SINK_PORT 9
#define GEN_MAX 128

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

/* the generator's frame; set before load (own section: found at offset 0) */
struct gen_cfg {
	__u32 len;
	__u8 frame[GEN_MAX];
};
const volatile struct gen_cfg gen SEC(".rodata.gen") = {};

/* xdp.frags: multi-buffer aware, so attaching does not cap the MTU */
SEC("xdp.frags")
int lab_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp.frags")
int lab_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *uh;
	__u32 zero = 0;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > end || iph->protocol != IPPROTO_UDP)
			return XDP_PASS;
		uh = (void *)iph + iph->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);
		if ((void *)(ip6h + 1) > end || ip6h->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		uh = (void *)(ip6h + 1);
	} else {
		return XDP_PASS;
	}
	if ((void *)(uh + 1) > end || (uh->dest != bpf_htons(SINK_PORT) && uh->source != bpf_htons(SINK_PORT)))
		return XDP_PASS;
	__u64 *c = bpf_map_lookup_elem(&sink_count, &zero);
	if (c)
		(*c)++;
	return XDP_DROP;
}

SEC("tc")
int lab_tc_drop(struct __sk_buff *skb)
{
	return 2; /* TC_ACT_SHOT */
}

SEC("tc")
int lab_tc_pass(struct __sk_buff *skb)
{
	return 0; /* TC_ACT_OK */
}

SEC("xdp")
int lab_gen(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;

	for (int i = 0; i < GEN_MAX; i++) {
		if (i >= gen.len || data + i + 1 > end)
			break;
		data[i] = gen.frame[i];
	}
	return XDP_TX;
}

char _license[] SEC("license") = "Dual BSD/GPL";
