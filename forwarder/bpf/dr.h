/* SPDX-License-Identifier: GPL-2.0 */
/* DR (forwarder/src/engine/dr.rs): the packet is untouched but for
 * the TTL; only the MACs change, to the real server's. */
#ifndef DIRECTOR_DR_H
#define DIRECTOR_DR_H

#include "fastpath.h"

__attribute__((noinline)) int dir_dr_in(struct xdp_md *ctx, struct dir_nexthop *nh)
{
	struct pkt pk, *p = &pk;

	if (!nh || !pkt_at(ctx, p))
		return XDP_ABORTED;
	decrement_ttl(p->ip);
	return send(ctx, p->eth, nh);
}

#endif
