/* SPDX-License-Identifier: GPL-2.0 */
/* NAT (forwarder/src/engine/nat.rs, and emit in engine/mod.rs): inbound, the
 * destination becomes the real server; replies, the source becomes the VIP again. */
#ifndef DIRECTOR_NAT_H
#define DIRECTOR_NAT_H

#include "fastpath.h"

__attribute__((noinline)) int dir_nat_in(struct xdp_md *ctx, struct dir_flow *f,
					 struct dir_nexthop *nh)
{
	struct pkt pk, *p = &pk;
	__u16 *ports;

	if (!f || !nh || !pkt_at(ctx, p))
		return XDP_ABORTED;
	ports = p->l4;

	set_addr(p, &p->ip->daddr, f->daddr);
	set_port(p, &ports[1], f->dport);
	decrement_ttl(p->ip);
	return send(ctx, p->eth, nh);
}

__attribute__((noinline)) int dir_nat_out(struct xdp_md *ctx, struct dir_flow *f,
					  struct dir_nexthop *nh)
{
	struct pkt pk, *p = &pk;
	__u16 *ports;

	if (!f || !nh || !pkt_at(ctx, p))
		return XDP_ABORTED;
	ports = p->l4;

	set_addr(p, &p->ip->saddr, f->saddr);
	set_port(p, &ports[0], f->sport);
	decrement_ttl(p->ip);
	return send(ctx, p->eth, nh);
}

#endif
