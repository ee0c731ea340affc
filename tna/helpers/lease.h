/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lease.h - the fail-safe lease and the only writer of tna_state.
 *
 * tna_renew (run by the daemon through BPF_PROG_TEST_RUN, input: one
 * struct tna_config) copies the config into tna_state and moves the
 * deadline to now + lease_jiffies.  tna_lease_ok() is the datapath's check:
 * one inlined load of jiffies and a compare.
 */
#ifndef TNA_LEASE_H
#define TNA_LEASE_H
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "tna_abi.h"

static __always_inline int tna_lease_ok(const struct tna_state *st)
{
	return bpf_jiffies64() <= st->deadline;
}

SEC("xdp")
int TNA_RENEW_PROGRAM(struct xdp_md *ctx)
{
	struct tna_config *cfg = (void *)(long)ctx->data;
	__u32 zero = 0;
	struct tna_state *st;

	if ((void *)(cfg + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	st = bpf_map_lookup_elem(&tna_state, &zero);
	if (!st)
		return XDP_ABORTED;
	/* word by word: clang calls memcpy for a copy this large, which BPF
	 * has not (the config is 8-byte aligned, its size a multiple of 8) */
	const __u64 *from = (const void *)cfg;
	__u64 *to = (void *)&st->cfg;
#pragma unroll
	for (__u32 i = 0; i < sizeof(*cfg) / 8; i++)
		to[i] = from[i];
	st->renewed_at = bpf_jiffies64();
	st->deadline = st->renewed_at + cfg->lease_jiffies;
	return XDP_PASS;
}

#endif
