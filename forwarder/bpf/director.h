/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the XDP program and the daemon share: map sizes, keys, flags and counters. The Rust
 * side (forwarder/src/io/xdp.rs) mirrors every definition here; a test checks the sizes.
 */
#ifndef DIRECTOR_H
#define DIRECTOR_H

#define DIR_MAX_ADDRS 4096
#define DIR_MAX_PORTS 16384
#define DIR_MAX_IFACES 32
#define DIR_MAX_QUEUES 64

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

/* dir_stats: per-CPU counters. */
enum {
	DIR_STAT_PASS = 0,       /* left to the kernel */
	DIR_STAT_SLOW_PATH,      /* handed to a worker's AF_XDP socket */
	DIR_STAT_NO_SOCKET,      /* the engine's, but no socket for the queue: passed */
	DIR_STAT_COUNT,
};

#endif
