/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the XDP program and the daemon share: map sizes, keys, values, flags and counters.
 * The Rust side (forwarder/src/io/xdp.rs, forwarder/src/io/fastpath.rs) mirrors every
 * definition here; its tests check the sizes and offsets.
 */
#ifndef DIRECTOR_H
#define DIRECTOR_H

#define DIR_MAX_ADDRS 4096
#define DIR_MAX_PORTS 16384
#define DIR_MAX_IFACES 32
#define DIR_MAX_QUEUES 64
#define DIR_MAX_NEXTHOPS 65536
#define DIR_MAX_REALS 4096

/* dir_addrs: what an address is to the box. */
#define DIR_ADDR_VIP   (1u << 0)  /* a virtual service's address */
#define DIR_ADDR_LIP   (1u << 1)  /* a FULLNAT local address */
#define DIR_ADDR_LOCAL (1u << 2)  /* the box's own (not a VIP or LIP) */

/* dir_ports key: (address, port, protocol), network order; pad zero. */
struct dir_l4_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* dir_ports: what (address, port, protocol) is. */
#define DIR_L4_SERVICE  (1u << 0)  /* a virtual service */
#define DIR_L4_NAT_REAL (1u << 1)  /* a NAT real server's service port (its replies) */

/*
 * dir_flows: the fast path's flows, mirrored from the connection table. Key: the packet's
 * own addresses and ports (network order): client → VIP for inbound packets, real → client
 * (NAT) or real → LIP (FULLNAT) for replies.
 */
struct dir_flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* What the fast path does to a flow's packets (dir_flow.action). */
enum {
	DIR_ACT_NAT_IN = 1,   /* destination → daddr:dport */
	DIR_ACT_NAT_OUT,      /* source → saddr:sport */
	DIR_ACT_DR,           /* MACs only */
	DIR_ACT_TUN,          /* IPIP from saddr to daddr */
	DIR_ACT_FNAT_IN,      /* source → saddr:sport, destination → daddr:dport */
	DIR_ACT_FNAT_OUT,     /* the same, the other way */
};

/* dir_flow.flags */
#define DIR_F_REPLICA (1u << 0)  /* installed from the peer; the first packet here adopts it */
#define DIR_F_PROXY   (1u << 1)  /* PROXY protocol shift: seq_isn, seq_delta */

struct dir_flow {
	__u32 nexthop;        /* row of dir_nexthops */
	__u8 action;
	__u8 flags;
	__u16 real_slot;      /* row of dir_reals */
	__u32 saddr;          /* network order */
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 seq_isn;        /* host order */
	__u32 seq_delta;
	__u64 packets;        /* counted by the program */
	__u64 bytes;          /* IP bytes as received */
	__u64 last_seen;      /* bpf_ktime_get_ns() of the last packet */
};

/* dir_nexthops: where a flow's packets leave (kept current from the FIB by the daemon). */
struct dir_nexthop {
	__u32 ifindex;        /* 0: unresolved, the slow path takes the packets */
	__u16 mtu;
	__u8 dmac[6];
	__u8 smac[6];
	__u16 flags;          /* DIR_NH_* */
};

/* Send a frame for the interface it came in on with a redirect, not XDP_TX: veth hands an
 * XDP_TX frame to its peer only when the peer runs an XDP program itself, while a redirect
 * reaches any peer with NAPI (GRO on). */
#define DIR_NH_REDIRECT_SELF (1u << 0)

/* dir_reals: per real server (per CPU), what the fast path forwarded. */
struct dir_real_stats {
	__u64 packets_in;
	__u64 bytes_in;
	__u64 packets_out;
	__u64 bytes_out;
};

/* dir_ident: a CPU's next outer identification and what to add after each. */
struct dir_ident {
	__u32 next;
	__u32 step;
};

/* dir_events: sent to the daemon through a ring buffer. */
#define DIR_EV_ADOPT 1          /* the first packet of a replica was forwarded here */
struct dir_event {
	__u32 kind;
	struct dir_flow_key key;
};

/* dir_stats: per-CPU counters. */
enum {
	DIR_STAT_PASS = 0,       /* left to the kernel */
	DIR_STAT_SLOW_PATH,      /* handed to a worker's AF_XDP socket */
	DIR_STAT_NO_SOCKET,      /* the engine's, but no socket for the queue: passed */
	DIR_STAT_FAST_IN,        /* forwarded by the fast path toward a real server */
	DIR_STAT_FAST_OUT,       /* forwarded by the fast path toward a client */
	DIR_STAT_COUNT,
};

#endif
