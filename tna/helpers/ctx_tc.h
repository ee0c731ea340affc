/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ctx_tc.h - the TC (sk_buff) side of the hook abstraction (see ctx_xdp.h).
 * TC ingress keeps the skb, so GSO super-packets and CHECKSUM_PARTIAL state
 * survive the redirect: this is the hook for ports facing a local stack.
 */
#ifndef TNA_CTX_H
#define TNA_CTX_H
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "tna_abi.h"

#define TNA_SEC "tc"
typedef struct __sk_buff tna_ctx_t;

/* tcx's "next": the programs and clsact filters after TNA's, then the
 * stack, see the packet as if TNA were not there (TC_ACT_OK would end the
 * hook and set tc_index). */
#define CTX_PASS TC_ACT_UNSPEC
#define CTX_DROP TC_ACT_SHOT
#define CTX_REDIRECT TC_ACT_REDIRECT

static __always_inline void *ctx_data(tna_ctx_t *ctx) { return (void *)(long)ctx->data; }
static __always_inline void *ctx_data_end(tna_ctx_t *ctx) { return (void *)(long)ctx->data_end; }
static __always_inline __u32 ctx_len(tna_ctx_t *ctx) { return ctx->len; }

/* A VLAN tag taken out of the frame into the skb (vlan_tci); a redirect
 * keeps it, as the bridge does. */
#define CTX_REDIRECT_KEEPS_OOB_VLAN 1
static __always_inline int ctx_oob_vlan(tna_ctx_t *ctx) { return ctx->vlan_present; }

/* An SA decrypted the packet: xfrm_input() receives it again on its device,
 * with a secpath, which the kernel checks against the fwd policies. */
static __always_inline int ctx_decrypted(tna_ctx_t *ctx)
{
	struct bpf_xfrm_state st;

	return bpf_skb_get_xfrm_state(ctx, 0, &st, sizeof(st), 0) == 0;
}

/* The mark iptables' -m mark would see (nothing between here and
 * netfilter sets one: foreign tc filters keep an interface off TC). */
static __always_inline __u32 ctx_mark(tna_ctx_t *ctx) { return ctx->mark; }

/* A zero skb->hash means the kernel would dissect the packet itself. */
static __always_inline int ctx_may_carry_hash(tna_ctx_t *ctx) { return ctx->hash != 0; }

/* Make the first len bytes linear so direct packet access can reach them. */
static __always_inline void ctx_pull(tna_ctx_t *ctx, __u32 len)
{
	if (ctx_data(ctx) + len > ctx_data_end(ctx))
		bpf_skb_pull_data(ctx, len < ctx->len ? len : ctx->len);
}

/* Payload bytes per segment of a GSO super-packet, 0 otherwise. */
static __always_inline __u32 ctx_gso_size(tna_ctx_t *ctx)
{
	return ctx->gso_segs > 1 ? ctx->gso_size : 0;
}

static __always_inline __u32 ctx_frame_len(tna_ctx_t *ctx) { return ctx->len; }

static __always_inline int ctx_trim(tna_ctx_t *ctx, __u32 new_len)
{
	return bpf_skb_change_tail(ctx, new_len, 0);
}

/* Any Ethernet port the daemon listed in tna_egress; the skb then goes
 * through the egress qdisc like a kernel-forwarded one. */
static __always_inline int ctx_redirect_prepare(tna_ctx_t *ctx, __u32 ifindex)
{
	if (!bpf_map_lookup_elem(&tna_egress, &ifindex))
		return -1;
	bpf_redirect(ifindex, 0);
	return 0;
}

/* Conntrack, as seen from TC (conntrack.h has the types). */
struct nf_conn;
struct bpf_ct_opts;
extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *ctx, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
#define ctx_ct_lookup bpf_skb_ct_lookup

/* The kernel's skb, for the checksum state below and the ingress device
 * (CO-RE: offsets from the running kernel's BTF). */
struct net_device;
struct sk_buff {
	struct net_device *dev;
	__u8 ip_summed:2;
	__u8 csum_valid:1;
} __attribute__((preserve_access_index));
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* The ingress device: the router reads its namespace's FIB flags. */
static __always_inline struct net_device *ctx_dev(tna_ctx_t *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);

	return skb->dev;
}

/* skb_csum_unnecessary(): the kernel's checksum checks (nf_checksum()) skip
 * an skb whose L4 checksum a driver verified, or a stack will fill in. */
static __always_inline int ctx_l4_csum_verified(tna_ctx_t *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	__u8 summed = BPF_CORE_READ_BITFIELD(skb, ip_summed);

	return summed == 1 /* UNNECESSARY */ || summed == 3 /* PARTIAL */ || BPF_CORE_READ_BITFIELD(skb, csum_valid);
}

/* A CHECKSUM_COMPLETE skb covers the IPv6 header: keep skb->csum true when
 * the hop limit changes.  (Fails harmlessly for other ip_summed states.) */
static __always_inline void ctx_csum_complete_diff(tna_ctx_t *ctx, __be32 from, __be32 to)
{
	bpf_csum_update(ctx, bpf_csum_diff(&from, sizeof(from), &to, sizeof(to), 0));
}

/* ip_forward() sets skb->priority from the TOS (net.ipv4.ip_forward_update_priority,
 * default 1) so the egress qdisc picks the same band.  rt_tos2priority() maps
 * IPTOS_LOWDELAY/THROUGHPUT (bits 4,3) to TC_PRIO_ 0/2/6/4: a nibble table. */
static __always_inline void ctx_fwd_priority(tna_ctx_t *ctx, __u8 tos)
{
	ctx->priority = (0x4620 >> (((tos >> 3) & 3) * 4)) & 0xf;
}

#endif
