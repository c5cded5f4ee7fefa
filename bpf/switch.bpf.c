/* The switch of DESIGN.md §4 as one ingress program on every port of the switch host: TC
 * (build/bpf/switch.bpf.o) or XDP (switch_xdp.bpf.o, -DMIRESGA_XDP; lib/pkt_ctx.h hides which).
 * Per packet: ARP for listed targets -> reply; SYN to a service's VIP:port -> SYN-ACK (stateless,
 * cookie); the handshake's final ACK (pure, ack-1 a valid cookie, no entry) -> absorbed;
 * FIN/RST/payload to a VIP or no offload entry -> bucket's front-end; client ACK with an entry ->
 * back-end; back-end segment with an entry naming that back-end -> client as the entry's service's
 * VIP:port; without -> front-end; anything
 * else -> routed by destination (LPM); the switch's own addresses and non-IPv4 -> the kernel, except
 * that a guarded port of theirs (the control API) answers only a front-end on its own port.
 * Only addresses, ports and MACs are rewritten, never sequence numbers.
 * Several services (VIP:port, index svc): offload entries are keyed by client ip:port *and* svc,
 * since one client port may talk to two VIPs at once; the front-end bucket stays hash8(client
 * ip:port), so all of one client port's connections meet on one front-end. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parse.h"
#include "csum.h"
#include "switch.h"
#include "switch_maps.h"
#include "switch_hash.h"
#include "switch_arp.h"
#include "synack.h"
#include "pkt_ctx.h"

#define LAST_HIT_GRANULARITY_NS 100000000ULL /* 100 ms: bounds cache-line writes per entry */

static __always_inline int drop(int reason)
{
	sw_count(SW_CNT_DROP(reason));
	return CTX_DROP;
}

static __always_inline int to_kernel(void)
{
	sw_count(SW_CNT_TO_KERNEL);
	return CTX_PASS;
}

/* Write the hop's MACs and redirect to its port. */
static __always_inline int forward(pkt_ctx_t *ctx, const struct sw_config *cfg, const struct hop *h,
				   __u32 counter)
{
	__u8 macs[2 * ETH_ALEN];
	__u32 ifindex = h->ifindex;

	__builtin_memcpy(macs, h->dmac, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, h->smac, ETH_ALEN);
	if (ctx_store_bytes(ctx, 0, macs, sizeof(macs), 0))
		return drop(DROP_REWRITE_FAILED);
	if (cfg->flags & SW_F_TRACE) {
		__u32 zero = 0;
		bpf_map_update_elem(&sw_trace, &zero, &ifindex, BPF_ANY);
	}
	sw_count(counter);
	return bpf_redirect(ifindex, 0);
}

static __always_inline struct hop *route_lookup(__u32 daddr)
{
	struct route_key k = { .prefixlen = 32, .ip = daddr };

	return bpf_map_lookup_elem(&sw_routes, &k);
}

static __always_inline int to_frontend(pkt_ctx_t *ctx, const struct sw_config *cfg, __u32 cip, __u16 cport)
{
	__u32 b = hash8(bpf_ntohl(cip), bpf_ntohs(cport));
	struct hop *h = bpf_map_lookup_elem(&sw_buckets, &b);

	if (!h || !(h->flags & HOP_VALID))
		return drop(DROP_NO_FRONTEND);
	return forward(ctx, cfg, h, SW_CNT_TO_FRONTEND);
}

static __always_inline void touch(struct offload_entry *e)
{
	__u64 now = bpf_ktime_get_ns();

	if (now - e->last_hit_ns > LAST_HIT_GRANULARITY_NS)
		e->last_hit_ns = now;
}

static __always_inline int route(pkt_ctx_t *ctx, const struct sw_config *cfg, struct hop *h)
{
	if (!h)
		return drop(DROP_NO_ROUTE);
	if (h->flags & HOP_LOCAL)
		return to_kernel();
	return forward(ctx, cfg, h, SW_CNT_ROUTED);
}

/* The switch's own services (the control API) serve front-ends only: TCP to a guarded port of a
 * switch-owned address must come from a front-end's address on that front-end's port. Returns 0
 * (allowed) or the drop reason. Only packets for the switch itself pay for the lookups. */
static __always_inline int guard_local(pkt_ctx_t *ctx, const struct pkt *p)
{
	__u16 port = p->tcp->dest;
	__u32 saddr = p->ip->saddr, *ifindex;

	if (!bpf_map_lookup_elem(&sw_guarded_ports, &port))
		return 0;
	ifindex = bpf_map_lookup_elem(&sw_ctl_peers, &saddr);
	if (ifindex && *ifindex == ctx_ingress_ifindex(ctx))
		return 0;
	return DROP_GUARDED_PORT;
}

/* TCP to service svc's VIP:port from a client. */
static __always_inline int from_client(pkt_ctx_t *ctx, struct pkt *p, const struct sw_config *cfg, __u32 svc)
{
	struct tcphdr *th = p->tcp;
	struct flow_key k = { .ip = p->ip->saddr, .port = th->source, .svc = svc };
	struct offload_entry *e;
	struct backend_entry *be;
	__u32 l3 = p->l3_off, l4 = p->l4_off, old_daddr = p->ip->daddr;
	__u16 old_dport = th->dest;
	int rc;

	if (th->syn && !th->ack && !th->rst && !th->fin) {
		rc = build_synack(ctx, p, cfg);
		if (rc)
			return drop(rc);
		sw_count(SW_CNT_SYNACK);
		return ctx_bounce(ctx);
	}
	if (th->syn || th->fin || th->rst || p->payload_len)
		return to_frontend(ctx, cfg, k.ip, k.port);
	e = bpf_map_lookup_elem(&sw_offload, &k);
	if (!e) {
		/* Step 1's last packet: a front-end has nothing to do with it; one crossing less. */
		if (th->ack && is_handshake_ack(p, cfg)) {
			sw_count(SW_CNT_HANDSHAKE_ACK);
			return CTX_DROP;
		}
		return to_frontend(ctx, cfg, k.ip, k.port);
	}
	be = bpf_map_lookup_elem(&sw_backends, &e->backend);
	if (!be || !(be->hop.flags & HOP_VALID))
		return drop(DROP_NO_BACKEND);
	touch(e);
	if (ip_store_addr(ctx, l3, l4, offsetof(struct iphdr, daddr), old_daddr, be->ip) ||
	    tcp_store2(ctx, l4, offsetof(struct tcphdr, dest), old_dport, be->port))
		return drop(DROP_REWRITE_FAILED);
	return forward(ctx, cfg, &be->hop, SW_CNT_TO_BACKEND);
}

/* TCP from a back-end's service ip:port to a client (dst outside the fabric). The segment does not
 * say which VIP the client reached: the client ip:port's entry (of any service) that names this
 * back-end is the connection's. At most one can: a back-end cannot hold two connections with one
 * 4-tuple, so the front-ends never give two services' connections of one client port to one
 * back-end. */
static __always_inline int from_backend(pkt_ctx_t *ctx, struct pkt *p, const struct sw_config *cfg,
					__u32 backend, struct hop *rt)
{
	struct tcphdr *th = p->tcp;
	struct flow_key k = { .ip = p->ip->daddr, .port = th->dest };
	struct offload_entry *e, *hit = NULL;
	struct sw_service *s;
	__u32 l3 = p->l3_off, l4 = p->l4_off, old_saddr = p->ip->saddr, svc, hit_svc = 0;
	__u16 old_sport = th->source;
	int seen = 0;

	if (th->syn || th->fin || th->rst)
		return to_frontend(ctx, cfg, k.ip, k.port);
	for (svc = 0; svc < SW_SERVICES_MAX; svc++) {
		if (svc >= cfg->n_services)
			break;
		k.svc = svc;
		e = bpf_map_lookup_elem(&sw_offload, &k);
		if (!e)
			continue;
		seen = 1;
		if (e->backend == backend) {
			hit = e;
			hit_svc = svc;
			break;
		}
	}
	if (!hit) {
		/* Only the back-end the front-end chose may reach the client directly. */
		if (seen)
			sw_count(SW_CNT_OFFLOAD_MISMATCH);
		return to_frontend(ctx, cfg, k.ip, k.port);
	}
	if (!rt)
		return drop(DROP_NO_ROUTE);
	s = bpf_map_lookup_elem(&sw_services, &hit_svc);
	if (!s)
		return drop(DROP_REWRITE_FAILED);
	touch(hit);
	if (ip_store_addr(ctx, l3, l4, offsetof(struct iphdr, saddr), old_saddr, s->vip) ||
	    tcp_store2(ctx, l4, offsetof(struct tcphdr, source), old_sport, s->vport))
		return drop(DROP_REWRITE_FAILED);
	return forward(ctx, cfg, rt, SW_CNT_TO_CLIENT);
}

/* A service's address (the drop of non-service traffic to it needs every VIP, not one). */
static __always_inline int is_vip_addr(__u32 daddr)
{
	return bpf_map_lookup_elem(&sw_vip_addrs, &daddr) != NULL;
}

CTX_SEC
int switch_ingress(pkt_ctx_t *ctx)
{
	void *data = ctx_data(ctx), *data_end = ctx_data_end(ctx);
	struct pkt p = {};
	struct sw_config *cfg;
	struct hop *rt;
	__u32 zero = 0, *backend;
	int rc;

	cfg = bpf_map_lookup_elem(&sw_config, &zero);
	if (!cfg)
		return CTX_PASS;
	rc = parse_tcp_ipv4(data, data_end, &p);
	if (rc < 0)
		return drop(rc);
	if (rc == PARSE_OTHER_L3) {
		if (p.eth->h_proto == bpf_htons(ETH_P_ARP) && arp_answer(data, data_end)) {
			sw_count(SW_CNT_ARP_REPLY);
			return ctx_bounce(ctx);
		}
		return to_kernel();
	}
	if (rc == PARSE_OTHER_L4) {
		if (is_vip_addr(p.ip->daddr))
			return drop(DROP_NOT_TCP_TO_VIP);
		return route(ctx, cfg, route_lookup(p.ip->daddr));
	}
	{
		/* To a service's VIP:port: one lookup on a client's path (the hottest one). */
		struct flow_key vk = { .ip = p.ip->daddr, .port = p.tcp->dest };
		__u32 *svc = bpf_map_lookup_elem(&sw_vips, &vk);

		if (svc) {
			/* Reverse-path check: a known client network must come in on its own port, so
			 * nobody can speak for another client's connection (its offload entry). */
			rt = route_lookup(p.ip->saddr);
			if (rt && rt->ifindex != ctx_ingress_ifindex(ctx))
				return drop(DROP_SPOOFED_CLIENT);
			return from_client(ctx, &p, cfg, *svc);
		}
	}
	if (is_vip_addr(p.ip->daddr)) {	/* a VIP address, but no service on that port */
		rc = guard_local(ctx, &p);
		return drop(rc ? rc : DROP_NOT_TCP_TO_VIP);
	}
	rt = route_lookup(p.ip->daddr);
	if (rt && !(rt->flags & (HOP_LOCAL | HOP_INTERNAL))) {
		struct flow_key src = { .ip = p.ip->saddr, .port = p.tcp->source };

		backend = bpf_map_lookup_elem(&sw_backend_src, &src);
		if (backend) {
			struct backend_entry *be = bpf_map_lookup_elem(&sw_backends, backend);

			/* Only the back-end's own port may speak as it: a client forging the source
			 * must not reach another client's offloaded connection. */
			if (!be || be->hop.ifindex != ctx_ingress_ifindex(ctx))
				return drop(DROP_SPOOFED_BACKEND);
			return from_backend(ctx, &p, cfg, *backend, rt);
		}
	}
	if (rt && (rt->flags & HOP_LOCAL)) {
		rc = guard_local(ctx, &p);
		if (rc)
			return drop(rc);
	}
	return route(ctx, cfg, rt);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
