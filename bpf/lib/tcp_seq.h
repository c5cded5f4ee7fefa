/* TCP sequence arithmetic (mod 2^32) and sequence-field rewrites with incremental checksums. */
#ifndef MIRESGA_TCP_SEQ_H
#define MIRESGA_TCP_SEQ_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"

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

/* Rewrite the 32-bit sequence-space value at `off_in_tcp` (any alignment) from old to old + delta.
 * Returns 0 or -1; the old value is read from the packet. */
static __always_inline int tcp_seq_shift(struct __sk_buff *skb, __u32 l4, __u32 off_in_tcp, __u32 delta)
{
	__u32 old_be, new_be;

	if (bpf_skb_load_bytes(skb, l4 + off_in_tcp, &old_be, sizeof(old_be)))
		return -1;
	new_be = bpf_htonl(bpf_ntohl(old_be) + delta);
	if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF(l4), csum_parity_fix(old_be, off_in_tcp),
				csum_parity_fix(new_be, off_in_tcp), sizeof(__u32)))
		return -1;
	return bpf_skb_store_bytes(skb, l4 + off_in_tcp, &new_be, sizeof(new_be), 0);
}

#endif
