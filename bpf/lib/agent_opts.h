/* The agent's walk over TCP options: where the SACK blocks are (ingress, to translate them) and the
 * window scale of a SYN-ACK (egress). It stops where Linux's tcp_parse_options stops, so every
 * block the back-end's kernel will read is translated and nothing it ignores matters. */
#ifndef MIRESGA_AGENT_OPTS_H
#define MIRESGA_AGENT_OPTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "agent.h"

#define AGENT_OPT_EOL 0
#define AGENT_OPT_NOP 1
#define AGENT_OPT_WSCALE 3
#define AGENT_OPT_SACK 5
#define AGENT_OPTS_MAX 40     /* options bytes in a TCP header */
#define AGENT_SACK_MAX 4      /* 40 bytes hold at most 4 blocks, however many SACK options */
#define AGENT_WSCALE_LIMIT 14 /* RFC 7323; the kernel clamps larger values */

struct agent_opts {
	__u16 sack_off[AGENT_SACK_MAX]; /* offset of each block's left edge from the TCP header */
	__u8 sack_blocks;
	__u8 wscale;    /* AGENT_WSCALE_NONE if absent */
	__u8 malformed; /* the walk stopped early: truncated option, bad length or bad SACK size */
	__u8 _pad;
};

struct agent_opts_walk {
	__u8 buf[64];
	__u32 i;
	__u32 optlen;
	struct agent_opts o;
};

/* One option per call (bpf_loop callback): 0 = go on, 1 = stop. A callback is verified once,
 * where an open-coded loop over 40 bytes with these branches explodes the verifier's states. */
static long agent_opts_step(__u32 n, void *ctx)
{
	struct agent_opts_walk *w = ctx;
	__u32 i = w->i;
	__u8 kind, len;

	if (i >= w->optlen)
		return 1;
	kind = w->buf[i & 0x3F];
	if (kind == AGENT_OPT_EOL)
		return 1;
	if (kind == AGENT_OPT_NOP) {
		w->i = i + 1;
		return 0;
	}
	if (i + 1 >= w->optlen) {
		w->o.malformed = 1;
		return 1;
	}
	len = w->buf[(i + 1) & 0x3F];
	if (len < 2 || i + len > w->optlen) {
		w->o.malformed = 1;
		return 1;
	}
	if (kind == AGENT_OPT_WSCALE && len == 3) {
		__u8 ws = w->buf[(i + 2) & 0x3F];
		w->o.wscale = ws > AGENT_WSCALE_LIMIT ? AGENT_WSCALE_LIMIT : ws;
	} else if (kind == AGENT_OPT_SACK) {
		if (len < 10 || (len - 2) % 8) {
			w->o.malformed = 1; /* the kernel ignores such an option; so do we */
		} else {
			for (__u32 j = 0; j < AGENT_SACK_MAX; j++) {
				__u8 k = w->o.sack_blocks;
				if (2 + j * 8 >= len || k >= AGENT_SACK_MAX)
					break;
				w->o.sack_off[k & (AGENT_SACK_MAX - 1)] = 20 + i + 2 + j * 8;
				w->o.sack_blocks = k + 1;
			}
		}
	}
	w->i = i + len;
	return 0;
}

/* Walk the options of the TCP header at packet offset l4 (tcp_hlen includes the 20 fixed bytes).
 * Returns 0, or -1 if the bytes could not be read. */
static __always_inline int agent_opts_parse(struct __sk_buff *skb, __u32 l4, __u32 tcp_hlen, struct agent_opts *o)
{
	struct agent_opts_walk w = {};
	__u32 optlen = tcp_hlen - 20;

	w.o.wscale = AGENT_WSCALE_NONE;
	if (optlen > AGENT_OPTS_MAX)
		return -1;
	if (optlen) {
		/* ((n - 1) & 63) + 1 == n here, but lets the verifier see a size in [1, 64] */
		if (bpf_skb_load_bytes(skb, l4 + 20, w.buf, ((optlen - 1) & 0x3F) + 1))
			return -1;
		w.optlen = optlen;
		bpf_loop(AGENT_OPTS_MAX, agent_opts_step, &w, 0);
	}
	*o = w.o;
	return 0;
}

#endif
