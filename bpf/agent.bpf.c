/* The back-end agent (DESIGN.md §3 step 4, §6): translates sequence numbers between the switch's
 * sequence space (what the client sees) and the back-end's, so that the switch only ever rewrites
 * addresses and ports. Programs on the back-end's interface: ingress TC or XDP (agent_xdp.bpf.o,
 * -DMIRESGA_XDP, lib/pkt_ctx.h; it holds only the ingress program and shares the TC object's
 * maps), egress always TC (XDP has no egress hook). Maps and counters are in
 * lib/agent_maps.h, parsing, checksum, sequence and option helpers in lib/; the agent's own small
 * helpers sit above the entry points. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parse.h"
#include "csum.h"
#include "tcp_seq.h"
#include "agent.h"
#include "agent_maps.h"
#include "tcp_opts.h"
#include "pkt_ctx.h"

#define TCP_FLAG_BITS(tcp) (((__u8 *)(tcp))[13])
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10
#define TCP_WINDOW_OFF offsetof(struct tcphdr, window)
#define TCP_SEQ_OFF offsetof(struct tcphdr, seq)
#define TCP_ACK_OFF offsetof(struct tcphdr, ack_seq)

static __always_inline int agent_drop(int reason)
{
	__u32 k = -reason;
	__u64 *c = bpf_map_lookup_elem(&agent_drops, &k);

	if (c)
		*c += 1;
	return CTX_DROP;
}

static __always_inline struct agent_config *agent_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&agent_config, &zero);
}

static __always_inline int is_service_port(struct agent_config *cfg, __u16 port_be)
{
#pragma unroll
	for (int i = 0; i < AGENT_MAX_SERVICE_PORTS; i++)
		if (cfg->service_ports[i] && cfg->service_ports[i] == port_be)
			return 1;
	return 0;
}

/* Parse a segment and, if it belongs to the back-end's service port, fill the flow key (the
 * client's ip:port: the source on ingress, the destination on egress) and return the config;
 * NULL means "not ours: pass untouched". */
static __always_inline struct agent_config *service_segment(pkt_ctx_t *ctx, struct pkt *p,
							    struct agent_flow_key *key, int egress)
{
	struct agent_config *cfg;
	int rc = parse_tcp_ipv4_skb(ctx, p);

	if (rc != PARSE_TCP) {
		if (rc < 0) /* broken, not merely another protocol: the kernel will judge it */
			agent_count(AGENT_STAT_UNPARSED);
		return NULL;
	}
	cfg = agent_cfg();
	if (!cfg || !is_service_port(cfg, egress ? p->tcp->source : p->tcp->dest))
		return NULL;
	key->addr = egress ? p->ip->daddr : p->ip->saddr;
	key->port = egress ? p->tcp->dest : p->tcp->source;
	return cfg;
}

static __always_inline int all_closed(struct agent_flow *f)
{
	return f->fin_in && f->fin_out && f->fin_in_acked && f->fin_out_acked;
}

/* Splice SYN (ack field = switch ISN): store the flow, clear the field. A plain SYN (ack field 0)
 * from the same ip:port is a direct connection: forget any stale splice state for it. */
static __always_inline int ingress_syn(pkt_ctx_t *ctx, struct pkt *p, struct agent_flow_key *key)
{
	__u32 ack_be = p->tcp->ack_seq, l4 = p->l4_off;
	__u32 s = bpf_ntohl(ack_be);
	struct agent_flow *old, nf = {};

	if (s == 0) {
		if (bpf_map_delete_elem(&agent_flows, key) == 0)
			agent_count(AGENT_STAT_REMOVED_PLAIN_SYN);
		return CTX_PASS;
	}
	old = bpf_map_lookup_elem(&agent_flows, key);
	if (old && old->switch_isn == s) {
		/* the front-end retransmitted its SYN: keep what the SYN-ACK taught us */
		old->last_seen_ns = bpf_ktime_get_ns();
		agent_count(AGENT_STAT_SYN_RETRANS);
	} else {
		nf.last_seen_ns = bpf_ktime_get_ns();
		nf.switch_isn = s;
		nf.state = AGENT_FLOW_SYN;
		nf.backend_wscale = AGENT_WSCALE_NONE;
		if (bpf_map_update_elem(&agent_flows, key, &nf, BPF_ANY)) {
			agent_count(AGENT_STAT_INSERT_REFUSED);
			return agent_drop(DROP_AGENT_TABLE_FULL);
		}
		agent_count(old ? AGENT_STAT_RESPLICE : AGENT_STAT_SPLICE_SYN);
	}
	if (tcp_store4(ctx, l4, TCP_ACK_OFF, ack_be, 0))
		return agent_drop(DROP_REWRITE_FAILED);
	return CTX_PASS;
}

/* After a segment of a flow was translated: count it, and remove the flow on RST or once both
 * FINs are acknowledged. */
static __always_inline int translated(struct agent_flow *f, struct agent_flow_key *key, __u8 flags, __u32 stat)
{
	agent_count(stat);
	if (flags & F_RST) {
		bpf_map_delete_elem(&agent_flows, key);
		agent_count(AGENT_STAT_REMOVED_RST);
	} else if (all_closed(f)) {
		bpf_map_delete_elem(&agent_flows, key);
		agent_count(AGENT_STAT_REMOVED_FIN);
	}
	return CTX_PASS;
}

/* Client -> back-end: ack and SACK blocks from the switch's space into the back-end's (+diff). */
CTX_SEC
int agent_ingress(pkt_ctx_t *ctx)
{
	struct agent_flow_key key = {};
	struct agent_config *cfg;
	struct agent_flow *f;
	struct tcp_opts o;
	struct pkt p = {};
	__u32 l4, seq, ack, diff, payload, hlen;
	__u8 flags;

	cfg = service_segment(ctx, &p, &key, 0);
	if (!cfg)
		return CTX_PASS;
	flags = TCP_FLAG_BITS(p.tcp);
	if ((flags & (F_SYN | F_ACK | F_RST)) == F_SYN)
		return ingress_syn(ctx, &p, &key);

	f = bpf_map_lookup_elem(&agent_flows, &key);
	if (!f) {
		agent_count(AGENT_STAT_UNKNOWN);
		return CTX_PASS;
	}
	if (f->state != AGENT_FLOW_ESTABLISHED) {
		if (flags & F_RST) { /* the front-end gave up before the back-end answered */
			bpf_map_delete_elem(&agent_flows, &key);
			agent_count(AGENT_STAT_REMOVED_RST);
			return CTX_PASS;
		}
		return agent_drop(DROP_AGENT_NOT_SPLICED);
	}
	f->last_seen_ns = bpf_ktime_get_ns();
	diff = f->diff;
	l4 = p.l4_off;
	hlen = p.tcp_hlen;
	seq = bpf_ntohl(p.tcp->seq);
	ack = bpf_ntohl(p.tcp->ack_seq) + diff;
	payload = p.payload_len;

	if (flags & F_ACK) {
		__u32 acc = 0; /* one checksum update for the ack and every SACK edge */

		if (tcp_store4_acc(ctx, l4, TCP_ACK_OFF, p.tcp->ack_seq, bpf_htonl(ack), &acc))
			return agent_drop(DROP_REWRITE_FAILED);
		if (hlen > 20) {
			if (tcp_opts_parse(ctx, l4, hlen, &o))
				return agent_drop(DROP_REWRITE_FAILED);
			if (o.malformed || o.bad_sack)
				agent_count(AGENT_STAT_BAD_OPTIONS);
			for (__u32 i = 0; i < TCP_SACK_MAX; i++) {
				if (i >= o.sack_blocks)
					break;
				if (tcp_sack_block_shift(ctx, l4, o.sack_off[i & (TCP_SACK_MAX - 1)], diff, &acc))
					return agent_drop(DROP_REWRITE_FAILED);
			}
			if (o.sack_blocks)
				agent_count_n(AGENT_STAT_SACK_BLOCKS, o.sack_blocks);
		}
		if (tcp_csum_apply(ctx, l4, acc))
			return agent_drop(DROP_REWRITE_FAILED);
		if (f->fin_out && !f->fin_out_acked && seq_after_eq(ack, f->fin_out_end))
			f->fin_out_acked = 1;
	}
	if (flags & F_FIN) {
		f->fin_in_end = seq + payload + 1;
		f->fin_in = 1;
	}
	return translated(f, &key, flags, AGENT_STAT_XLATE_IN);
}

#ifndef MIRESGA_XDP
/* The back-end's window field, in its own scale, re-expressed in the scale the switch promised
 * the client; clamped to 16 bits, and never rounded down to a zero window. */
static __always_inline __u16 rescale_window(__u16 win, __u8 from, __u8 to)
{
	__u64 bytes = (__u64)win << from;
	__u64 w = bytes >> to;

	if (w > 0xFFFF)
		w = 0xFFFF;
	if (w == 0 && win)
		w = 1;
	return (__u16)w;
}

/* Back-end -> client: learn the diff from the SYN-ACK, then seq from the back-end's space into the
 * switch's (-diff) and the window into the promised scale. */
SEC("tc")
int agent_egress(pkt_ctx_t *ctx)
{
	struct agent_flow_key key = {};
	struct agent_config *cfg;
	struct agent_flow *f;
	struct tcp_opts o;
	struct pkt p = {};
	__u32 l4, seq, ack, payload;
	__u16 win_be;
	__u8 flags;

	cfg = service_segment(ctx, &p, &key, 1);
	if (!cfg)
		return CTX_PASS;
	f = bpf_map_lookup_elem(&agent_flows, &key);
	if (!f) {
		agent_count(AGENT_STAT_UNKNOWN);
		return CTX_PASS;
	}
	flags = TCP_FLAG_BITS(p.tcp);
	l4 = p.l4_off;
	seq = bpf_ntohl(p.tcp->seq);
	ack = bpf_ntohl(p.tcp->ack_seq);
	win_be = p.tcp->window;
	payload = p.payload_len;

	if ((flags & (F_SYN | F_ACK)) == (F_SYN | F_ACK)) {
		if (tcp_opts_parse(ctx, l4, p.tcp_hlen, &o))
			return agent_drop(DROP_REWRITE_FAILED);
		f->diff = seq - f->switch_isn;
		f->backend_wscale = o.wscale == TCP_WSCALE_NONE ? AGENT_WSCALE_NONE : o.wscale;
		f->promised_wscale = cfg->window_scale;
		f->state = AGENT_FLOW_ESTABLISHED;
		agent_count(AGENT_STAT_SYNACK);
	}
	if (f->state != AGENT_FLOW_ESTABLISHED) {
		if (flags & F_RST) { /* back-end refused the splice SYN */
			bpf_map_delete_elem(&agent_flows, &key);
			agent_count(AGENT_STAT_REMOVED_RST);
		}
		return CTX_PASS;
	}
	f->last_seen_ns = bpf_ktime_get_ns();
	if (tcp_store4(ctx, l4, TCP_SEQ_OFF, bpf_htonl(seq), bpf_htonl(seq - f->diff)))
		return agent_drop(DROP_REWRITE_FAILED);
	/* SYN windows are never scaled (RFC 7323) */
	if (!(flags & F_SYN) && f->backend_wscale != AGENT_WSCALE_NONE && f->backend_wscale != f->promised_wscale) {
		__u16 nw = bpf_htons(rescale_window(bpf_ntohs(win_be), f->backend_wscale, f->promised_wscale));

		if (nw != win_be) {
			if (tcp_store2(ctx, l4, TCP_WINDOW_OFF, win_be, nw))
				return agent_drop(DROP_REWRITE_FAILED);
			agent_count(AGENT_STAT_WINDOW_RESCALED);
		}
	}
	if (flags & F_FIN) {
		f->fin_out_end = seq + payload + 1;
		f->fin_out = 1;
	}
	if ((flags & F_ACK) && f->fin_in && !f->fin_in_acked && seq_after_eq(ack, f->fin_in_end))
		f->fin_in_acked = 1;
	return translated(f, &key, flags, AGENT_STAT_XLATE_OUT);
}
#endif

char LICENSE[] SEC("license") = "Dual BSD/GPL";
