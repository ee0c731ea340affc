/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ctx_xdp.h - the XDP side of the hook abstraction (see ctx_tc.h for TC).
 * Modules are written once against these names; main.c.j2 includes exactly
 * one of the two context headers.
 */
#ifndef TNA_CTX_H
#define TNA_CTX_H
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "tna_abi.h"

/* Loaded as multi-buffer aware (BPF_F_XDP_HAS_FRAGS): otherwise attaching
 * caps the MTU an admin may set (on the port or, for a veth, its peer). */
#define TNA_SEC "xdp.frags"
typedef struct xdp_md tna_ctx_t;

#define CTX_PASS XDP_PASS
#define CTX_DROP XDP_DROP
#define CTX_REDIRECT XDP_REDIRECT

static __always_inline void *ctx_data(tna_ctx_t *ctx) { return (void *)(long)ctx->data; }
static __always_inline void *ctx_data_end(tna_ctx_t *ctx) { return (void *)(long)ctx->data_end; }
static __always_inline __u32 ctx_len(tna_ctx_t *ctx)
{
	__u32 len = ctx_data_end(ctx) - ctx_data(ctx);

	/* opaque to clang: reassociating "x - (end - data)" gives the verifier
	 * arithmetic on pkt_end, which it rejects */
	asm volatile("" : "+r"(len));
	return len;
}

/* Frames from a wire are linear in XDP: nothing to pull. */
static __always_inline void ctx_pull(tna_ctx_t *ctx, __u32 len) { }

/* XDP frames are never GSO super-packets. */
static __always_inline __u32 ctx_gso_size(tna_ctx_t *ctx) { return 0; }

/* The whole frame, fragments included (only called off the fast path). */
static __always_inline __u32 ctx_frame_len(tna_ctx_t *ctx) { return bpf_xdp_get_buff_len(ctx); }

static __always_inline int ctx_trim(tna_ctx_t *ctx, __u32 new_len)
{
	return bpf_xdp_adjust_tail(ctx, (int)new_len - (int)ctx_len(ctx));
}

/* Select the egress port.  Only ports in tna_devmap take XDP frames; for any
 * other, the caller must leave the packet untouched and pass it. */
static __always_inline int ctx_redirect_prepare(tna_ctx_t *ctx, __u32 ifindex)
{
	return bpf_redirect_map(&tna_devmap, ifindex, 0) == XDP_REDIRECT ? 0 : -1;
}

/* The mark the kernel's skb would start with: 0, before any rule sets one
 * (tna/model/hooks.py; a frame from a veth peer in the same namespace keeps
 * its sender's: the planner puts such a veth on TC while rules read it). */
static __always_inline __u32 ctx_mark(tna_ctx_t *ctx) { return 0; }

/* Whether the kernel could see an L4 hash on this packet (driver RSS, or the
 * skb behind a veth frame): XDP cannot tell, so assume it could. */
static __always_inline int ctx_may_carry_hash(tna_ctx_t *ctx) { return 1; }

/* A VLAN tag the driver (or a veth peer's stack) holds outside the frame
 * bytes: an XDP redirect would drop it, so frames with one go to the
 * kernel.  Only a device-bound program can ask; a driver without the hint
 * cannot say, and then every frame counts as tagged.  Test runs load the
 * program unbound (BPF_PROG_RUN refuses bound ones): no tag there. */
#define CTX_REDIRECT_KEEPS_OOB_VLAN 0
#if TNA_DEV_BOUND
extern int bpf_xdp_metadata_rx_vlan_tag(const struct xdp_md *ctx, __be16 *vlan_proto,
					__u16 *vlan_tci) __ksym;
static __always_inline int ctx_oob_vlan(tna_ctx_t *ctx)
{
	__be16 proto;
	__u16 tci;

	return bpf_xdp_metadata_rx_vlan_tag(ctx, &proto, &tci) != -61 /* -ENODATA */;
}
#else
static __always_inline int ctx_oob_vlan(tna_ctx_t *ctx) { return 0; }
#endif

/* Native XDP runs before any decryption: a packet an SA decrypted is
 * received again as an skb, which only the TC hook sees. */
static __always_inline int ctx_decrypted(tna_ctx_t *ctx) { return 0; }

/* Conntrack, as seen from XDP (conntrack.h has the types). */
struct nf_conn;
struct bpf_ct_opts;
extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
#define ctx_ct_lookup bpf_xdp_ct_lookup

/* The ingress device, in the kernel's own structs (CO-RE: offsets from the
 * running kernel's BTF); the router reads its namespace's FIB flags. */
struct net_device;
struct xdp_rxq_info {
	struct net_device *dev;
} __attribute__((preserve_access_index));
struct xdp_buff {
	struct xdp_rxq_info *rxq;
} __attribute__((preserve_access_index));
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

static __always_inline struct net_device *ctx_dev(tna_ctx_t *ctx)
{
	struct xdp_buff *xdp = bpf_cast_to_kern_ctx(ctx);

	return xdp->rxq->dev;
}

/* Whether the kernel already holds the L4 checksum for verified (skb state):
 * an XDP frame has no such state, the caller verifies it. */
static __always_inline int ctx_l4_csum_verified(tna_ctx_t *ctx) { return 0; }

/* XDP carries no skb checksum or priority state. */
static __always_inline void ctx_csum_complete_diff(tna_ctx_t *ctx, __be32 from, __be32 to) { }
static __always_inline void ctx_fwd_priority(tna_ctx_t *ctx, __u8 tos) { }

#endif
