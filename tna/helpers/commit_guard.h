/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * commit_guard.h - no program judges by rules an nftables commit replaced
 * before the daemon has heard of that commit.
 *
 * The kernel applies a commit (iptables-nft's too), then notifies
 * NFNLGRP_NFTABLES, each message with the new generation in its nfgenmsg
 * res_id.  The daemon's reader thread raises its hold (FW_CHANGED) as it
 * takes a commit's first notification - but only once it runs, and a busy
 * main loop may keep it waiting for the GIL for tens of ms.
 *
 * tna_nft_seen (a socket filter on the reader's socket; input: one
 * notification datagram; writes tna_state.nft_seen only; keeps every byte)
 * runs as the kernel delivers each datagram, inside the commit: it stores
 * TNA_NFT_SEEN | res_id.  The reader publishes tna_config.nft_heard: an
 * nft_seen it read once it had taken (and held for) every notification up
 * to it: its generation is the last one taken, or the socket was empty
 * after an overrun (the rules are then read whole after it).  (The filter
 * runs before the kernel queues the datagram: an empty socket alone would
 * not say it was taken.)  tna_commits_heard() is the datapath's check:
 * while the two differ, every program passes all to the kernel
 * (FW_CHANGED).  Both are 0 until the first notification, and with
 * iptables-legacy (no notifications) for good.  Generations compare in 16
 * bits: 65,536 commits unheard would look heard.
 */
#ifndef TNA_COMMIT_GUARD_H
#define TNA_COMMIT_GUARD_H
#include <linux/bpf.h>
#include <linux/netlink.h>
#include <linux/netfilter/nfnetlink.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "tna_abi.h"

/* volatile: read before the pass reason the caller reads next (the reader
 * raises that hold before it ends this one) */
static __always_inline int tna_commits_heard(const struct tna_state *st)
{
	return *(volatile const __u32 *)&st->nft_seen == *(volatile const __u32 *)&st->cfg.nft_heard;
}

struct tna_nfnl_head {
	struct nlmsghdr nlh;
	struct nfgenmsg nfg;
};

SEC("socket")
int TNA_NFT_SEEN_PROGRAM(struct __sk_buff *skb)
{
	struct tna_nfnl_head head;
	__u32 zero = 0;
	struct tna_state *st;

	if (bpf_skb_load_bytes(skb, 0, &head, sizeof(head)) < 0
	    || head.nlh.nlmsg_type >> 8 != NFNL_SUBSYS_NFTABLES)
		return skb->len;
	st = bpf_map_lookup_elem(&tna_state, &zero);
	if (st)
		st->nft_seen = TNA_NFT_SEEN | bpf_ntohs(head.nfg.res_id);
	return skb->len;
}

#endif
