/* The client's SYN options as far as the cookie carries them (MSS, window scale, SACK-permitted).
 * Missing options take the RFC defaults that miresga.cookie assumes (MSS 536, no scaling, no SACK). */
#ifndef MIRESGA_TCP_OPTS_H
#define MIRESGA_TCP_OPTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "drop_reasons.h"

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define TCPOPT_WSCALE 3
#define TCPOPT_SACK_PERM 4
#define TCP_MAX_OPTLEN 40
#define TCP_DEFAULT_MSS 536

struct syn_opts {
	__u32 mss;
	__u32 wscale;
	__u32 has_wscale;
	__u32 sack;
};

struct opt_walk {
	__u8 buf[64];
	__u32 i;
	__u32 optlen;
	int err;
	struct syn_opts *o;
};

/* One option per call (bpf_loop callback: the verifier checks the body once, not 40 times). */
static long opt_step(__u64 n, void *ctx)
{
	struct opt_walk *w = ctx;
	__u32 i = w->i;
	__u8 kind, len;

	if (i >= w->optlen || i >= TCP_MAX_OPTLEN)
		return 1;
	kind = w->buf[i & 0x3F];
	if (kind == TCPOPT_EOL)
		return 1;
	if (kind == TCPOPT_NOP) {
		w->i = i + 1;
		return 0;
	}
	if (i + 1 >= w->optlen)
		goto bad;
	len = w->buf[(i + 1) & 0x3F];
	if (len < 2 || i + len > w->optlen)
		goto bad;
	if (kind == TCPOPT_MSS && len == 4)
		w->o->mss = ((__u32)w->buf[(i + 2) & 0x3F] << 8) | w->buf[(i + 3) & 0x3F];
	else if (kind == TCPOPT_WSCALE && len == 3) {
		w->o->wscale = w->buf[(i + 2) & 0x3F];
		w->o->has_wscale = 1;
	} else if (kind == TCPOPT_SACK_PERM && len == 2)
		w->o->sack = 1;
	w->i = i + len;
	return 0;
bad:
	w->err = DROP_BAD_TCP_OPTIONS;
	return 1;
}

/* Parse `optlen` (0..40) option bytes at packet offset `off`. 0 or DROP_BAD_TCP_OPTIONS. */
static __always_inline int parse_syn_opts(struct __sk_buff *skb, __u32 off, __u32 optlen, struct syn_opts *o)
{
	struct opt_walk w = { .optlen = optlen, .o = o };

	o->mss = TCP_DEFAULT_MSS;
	o->wscale = 0;
	o->has_wscale = 0;
	o->sack = 0;
	if (optlen == 0)
		return 0;
	if (optlen > TCP_MAX_OPTLEN)
		return DROP_BAD_TCP_OPTIONS;
	if (bpf_skb_load_bytes(skb, off, w.buf, optlen & 0x3F))
		return DROP_BAD_TCP_OPTIONS;
	bpf_loop(TCP_MAX_OPTLEN, opt_step, &w, 0);
	return w.err;
}

#endif
