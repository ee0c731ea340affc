/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * netns.h - the kernel's per-namespace FIB state the modules read
 * (CO-RE; the rules and realm fields exist only with IP_MULTIPLE_TABLES,
 * IPV6_MULTIPLE_TABLES and IP_ROUTE_CLASSID): fib_validate_source()'s
 * switches (router.c.j2), what says the local table holds only the
 * kernel's own routes (firewall.c.j2, -m addrtype), and whether IPv6 has ip
 * rules (firewall.c.j2, nft's reverse-path check).  Reached from the
 * ingress device (ctx_dev()).
 */
#ifndef TNA_NETNS_H
#define TNA_NETNS_H
#include <linux/rtnetlink.h>  /* RTN_*: the route types -m addrtype names */

struct netns_ipv4 {
	_Bool fib_has_custom_rules;
	_Bool fib_has_custom_local_routes;
	struct { int counter; } fib_num_tclassid_users;
} __attribute__((preserve_access_index));
struct netns_ipv6 {
	_Bool fib6_has_custom_rules;
} __attribute__((preserve_access_index));
struct net {
	struct netns_ipv4 ipv4;
	struct netns_ipv6 ipv6;
} __attribute__((preserve_access_index));
struct net_device {
	struct { struct net *net; } nd_net;
} __attribute__((preserve_access_index));

#endif
