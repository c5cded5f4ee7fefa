/* Packet parsing with a bounds-checked cursor: Ethernet, IPv4, TCP. Shared by the switch and the
 * agent. Every access is checked against data_end before it is made; a packet that does not parse
 * cleanly is reported with a drop reason (drop_reasons.h) and never forwarded half-parsed. */
#ifndef MIRESGA_PARSE_H
#define MIRESGA_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "drop_reasons.h"
#include "pkt_ctx.h"

struct cursor {
	void *pos;
	void *end;
};

/* Headers of one TCP/IPv4 packet; pointers valid until the packet is resized. */
struct pkt {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u32 l3_off;      /* offset of the IP header from the packet start */
	__u32 l4_off;      /* offset of the TCP header */
	__u32 payload_len; /* TCP payload bytes, from the IP total length */
	__u32 tcp_hlen;    /* TCP header length incl. options */
};

#define CURSOR_TAKE(c, type) ({                                          \
	type *__p = (type *)(c)->pos;                                     \
	if ((void *)(__p + 1) > (c)->end) __p = (type *)0;               \
	else (c)->pos = (void *)(__p + 1);                                \
	__p; })

enum parse_result {
	PARSE_TCP = 0,    /* Ethernet + IPv4 + TCP, all checked */
	PARSE_OTHER_L3 = 1, /* not IPv4 (ARP, IPv6, ...) */
	PARSE_OTHER_L4 = 2, /* IPv4 but not TCP */
};

/* Returns a parse_result (>= 0) or a negative drop reason. On PARSE_OTHER_L4 p->ip is valid. */
static __always_inline int parse_tcp_ipv4(void *data, void *data_end, struct pkt *p)
{
	struct cursor c = { data, data_end };
	__u32 ihl, tot;

	p->eth = CURSOR_TAKE(&c, struct ethhdr);
	if (!p->eth)
		return DROP_TRUNCATED_ETH;
	if (p->eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_OTHER_L3;
	p->ip = CURSOR_TAKE(&c, struct iphdr);
	if (!p->ip)
		return DROP_TRUNCATED_IP;
	if (p->ip->version != 4 || p->ip->ihl < 5)
		return DROP_BAD_IHL;
	ihl = p->ip->ihl * 4;
	if ((void *)p->ip + ihl > data_end)
		return DROP_TRUNCATED_IP;
	tot = bpf_ntohs(p->ip->tot_len);
	if (tot < ihl)
		return DROP_BAD_IP_LEN;
	if (p->ip->frag_off & bpf_htons(0x3FFF)) /* MF set or offset != 0 */
		return DROP_FRAGMENT;
	p->l3_off = (void *)p->ip - data;
	if (p->ip->protocol != IPPROTO_TCP)
		return PARSE_OTHER_L4;
	p->l4_off = p->l3_off + ihl;
	p->tcp = (void *)p->ip + ihl; /* from the checked pointer: data + offset loses the bounds */
	if ((void *)(p->tcp + 1) > data_end)
		return DROP_TRUNCATED_TCP;
	p->tcp_hlen = p->tcp->doff * 4;
	if (p->tcp_hlen < sizeof(struct tcphdr) || ihl + p->tcp_hlen > tot)
		return DROP_BAD_DOFF;
	if ((void *)p->tcp + p->tcp_hlen > data_end)
		return DROP_TRUNCATED_TCP;
	p->payload_len = tot - ihl - p->tcp_hlen;
	return PARSE_TCP;
}

/* Headers we may need in the linear area: Ethernet + IPv4 with options + TCP with options. */
#define PARSE_PULL_LEN (14 + 60 + 60)

/* parse_tcp_ipv4 on a program's context. On an skb, the headers are pulled into the linear area
 * once if they are not there yet (GSO frames may carry them in fragments). One parse call site in
 * a real (not unrolled) loop: two inlined copies made clang merge their paths into reads of
 * registers the verifier sees as uninitialised. An XDP frame is linear: one parse. */
static __always_inline int parse_tcp_ipv4_skb(pkt_ctx_t *skb, struct pkt *p)
{
#ifdef MIRESGA_XDP
	return parse_tcp_ipv4(ctx_data(skb), ctx_data_end(skb), p);
#else
	int rc = 0;

#pragma clang loop unroll(disable)
	for (int attempt = 0; attempt < 2; attempt++) {
		__u32 want = skb->len < PARSE_PULL_LEN ? skb->len : PARSE_PULL_LEN;

		rc = parse_tcp_ipv4((void *)(long)skb->data, (void *)(long)skb->data_end, p);
		if (rc != DROP_TRUNCATED_IP && rc != DROP_TRUNCATED_TCP)
			break;
		if (attempt || skb->data_end - skb->data >= want || bpf_skb_pull_data(skb, want))
			break;
	}
	return rc;
#endif
}

#endif
