/* The front-end's kernel path (DESIGN.md §10): TC ingress on the front-end's interface.
 *
 * Relay: every connection with a relay entry in fe_conns, with the engine's own rewrites:
 * back-end -> client as its service's VIP:port (data, ACKs, FIN, RST), client -> back-end (ACKs,
 * FIN, RST). A connection is keyed by client ip:port and service (the VIP:port it reached); a
 * back-end's segment does not name the service: the entry that has this back-end is its own.
 * Requests: the common request is routed here, with the rules Python compiled into maps
 * (frontend_route.h) — a keep-alive request that stays on its back-end is relayed at once; a new
 * connection's first request (valid cookie) becomes the splice SYN, its frame waits in fe_held
 * and is released on the back-end's SYN-ACK (DESIGN.md §3 steps 2-5). Anything the kernel cannot
 * judge goes up to the engine untouched, which then holds the connection (a marker entry).
 * Python hears of requests, ends, closings and response starts through the fe_events ring
 * buffer; the data never waits for it. Sequence numbers are never rewritten (the agent
 * translates them). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/tcp.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parse.h"
#include "csum.h"
#include "tcp_seq.h"
#include "frontend.h"
#include "frontend_maps.h"
#include "frontend_route.h"

#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10
#define TCP_FLAGS(tcp) (((__u8 *)(tcp))[13])

static __always_inline int pass(__u32 stat)
{
	fe_count(stat);
	return TC_ACT_OK;
}

/* Back out of the interface we came in on, to the switch port we came from (swap the MACs). */
static __always_inline int bounce(struct __sk_buff *skb, struct pkt *p, __u32 stat, __u32 bytes_stat)
{
	__u8 macs[2 * ETH_ALEN];

	__builtin_memcpy(macs, p->eth->h_source, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, p->eth->h_dest, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		return pass(FE_STAT_REWRITE_FAILED);
	fe_count(stat);
	fe_count_n(bytes_stat, p->payload_len);
	return bpf_redirect(skb->ifindex, 0);
}

/* Rewrite one endpoint (address at ip_off in the IP header, port at port_off in the TCP header),
 * fixing both checksums, then bounce. */
static __always_inline int relay(struct __sk_buff *skb, struct pkt *p, __u32 ip_off, __u32 old_ip, __u32 new_ip,
				 __u32 port_off, __u16 old_port, __u16 new_port, int to_client)
{
	__u32 l3 = p->l3_off, l4 = p->l4_off;

	if (ip_store_addr(skb, l3, l4, ip_off, old_ip, new_ip) || tcp_store2(skb, l4, port_off, old_port, new_port))
		return TC_ACT_SHOT; /* half rewritten: cannot be handed on */
	/* The stores may have moved the data: parse again for the MACs. */
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;

	if (data + sizeof(struct ethhdr) > data_end)
		return TC_ACT_SHOT;
	p->eth = data;
	return to_client ? bounce(skb, p, FE_STAT_TO_CLIENT, FE_STAT_TO_CLIENT_BYTES)
			 : bounce(skb, p, FE_STAT_TO_BACKEND, FE_STAT_TO_BACKEND_BYTES);
}

/* An event about the entry at key, with the entry's state as it is now. */
static __always_inline void fill_event(struct fe_event *ev, __u32 kind, struct fe_key *key, struct fe_conn *e)
{
	ev->kind = kind;
	ev->svc = key->svc;
	ev->addr = key->addr;
	ev->port = key->port;
	ev->copy_len = 0;
	ev->seq = 0;
	ev->payload_len = 0;
	ev->cli_ack = e->cli_ack;
	ev->srv_end = e->srv_end;
	ev->cli_nxt = e->cli_nxt;
	ev->to_client_bytes = e->to_client_bytes;
	ev->rule = 0;
	ev->backend = 0;
	ev->req_flags = 0;
}

/* Client -> back-end: the destination becomes the entry's back-end. */
static __always_inline int to_backend(struct __sk_buff *skb, struct pkt *p, struct fe_conn *e)
{
	return relay(skb, p, offsetof(struct iphdr, daddr), p->ip->daddr, e->backend_ip, offsetof(struct tcphdr, dest),
		     p->tcp->dest, e->backend_port, 0);
}

/* Back-end -> client: the source becomes the service's VIP:port. */
static __always_inline int to_client(struct __sk_buff *skb, struct pkt *p, struct fe_service *sv)
{
	return relay(skb, p, offsetof(struct iphdr, saddr), p->ip->saddr, sv->vip, offsetof(struct tcphdr, source),
		     p->tcp->source, sv->vport, 1);
}

/* Python reads the ring buffer in batches: it polls every few milliseconds (the data never waits
 * for it), and is woken early only when a batch is worth it. One wake-up per event would cost it
 * more than the events themselves. */
#define FE_WAKE_BYTES (16 * 1024)

static __always_inline __u64 fe_wakeup(void)
{
	return bpf_ringbuf_query(&fe_events, BPF_RB_AVAIL_DATA) >= FE_WAKE_BYTES ? BPF_RB_FORCE_WAKEUP
										  : BPF_RB_NO_WAKEUP;
}

/* Tell Python about the entry at key (no copy). -1: the ring is full (Python is behind). */
static __always_inline int report(__u32 kind, struct fe_key *key, struct fe_conn *e)
{
	struct fe_event *ev = bpf_ringbuf_reserve(&fe_events, sizeof(*ev), 0);

	if (!ev) {
		fe_count(FE_STAT_EVENTS_LOST);
		return -1;
	}
	fill_event(ev, kind, key, e);
	bpf_ringbuf_submit(ev, fe_wakeup());
	return 0;
}

struct fe_copy {
	struct fe_event h;
	__u8 data[FE_COPY_MAX];
};

/* Ring-buffer records have no map value type: keep their layout in the BTF for user space. */
const volatile struct fe_copy fe_event_layout_anchor __attribute__((unused));

/* A copy of the first bytes of a response segment, for the engine's auto-offload watcher. */
static __always_inline void copy_response(struct __sk_buff *skb, struct pkt *p, struct fe_key *key,
					  struct fe_conn *e, __u32 seq)
{
	__u32 len = p->payload_len < FE_COPY_MAX ? p->payload_len : FE_COPY_MAX;
	struct fe_copy *c;

	e->watch_next = seq + p->payload_len;
	e->watch_segs -= 1;
	c = bpf_ringbuf_reserve(&fe_events, sizeof(*c), 0);
	if (!c) {
		fe_count(FE_STAT_EVENTS_LOST);
		return;
	}
	fill_event(&c->h, FE_EV_COPY, key, e);
	c->h.seq = seq;
	c->h.payload_len = p->payload_len;
	if (len < 1 || len > FE_COPY_MAX || bpf_skb_load_bytes(skb, p->l4_off + p->tcp_hlen, c->data, len)) {
		len = 0;
	}
	c->h.copy_len = len;
	bpf_ringbuf_submit(c, fe_wakeup());
	fe_count(FE_STAT_COPIES);
}

/* Both FINs relayed: report once (the two directions may race to it). A report the full ring
 * refused is made again at the connection's next segment (the last ACK follows the last FIN):
 * without it the engine would keep the connection until its idle timer. */
static __always_inline void maybe_closing(struct fe_key *key, struct fe_conn *e)
{
	if (e->cli_fin && e->srv_fin && !__sync_lock_test_and_set(&e->closing, 1)) {
		if (report(FE_EV_CLOSING, key, e)) {
			e->closing = 0;
			return;
		}
		fe_count(FE_STAT_CLOSING);
	}
}

/* ------------------------------------------------------------------ requests (frontend_route.h) */

/* A request the kernel read and routed: where it goes, and what Python must hear of it. */
struct routed {
	struct http_req *r;
	struct fe_rule *rule;
	__u32 rule_index;
	__u32 flags; /* FE_REQ_* */
};

/* Read the client segment's frame into the per-CPU buffer, parse and match it against its
 * service's rules. 0: routed (the frame in *frame, flen bytes); -1: leave it to Python. */
static __always_inline int read_request(struct __sk_buff *skb, struct pkt *p, struct fe_config *cfg,
					struct fe_service *sv, struct routed *out, struct fe_held **frame)
{
	__u32 zero = 0, off = p->l4_off + p->tcp_hlen, flen = off + p->payload_len;
	struct fe_work *wk = bpf_map_lookup_elem(&fe_work, &zero);
	struct fe_held *h;
	int ri;

	if (!wk)
		return -1;
	out->r = &wk->r;
	if (p->l3_off != sizeof(struct ethhdr) || p->ip->ihl != 5 || flen > skb->len || flen > FE_HELD_MAX ||
	    flen < off + 1)
		return -1;
	h = bpf_map_lookup_elem(&fe_scratch, &zero);
	asm volatile("" : "+r"(flen)); /* keep the mask: it is no change, but bounds for the verifier */
	flen &= REQ_MASK;
	if (!h || flen < 1 || bpf_skb_load_bytes(skb, 0, h->frame, flen))
		return -1;
	h->len = flen;
	if (http_req_parse(out->r, h->frame, off, flen))
		return -1;
	if (p->payload_len + out->r->fields + 16 > cfg->max_header)
		return -1; /* near the header limit: the engine's 431 is exact */
	ri = route_match(h->frame, wk, cfg, sv);
	if (ri < 0)
		return -1;
	out->rule_index = ri;
	out->rule = bpf_map_lookup_elem(&fe_rules, &out->rule_index);
	if (!out->rule || !(out->rule->flags & FE_RULE_KERNEL))
		return -1;
	out->flags = http_req_flags(out->r);
	*frame = h;
	return 0;
}

/* The record Python will hear a routed request by, reserved before the kernel commits to the
 * request: the engine must know every connection and request the kernel takes, so with the ring
 * full (Python behind) the request is left to the engine instead. With the access log on, room
 * for a copy of the request (its line and fields). */
static __always_inline struct fe_copy *reserve_request(struct fe_config *cfg, __u32 *room)
{
	struct fe_copy *c;

	/* Two calls: the verifier wants each size a constant, and `room` says which one it got. */
	if (cfg->flags & FE_CFG_LOG) {
		c = bpf_ringbuf_reserve(&fe_events, sizeof(struct fe_copy), 0);
		*room = FE_COPY_MAX;
	} else {
		c = bpf_ringbuf_reserve(&fe_events, sizeof(struct fe_event), 0);
		*room = 0;
	}
	if (!c)
		fe_count(FE_STAT_EVENTS_LOST);
	return c;
}

/* Python hears of the request (the entry as it is after it) in the record reserved for it. */
static __always_inline void report_request(struct fe_copy *c, __u32 room, struct __sk_buff *skb, struct pkt *p,
					   struct fe_key *key, struct fe_conn *e, struct routed *q, __u32 seq,
					   __u32 flags)
{
	__u32 len = room ? (p->payload_len < FE_COPY_MAX ? p->payload_len : FE_COPY_MAX) : 0;

	fill_event(&c->h, FE_EV_REQUEST, key, e);
	c->h.seq = seq;
	c->h.payload_len = p->payload_len;
	c->h.rule = q->rule_index;
	c->h.backend = e->backend;
	c->h.req_flags = q->flags | flags;
	if (len && (len > FE_COPY_MAX || bpf_skb_load_bytes(skb, p->l4_off + p->tcp_hlen, c->data, len)))
		len = 0;
	c->h.copy_len = len;
	bpf_ringbuf_submit(c, fe_wakeup());
}

/* Response segments to copy up for a routed request: the `auto` watch (unless the switch entry is
 * already asked for), or every response for the access log. */
static __always_inline __u32 watch_segs(struct fe_rule *rule, struct fe_config *cfg, __u8 offloaded)
{
	return (((rule->flags & FE_RULE_WATCH) && !offloaded) || (cfg->flags & FE_CFG_LOG)) ? FE_WATCH_COPIES : 0;
}

/* The engine takes it: count, and leave a marker so that its next segments go up too. */
static __always_inline int punt_new(struct fe_key *key)
{
	struct fe_conn m = { .phase = FE_PHASE_PYTHON, .last_seen_ns = bpf_ktime_get_ns() };

	bpf_map_update_elem(&fe_conns, key, &m, BPF_NOEXIST);
	fe_count(FE_STAT_REQ_PUNTED);
	return pass(FE_STAT_PASS_DATA);
}

/* ack - 1 of a client's first data segment: the cookie the switch made (current or previous key
 * generation, this bucket or the one before, as cookie.check_cookie) for the VIP:port the segment
 * is addressed to. The option bits, or -1. */
static __always_inline int cookie_valid(struct fe_config *cfg, struct pkt *p, __u32 isn)
{
	__u32 slot, bucket = (__u32)(bpf_ktime_get_tai_ns() / 1000000000ULL / (cfg->bucket_seconds ? cfg->bucket_seconds : 1));
	struct fe_cookie_key *k;
	__u32 cip = bpf_ntohl(p->ip->saddr), vip = bpf_ntohl(p->ip->daddr);
	__u16 cport = bpf_ntohs(p->tcp->source), vport = bpf_ntohs(p->tcp->dest);

#pragma clang loop unroll(disable)
	for (slot = 0; slot < 2; slot++) {
		k = bpf_map_lookup_elem(&fe_keys, &slot);
		if (k && (k->k0 | k->k1) && cookie_check(k->k0, k->k1, cip, cport, vip, vport, bucket, isn))
			return isn & 0x7F;
	}
	return -1;
}

struct syn_tcp {
	struct tcphdr th;
	__u8 opts[12];
};

/* Turn the client's request segment into the splice SYN (DESIGN.md §3 step 3), as the engine's
 * _syn builds it: from the client's ip:port to the back-end, seq c, the switch ISN in the ack
 * field with the ACK flag off (the agent reads and clears it), window 65535, the client's
 * options as the cookie carried them (MSS, SACK-permitted, window scale). */
static __always_inline int build_syn(struct __sk_buff *skb, struct pkt *p, struct fe_conn *e, __u32 opts)
{
	struct ethhdr eth;
	struct iphdr ip = {};
	struct syn_tcp t = {};
	__u32 saddr = p->ip->saddr, daddr = e->backend_ip, thl = sizeof(struct tcphdr) + 4, pseudo;
	__u16 mss = COOKIE_OPT_MSS(opts);

	__builtin_memcpy(eth.h_dest, p->eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, p->eth->h_dest, ETH_ALEN);
	eth.h_proto = bpf_htons(ETH_P_IP);
	t.opts[0] = 2;
	t.opts[1] = 4;
	t.opts[2] = mss >> 8;
	t.opts[3] = mss & 0xFF;
	if (COOKIE_OPT_SACK(opts)) {
		t.opts[4] = 1;
		t.opts[5] = 1;
		t.opts[6] = 4;
		t.opts[7] = 2;
		thl += 4;
	}
	if (COOKIE_OPT_WSCALE(opts) != COOKIE_WSCALE_NONE) {
		__u8 ws[4] = { 1, 3, 3, COOKIE_OPT_WSCALE(opts) };

		if (COOKIE_OPT_SACK(opts))
			__builtin_memcpy(&t.opts[8], ws, 4);
		else
			__builtin_memcpy(&t.opts[4], ws, 4);
		thl += 4;
	}
	ipv4_fresh(&ip, saddr, daddr, thl);
	t.th.source = p->tcp->source;
	t.th.dest = e->backend_port;
	t.th.seq = bpf_htonl(e->c);
	t.th.ack_seq = bpf_htonl(e->s);
	t.th.doff = thl / 4;
	t.th.syn = 1;
	t.th.window = bpf_htons(65535);
	pseudo = tcp_pseudo_sum(saddr, daddr, thl);
	t.th.check = ~csum_fold32(csum_add16(pseudo, &t, sizeof(t) / 2)); /* unused option bytes are 0 */
	if (thl > sizeof(t) || bpf_skb_change_tail(skb, sizeof(eth) + sizeof(ip) + thl, 0))
		return -1;
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, sizeof(eth), &ip, sizeof(ip), 0) ||
	    bpf_skb_store_bytes(skb, sizeof(eth) + sizeof(ip), &t, thl, 0))
		return -1;
	return tcp_csum_store_fresh(skb, sizeof(eth) + sizeof(ip), pseudo, t.th.check);
}

/* Has the client ip:port a connection to another service (an entry or a marker)? Then the
 * engine picks this one's back-end: it must not be one of theirs (the back-end would see one
 * 4-tuple twice), and the engine picks among the others (routing._port_busy) — a pick the
 * kernel would make otherwise. */
static __always_inline int port_shared(struct fe_key *key, __u32 n_services)
{
	struct fe_key k = *key;

#pragma clang loop unroll(disable)
	for (__u32 s = 0; s < FE_SERVICES_MAX; s++) {
		if (s >= n_services)
			break;
		if (s == key->svc)
			continue;
		k.svc = s;
		if (bpf_map_lookup_elem(&fe_conns, &k))
			return 1;
	}
	return 0;
}

/* A data segment of a client the kernel holds nothing for: a new connection's first request
 * (DESIGN.md §3 steps 2-3), taken here if the cookie is valid, the whole request is in it, its
 * client port has no other service's connection and its rule picks a back-end from the wheel. */
static __always_inline int first_request(struct __sk_buff *skb, struct pkt *p, struct fe_config *cfg,
					 struct fe_service *sv, struct fe_key *key, __u64 replace)
{
	struct tcphdr *th = p->tcp;
	__u8 f = TCP_FLAGS(th);
	__u32 seq = bpf_ntohl(th->seq), ack = bpf_ntohl(th->ack_seq), bi;
	struct fe_backend *be;
	struct fe_held *frame;
	struct routed q = {};
	int opts, b;

	if (!p->payload_len && !(f & F_FIN) && !replace) {
		/* A bare ACK, RST or SYN of no connection (every connection the engine holds has a
		 * marker): the engine would only count it. Dropped here, so a flood of them never
		 * reaches Python. (A stray handshake ACK the switch did not absorb is one of them.) */
		fe_count(FE_STAT_DROP_NO_ENTRY);
		return TC_ACT_SHOT;
	}
	if (!p->payload_len || (f & (F_SYN | F_RST | F_FIN)) || !(f & F_ACK))
		return pass(FE_STAT_PASS_NO_ENTRY);
	opts = cookie_valid(cfg, p, ack - 1);
	if (opts < 0)
		return pass(FE_STAT_PASS_NO_ENTRY); /* the engine counts the bad cookie */
	if (cfg->n_services > 1 && port_shared(key, cfg->n_services)) {
		fe_count(FE_STAT_PORT_SHARED);
		return punt_new(key);
	}
	if (!(cfg->flags & FE_CFG_FIRST) || read_request(skb, p, cfg, sv, &q, &frame))
		return punt_new(key);
	if (!(q.rule->flags & (FE_RULE_WHEEL | FE_RULE_LEASTCONN | FE_RULE_HASH)) || q.rule->after_requests == 1)
		return punt_new(key);
	b = route_pick(q.rule_index, q.rule, cfg, bpf_ntohl(p->ip->saddr));
	if (b < 0 || !(cfg->healthy & (1ULL << (b & 63))))
		return punt_new(key); /* the engine answers 503 */
	bi = b;
	be = bpf_map_lookup_elem(&fe_backends, &bi);
	if (!be)
		return punt_new(key);
	struct fe_conn e = {
		.last_seen_ns = bpf_ktime_get_ns(), .backend_ip = be->ip, .backend_port = be->port,
		.cli_nxt = seq + p->payload_len, .cli_ack = ack, .srv_end = ack, .phase = FE_PHASE_SYN_SENT,
		.route_ok = (q.flags & FE_REQ_CLOSE) ? 0 : FE_ROUTE_OK, .has_req_ack = 1, .backend = bi, .last_req_ack = ack,
		.requests = 1, .c = seq - 1, .s = ack - 1,
	};
	e.watch_next = ack;
	e.watch_segs = watch_segs(q.rule, cfg, 0);
	__u32 room;
	struct fe_copy *rec = reserve_request(cfg, &room);

	if (!rec)
		return punt_new(key);
	if (bpf_map_update_elem(&fe_held, key, frame, BPF_NOEXIST)) {
		bpf_ringbuf_discard(rec, 0);
		return punt_new(key);
	}
	if (bpf_map_update_elem(&fe_conns, key, &e, replace ? BPF_EXIST : BPF_NOEXIST)) {
		bpf_ringbuf_discard(rec, 0);
		bpf_map_delete_elem(&fe_held, key);
		return punt_new(key);
	}
	if (cfg->n_services > 1 && port_shared(key, cfg->n_services)) {
		/* Another service's first request of this client port, on another CPU, got in since
		 * the check above: neither keeps its own (the other sees this entry), both go up. */
		bpf_map_delete_elem(&fe_conns, key);
		bpf_ringbuf_discard(rec, 0);
		bpf_map_delete_elem(&fe_held, key);
		fe_count(FE_STAT_PORT_SHARED);
		return punt_new(key);
	}
	route_opened(bi);
	report_request(rec, room, skb, p, key, &e, &q, seq, FE_REQ_FIRST | ((__u32)opts << 8));
	if (build_syn(skb, p, &e, opts)) {
		fe_count(FE_STAT_REWRITE_FAILED);
		return TC_ACT_SHOT; /* half rewritten; the engine resends the SYN on its timer */
	}
	fe_count(FE_STAT_REQ_FIRST);
	return bpf_redirect(skb->ifindex, 0);
}

/* The back-end's SYN-ACK for a splice the kernel opened: the held request goes out in its place
 * (DESIGN.md §3 step 5), to the back-end, its ack completing the back-end's handshake. */
static __always_inline int release(struct __sk_buff *skb, struct pkt *p, struct fe_key *key, struct fe_conn *e)
{
	struct tcphdr *th = p->tcp;
	__u8 f = TCP_FLAGS(th);
	struct fe_held *h;
	struct iphdr *ip;
	struct tcphdr *t;
	__u32 len, sum, pseudo;

	if ((f & (F_SYN | F_ACK | F_RST | F_FIN)) != (F_SYN | F_ACK) || bpf_ntohl(th->seq) != e->s ||
	    bpf_ntohl(th->ack_seq) != e->c + 1 || p->l4_off != sizeof(struct ethhdr) + sizeof(struct iphdr))
		return pass(FE_STAT_PASS_OTHER); /* a refusal, or odd: the engine judges */
	h = bpf_map_lookup_elem(&fe_held, key);
	if (!h)
		return pass(FE_STAT_PASS_OTHER);
	len = h->len;
	if (len < sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct tcphdr) || len > FE_HELD_MAX)
		return pass(FE_STAT_PASS_OTHER);
	__builtin_memcpy(h->frame, p->eth->h_source, ETH_ALEN); /* back to the switch port it came from */
	__builtin_memcpy(h->frame + ETH_ALEN, p->eth->h_dest, ETH_ALEN);
	ip = (void *)(h->frame + sizeof(struct ethhdr));
	t = (void *)(h->frame + sizeof(struct ethhdr) + sizeof(struct iphdr));
	ip->daddr = e->backend_ip;
	ip->check = ipv4_csum_fresh(ip);
	t->dest = e->backend_port;
	t->check = 0;
	/* The whole segment's checksum: the buffer's bytes after the frame are zeroed so that the
	 * last 4-byte word holds no stale byte. */
	asm volatile("" : "+r"(len)); /* the masks are no change, but bounds for the verifier */
	len &= REQ_MASK;
	if (len < sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct tcphdr))
		return pass(FE_STAT_PASS_OTHER);
	h->frame[len & REQ_MASK] = 0;
	h->frame[(len + 1) & REQ_MASK] = 0;
	h->frame[(len + 2) & REQ_MASK] = 0;
	pseudo = tcp_pseudo_sum(ip->saddr, ip->daddr, len - sizeof(struct ethhdr) - sizeof(struct iphdr));
	sum = pseudo;
#pragma unroll
	for (int k = 0; k < 3; k++) {
		__u32 at = sizeof(struct ethhdr) + sizeof(struct iphdr) + k * 512, n;

		if (at >= len)
			break;
		n = ((len - at) + 3) & ~3U;
		if (n > 512)
			n = 512;
		sum = bpf_csum_diff(0, 0, (__be32 *)(h->frame + at), n, sum);
	}
	t->check = ~csum_fold32(sum);
	if (bpf_skb_change_tail(skb, len, 0) || bpf_skb_store_bytes(skb, 0, h->frame, len, 0) ||
	    tcp_csum_store_fresh(skb, sizeof(struct ethhdr) + sizeof(struct iphdr), pseudo, t->check)) {
		fe_count(FE_STAT_REWRITE_FAILED);
		return TC_ACT_SHOT; /* the back-end resends its SYN-ACK; the entry still waits */
	}
	e->phase = FE_PHASE_RELAY;
	e->last_seen_ns = bpf_ktime_get_ns();
	bpf_map_delete_elem(&fe_held, key);
	fe_count(FE_STAT_RELEASED);
	fe_count(FE_STAT_TO_BACKEND);
	fe_count_n(FE_STAT_TO_BACKEND_BYTES, len - sizeof(struct ethhdr) - sizeof(struct iphdr) - t->doff * 4);
	return bpf_redirect(skb->ifindex, 0);
}

/* Does the routed request stay on the connection's back-end, as the engine's _route would keep it:
 * in the rule's pool and healthy, and for a hash policy picked again by the client's hash. */
static __always_inline int keeps_backend(struct routed *q, struct fe_config *cfg, struct fe_conn *e, __u32 client)
{
	__u64 bit = 1ULL << (e->backend & 63);

	if (!(q->rule->pool & bit) || !(cfg->healthy & bit))
		return 0;
	if (q->rule->flags & FE_RULE_STICKY)
		return 1;
	return (q->rule->flags & FE_RULE_HASH) && route_pick(q->rule_index, q->rule, cfg, client) == e->backend;
}

/* A keep-alive connection's next request, in order and whole: relayed at once when its rule
 * keeps the connection's back-end (DESIGN.md §3 step 8); anything else goes to the engine. */
static __always_inline int next_request(struct __sk_buff *skb, struct pkt *p, struct fe_config *cfg,
					struct fe_service *sv, struct fe_key *key, struct fe_conn *e)
{
	struct tcphdr *th = p->tcp;
	__u8 f = TCP_FLAGS(th);
	__u32 seq = bpf_ntohl(th->seq), ack = bpf_ntohl(th->ack_seq);
	struct fe_held *frame;
	struct routed q = {};
	__u8 offloaded;

	if (!(cfg->flags & FE_CFG_ROUTE) || !(e->route_ok & FE_ROUTE_OK) || e->cli_fin || (f & (F_SYN | F_FIN | F_RST)) || !(f & F_ACK) ||
	    seq != e->cli_nxt || (e->has_req_ack && ack == e->last_req_ack))
		return pass(FE_STAT_PASS_DATA); /* not a plain next request (pipelined, reordered, ...) */
	offloaded = e->route_ok & FE_ROUTE_OFFLOADED;
	if (read_request(skb, p, cfg, sv, &q, &frame) || !keeps_backend(&q, cfg, e, bpf_ntohl(p->ip->saddr)) ||
	    (!offloaded && q.rule->after_requests && e->requests + 1 >= q.rule->after_requests)) {
		fe_count(FE_STAT_REQ_PUNTED);
		return pass(FE_STAT_PASS_DATA); /* re-route, offload from now on, or not ours to judge */
	}
	__u32 room;
	struct fe_copy *rec = reserve_request(cfg, &room);

	if (!rec)
		return pass(FE_STAT_PASS_DATA);
	e->last_seen_ns = bpf_ktime_get_ns();
	e->cli_nxt = seq + p->payload_len;
	e->cli_ack = ack;
	e->last_req_ack = ack;
	e->has_req_ack = 1;
	e->requests += 1;
	e->route_ok = (q.flags & FE_REQ_CLOSE) ? 0 : e->route_ok;
	e->watch_next = ack;
	e->watch_segs = watch_segs(q.rule, cfg, offloaded);
	report_request(rec, room, skb, p, key, e, &q, seq, 0);
	fe_count(FE_STAT_REQ_NEXT);
	return to_backend(skb, p, e);
}

/* A client segment inside what the connection already carried (the engine's _new_incarnation
 * test): anything else on a closed connection starts a new one on the same port. */
static __always_inline int retransmitted(struct fe_conn *e, __u32 seq, __u32 len)
{
	__s32 behind = (__s32)(e->cli_nxt - seq);

	return behind > 0 && behind < (1 << 24) && (__s32)(seq + len - e->cli_nxt) <= 0;
}

/* ------------------------------------------------------------------ relay */

/* A segment of a client to its service's VIP:port whose connection the kernel holds. */
static __always_inline int from_client(struct __sk_buff *skb, struct pkt *p, struct fe_config *cfg,
				       struct fe_service *sv, struct fe_key *key, struct fe_conn *e)
{
	struct tcphdr *th = p->tcp;
	__u8 f = TCP_FLAGS(th);
	__u32 seq = bpf_ntohl(th->seq);
	int rc;

	if (f & F_RST) {
		e->last_seen_ns = bpf_ktime_get_ns();
		rc = to_backend(skb, p, e);
		fe_count(FE_STAT_CLIENT_RST);
		report(FE_EV_CLIENT_RST, key, e);
		bpf_map_delete_elem(&fe_conns, key);
		return rc;
	}
	if (p->payload_len && e->closing && !retransmitted(e, seq, p->payload_len + ((f & F_FIN) ? 1 : 0)))
		return first_request(skb, p, cfg, sv, key, 1); /* the port reused: a new connection (or Python's) */
	if (p->payload_len)
		return next_request(skb, p, cfg, sv, key, e);
	if (f & F_SYN)
		return pass(FE_STAT_PASS_OTHER);
	e->last_seen_ns = bpf_ktime_get_ns();
	if (f & F_FIN) {
		if (!e->cli_fin && seq == e->cli_nxt) {
			e->cli_fin = 1;
			e->cli_nxt = seq + 1;
		} else if (e->cli_fin && seq + 1 == e->cli_nxt) {
			/* A retransmission: relayed, and (as in the engine) its ack is not news. */
			return to_backend(skb, p, e);
		} else {
			return pass(FE_STAT_PASS_OTHER); /* out of order: the engine reassembles */
		}
	}
	if (f & F_ACK)
		e->cli_ack = bpf_ntohl(th->ack_seq);
	maybe_closing(key, e); /* at the FIN; again at a later segment if the ring was full */
	return to_backend(skb, p, e);
}

/* A segment of the connection's back-end (service ip:port) to its client. */
static __always_inline int from_backend(struct __sk_buff *skb, struct pkt *p, struct fe_config *cfg,
					struct fe_service *sv, struct fe_key *key, struct fe_conn *e)
{
	struct tcphdr *th = p->tcp;
	__u8 f = TCP_FLAGS(th);
	__u32 seq = bpf_ntohl(th->seq), end;
	int rc;

	e->last_seen_ns = bpf_ktime_get_ns();
	if (f & F_RST) {
		rc = to_client(skb, p, sv);
		fe_count(FE_STAT_BACKEND_RST);
		report(FE_EV_BACKEND_RST, key, e);
		bpf_map_delete_elem(&fe_conns, key);
		return rc;
	}
	if (f & F_SYN) {
		fe_count(FE_STAT_SYNACK_DROPPED);
		return TC_ACT_SHOT;
	}
	end = seq + p->payload_len + ((f & F_FIN) ? 1 : 0);
	if (seq_before(e->srv_end, end))
		e->srv_end = end;
	if (p->payload_len) {
		__sync_fetch_and_add(&e->to_client_bytes, p->payload_len);
		if (e->watch_segs && seq == e->watch_next) {
			if ((f & F_FIN) && (cfg->flags & FE_CFG_FIN_ENDS))
				e->watch_segs = 0; /* the response ends here: nothing left to offload (engine alike) */
			else
				copy_response(skb, p, key, e, seq);
		}
	}
	if (f & F_FIN)
		e->srv_fin = 1;
	maybe_closing(key, e);
	return to_client(skb, p, sv);
}

/* A back-end's segment to client ip:port: the connection of the service whose entry has this
 * back-end (at most one has: a back-end cannot hold one 4-tuple twice), key->svc set to it. None:
 * *why says what there was instead (nothing, the engine's marker, another back-end's entry); the
 * engine judges the segment. */
static __always_inline struct fe_conn *backend_conn(struct pkt *p, struct fe_config *cfg, struct fe_key *key,
						    __u32 *why)
{
	__u32 n = cfg->n_services;
	struct fe_conn *e;

	*why = FE_STAT_PASS_NO_ENTRY;
#pragma clang loop unroll(disable)
	for (__u32 s = 0; s < FE_SERVICES_MAX; s++) {
		if (s > 0 && s >= n)
			break;
		key->svc = s;
		e = bpf_map_lookup_elem(&fe_conns, key);
		if (!e)
			continue;
		if (e->phase == FE_PHASE_PYTHON) {
			*why = FE_STAT_PASS_PYTHON;
			continue;
		}
		if (e->backend_ip == p->ip->saddr && e->backend_port == p->tcp->source)
			return e;
		if (*why == FE_STAT_PASS_NO_ENTRY)
			*why = FE_STAT_PASS_OTHER; /* another back-end, or not spliced */
	}
	return 0;
}

SEC("tc")
int frontend_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct fe_config *cfg;
	struct fe_service *sv;
	struct fe_conn *e;
	struct fe_key key = {};
	__u32 zero = 0, svc = 0, why, *found;
	int rc;

	cfg = bpf_map_lookup_elem(&fe_config, &zero);
	sv = bpf_map_lookup_elem(&fe_services, &zero);
	if (!cfg || !sv)
		return TC_ACT_OK;
	rc = parse_tcp_ipv4_skb(skb, &p);
	if (rc != PARSE_TCP)
		return pass(FE_STAT_NOT_OURS); /* malformed too: the engine counts it */
	if (!(p.ip->daddr == sv->vip && p.tcp->dest == sv->vport) && cfg->n_services > 1) {
		struct fe_vip_key vk = { .vip = p.ip->daddr, .port = p.tcp->dest };

		found = bpf_map_lookup_elem(&fe_vips, &vk);
		if (found && *found < FE_SERVICES_MAX) {
			svc = *found;
			sv = bpf_map_lookup_elem(&fe_services, &svc);
			if (!sv)
				return TC_ACT_OK;
		}
	}
	if (p.ip->daddr == sv->vip && p.tcp->dest == sv->vport) {
		key.addr = p.ip->saddr;
		key.port = p.tcp->source;
		key.svc = svc;
		e = bpf_map_lookup_elem(&fe_conns, &key);
		if (!e)
			return first_request(skb, &p, cfg, sv, &key, 0);
		if (e->phase != FE_PHASE_RELAY)
			return pass(e->phase == FE_PHASE_PYTHON ? FE_STAT_PASS_PYTHON : FE_STAT_PASS_OTHER);
		return from_client(skb, &p, cfg, sv, &key, e);
	}
	key.addr = p.ip->daddr;
	key.port = p.tcp->dest;
	e = backend_conn(&p, cfg, &key, &why);
	if (!e)
		return pass(why);
	if (e->phase == FE_PHASE_SYN_SENT)
		return release(skb, &p, &key, e);
	svc = key.svc;
	sv = bpf_map_lookup_elem(&fe_services, &svc);
	if (!sv)
		return pass(FE_STAT_PASS_OTHER);
	return from_backend(skb, &p, cfg, sv, &key, e);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
