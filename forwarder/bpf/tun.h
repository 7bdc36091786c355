/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TUN (forwarder/src/engine/tun.rs): the client's packet, TTL − 1, inside an IPIP header
 * (RFC 2003) from the director's address (dir_flow.saddr) to the real server (daddr):
 * TOS and DF copied from the inner packet, TTL the inner TTL after the decrement, a fresh
 * identification. The 20 bytes are made in front of the frame with bpf_xdp_adjust_head.
 * A packet that would not fit the egress MTU once wrapped is the slow path's (ICMP
 * fragmentation-needed, or outer fragments).
 */
#ifndef DIRECTOR_TUN_H
#define DIRECTOR_TUN_H

#include "fastpath.h"

#define IPPROTO_IPIP_ 4
#define IP_DF_ 0x4000

__attribute__((noinline)) int dir_tun_in(struct xdp_md *ctx, struct dir_flow *f,
					 struct dir_nexthop *nh)
{
	struct pkt pk, *p = &pk;
	__u16 inner_len;
	__u8 tos, ttl;
	__u16 df;
	__u32 zero = 0;
	struct dir_ident *ident;
	__u16 id = 0;
	void *data, *end;
	struct ethhdr *eth;
	struct iphdr *outer;
	__u16 *w;
	__u32 acc = 0;

	if (!f || !nh || !pkt_at(ctx, p))
		return XDP_ABORTED;
	inner_len = p->ip_len;
	decrement_ttl(p->ip);
	tos = p->ip->tos;
	ttl = p->ip->ttl;
	df = p->ip->frag_off & bpf_htons(IP_DF_);
	ident = bpf_map_lookup_elem(&dir_ident, &zero);
	if (ident) {
		id = (__u16)ident->next;
		ident->next += ident->step ? ident->step : 1;
	}
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	outer = data + sizeof(struct ethhdr);
	if ((void *)(outer + 1) > end)
		return XDP_ABORTED;
	eth->h_proto = bpf_htons(ETH_P_IP);
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_len + sizeof(struct iphdr));
	outer->id = bpf_htons(id);
	outer->frag_off = df;
	outer->ttl = ttl;
	outer->protocol = IPPROTO_IPIP_;
	outer->check = 0;
	outer->saddr = f->saddr;
	outer->daddr = f->daddr;
	w = (__u16 *)outer;
#pragma unroll
	for (int i = 0; i < 10; i++)
		acc += bpf_ntohs(w[i]);
	outer->check = bpf_htons(~csum_fold(acc));
	return send(ctx, eth, nh);
}

#endif
