/* Link impairment for tests (this kernel has no netem): on a TC egress hook, drop a random share
 * of IPv4 TCP frames and mark another random share for a slow HTB class (skb->priority), so those
 * leave after frames sent later: loss and reordering. Works on frames redirected by the eBPF switch,
 * which skip the nftables egress hook. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct impair_config {
	__u32 loss_per_million;
	__u32 reorder_per_million;
	__u32 slow_classid;   /* HTB class for delayed frames, e.g. 0x10020 for 1:20 */
	__u32 pad;
};

/* [0] config; counters in impair_counts: 0 = seen, 1 = dropped, 2 = delayed */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct impair_config);
} impair_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} impair_counts SEC(".maps");

static __always_inline void bump(__u32 i)
{
	__u64 *c = bpf_map_lookup_elem(&impair_counts, &i);

	if (c)
		__sync_fetch_and_add(c, 1);
}

SEC("tc")
int impair_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct impair_config *cfg = bpf_map_lookup_elem(&impair_config, &zero);

	if (!cfg || skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	bump(0);
	if (bpf_get_prandom_u32() % 1000000 < cfg->loss_per_million) {
		bump(1);
		return TC_ACT_SHOT;
	}
	if (bpf_get_prandom_u32() % 1000000 < cfg->reorder_per_million) {
		skb->priority = cfg->slow_classid;
		bump(2);
	}
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
