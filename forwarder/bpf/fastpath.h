/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The fast path's maps and the helpers every mode shares: the parsed packet, RFC 1624
 * checksum updates (the same arithmetic as forwarder/src/wire/checksum.rs, so that both
 * paths write the same bytes), the TTL decrement, the MACs and the send.
 *
 * A flow is the fast path's only while it is in dir_flows, which the daemon fills from the
 * connection table: established TCP flows and UDP flows, inbound and reply keys, replicas
 * from the peer included. Every packet the fast path does not own goes on to the steering
 * rules of director.bpf.c (and so to the userspace engine): SYN, FIN and RST, IP options and
 * fragments, a bad IPv4 header checksum, TTL that would expire, a frame too big for the
 * egress MTU, an unresolved next hop, a PROXY protocol segment that needs the header
 * inserted, a SACK block at an odd offset (or a second SACK option).
 */
#ifndef DIRECTOR_FASTPATH_H
#define DIRECTOR_FASTPATH_H

#include "director.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Elements are allocated as the daemon inserts them (it alone does): a preallocated map of
 * two rows per connection the table can hold would pin ~120 bytes per row up front. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);       /* resized by the daemon to max_connections × 2 */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dir_flow_key);
	__type(value, struct dir_flow);
} dir_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DIR_MAX_NEXTHOPS);
	__type(key, __u32);
	__type(value, struct dir_nexthop);
} dir_nexthops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, DIR_MAX_IFACES);
	__type(key, __u32);                 /* ifindex */
	__type(value, __u32);               /* ifindex */
} dir_tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DIR_MAX_REALS);
	__type(key, __u32);
	__type(value, struct dir_real_stats);
} dir_reals SEC(".maps");

/* The next IPv4 identification of an outer (TUN) header, per CPU: CPU c of n hands out
 * c + k·n (the daemon sets next = c, step = n), so two CPUs never write the same one close
 * together, as the workers do among themselves. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dir_ident);
} dir_ident SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} dir_events SEC(".maps");

/* The headers of a TCP/UDP packet the fast path may own. */
struct pkt {
	struct ethhdr *eth;
	struct iphdr *ip;
	void *l4;
	void *end;            /* end of the frame */
	__u16 ip_len;         /* IPv4 total length */
	__u8 proto;
	__u8 tcp_flags;
	__u16 l4_len;         /* ip_len - 20 */
	__u16 doff;           /* TCP header length */
};

/* Where the fast path's packets have their L4 header: Ethernet, then IPv4 without options
 * (fast_path() took only such packets). */
#define L4_AT (sizeof(struct ethhdr) + sizeof(struct iphdr))

/*
 * The parsed packet again, from the context, inside a mode's function: the verifier checks
 * each mode's function on its own (a global function), so the pointers are re-derived and
 * re-checked there. 0 when the frame is not what fast_path() saw (never, but the verifier
 * wants the branch).
 */
static __always_inline int pkt_at(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;

	p->end = (void *)(long)ctx->data_end;
	p->eth = data;
	p->ip = data + sizeof(struct ethhdr);
	p->l4 = data + L4_AT;
	if ((void *)(p->ip + 1) > p->end)
		return 0;
	p->proto = p->ip->protocol;
	p->ip_len = bpf_ntohs(p->ip->tot_len);
	p->l4_len = p->ip_len - sizeof(struct iphdr);
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *t = p->l4;

		if ((void *)(t + 1) > p->end)
			return 0;
		p->doff = t->doff * 4;
		p->tcp_flags = ((__u8 *)t)[13];
		return 1;
	}
	if ((void *)((struct udphdr *)p->l4 + 1) > p->end)
		return 0;
	p->doff = 0;
	p->tcp_flags = 0;
	return 1;
}

/* ---- checksums (RFC 1624 eqn. 3, as forwarder/src/wire/checksum.rs) ------------------- */

static __always_inline __u16 csum_fold(__u32 acc)
{
	acc = (acc & 0xffff) + (acc >> 16);
	acc = (acc & 0xffff) + (acc >> 16);
	return (__u16)acc;
}

/* Host-order values throughout: the checksum field as a big-endian number. */
static __always_inline __u16 upd16(__u16 csum, __u16 old, __u16 new)
{
	return ~csum_fold((__u32)(__u16)~csum + (__u16)~old + new);
}

static __always_inline __u16 upd32(__u16 csum, __u32 old, __u32 new)
{
	__u32 o = ~old;

	return ~csum_fold((__u32)(__u16)~csum + (o >> 16) + (o & 0xffff) + (new >> 16) +
			  (new & 0xffff));
}

static __always_inline __u16 udp_nonzero(__u16 c)
{
	return c == 0 ? 0xffff : c;
}

/* The L4 checksum field of the packet, and whether it is UDP's (0 = none). */
static __always_inline __u16 *l4_csum(struct pkt *p)
{
	if (p->proto == IPPROTO_TCP) {
		__u16 *c = p->l4 + 16;

		if ((void *)(c + 1) > p->end)
			return 0;
		return c;
	}
	__u16 *c = p->l4 + 6;

	if ((void *)(c + 1) > p->end)
		return 0;
	return c;
}

/* Replace the address at *field (IPv4 header) with `new` (network order), fixing the IPv4
 * header checksum and the L4 checksum's pseudo-header. */
static __always_inline void set_addr(struct pkt *p, __u32 *field, __u32 new)
{
	__u32 old = bpf_ntohl(*field), n = bpf_ntohl(new);
	__u16 *l4c = l4_csum(p);

	*field = new;
	p->ip->check = bpf_htons(upd32(bpf_ntohs(p->ip->check), old, n));
	if (!l4c)
		return;
	if (p->proto == IPPROTO_UDP) {
		if (*l4c)
			*l4c = bpf_htons(udp_nonzero(upd32(bpf_ntohs(*l4c), old, n)));
	} else {
		*l4c = bpf_htons(upd32(bpf_ntohs(*l4c), old, n));
	}
}

/* Replace the port at *field (L4 header) with `new` (network order), fixing the L4 checksum. */
static __always_inline void set_port(struct pkt *p, __u16 *field, __u16 new)
{
	__u16 old = bpf_ntohs(*field), n = bpf_ntohs(new);
	__u16 *l4c = l4_csum(p);

	*field = new;
	if (!l4c)
		return;
	if (p->proto == IPPROTO_UDP) {
		if (*l4c)
			*l4c = bpf_htons(udp_nonzero(upd16(bpf_ntohs(*l4c), old, n)));
	} else {
		*l4c = bpf_htons(upd16(bpf_ntohs(*l4c), old, n));
	}
}

/* A 32-bit TCP header word (sequence or acknowledgement number) at *field becomes `new`
 * (host order). */
static __always_inline void set_tcp32(struct pkt *p, __u32 *field, __u32 new)
{
	__u32 old = bpf_ntohl(*field);
	__u16 *l4c = l4_csum(p);

	*field = bpf_htonl(new);
	if (l4c)
		*l4c = bpf_htons(upd32(bpf_ntohs(*l4c), old, new));
}

/* TTL − 1 with the header checksum updated (the word is TTL << 8 | protocol). */
static __always_inline void decrement_ttl(struct iphdr *ip)
{
	__u16 old = (__u16)ip->ttl << 8 | ip->protocol;
	__u16 new = (__u16)(ip->ttl - 1) << 8 | ip->protocol;

	ip->check = bpf_htons(upd16(bpf_ntohs(ip->check), old, new));
	ip->ttl -= 1;
}

/* The IPv4 header checksum of a 20-byte header is right. */
static __always_inline int ip_checksum_ok(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 acc = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		acc += bpf_ntohs(w[i]);
	return csum_fold(acc) == 0xffff;
}

/* ---- accounting and the send ---------------------------------------------------------- */

static __always_inline void count_real(struct dir_flow *f, __u32 bytes, int in)
{
	__u32 slot = f->real_slot;
	struct dir_real_stats *r = bpf_map_lookup_elem(&dir_reals, &slot);

	if (!r)
		return;
	if (in) {
		r->packets_in += 1;
		r->bytes_in += bytes;
	} else {
		r->packets_out += 1;
		r->bytes_out += bytes;
	}
}

static __always_inline void account(struct dir_flow *f, struct dir_flow_key *key, __u32 bytes,
				    int in)
{
	__sync_fetch_and_add(&f->packets, 1);
	__sync_fetch_and_add(&f->bytes, bytes);
	f->last_seen = bpf_ktime_get_ns();
	count_real(f, bytes, in);
	count(in ? DIR_STAT_FAST_IN : DIR_STAT_FAST_OUT);
	if (f->flags & DIR_F_REPLICA) {
		/* This node carries the flow now: the daemon makes the entry its own (and syncs
		 * it back), as the engine does on a replica's first packet. */
		struct dir_event *ev = bpf_ringbuf_reserve(&dir_events, sizeof(*ev), 0);

		f->flags &= ~DIR_F_REPLICA;
		if (ev) {
			ev->kind = DIR_EV_ADOPT;
			ev->key = *key;
			bpf_ringbuf_submit(ev, 0);
		}
	}
}

/* Write the next hop's MACs and send: XDP_TX back out of the interface it came in on
 * (unless DIR_NH_REDIRECT_SELF), else a redirect through dir_tx_ports. */
static __always_inline int send(struct xdp_md *ctx, struct ethhdr *eth, struct dir_nexthop *nh)
{
	__builtin_memcpy(eth->h_dest, nh->dmac, 6);
	__builtin_memcpy(eth->h_source, nh->smac, 6);
	if (nh->ifindex == ctx->ingress_ifindex && !(nh->flags & DIR_NH_REDIRECT_SELF))
		return XDP_TX;
	return bpf_redirect_map(&dir_tx_ports, nh->ifindex, 0);
}

#endif
