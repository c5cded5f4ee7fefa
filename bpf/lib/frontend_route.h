/* The front-end's rules in the kernel: the program Python compiled from the config
 * (miresga.frontend.kernel_rules) run over a parsed request, and the back-end picked from the
 * rule's wheel. First match wins, as in rules.py: every rule of the request's service starts in,
 * each of the service's steps may put its rule out, the lowest rule still in is the match. One
 * bpf_loop over the steps: the verifier sees one step, whatever the rule set. */
#ifndef MIRESGA_FRONTEND_ROUTE_H
#define MIRESGA_FRONTEND_ROUTE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "frontend.h"
#include "frontend_maps.h"
#include "http_req.h"
#include "cookie.h"

/* The walk's state: in a map value, as the parser's (see struct http_req). */
struct route_state {
	__u64 in;          /* bit r: rule r still matches */
};

/* A pick's loop state (route_pick). */
struct pick_state {
	__u64 best_v;
	__s32 best;
	__u32 start;
	__u32 n;
	__u32 client;
};

/* Per CPU: the parser's, the rule walk's and the pick's state for the segment at hand. */
struct fe_work {
	struct http_req r;
	struct route_state m;
	struct pick_state pick;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fe_work);
} fe_work SEC(".maps");

struct route_walk {
	__u8 *buf;
	struct route_state *m;
	struct http_req *r; /* the parsed request: where its Host and path are */
	__u32 op0;          /* the service's first step */
};

static long route_step(__u32 i, void *ctx)
{
	struct route_walk *w = ctx;
	struct route_state *m = w->m;
	struct http_req *r = w->r;
	__u32 at = i + w->op0;
	struct fe_op *op = bpf_map_lookup_elem(&fe_ops, &at);
	__u64 bit;
	int ok;

	if (!op)
		return 1;
	bit = 1ULL << (op->rule & 63);
	if (!(m->in & bit))
		return 0;
	switch (op->kind) {
	case FE_OP_METHOD:
		ok = (op->arg & r->method) != 0;
		break;
	case FE_OP_HOST_LEN_EQ:
		ok = r->seen_host && r->host_len == op->arg;
		break;
	case FE_OP_HOST_LEN_GE:
		ok = r->seen_host && r->host_len >= op->arg;
		break;
	case FE_OP_HOST_BYTE:
		ok = req_lower(REQ_AT(w->buf, r->host_off + op->arg)) == op->byte;
		break;
	case FE_OP_HOST_TAIL:
		ok = req_lower(REQ_AT(w->buf, r->host_off + r->host_len - op->arg)) == op->byte;
		break;
	case FE_OP_PATH_LEN_EQ:
		ok = r->path_len == op->arg;
		break;
	case FE_OP_PATH_LEN_GE:
		ok = r->path_len >= op->arg;
		break;
	case FE_OP_PATH_BYTE:
		ok = REQ_AT(w->buf, r->path_off + op->arg) == op->byte;
		break;
	default:
		ok = 0;
	}
	if (!ok)
		m->in &= ~bit;
	return 0;
}

/* The (global) index of the first rule of service sv the request matches; -1 if none (a config
 * error: the default rule has no steps) or the kernel routes nothing (no rules loaded). */
static __always_inline int route_match(__u8 *buf, struct fe_work *wk, struct fe_config *cfg, struct fe_service *sv)
{
	struct route_state *m = &wk->m;
	struct route_walk w = { .buf = buf, .m = m, .r = &wk->r, .op0 = sv->first_op };
	__u32 first = sv->first_rule, n = sv->n_rules, n_ops = sv->n_ops;
	__u64 in;

	if (n == 0 || n > FE_RULES_MAX || first + n > cfg->n_rules || cfg->n_rules > FE_RULES_MAX ||
	    w.op0 + n_ops > cfg->n_ops || n_ops > FE_OPS_MAX)
		return -1;
	m->in = (n == 64 ? ~0ULL : (1ULL << n) - 1) << first;
	bpf_loop(n_ops, route_step, &w, 0);
	in = m->in;
#pragma clang loop unroll(disable)
	for (int k = 0; k < FE_RULES_MAX; k++) {
		if (in & (1ULL << k))
			return k;
	}
	return -1;
}

static __always_inline __u64 route_count(__u32 b)
{
	__u32 k0 = FE_COUNT_ENGINE + b, k1 = FE_COUNT_OPENED + b, k2 = FE_COUNT_HEARD + b;
	__u64 *e = bpf_map_lookup_elem(&fe_counts, &k0), *o = bpf_map_lookup_elem(&fe_counts, &k1),
	      *h = bpf_map_lookup_elem(&fe_counts, &k2);

	if (!e || !o || !h)
		return ~0ULL;
	return *e + *o - *h;
}

/* The kernel opened a connection to back-end b (least connections counts it until the engine
 * has heard of it). */
static __always_inline void route_opened(__u32 b)
{
	__u32 k = FE_COUNT_OPENED + (b & (FE_BACKENDS_MAX - 1));
	__u64 *opened = bpf_map_lookup_elem(&fe_counts, &k);

	if (opened)
		__sync_fetch_and_add(opened, 1);
}

static __always_inline int route_wheel_at(struct fe_rule *rule, __u32 k)
{
	__u32 slot = rule->wheel_off + k, *b = bpf_map_lookup_elem(&fe_wheel, &slot);

	return (b && *b < FE_BACKENDS_MAX) ? (int)*b : -1;
}

struct pick_walk {
	struct pick_state *s;
	struct fe_rule *rule;
	struct fe_config *cfg;
};

/* Rendezvous: the wheel's k-th back-end scored by the client's hash; the highest wins. */
static long pick_hash_step(__u32 k, void *ctx)
{
	struct pick_walk *w = ctx;
	struct pick_state *s = w->s;
	struct fe_backend *be;
	__u32 bi;
	int b;
	__u64 h;

	if (k >= s->n)
		return 1;
	b = route_wheel_at(w->rule, k);
	bi = b;
	be = b < 0 ? 0 : bpf_map_lookup_elem(&fe_backends, &bi);
	if (!be) {
		s->best = -1;
		return 1;
	}
	h = siphash24_3w(w->cfg->hrw_k0, w->cfg->hrw_k1, s->client, be->name_id, 0);
	if (k == 0 || h > s->best_v) {
		s->best = b;
		s->best_v = h;
	}
	return 0;
}

/* Least connections: the first idlest from the rotating start. */
static long pick_least_step(__u32 k, void *ctx)
{
	struct pick_walk *w = ctx;
	struct pick_state *s = w->s;
	int b;
	__u64 c;

	if (k >= s->n || !s->n)
		return 1;
	b = route_wheel_at(w->rule, (s->start + k) % s->n);
	if (b < 0) {
		s->best = -1;
		return 1;
	}
	c = route_count(b);
	if (k == 0 || (__s64)c < (__s64)s->best_v) {
		s->best = b;
		s->best_v = c;
	}
	return 0;
}

/* The back-end for a request of `client` (host order) under the rule, as selection.Selector
 * picks: the next of the wheel (round robin, or smooth weighted round robin laid out by Python),
 * the least connections with ties taken in turn, or the highest rendezvous hash; -1 if the kernel
 * cannot pick. The wheel holds the healthy pool; the position counter is Python's too. */
static __always_inline int route_pick(__u32 rule_index, struct fe_rule *rule, struct fe_config *cfg, __u32 client)
{
	__u32 zero = 0, n = rule->wheel_len;
	struct fe_work *wk = bpf_map_lookup_elem(&fe_work, &zero);
	struct pick_walk w = { .rule = rule, .cfg = cfg };
	__u64 *pos, p;

	if (!wk || !n || n > FE_BACKENDS_MAX)
		return -1;
	w.s = &wk->pick;
	w.s->n = n;
	w.s->best = -1;
	w.s->client = client;
	if (rule->flags & FE_RULE_HASH) {
		bpf_loop(FE_BACKENDS_MAX, pick_hash_step, &w, 0);
		return w.s->best;
	}
	pos = bpf_map_lookup_elem(&fe_rr, &rule_index);
	if (!pos)
		return -1;
	p = __sync_fetch_and_add(pos, 1) + 1;
	w.s->start = (__u32)(p % n);
	if (!(rule->flags & FE_RULE_LEASTCONN))
		return route_wheel_at(rule, w.s->start);
	bpf_loop(FE_BACKENDS_MAX, pick_least_step, &w, 0);
	return w.s->best;
}

#endif
