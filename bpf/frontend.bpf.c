/* The front-end's kernel path, part 1 (DESIGN.md §10): TC ingress on the front-end's interface.
 * It relays every connection the Python engine has handed over (one fe_conns entry), with the
 * engine's own rewrites: back-end -> client as VIP:port (data, ACKs, FIN, RST), client -> back-end
 * (pure ACKs, FIN, RST). What the engine must decide goes up to it untouched: client payload
 * (every request is routed by Python), segments of connections without an entry, anything odd.
 * Python hears of ends, closings and response starts through the fe_events ring buffer; the relay
 * never waits for it. Sequence numbers are never rewritten (the agent translates them). */
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
	ev->addr = key->addr;
	ev->port = key->port;
	ev->copy_len = 0;
	ev->seq = 0;
	ev->payload_len = 0;
	ev->cli_ack = e->cli_ack;
	ev->srv_end = e->srv_end;
	ev->cli_nxt = e->cli_nxt;
	ev->to_client_bytes = e->to_client_bytes;
}

/* Client -> back-end: the destination becomes the entry's back-end. */
static __always_inline int to_backend(struct __sk_buff *skb, struct pkt *p, struct fe_conn *e)
{
	return relay(skb, p, offsetof(struct iphdr, daddr), p->ip->daddr, e->backend_ip, offsetof(struct tcphdr, dest),
		     p->tcp->dest, e->backend_port, 0);
}

/* Back-end -> client: the source becomes VIP:port. */
static __always_inline int to_client(struct __sk_buff *skb, struct pkt *p, struct fe_config *cfg)
{
	return relay(skb, p, offsetof(struct iphdr, saddr), p->ip->saddr, cfg->vip, offsetof(struct tcphdr, source),
		     p->tcp->source, cfg->vport, 1);
}

/* Tell Python about the entry at key (no copy). */
static __always_inline void report(__u32 kind, struct fe_key *key, struct fe_conn *e)
{
	struct fe_event *ev = bpf_ringbuf_reserve(&fe_events, sizeof(*ev), 0);

	if (!ev) {
		fe_count(FE_STAT_EVENTS_LOST);
		return;
	}
	fill_event(ev, kind, key, e);
	bpf_ringbuf_submit(ev, 0);
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
	bpf_ringbuf_submit(c, 0);
	fe_count(FE_STAT_COPIES);
}

/* Both FINs relayed: report once (the two directions may race to it). */
static __always_inline void maybe_closing(struct fe_key *key, struct fe_conn *e)
{
	if (e->cli_fin && e->srv_fin && !__sync_lock_test_and_set(&e->closing, 1)) {
		fe_count(FE_STAT_CLOSING);
		report(FE_EV_CLOSING, key, e);
	}
}

/* A segment of a client to VIP:port whose connection the kernel holds. */
static __always_inline int from_client(struct __sk_buff *skb, struct pkt *p, struct fe_key *key, struct fe_conn *e)
{
	struct tcphdr *th = p->tcp;
	__u8 f = TCP_FLAGS(th);
	__u32 seq = bpf_ntohl(th->seq);
	int rc;

	e->last_seen_ns = bpf_ktime_get_ns();
	if (f & F_RST) {
		rc = to_backend(skb, p, e);
		fe_count(FE_STAT_CLIENT_RST);
		report(FE_EV_CLIENT_RST, key, e);
		bpf_map_delete_elem(&fe_conns, key);
		return rc;
	}
	if ((f & F_SYN) || p->payload_len)
		return pass(p->payload_len ? FE_STAT_PASS_DATA : FE_STAT_PASS_OTHER);
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
	if (f & F_FIN)
		maybe_closing(key, e);
	return to_backend(skb, p, e);
}

/* A segment of the connection's back-end (service ip:port) to its client. */
static __always_inline int from_backend(struct __sk_buff *skb, struct pkt *p, struct fe_config *cfg,
					struct fe_key *key, struct fe_conn *e)
{
	struct tcphdr *th = p->tcp;
	__u8 f = TCP_FLAGS(th);
	__u32 seq = bpf_ntohl(th->seq), end;
	int rc;

	e->last_seen_ns = bpf_ktime_get_ns();
	if (f & F_RST) {
		rc = to_client(skb, p, cfg);
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
		if (e->watch_segs && seq == e->watch_next)
			copy_response(skb, p, key, e, seq);
	}
	if (f & F_FIN) {
		e->srv_fin = 1;
		maybe_closing(key, e);
	}
	return to_client(skb, p, cfg);
}

SEC("tc")
int frontend_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct fe_config *cfg;
	struct fe_conn *e;
	struct fe_key key = {};
	__u32 zero = 0;
	int rc;

	cfg = bpf_map_lookup_elem(&fe_config, &zero);
	if (!cfg)
		return TC_ACT_OK;
	rc = parse_tcp_ipv4_skb(skb, &p);
	if (rc != PARSE_TCP)
		return pass(FE_STAT_NOT_OURS); /* malformed too: the engine counts it */
	if (p.ip->daddr == cfg->vip && p.tcp->dest == cfg->vport) {
		key.addr = p.ip->saddr;
		key.port = p.tcp->source;
		e = bpf_map_lookup_elem(&fe_conns, &key);
		if (!e)
			return pass(FE_STAT_PASS_NO_ENTRY);
		return from_client(skb, &p, &key, e);
	}
	key.addr = p.ip->daddr;
	key.port = p.tcp->dest;
	e = bpf_map_lookup_elem(&fe_conns, &key);
	if (!e)
		return pass(FE_STAT_PASS_NO_ENTRY);
	if (e->backend_ip != p.ip->saddr || e->backend_port != p.tcp->source)
		return pass(FE_STAT_PASS_OTHER); /* another back-end, or not spliced: the engine judges */
	return from_backend(skb, &p, cfg, &key, e);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
