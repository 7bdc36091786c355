/* SPDX-License-Identifier: GPL-2.0 */
/*
 * FULLNAT (forwarder/src/engine/fullnat.rs) and its PROXY protocol shift
 * (forwarder/src/engine/proxy.rs): both ends rewritten, client:cport → VIP:vport becoming
 * LIP:lport → real:rport and back. With the PROXY protocol, client sequence numbers past
 * client_isn + 1 gain seq_delta toward the real server, and the real server's
 * acknowledgements and SACK edges lose it toward the client. The segment at client_isn + 1
 * that carries data (the header goes before it) is the slow path's, and so is a reply with
 * a SACK edge at an odd offset of the TCP header (Linux aligns them; a checksum update there
 * would need the words around it) or with more than one SACK option.
 */
#ifndef DIRECTOR_FULLNAT_H
#define DIRECTOR_FULLNAT_H

#include "fastpath.h"

/* A real server's acknowledgement (or SACK edge) in the client's sequence space. */
static __always_inline __u32 unshift(__u32 n, struct dir_flow *f)
{
	__u32 first = f->seq_isn + 1;
	__s32 rel = (__s32)(n - first);

	if (rel >= (__s32)f->seq_delta)
		return n - f->seq_delta;
	if (rel > 0)
		return first;
	return n;
}

/* Client → real: may the fast path shift this segment? (Not the one that carries the
 * client's first byte: the header goes in there.) */
static __always_inline int proxy_in_ok(struct pkt *p, struct dir_flow *f)
{
	struct tcphdr *t = p->l4;
	__u32 seq;

	if ((void *)(t + 1) > p->end)
		return 0;
	seq = bpf_ntohl(t->seq);
	if ((__s32)(seq - (f->seq_isn + 1)) == 0 && p->l4_len > p->doff)
		return 0;
	return 1;
}

static __always_inline void proxy_in(struct pkt *p, struct dir_flow *f)
{
	struct tcphdr *t = p->l4;
	__u32 seq;

	if ((void *)(t + 1) > p->end)
		return;
	seq = bpf_ntohl(t->seq);
	if ((__s32)(seq - (f->seq_isn + 1)) > 0)
		set_tcp32(p, &t->seq, seq + f->seq_delta);
}

/* Where the fast path's packets have their TCP header: Ethernet, then IPv4 without options. */
#define TCP_AT (sizeof(struct ethhdr) + sizeof(struct iphdr))

/*
 * Whether the TCP options from offset `from` (an option boundary) to `doff` hold a SACK
 * option. proxy::reply shifts every SACK option, dir_sack_edges the first only (stacks send
 * one), so a segment with a second is the slow path's. A global function of its own, so
 * that this walk does not multiply the paths of dir_sack_edges' walk.
 */
__attribute__((noinline)) int dir_sack_another(struct xdp_md *ctx, __u32 doff, __u32 from)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *tcp = data + TCP_AT;
	__u32 skip = 0;

	if (doff > 60)
		return 0;
	/* The walk of dir_sack_edges, from `from` on. */
	for (__u32 i = 20; i < 60; i++) {
		__u8 *o = tcp + i;
		__u8 kind, len;

		if (i >= doff)
			break;
		if (i < from)
			continue;
		if (skip) {
			skip--;
			continue;
		}
		if ((void *)(o + 1) > end)
			break;
		kind = o[0];
		if (kind == 0)
			break;
		if (kind == 1)
			continue;
		if ((void *)(o + 2) > end)
			break;
		len = o[1];
		if (len < 2 || i + len > doff)
			break;
		if (kind == 5 && ((len - 2) & 7) == 0)
			return 1;
		skip = len - 1;
	}
	return 0;
}

/*
 * The SACK edges of a real server's segment, as proxy::reply treats them: `fix` = 0 only
 * checks that every edge that must change sits at an even offset of the TCP header and
 * that there is one SACK option (0 if not: the slow path takes the segment), `fix` = 1
 * rewrites them. A global function, so the verifier checks its loops once, apart from the
 * program's many paths.
 */
__attribute__((noinline)) int dir_sack_edges(struct xdp_md *ctx, __u32 doff, __u32 isn,
					     __u32 delta, __u32 fix)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *tcp = data + TCP_AT;
	__u16 *csum = (__u16 *)(tcp + 16);
	__u32 sack_at = 0, sack_len = 0, skip = 0;
	struct dir_flow f = { .seq_isn = isn, .seq_delta = delta };

	if (doff > 60 || (void *)(csum + 1) > end)
		return 0;
	/* One step per option byte (20..59): the offset is the loop's own counter and what
	 * is left of the current option a plain number, so the verifier checks each step
	 * once instead of every way the options could be laid out. */
	for (__u32 i = 20; i < 60; i++) {
		__u8 *o = tcp + i;
		__u8 kind, len;

		if (i >= doff)
			break;
		if (skip) {
			skip--;
			continue;
		}
		if ((void *)(o + 1) > end)
			break;
		kind = o[0];
		if (kind == 0)
			break;
		if (kind == 1)
			continue;
		if ((void *)(o + 2) > end)
			break;
		len = o[1];
		if (len < 2 || i + len > doff)
			break;
		if (kind == 5 && ((len - 2) & 7) == 0) {
			sack_at = i;
			sack_len = len;
			break;
		}
		skip = len - 1;
	}
	if (!sack_len)
		return 1;
	if (!fix && dir_sack_another(ctx, doff, sack_at + sack_len))
		return 0;
	for (int e = 0; e < 8; e++) {
		__u32 at = sack_at + 2 + e * 4;
		__u32 *edge, old, new;

		if (at + 4 > sack_at + sack_len)
			break;
		edge = (__u32 *)(tcp + (at & 63));
		if ((void *)(edge + 1) > end)
			return 0;
		old = bpf_ntohl(*edge);
		new = unshift(old, &f);
		if (new == old)
			continue;
		if (at & 1)
			return 0;
		if (fix) {
			*edge = bpf_htonl(new);
			*csum = bpf_htons(upd32(bpf_ntohs(*csum), old, new));
		}
	}
	return 1;
}

static __always_inline void proxy_out(struct xdp_md *ctx, struct pkt *p, struct dir_flow *f)
{
	struct tcphdr *t = p->l4;

	if ((void *)(t + 1) > p->end)
		return;
	if (p->tcp_flags & TCP_ACK) {
		__u32 ack = bpf_ntohl(t->ack_seq), new = unshift(ack, f);

		if (new != ack)
			set_tcp32(p, &t->ack_seq, new);
	}
	dir_sack_edges(ctx, p->doff, f->seq_isn, f->seq_delta, 1);
}

/* Whether the fast path can take this FULLNAT packet at all (checked before any byte
 * changes, so the slow path gets the frame as it came). */
static __always_inline int fnat_ok(struct xdp_md *ctx, struct pkt *p, struct dir_flow *f)
{
	if (!(f->flags & DIR_F_PROXY) || p->proto != IPPROTO_TCP)
		return 1;
	if (f->action == DIR_ACT_FNAT_IN)
		return proxy_in_ok(p, f);
	return dir_sack_edges(ctx, p->doff, f->seq_isn, f->seq_delta, 0);
}

__attribute__((noinline)) int dir_fnat_in(struct xdp_md *ctx, struct dir_flow *f,
					  struct dir_nexthop *nh)
{
	struct pkt pk, *p = &pk;
	__u16 *ports;

	if (!f || !nh || !pkt_at(ctx, p))
		return XDP_ABORTED;
	ports = p->l4;

	set_addr(p, &p->ip->saddr, f->saddr);
	set_port(p, &ports[0], f->sport);
	set_addr(p, &p->ip->daddr, f->daddr);
	set_port(p, &ports[1], f->dport);
	if ((f->flags & DIR_F_PROXY) && p->proto == IPPROTO_TCP)
		proxy_in(p, f);
	decrement_ttl(p->ip);
	return send(ctx, p->eth, nh);
}

__attribute__((noinline)) int dir_fnat_out(struct xdp_md *ctx, struct dir_flow *f,
					   struct dir_nexthop *nh)
{
	struct pkt pk, *p = &pk;
	__u16 *ports;

	if (!f || !nh || !pkt_at(ctx, p))
		return XDP_ABORTED;
	ports = p->l4;

	set_addr(p, &p->ip->saddr, f->saddr);
	set_port(p, &ports[0], f->sport);
	set_addr(p, &p->ip->daddr, f->daddr);
	set_port(p, &ports[1], f->dport);
	if ((f->flags & DIR_F_PROXY) && p->proto == IPPROTO_TCP)
		proxy_out(ctx, p, f);
	decrement_ttl(p->ip);
	return send(ctx, p->eth, nh);
}

#endif
