// SPDX-License-Identifier: GPL-2.0
/*
 * Director's XDP program: the first look at every frame a datapath interface receives.
 *
 * First the fast path (fastpath.h and one file per mode: nat.h, dr.h, tun.h, fullnat.h):
 * a packet of an established flow the daemon put in dir_flows is rewritten and sent here,
 * with XDP_TX or a redirect, and never reaches the kernel's stack or the workers. Then the
 * steering rules for the rest:
 *
 * It hands the frames the userspace engine owns to the AF_XDP socket of the worker that
 * owns the receive queue, before the kernel builds its own copy of them, and passes
 * everything else to the kernel unchanged. The engine owns (the same rules as
 * forwarder/src/engine/mod.rs, "Classification"):
 *
 *  1. TCP/UDP to a virtual service (VIP, port, protocol), and every fragment of TCP/UDP to
 *     a VIP (the engine drops and counts them); ICMP errors to a VIP;
 *  2. TCP/UDP and ICMP errors to a FULLNAT local address (LIP);
 *  3. TCP/UDP from a NAT real server's service port that is not addressed to the box
 *     itself (replies to clients; the box's own health checks get theirs from the kernel);
 *  4. ICMP errors in transit (about a NAT flow, or nobody's: with forwarding off the
 *     kernel would drop them anyway);
 *  5. a broken IPv4 header addressed to a VIP or LIP (counted as malformed by the engine).
 *
 * Everything else — ARP, VRRP, sync, SSH and ping to the box or a VIP, VLAN-tagged frames,
 * IPv6 — is XDP_PASS. When the worker's socket for the queue is missing (the datapath is
 * starting or stopping) the frame is passed too, and the nftables interception rules drop
 * what the kernel must not answer.
 *
 * The tables are maps the daemon keeps equal to its service table and FIB snapshot.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "director.h"

/* From <linux/icmp.h> and the kernel's net/ip.h, which pull in libc headers. */
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_REDIRECT 5
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DIR_MAX_ADDRS);
	__type(key, __u32);                 /* IPv4 address, network order */
	__type(value, __u32);               /* DIR_ADDR_* flags */
} dir_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DIR_MAX_PORTS);
	__type(key, struct dir_l4_key);
	__type(value, __u32);               /* DIR_L4_* flags */
} dir_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DIR_MAX_IFACES);
	__type(key, __u32);                 /* ifindex */
	__type(value, __u32);               /* slot: the interface's row in dir_xsks */
} dir_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, DIR_MAX_IFACES * DIR_MAX_QUEUES);
	__type(key, __u32);                 /* slot * DIR_MAX_QUEUES + rx queue */
	__type(value, __u32);               /* AF_XDP socket */
} dir_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DIR_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} dir_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&dir_stats, &which);

	if (c)
		*c += 1;
}

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_SOURCE_QUENCH ||
	       type == ICMP_REDIRECT || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

static __always_inline __u32 l4_flags(__u32 addr, __u16 port, __u8 proto)
{
	struct dir_l4_key k = { .addr = addr, .port = port, .proto = proto };
	__u32 *f = bpf_map_lookup_elem(&dir_ports, &k);

	return f ? *f : 0;
}

/* Hand the frame to the slow path: the AF_XDP socket of this (interface, queue). */
static __always_inline int to_slow_path(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *slot = bpf_map_lookup_elem(&dir_ifaces, &ifindex);
	__u32 key;
	int act;

	if (!slot || ctx->rx_queue_index >= DIR_MAX_QUEUES) {
		count(DIR_STAT_NO_SOCKET);
		return XDP_PASS;
	}
	key = *slot * DIR_MAX_QUEUES + ctx->rx_queue_index;
	act = bpf_redirect_map(&dir_xsks, key, XDP_PASS);
	count(act == XDP_REDIRECT ? DIR_STAT_SLOW_PATH : DIR_STAT_NO_SOCKET);
	return act;
}

static __always_inline int pass(void)
{
	count(DIR_STAT_PASS);
	return XDP_PASS;
}

#include "fastpath.h"
#include "nat.h"
#include "dr.h"
#include "tun.h"
#include "fullnat.h"

/*
 * The fast path: a TCP/UDP packet of a flow in dir_flows, forwarded here. Returns -1 when
 * the packet is not the fast path's (the caller goes on with the steering rules), else the
 * XDP action.
 */
static __always_inline int fast_path(struct xdp_md *ctx, struct pkt *p)
{
	struct dir_flow_key key = {};
	struct dir_flow *f;
	struct dir_nexthop *nh;
	__u16 *ports = p->l4;
	__u32 grow = 0;
	int in;

	if ((void *)(ports + 2) > p->end)
		return -1;
	key.saddr = p->ip->saddr;
	key.daddr = p->ip->daddr;
	key.sport = ports[0];
	key.dport = ports[1];
	key.proto = p->proto;
	f = bpf_map_lookup_elem(&dir_flows, &key);
	if (!f)
		return -1;
	if (p->tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST))
		return -1;
	if (p->ip->ttl <= 1 || !ip_checksum_ok(p->ip))
		return -1;
	nh = bpf_map_lookup_elem(&dir_nexthops, &f->nexthop);
	if (!nh || nh->ifindex == 0)
		return -1;
	if (f->action == DIR_ACT_TUN)
		grow = sizeof(struct iphdr);
	if ((__u32)p->ip_len + grow > nh->mtu)
		return -1;
	if ((f->action == DIR_ACT_FNAT_IN || f->action == DIR_ACT_FNAT_OUT) && !fnat_ok(ctx, p, f))
		return -1;
	in = f->action != DIR_ACT_NAT_OUT && f->action != DIR_ACT_FNAT_OUT;
	account(f, &key, p->ip_len, in);
	/* One global function per mode: the verifier checks each once. */
	switch (f->action) {
	case DIR_ACT_NAT_IN:
		return dir_nat_in(ctx, f, nh);
	case DIR_ACT_NAT_OUT:
		return dir_nat_out(ctx, f, nh);
	case DIR_ACT_DR:
		return dir_dr_in(ctx, nh);
	case DIR_ACT_TUN:
		return dir_tun_in(ctx, f, nh);
	case DIR_ACT_FNAT_IN:
		return dir_fnat_in(ctx, f, nh);
	case DIR_ACT_FNAT_OUT:
		return dir_fnat_out(ctx, f, nh);
	}
	return -1;
}

/* The headers of a plain (no options, not fragmented) TCP/UDP packet; 0 if it is not one. */
static __always_inline int parse_l4(struct pkt *p)
{
	__u16 ip_len = bpf_ntohs(p->ip->tot_len);

	if (p->ip->ihl != 5 || (p->ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return 0;
	if (ip_len < sizeof(struct iphdr) || (void *)p->ip + ip_len > p->end)
		return 0;
	p->ip_len = ip_len;
	p->l4 = (void *)p->ip + sizeof(struct iphdr);
	p->l4_len = ip_len - sizeof(struct iphdr);
	p->proto = p->ip->protocol;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *t = p->l4;

		if ((void *)(t + 1) > p->end)
			return 0;
		p->doff = t->doff * 4;
		if (p->doff < sizeof(struct tcphdr) || p->doff > p->l4_len)
			return 0;
		p->tcp_flags = ((__u8 *)t)[13];
		return 1;
	}
	if (p->proto == IPPROTO_UDP) {
		struct udphdr *u = p->l4;

		if ((void *)(u + 1) > p->end)
			return 0;
		if (bpf_ntohs(u->len) < sizeof(struct udphdr) || bpf_ntohs(u->len) > p->l4_len)
			return 0;
		p->tcp_flags = 0;
		return 1;
	}
	return 0;
}

/* The steering rules (see the top of this file), from the frame as it came: the fast path
 * changed nothing when it let the frame go on. */
static __always_inline int steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 *dflags, dst_flags = 0, daddr;
	__u8 proto;
	int fragment;
	void *l4;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return pass();
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return pass();
	daddr = ip->daddr;
	dflags = bpf_map_lookup_elem(&dir_addrs, &daddr);
	if (dflags)
		dst_flags = *dflags;
	if (ip->version != 4 || ip->ihl < 5) {
		/* Broken: the engine counts it when it is addressed to us. */
		if (dst_flags & (DIR_ADDR_VIP | DIR_ADDR_LIP))
			return to_slow_path(ctx);
		return pass();
	}
	proto = ip->protocol;
	fragment = (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
	l4 = (void *)ip + ip->ihl * 4;

	if (dst_flags & DIR_ADDR_VIP) {
		if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
			__be16 *ports = l4;

			if (fragment || (void *)(ports + 2) > end)
				return to_slow_path(ctx);
			if (l4_flags(ip->daddr, ports[1], proto) & DIR_L4_SERVICE)
				return to_slow_path(ctx);
			return pass();
		}
		if (proto == IPPROTO_ICMP) {
			struct icmphdr *icmp = l4;

			if ((void *)(icmp + 1) > end)
				return pass();
			if (icmp_is_error(icmp->type))
				return to_slow_path(ctx);
		}
		return pass();
	}
	if (dst_flags & DIR_ADDR_LIP) {
		if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
			return to_slow_path(ctx);
		if (proto == IPPROTO_ICMP) {
			struct icmphdr *icmp = l4;

			if ((void *)(icmp + 1) <= end && icmp_is_error(icmp->type))
				return to_slow_path(ctx);
		}
		return pass();
	}
	if (dst_flags & DIR_ADDR_LOCAL)
		return pass();

	/* In transit through the box. */
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		__be16 *ports = l4;

		if (ip->frag_off & bpf_htons(IP_OFFSET))
			return pass();
		if ((void *)(ports + 2) > end)
			return pass();
		if (l4_flags(ip->saddr, ports[0], proto) & DIR_L4_NAT_REAL)
			return to_slow_path(ctx);
		return pass();
	}
	if (proto == IPPROTO_ICMP) {
		struct icmphdr *icmp = l4;

		if ((void *)(icmp + 1) <= end && icmp_is_error(icmp->type))
			return to_slow_path(ctx);
	}
	return pass();
}

SEC("xdp")
int director_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP) && ip->version == 4) {
		struct pkt p = { .eth = eth, .ip = ip, .end = end };
		int act;

		if (parse_l4(&p)) {
			act = fast_path(ctx, &p);
			if (act >= 0)
				return act;
		}
	}
	return steer(ctx);
}

char LICENSE[] SEC("license") = "GPL";
