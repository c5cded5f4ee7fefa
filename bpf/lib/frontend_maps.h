/* The front-end kernel path's maps, BTF-style. Sizes are defaults: the loader sets the table's
 * from cfg.frontend.max_connections. */
#ifndef MIRESGA_FRONTEND_MAPS_H
#define MIRESGA_FRONTEND_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "frontend.h"

#ifndef FE_CONNS_MAX
#define FE_CONNS_MAX 262144
#endif
#ifndef FE_EVENTS_BYTES
#define FE_EVENTS_BYTES (1 << 24)
#endif

/* Client ip:port and service -> relay state of a connection the engine handed over. A plain
 * hash: a full table refuses the hand-over and the connection stays with Python. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FE_CONNS_MAX);
	__type(key, struct fe_key);
	__type(value, struct fe_conn);
} fe_conns SEC(".maps");

/* Slot 0: limits, health, routing flags. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fe_config);
} fe_config SEC(".maps");

/* Service index -> its VIP:port and its stretch of the rules. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FE_SERVICES_MAX);
	__type(key, __u32);
	__type(value, struct fe_service);
} fe_services SEC(".maps");

/* VIP:port -> service index (looked up only when there are several services). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FE_SERVICES_MAX);
	__type(key, struct fe_vip_key);
	__type(value, __u32);
} fe_vips SEC(".maps");

/* The compiled rules (miresga.frontend.kernel_rules), rewritten whole by Python on a change. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FE_OPS_MAX);
	__type(key, __u32);
	__type(value, struct fe_op);
} fe_ops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FE_RULES_MAX);
	__type(key, __u32);
	__type(value, struct fe_rule);
} fe_rules SEC(".maps");

/* Selection wheels (back-end indices), one stretch per rule. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FE_WHEEL_MAX);
	__type(key, __u32);
	__type(value, __u32);
} fe_wheel SEC(".maps");

/* Per rule: the wheel position, shared with Python's selector. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FE_RULES_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fe_rr SEC(".maps");

/* Back-end index -> service address. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FE_BACKENDS_MAX);
	__type(key, __u32);
	__type(value, struct fe_backend);
} fe_backends SEC(".maps");

/* Connections per back-end (FE_COUNT_*), shared with Python through mmap. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3 * FE_BACKENDS_MAX);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} fe_counts SEC(".maps");

/* The cookie keys a first request is checked with: slot 0 current, slot 1 previous generation
 * (written by Python when the generation turns). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct fe_cookie_key);
} fe_keys SEC(".maps");

#ifndef FE_HELD_ENTRIES
#define FE_HELD_ENTRIES 65536
#endif

/* Client ip:port and service -> the request frame waiting for the back-end's SYN-ACK. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FE_HELD_ENTRIES);
	__type(key, struct fe_key);
	__type(value, struct fe_held);
} fe_held SEC(".maps");

/* A per-CPU frame buffer: the request is read into it, parsed there, and copied to fe_held. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fe_held);
} fe_scratch SEC(".maps");

/* Ends, closings and response copies for Python. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FE_EVENTS_BYTES);
} fe_events SEC(".maps");

/* enum fe_stat -> count. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fe_stats SEC(".maps");

static __always_inline void fe_count_n(__u32 stat, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&fe_stats, &stat);

	if (c)
		*c += n; /* per-CPU slot: no atomics needed */
}

static __always_inline void fe_count(__u32 stat)
{
	fe_count_n(stat, 1);
}

#endif
