/* TCP sequence arithmetic (mod 2^32) and sequence-field rewrites with incremental checksums. */
#ifndef MIRESGA_TCP_SEQ_H
#define MIRESGA_TCP_SEQ_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "pkt_ctx.h"

/* a before b in sequence space (RFC 1982 style, as the kernel's before()). */
static __always_inline int seq_before(__u32 a, __u32 b) { return (__s32)(a - b) < 0; }
static __always_inline int seq_after_eq(__u32 a, __u32 b) { return !seq_before(a, b); }

/* The 16-bit checksum words are aligned on the TCP header; a 4-byte field at an odd offset (a SACK
 * block after a single NOP) contributes its bytes swapped within each half, so pass the checksum
 * helper the value with the same word-wise contribution. */
static __always_inline __u32 csum_parity_fix(__u32 v_be, __u32 off_in_tcp)
{
	if (!(off_in_tcp & 1))
		return v_be;
	return ((v_be & 0x00FF00FF) << 8) | ((v_be >> 8) & 0x00FF00FF);
}

/* Rewrites that share one checksum update: each adds its difference to `acc` (a bpf_csum_diff
 * seed chain), and tcp_csum_apply() folds the sum into the TCP checksum once. */
static __always_inline int tcp_store4_acc(pkt_ctx_t *ctx, __u32 l4, __u32 off_in_tcp, __u32 old_be,
					  __u32 new_be, __u32 *acc)
{
	__u32 o = csum_parity_fix(old_be, off_in_tcp), n = csum_parity_fix(new_be, off_in_tcp);
	__s64 d = bpf_csum_diff(&o, sizeof(o), &n, sizeof(n), *acc);

	if (d < 0)
		return -1;
	*acc = (__u32)d;
	return ctx_store_bytes(ctx, l4 + off_in_tcp, &new_be, sizeof(new_be), 0);
}

/* Both edges of the SACK block at `off_in_tcp` (any alignment) shifted by delta. */
static __always_inline int tcp_sack_block_shift(pkt_ctx_t *ctx, __u32 l4, __u32 off_in_tcp, __u32 delta,
						__u32 *acc)
{
	__u32 old[2], nw[2], oc[2], nc[2];
	__s64 d;

	if (ctx_load_bytes(ctx, l4 + off_in_tcp, old, sizeof(old)))
		return -1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		nw[i] = bpf_htonl(bpf_ntohl(old[i]) + delta);
		oc[i] = csum_parity_fix(old[i], off_in_tcp);
		nc[i] = csum_parity_fix(nw[i], off_in_tcp);
	}
	d = bpf_csum_diff(oc, sizeof(oc), nc, sizeof(nc), *acc);
	if (d < 0)
		return -1;
	*acc = (__u32)d;
	return ctx_store_bytes(ctx, l4 + off_in_tcp, nw, sizeof(nw), 0);
}

static __always_inline int tcp_csum_apply(pkt_ctx_t *ctx, __u32 l4, __u32 acc)
{
	return ctx_l4_csum_replace(ctx, TCP_CSUM_OFF(l4), 0, acc, 0);
}

#endif
