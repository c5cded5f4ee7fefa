/* Incremental checksum updates: rewrites of addresses, ports, sequence numbers and options fix
 * the IP and TCP checksums. On TC through the kernel helpers, which also handle CHECKSUM_PARTIAL
 * (GSO) packets correctly; on XDP by hand (pkt_ctx.h). */
#ifndef MIRESGA_CSUM_H
#define MIRESGA_CSUM_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <stddef.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "pkt_ctx.h"

#define IP_CSUM_OFF(l3) ((l3) + offsetof(struct iphdr, check))
#define TCP_CSUM_OFF(l4) ((l4) + offsetof(struct tcphdr, check))

/* Store a 4-byte field of the TCP header and fix the TCP checksum (not part of the pseudo header). */
static __always_inline int tcp_store4(pkt_ctx_t *ctx, __u32 l4, __u32 field_off, __u32 old_be, __u32 new_be)
{
	if (ctx_l4_csum_replace(ctx, TCP_CSUM_OFF(l4), old_be, new_be, sizeof(__u32)))
		return -1;
	return ctx_store_bytes(ctx, l4 + field_off, &new_be, sizeof(new_be), 0);
}

static __always_inline int tcp_store2(pkt_ctx_t *ctx, __u32 l4, __u32 field_off, __u16 old_be, __u16 new_be)
{
	if (ctx_l4_csum_replace(ctx, TCP_CSUM_OFF(l4), old_be, new_be, sizeof(__u16)))
		return -1;
	return ctx_store_bytes(ctx, l4 + field_off, &new_be, sizeof(new_be), 0);
}

/* Store an IPv4 address (saddr/daddr offset in the IP header): fixes the IP checksum and the
 * TCP checksum's pseudo header. */
static __always_inline int ip_store_addr(pkt_ctx_t *ctx, __u32 l3, __u32 l4, __u32 field_off,
					 __u32 old_be, __u32 new_be)
{
	if (ctx_l4_csum_replace(ctx, TCP_CSUM_OFF(l4), old_be, new_be, BPF_F_PSEUDO_HDR | sizeof(__u32)))
		return -1;
	if (ctx_l3_csum_replace(ctx, IP_CSUM_OFF(l3), old_be, new_be, sizeof(__u32)))
		return -1;
	return ctx_store_bytes(ctx, l3 + field_off, &new_be, sizeof(new_be), 0);
}

/* Full one's-complement checksum of a freshly built IPv4 header (20 bytes, no options). */
static __always_inline __u16 ipv4_csum_fresh(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;

	ip->check = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)~sum;
}

/* A fresh IPv4 header (no options, DF, TTL 64, TCP) for l4_len bytes after it, checksummed. */
static __always_inline void ipv4_fresh(struct iphdr *ip, __u32 saddr, __u32 daddr, __u32 l4_len)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(sizeof(struct iphdr) + l4_len);
	ip->frag_off = bpf_htons(0x4000); /* DF */
	ip->ttl = 64;
	ip->protocol = IPPROTO_TCP;
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->check = ipv4_csum_fresh(ip);
}

static __always_inline __u32 csum_add16(__u32 sum, const void *p, int words)
{
	const __u16 *w = p;

#pragma unroll
	for (int i = 0; i < 16; i++)
		if (i < words)
			sum += w[i];
	return sum;
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)sum;
}

/* Store a TCP checksum computed from scratch (`full`, pseudo header included; `pseudo` the
 * pseudo header's sum) for the TCP header at l4. A CHECKSUM_PARTIAL packet (pkt_ctx.h) must
 * then hold the folded pseudo-header sum, not the full sum. */
static __always_inline int tcp_csum_store_fresh(pkt_ctx_t *ctx, __u32 l4, __u32 pseudo, __u16 full)
{
	int partial = ctx_csum_is_partial(ctx, TCP_CSUM_OFF(l4));
	__u16 check;

	if (partial < 0)
		return -1;
	check = partial ? csum_fold32(pseudo) : full;
	return ctx_store_bytes(ctx, TCP_CSUM_OFF(l4), &check, 2, 0);
}

/* The pseudo header's sum for a TCP segment of tcp_len bytes (addresses network order). */
static __always_inline __u32 tcp_pseudo_sum(__u32 saddr, __u32 daddr, __u32 tcp_len)
{
	return (saddr & 0xFFFF) + (saddr >> 16) + (daddr & 0xFFFF) + (daddr >> 16) + bpf_htons(IPPROTO_TCP) +
	       bpf_htons(tcp_len);
}

#endif
