// SPDX-License-Identifier: GPL-2.0
/*
 * The benchmarks' ceiling: the least an XDP forwarder can do. Every IPv4 frame that comes
 * in is given the configured MACs and redirected to the configured interface; nothing is
 * looked up, nothing else rewritten. What it moves is what XDP_REDIRECT itself moves on the
 * bench's namespaces, beside which the fast path's figures are read (scripts/bench). Not
 * part of the datapath.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct ceiling_cfg {
	__u32 ifindex;
	__u8 dmac[6];
	__u8 smac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ceiling_cfg);
} ceiling_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} ceiling_ports SEC(".maps");

SEC("xdp")
int ceiling(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 zero = 0;
	struct ceiling_cfg *c;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	c = bpf_map_lookup_elem(&ceiling_cfg, &zero);
	if (!c || !c->ifindex)
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, c->dmac, 6);
	__builtin_memcpy(eth->h_source, c->smac, 6);
	return bpf_redirect_map(&ceiling_ports, c->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
