/* Per-interface packet and byte counters for the testbed: the smallest real program that proves
 * the toolchain (build, load, attach in a namespace, read maps, BPF_PROG_TEST_RUN). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "counters.h"

#ifndef COUNTERS_MAX_IFACES
#define COUNTERS_MAX_IFACES 256
#endif

/* (ifindex << 1 | direction) -> counters; direction 0 = ingress, 1 = egress. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, COUNTERS_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct if_counters);
} if_counters SEC(".maps");

static __always_inline int count(struct __sk_buff *skb, __u32 dir)
{
	__u32 key = (skb->ifindex << 1) | dir;
	struct if_counters *c = bpf_map_lookup_elem(&if_counters, &key);

	if (!c) {
		struct if_counters zero = {};
		bpf_map_update_elem(&if_counters, &key, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&if_counters, &key);
		if (!c)
			return TC_ACT_UNSPEC;
	}
	__sync_fetch_and_add(&c->packets, 1);
	__sync_fetch_and_add(&c->bytes, skb->len);
	return TC_ACT_UNSPEC; /* not a verdict: the next program on this hook decides */
}

SEC("tc")
int count_ingress(struct __sk_buff *skb) { return count(skb, 0); }

SEC("tc")
int count_egress(struct __sk_buff *skb) { return count(skb, 1); }

char LICENSE[] SEC("license") = "Dual BSD/GPL";
