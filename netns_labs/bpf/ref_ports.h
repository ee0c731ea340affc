/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ref_ports.h - the egress ports of the benchmark's reference programs. */
#ifndef REF_PORTS_H
#define REF_PORTS_H
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} ref_ports SEC(".maps");

#endif
