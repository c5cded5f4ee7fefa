/* The front-end's rules in the kernel: the program Python compiled from the config
 * (miresga.frontend.kernel_rules) run over a parsed request, and the back-end picked from the
 * rule's wheel. First match wins, as in rules.py: every rule starts in, each step may put its rule
 * out, the lowest rule still in is the match. One bpf_loop over the steps: the verifier sees one
 * step, whatever the rule set. */
#ifndef MIRESGA_FRONTEND_ROUTE_H
#define MIRESGA_FRONTEND_ROUTE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "frontend.h"
#include "frontend_maps.h"
#include "http_req.h"

/* The walk's state: in a map value, as the parser's (see struct http_req). */
struct route_state {
	__u64 in;          /* bit r: rule r still matches */
	__u32 host_off, host_len;
	__u32 path_off, path_len;
	__u8 has_host;
	__u8 method;
};

/* Per CPU: the parser's and the rule walk's state for the segment at hand. */
struct fe_work {
	struct http_req r;
	struct route_state m;
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
};

static long route_step(__u32 i, void *ctx)
{
	struct route_walk *w = ctx;
	struct route_state *m = w->m;
	struct fe_op *op = bpf_map_lookup_elem(&fe_ops, &i);
	__u64 bit;
	int ok;

	if (!op)
		return 1;
	bit = 1ULL << (op->rule & 63);
	if (!(m->in & bit))
		return 0;
	switch (op->kind) {
	case FE_OP_METHOD:
		ok = (op->arg & m->method) != 0;
		break;
	case FE_OP_HOST_LEN_EQ:
		ok = m->has_host && m->host_len == op->arg;
		break;
	case FE_OP_HOST_LEN_GE:
		ok = m->has_host && m->host_len >= op->arg;
		break;
	case FE_OP_HOST_BYTE:
		ok = req_lower(REQ_AT(w->buf, m->host_off + op->arg)) == op->byte;
		break;
	case FE_OP_HOST_TAIL:
		ok = req_lower(REQ_AT(w->buf, m->host_off + m->host_len - op->arg)) == op->byte;
		break;
	case FE_OP_PATH_LEN_EQ:
		ok = m->path_len == op->arg;
		break;
	case FE_OP_PATH_LEN_GE:
		ok = m->path_len >= op->arg;
		break;
	case FE_OP_PATH_BYTE:
		ok = REQ_AT(w->buf, m->path_off + op->arg) == op->byte;
		break;
	default:
		ok = 0;
	}
	if (!ok)
		m->in &= ~bit;
	return 0;
}

/* The index of the first rule the request matches; -1 if none (a config error: the default
 * rule has no steps). */
static __always_inline int route_match(__u8 *buf, struct fe_work *wk, struct fe_config *cfg)
{
	struct http_req *r = &wk->r;
	struct route_state *m = &wk->m;
	struct route_walk w = { .buf = buf, .m = m };
	__u32 n = cfg->n_rules;
	__u64 in;

	if (n == 0 || n > FE_RULES_MAX)
		return -1;
	m->host_off = r->host_off;
	m->host_len = r->host_len;
	m->path_off = r->path_off;
	m->path_len = r->path_len;
	m->has_host = r->seen_host;
	m->method = r->method;
	m->in = n == 64 ? ~0ULL : (1ULL << n) - 1;
	bpf_loop(cfg->n_ops < FE_OPS_MAX ? cfg->n_ops : FE_OPS_MAX, route_step, &w, 0);
	in = m->in;
#pragma clang loop unroll(disable)
	for (int k = 0; k < FE_RULES_MAX; k++) {
		if (in & (1ULL << k))
			return k;
	}
	return -1;
}

/* The next back-end of the rule's wheel (round robin, or smooth weighted round robin laid out
 * by Python over the healthy back-ends); -1 if the kernel cannot pick. The position counter is
 * the one Python's selector uses too. */
static __always_inline int route_pick(__u32 rule_index, struct fe_rule *rule)
{
	__u64 *pos = bpf_map_lookup_elem(&fe_rr, &rule_index);
	__u32 slot, *b;
	__u64 p;

	if (!pos || !rule->wheel_len)
		return -1;
	p = __sync_fetch_and_add(pos, 1) + 1;
	slot = rule->wheel_off + (__u32)(p % rule->wheel_len);
	b = bpf_map_lookup_elem(&fe_wheel, &slot);
	if (!b || *b >= FE_BACKENDS_MAX)
		return -1;
	return *b;
}

#endif
