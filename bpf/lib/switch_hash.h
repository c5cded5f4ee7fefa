/* hash8(client ip, client port): which of the 256 buckets (front-ends) a connection belongs to.
 * Twin: miresga.switch.hashing.hash8 (tests/bpf/test_switch_hash.py checks they agree). The hash
 * is always taken over the client's side, so both directions of a connection meet one front-end. */
#ifndef MIRESGA_SWITCH_HASH_H
#define MIRESGA_SWITCH_HASH_H

#include <linux/types.h>

/* ip, port in host byte order. murmur3's 32-bit finaliser over ip ^ port*golden. */
static __always_inline __u32 hash8(__u32 ip, __u16 port)
{
	__u32 x = ip ^ ((__u32)port * 0x9E3779B1u);

	x ^= x >> 16;
	x *= 0x85EBCA6Bu;
	x ^= x >> 13;
	x *= 0xC2B2AE35u;
	x ^= x >> 16;
	return x & 0xFF;
}

#endif
