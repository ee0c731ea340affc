/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ct_probe.c - a test's instrument, run by BPF_PROG_RUN and attached to
 * nothing: for an Ethernet/IPv4/UDP frame (no IP options), the conntrack
 * entry of its flow in the caller's namespace: probe_out holds its stored
 * deadline (nf_conn.timeout, jiffies) and the jiffies of the probe, exactly
 * (ctnetlink rounds both to seconds).  Returns XDP_PASS when found.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>

struct nf_conn {
	__u32 timeout;
} __attribute__((preserve_access_index));
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};
extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *, struct bpf_sock_tuple *, __u32, struct bpf_ct_opts *,
					 __u32) __ksym;
extern void bpf_ct_release(struct nf_conn *) __ksym;

struct probe_out {
	__u64 jiffies;
	__u32 timeout;
	__u32 pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct probe_out);
} probe_out SEC(".maps");

SEC("xdp")
int ct_probe(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + sizeof(struct ethhdr);
	struct udphdr *uh = (void *)(iph + 1);
	struct bpf_sock_tuple t = {};
	struct bpf_ct_opts opts = { .netns_id = -1, .l4proto = IPPROTO_UDP };
	__u32 zero = 0;

	if ((void *)(uh + 1) > end)
		return XDP_DROP;
	t.ipv4.saddr = iph->saddr;
	t.ipv4.daddr = iph->daddr;
	t.ipv4.sport = uh->source;
	t.ipv4.dport = uh->dest;
	struct nf_conn *ct = bpf_xdp_ct_lookup(ctx, &t, sizeof(t.ipv4), &opts, sizeof(opts));
	if (!ct)
		return XDP_DROP;
	struct probe_out o = { .jiffies = bpf_jiffies64(), .timeout = ct->timeout };
	bpf_ct_release(ct);
	bpf_map_update_elem(&probe_out, &zero, &o, BPF_ANY);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
