/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ref_bridge.c - the benchmark's reference bridge: the smallest sensible XDP
 * bridge over an FDB map (multicast to the kernel; the source must be known
 * on the ingress port, as any learning bridge checks; destination lookup;
 * devmap redirect).  No lease, no counters, no port state or policy: it
 * shows how fast an FDB-map bridge can be on this machine, not what TNA may do.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include "ref_ports.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);   /* MAC in the low 6 bytes */
	__type(value, __u32); /* port ifindex */
} ref_fdb SEC(".maps");

static __always_inline __u64 mac_key(const __u8 *m)
{
	__u64 k = 0;

	__builtin_memcpy(&k, m, ETH_ALEN);
	return k;
}

SEC("xdp")
int ref_bridge(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u64 k;
	__u32 *port;

	if ((void *)(eth + 1) > end || eth->h_dest[0] & 1)
		return XDP_PASS;
	k = mac_key(eth->h_source);
	port = bpf_map_lookup_elem(&ref_fdb, &k);
	if (!port || *port != ctx->ingress_ifindex)
		return XDP_PASS;
	k = mac_key(eth->h_dest);
	port = bpf_map_lookup_elem(&ref_fdb, &k);
	if (!port)
		return XDP_PASS;
	return bpf_redirect_map(&ref_ports, *port, XDP_PASS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
