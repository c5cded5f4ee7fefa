/* The packet-access layer that lets one program source build for TC and for XDP (after cilium's
 * context shim). Programs and the lib/ helpers take a `pkt_ctx_t *` and use only the ctx_*
 * functions below; `-DMIRESGA_XDP` selects the XDP build (struct xdp_md), the default is TC
 * (struct __sk_buff). The Makefile compiles switch and agent twice: build/bpf/X.bpf.o (TC) and
 * build/bpf/X_xdp.bpf.o (XDP).
 *
 * XDP differences the helpers hide:
 *  - bytes are read and written with bpf_xdp_load_bytes/bpf_xdp_store_bytes (Linux 5.18);
 *  - checksums are updated by hand (RFC 1624), there is no bpf_l[34]_csum_replace. XDP sees a
 *    frame as it came off the wire, whose checksum is complete; a CHECKSUM_PARTIAL packet (only a
 *    local stack's, over veth) is something XDP cannot tell and the kernel drops its metadata on
 *    XDP_TX/REDIRECT anyway: docs/deploy.md says to keep tx checksum offload off on senders that
 *    share a veth with an XDP switch (the testbed does);
 *  - the frame is linear (no multi-buffer: the program is not loaded with BPF_F_XDP_HAS_FRAGS),
 *    so parsing needs no pull (parse.h);
 *  - resizing is bpf_xdp_adjust_tail;
 *  - "back out the port it came in on" is XDP_TX. */
#ifndef MIRESGA_PKT_CTX_H
#define MIRESGA_PKT_CTX_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#ifdef MIRESGA_XDP

typedef struct xdp_md pkt_ctx_t;
#define CTX_SEC SEC("xdp")
#define CTX_PASS XDP_PASS
#define CTX_DROP XDP_DROP

static __always_inline long ctx_load_bytes(pkt_ctx_t *ctx, __u32 off, void *to, __u32 len)
{
	return bpf_xdp_load_bytes(ctx, off, to, len);
}

/* `flags` (BPF_F_RECOMPUTE_CSUM for skbs) has no meaning without skb checksum state. */
static __always_inline long ctx_store_bytes(pkt_ctx_t *ctx, __u32 off, const void *from, __u32 len, __u64 flags)
{
	return bpf_xdp_store_bytes(ctx, off, (void *)from, len);
}

static __always_inline __u16 ctx_csum_fold64(__u64 s)
{
	s = (s & 0xFFFFFFFF) + (s >> 32);
	s = (s & 0xFFFF) + (s >> 16);
	s = (s & 0xFFFF) + (s >> 16);
	s = (s & 0xFFFF) + (s >> 16);
	return (__u16)s;
}

/* The checksum at `off` after a 2- or 4-byte field changed from `from` to `to` (both network
 * order), or (size 0) after a change whose one's-complement difference is `to` (bpf_csum_diff):
 * RFC 1624 eq. 3, HC' = ~(~HC + ~m + m'), as the kernel's inet_proto_csum_replace*. The pseudo
 * header flag needs no special case for a complete checksum. */
static __always_inline long ctx_csum_replace(pkt_ctx_t *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	__u16 sum;
	__u64 s;

	if (bpf_xdp_load_bytes(ctx, off, &sum, sizeof(sum)))
		return -1;
	s = (__u16)~sum;
	switch (flags & BPF_F_HDR_FIELD_MASK) {
	case 0:
		s += to;
		break;
	case 2:
		s += (__u16)~from + (__u16)to;
		break;
	case 4:
		s += (__u16)~from + (__u16)(~from >> 16) + (__u16)to + (__u16)(to >> 16);
		break;
	default:
		return -1;
	}
	sum = ~ctx_csum_fold64(s);
	return bpf_xdp_store_bytes(ctx, off, &sum, sizeof(sum));
}

static __always_inline long ctx_l4_csum_replace(pkt_ctx_t *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	return ctx_csum_replace(ctx, off, from, to, flags);
}

static __always_inline long ctx_l3_csum_replace(pkt_ctx_t *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	return ctx_csum_replace(ctx, off, from, to, flags);
}

/* A complete checksum is always right here (see the top of this file). */
static __always_inline int ctx_csum_is_partial(pkt_ctx_t *ctx, __u32 csum_off) { return 0; }

/* Make the frame exactly `len` bytes long. */
static __always_inline long ctx_set_len(pkt_ctx_t *ctx, __u32 len)
{
	return bpf_xdp_adjust_tail(ctx, (int)len - (int)(ctx->data_end - ctx->data));
}

/* Send the (rewritten) frame back out the port it came in on. */
static __always_inline int ctx_bounce(pkt_ctx_t *ctx) { return XDP_TX; }

#else /* TC */

typedef struct __sk_buff pkt_ctx_t;
#define CTX_SEC SEC("tc")
#define CTX_PASS TC_ACT_OK
#define CTX_DROP TC_ACT_SHOT

static __always_inline long ctx_load_bytes(pkt_ctx_t *ctx, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes(ctx, off, to, len);
}

static __always_inline long ctx_store_bytes(pkt_ctx_t *ctx, __u32 off, const void *from, __u32 len, __u64 flags)
{
	return bpf_skb_store_bytes(ctx, off, from, len, flags);
}

static __always_inline long ctx_l4_csum_replace(pkt_ctx_t *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	return bpf_l4_csum_replace(ctx, off, from, to, flags);
}

static __always_inline long ctx_l3_csum_replace(pkt_ctx_t *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	return bpf_l3_csum_replace(ctx, off, from, to, flags);
}

/* A packet from a local stack over veth is CHECKSUM_PARTIAL: its checksum field holds the folded
 * pseudo-header sum. A non-pseudo checksum update is a no-op exactly in that mode, which tells
 * the two apart (the probe adds 0 -> 1 and is undone by the caller's store). */
static __always_inline int ctx_csum_is_partial(pkt_ctx_t *ctx, __u32 csum_off)
{
	__u16 before, after;

	if (bpf_skb_load_bytes(ctx, csum_off, &before, 2) || bpf_l4_csum_replace(ctx, csum_off, 0, 1, 2) ||
	    bpf_skb_load_bytes(ctx, csum_off, &after, 2))
		return -1;
	return after == before;
}

static __always_inline long ctx_set_len(pkt_ctx_t *ctx, __u32 len) { return bpf_skb_change_tail(ctx, len, 0); }

static __always_inline int ctx_bounce(pkt_ctx_t *ctx) { return bpf_redirect(ctx->ifindex, 0); }

#endif

/* The same fields in both contexts. */
static __always_inline void *ctx_data(pkt_ctx_t *ctx) { return (void *)(long)ctx->data; }
static __always_inline void *ctx_data_end(pkt_ctx_t *ctx) { return (void *)(long)ctx->data_end; }
static __always_inline __u32 ctx_ingress_ifindex(pkt_ctx_t *ctx) { return ctx->ingress_ifindex; }

#endif
