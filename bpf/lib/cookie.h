/* Keyed, time-bucketed SYN cookies; the C twin of src/miresga/cookie.py (read its docstring for
 * the layout). Both must agree bit for bit: tests/bpf/test_cookie_agree.py checks that. */
#ifndef MIRESGA_COOKIE_H
#define MIRESGA_COOKIE_H

#include <linux/types.h>

#define COOKIE_WSCALE_NONE 15

#define SIP_ROTL(x, b) (__u64)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIP_ROUND(v0, v1, v2, v3) do {                                  \
	v0 += v1; v1 = SIP_ROTL(v1, 13); v1 ^= v0; v0 = SIP_ROTL(v0, 32); \
	v2 += v3; v3 = SIP_ROTL(v3, 16); v3 ^= v2;                        \
	v0 += v3; v3 = SIP_ROTL(v3, 21); v3 ^= v0;                        \
	v2 += v1; v1 = SIP_ROTL(v1, 17); v1 ^= v2; v2 = SIP_ROTL(v2, 32); \
} while (0)

static __always_inline __u64 siphash24_3w(__u64 k0, __u64 k1, __u64 m0, __u64 m1, __u64 m2)
{
	__u64 v0 = 0x736F6D6570736575ULL ^ k0;
	__u64 v1 = 0x646F72616E646F6DULL ^ k1;
	__u64 v2 = 0x6C7967656E657261ULL ^ k0;
	__u64 v3 = 0x7465646279746573ULL ^ k1;
	__u64 fin = (__u64)24 << 56;

	v3 ^= m0; SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3); v0 ^= m0;
	v3 ^= m1; SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3); v0 ^= m1;
	v3 ^= m2; SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3); v0 ^= m2;
	v3 ^= fin; SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3); v0 ^= fin;
	v2 ^= 0xFF;
	SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

/* MSS table index: largest of {536, 1220, 1440, 1460} not above the client's MSS. */
static __always_inline __u32 cookie_mss_index(__u32 mss)
{
	if (mss >= 1460) return 3;
	if (mss >= 1440) return 2;
	if (mss >= 1220) return 1;
	return 0;
}

/* The MSS of a table index (cookie.MSS_TABLE), and the option bits' other fields. */
static __always_inline __u16 cookie_mss(__u32 index)
{
	switch (index & 3) {
	case 0: return 536;
	case 1: return 1220;
	case 2: return 1440;
	}
	return 1460;
}

#define COOKIE_OPT_MSS(bits) cookie_mss((bits) >> 5)
#define COOKIE_OPT_SACK(bits) ((bits) & 0x10)
#define COOKIE_OPT_WSCALE(bits) ((bits) & 0xF)

static __always_inline __u32 cookie_option_bits(__u32 mss, int has_wscale, __u32 wscale, __u32 sack)
{
	if (!has_wscale)
		wscale = COOKIE_WSCALE_NONE;
	else if (wscale > 14)
		wscale = 14;
	return (cookie_mss_index(mss) << 5) | ((sack ? 1 : 0) << 4) | (wscale & 0xF);
}

/* All arguments in host byte order. */
static __always_inline __u32 cookie_make(__u64 k0, __u64 k1, __u32 cip, __u16 cport, __u32 vip,
					 __u16 vport, __u32 bucket, __u32 opts)
{
	__u64 m0 = ((__u64)cip << 32) | vip;
	__u64 m1 = ((__u64)cport << 48) | ((__u64)vport << 32) | bucket;
	__u32 h = (__u32)siphash24_3w(k0, k1, m0, m1, opts) & 0x7FFFFF;

	return (h << 9) | ((bucket & 3) << 7) | (opts & 0x7F);
}

/* Whether `cookie` was made with this key for this 4-tuple in bucket `now_bucket` or the one
 * before (its 2 time bits say which), as check_cookie in cookie.py. Host byte order. */
static __always_inline int cookie_check(__u64 k0, __u64 k1, __u32 cip, __u16 cport, __u32 vip, __u16 vport,
					__u32 now_bucket, __u32 cookie)
{
	__u32 bucket = now_bucket;

	if ((bucket & 3) != ((cookie >> 7) & 3)) {
		bucket = now_bucket - 1;
		if ((bucket & 3) != ((cookie >> 7) & 3))
			return 0;
	}
	return cookie_make(k0, k1, cip, cport, vip, vport, bucket, cookie & 0x7F) == cookie;
}

#endif
