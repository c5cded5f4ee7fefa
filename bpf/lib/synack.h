/* The switch's half of the handshake, keeping no state.
 * build_synack: turn a client's SYN to VIP:port into the switch's SYN-ACK, in place.
 * ISN = keyed cookie (cookie.h) over the 4-tuple, the time bucket and the client's options;
 * fixed 12-byte option block: MSS, window scale and SACK-permitted (the last two only when the
 * client offered them, RFC 7323/2018; NOPs otherwise), no timestamps.
 * is_handshake_ack: recognize the client's final ACK of that handshake, which nobody needs. */
#ifndef MIRESGA_SYNACK_H
#define MIRESGA_SYNACK_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "cookie.h"
#include "csum.h"
#include "parse.h"
#include "switch.h"
#include "switch_maps.h"
#include "tcp_opts.h"

#define TCP_DEFAULT_MSS 536 /* RFC 879: a SYN without an MSS option */

#define SYNACK_OPTLEN 12
#define SYNACK_TCPLEN (sizeof(struct tcphdr) + SYNACK_OPTLEN)
#define SYNACK_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + SYNACK_TCPLEN)

struct synack_tcp {
	struct tcphdr th;
	__u8 opts[SYNACK_OPTLEN];
};

/* The cookie's time bucket now (TAI clock, as cookie.bucket_of). */
static __always_inline __u32 cookie_bucket_now(const struct sw_config *cfg)
{
	return (__u32)(bpf_ktime_get_tai_ns() / 1000000000ULL / (cfg->bucket_seconds ? cfg->bucket_seconds : 1));
}

/* A pure ACK to VIP:port with no options (the caller checked flags, payload and that no offload
 * entry exists) whose ack - 1 is a cookie of ours for its 4-tuple, under either key slot (the
 * current and the previous generation) in the current or previous bucket: the final ACK of
 * the switch's handshake. A front-end would only ignore it. An established slow-path connection
 * sends such an ACK only as a duplicate ACK before any response byte: with SACK it carries
 * options (kept); without, the back-end's retransmission timer covers it. */
static __always_inline int is_handshake_ack(const struct pkt *p, const struct sw_config *cfg)
{
	__u32 isn = bpf_ntohl(p->tcp->ack_seq) - 1, bucket, slot;
	__u32 cip = bpf_ntohl(p->ip->saddr), vip = bpf_ntohl(p->ip->daddr);
	__u16 cport = bpf_ntohs(p->tcp->source), vport = bpf_ntohs(p->tcp->dest);
	struct sw_key *key;

	if (p->tcp_hlen != sizeof(struct tcphdr))
		return 0;
	bucket = cookie_bucket_now(cfg);
	slot = cfg->key_slot & 1;
	key = bpf_map_lookup_elem(&sw_keys, &slot);
	if (key && cookie_check(key->k0, key->k1, cip, cport, vip, vport, bucket, isn))
		return 1;
	slot ^= 1;
	key = bpf_map_lookup_elem(&sw_keys, &slot);
	return key && (key->k0 | key->k1) && cookie_check(key->k0, key->k1, cip, cport, vip, vport, bucket, isn);
}

/* Returns 0 (the packet now holds the SYN-ACK, to be sent back out its ingress port) or a drop reason. */
static __always_inline int build_synack(pkt_ctx_t *ctx, struct pkt *p, const struct sw_config *cfg)
{
	struct ethhdr eth;
	struct iphdr ip = {};
	struct synack_tcp t = {};
	struct tcp_opts o;
	__u32 saddr = p->ip->saddr, daddr = p->ip->daddr;
	__u16 sport = p->tcp->source, dport = p->tcp->dest;
	__u32 seq = bpf_ntohl(p->tcp->seq);
	__u32 bucket, opts, isn, pseudo, slot;
	struct sw_key *key;

	__builtin_memcpy(eth.h_dest, p->eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, p->eth->h_dest, ETH_ALEN);
	eth.h_proto = bpf_htons(ETH_P_IP);

	if (tcp_opts_parse(ctx, p->l4_off, p->tcp_hlen, &o) || o.malformed)
		return DROP_BAD_TCP_OPTIONS;

	bucket = cookie_bucket_now(cfg);
	opts = cookie_option_bits(o.mss ? o.mss : TCP_DEFAULT_MSS, o.wscale != TCP_WSCALE_NONE, o.wscale, o.sack_perm);
	slot = cfg->key_slot & 1;
	key = bpf_map_lookup_elem(&sw_keys, &slot);
	if (!key)
		return DROP_REWRITE_FAILED;
	isn = cookie_make(key->k0, key->k1, bpf_ntohl(saddr), bpf_ntohs(sport), bpf_ntohl(daddr),
			  bpf_ntohs(dport), bucket, opts);

	ipv4_fresh(&ip, daddr, saddr, SYNACK_TCPLEN);

	t.th.source = dport;
	t.th.dest = sport;
	t.th.seq = bpf_htonl(isn);
	t.th.ack_seq = bpf_htonl(seq + 1);
	t.th.doff = SYNACK_TCPLEN / 4;
	t.th.syn = 1;
	t.th.ack = 1;
	t.th.window = bpf_htons(cfg->syn_window);
	t.opts[0] = TCPOPT_MSS;
	t.opts[1] = 4;
	t.opts[2] = cfg->mss >> 8;
	t.opts[3] = cfg->mss & 0xFF;
	t.opts[4] = TCPOPT_NOP;
	if (o.wscale != TCP_WSCALE_NONE) {
		t.opts[5] = TCPOPT_WSCALE;
		t.opts[6] = 3;
		t.opts[7] = cfg->wscale;
	} else {
		t.opts[5] = t.opts[6] = t.opts[7] = TCPOPT_NOP;
	}
	t.opts[8] = TCPOPT_NOP;
	t.opts[9] = TCPOPT_NOP;
	if (o.sack_perm && cfg->sack) {
		t.opts[10] = TCPOPT_SACK_PERM;
		t.opts[11] = 2;
	} else {
		t.opts[10] = t.opts[11] = TCPOPT_NOP;
	}
	pseudo = tcp_pseudo_sum(saddr, daddr, SYNACK_TCPLEN);
	t.th.check = ~csum_fold32(csum_add16(pseudo, &t, SYNACK_TCPLEN / 2));

	if (ctx_set_len(ctx, SYNACK_LEN))
		return DROP_REWRITE_FAILED;
	if (ctx_store_bytes(ctx, 0, &eth, sizeof(eth), BPF_F_RECOMPUTE_CSUM) ||
	    ctx_store_bytes(ctx, sizeof(eth), &ip, sizeof(ip), BPF_F_RECOMPUTE_CSUM) ||
	    ctx_store_bytes(ctx, sizeof(eth) + sizeof(ip), &t, sizeof(t), BPF_F_RECOMPUTE_CSUM))
		return DROP_REWRITE_FAILED;

	if (tcp_csum_store_fresh(ctx, sizeof(eth) + sizeof(ip), pseudo, t.th.check))
		return DROP_REWRITE_FAILED;
	return 0;
}

#endif
