/* One walk over TCP options for the whole data plane: the switch reads a client SYN's MSS, window
 * scale and SACK-permitted (what the cookie carries); the agent reads where the SACK blocks are
 * (to translate them) and a SYN-ACK's window scale. The walk stops where Linux's tcp_parse_options
 * stops, so every option a kernel will read is seen and nothing it ignores matters. */
#ifndef MIRESGA_TCP_OPTS_H
#define MIRESGA_TCP_OPTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pkt_ctx.h"

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define TCPOPT_WSCALE 3
#define TCPOPT_SACK_PERM 4
#define TCPOPT_SACK 5
#define TCP_MAX_OPTLEN 40   /* option bytes in a TCP header */
#define TCP_SACK_MAX 4      /* 40 bytes hold at most 4 blocks, however many SACK options */
#define TCP_WSCALE_LIMIT 14 /* RFC 7323; the kernel clamps larger values */
#define TCP_WSCALE_NONE 0xFF

struct tcp_opts {
	__u16 mss;                    /* 0 if absent */
	__u16 sack_off[TCP_SACK_MAX]; /* offset of each block's left edge from the TCP header */
	__u8 sack_blocks;
	__u8 wscale;    /* clamped to TCP_WSCALE_LIMIT; TCP_WSCALE_NONE if absent */
	__u8 sack_perm;
	__u8 malformed; /* the walk stopped early: truncated option or bad length */
	__u8 bad_sack;  /* a SACK option of impossible size (ignored, as the kernel does) */
};

struct tcp_opts_walk {
	__u8 buf[64];
	__u32 i;
	__u32 optlen;
	struct tcp_opts o;
};

/* One option per call (bpf_loop callback): 0 = go on, 1 = stop. A callback is verified once,
 * where an open-coded loop over 40 bytes with these branches explodes the verifier's states. */
static long tcp_opts_step(__u32 n, void *ctx)
{
	struct tcp_opts_walk *w = ctx;
	__u32 i = w->i;
	__u8 kind, len;

	if (i >= w->optlen)
		return 1;
	kind = w->buf[i & 0x3F];
	if (kind == TCPOPT_EOL)
		return 1;
	if (kind == TCPOPT_NOP) {
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
	if (kind == TCPOPT_MSS && len == 4) {
		w->o.mss = ((__u16)w->buf[(i + 2) & 0x3F] << 8) | w->buf[(i + 3) & 0x3F];
	} else if (kind == TCPOPT_WSCALE && len == 3) {
		__u8 ws = w->buf[(i + 2) & 0x3F];
		w->o.wscale = ws > TCP_WSCALE_LIMIT ? TCP_WSCALE_LIMIT : ws;
	} else if (kind == TCPOPT_SACK_PERM && len == 2) {
		w->o.sack_perm = 1;
	} else if (kind == TCPOPT_SACK) {
		if (len < 10 || (len - 2) % 8) {
			w->o.bad_sack = 1;
		} else {
			for (__u32 j = 0; j < TCP_SACK_MAX; j++) {
				__u8 k = w->o.sack_blocks;
				if (2 + j * 8 >= len || k >= TCP_SACK_MAX)
					break;
				w->o.sack_off[k & (TCP_SACK_MAX - 1)] = 20 + i + 2 + j * 8;
				w->o.sack_blocks = k + 1;
			}
		}
	}
	w->i = i + len;
	return 0;
}

/* Walk the options of the TCP header at packet offset l4 (tcp_hlen includes the 20 fixed bytes).
 * Returns 0, or -1 if the bytes could not be read. */
static __always_inline int tcp_opts_parse(pkt_ctx_t *ctx, __u32 l4, __u32 tcp_hlen, struct tcp_opts *o)
{
	struct tcp_opts_walk w = {};
	__u32 optlen = tcp_hlen - 20;

	w.o.wscale = TCP_WSCALE_NONE;
	if (optlen > TCP_MAX_OPTLEN)
		return -1;
	if (optlen) {
		/* ((n - 1) & 63) + 1 == n here, but lets the verifier see a size in [1, 64] */
		if (ctx_load_bytes(ctx, l4 + 20, w.buf, ((optlen - 1) & 0x3F) + 1))
			return -1;
		w.optlen = optlen;
		bpf_loop(TCP_MAX_OPTLEN, tcp_opts_step, &w, 0);
	}
	*o = w.o;
	return 0;
}

#endif
