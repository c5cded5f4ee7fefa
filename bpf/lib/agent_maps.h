/* The back-end agent's maps, BTF-style. The flow table's size is a default: the manager sets it
 * from cfg.agent.capacity (BpfObject(max_entries=...)). */
#ifndef MIRESGA_AGENT_MAPS_H
#define MIRESGA_AGENT_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "drop_reasons.h"
#include "agent.h"

#ifndef AGENT_FLOWS_MAX
#define AGENT_FLOWS_MAX 65536
#endif

/* Client ip:port -> switch ISN, diff, window scales, close state. A plain hash, not LRU: a full
 * table must refuse (and count) a new splice, never evict a live flow. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENT_FLOWS_MAX);
	__type(key, struct agent_flow_key);
	__type(value, struct agent_flow);
} agent_flows SEC(".maps");

/* Slot 0: service ports and the promised window scale. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct agent_config);
} agent_config SEC(".maps");

/* enum agent_stat -> count. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AGENT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} agent_stats SEC(".maps");

/* -drop_reason -> count of packets the agent dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASON_MAX + 1);
	__type(key, __u32);
	__type(value, __u64);
} agent_drops SEC(".maps");

static __always_inline void agent_count(__u32 stat)
{
	__u64 *c = bpf_map_lookup_elem(&agent_stats, &stat);

	if (c)
		*c += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline void agent_count_n(__u32 stat, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&agent_stats, &stat);

	if (c)
		*c += n;
}

#endif
