/* The switch's tables (DESIGN.md §4), BTF-style; sizes are the reference Tofino program's and a
 * build (or the loader, through max_entries) may override them. The controller owns every table;
 * the data plane only reads them, except for the offload entries' last-hit time and the counters. */
#ifndef MIRESGA_SWITCH_MAPS_H
#define MIRESGA_SWITCH_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "drop_reasons.h"
#include "switch.h"

#ifndef SW_ARP_MAX
#define SW_ARP_MAX 1024
#endif
#ifndef SW_BACKEND_SRC_MAX
#define SW_BACKEND_SRC_MAX 256
#endif
#ifndef SW_OFFLOAD_MAX
#define SW_OFFLOAD_MAX 143360
#endif
#ifndef SW_ROUTES_MAX
#define SW_ROUTES_MAX 1024
#endif
#ifndef SW_GUARDED_PORTS_MAX
#define SW_GUARDED_PORTS_MAX 64
#endif
#ifndef SW_CTL_PEERS_MAX
#define SW_CTL_PEERS_MAX 256
#endif
#define SW_BUCKETS 256
#define SW_BACKENDS 256
#define SW_CNT_MAX (SW_CNT_DECISIONS + DROP_REASON_MAX)

/* Slot 0: cookie key slot, SYN-ACK options, number of services. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_config);
} sw_config SEC(".maps");

/* Cookie keys: slot sw_config.key_slot signs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct sw_key);
} sw_keys SEC(".maps");

/* VIP:port (flow_key with svc 0) -> service index: marks "to a VIP" (a client of that service). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_SERVICES_MAX);
	__type(key, struct flow_key);
	__type(value, __u32);
} sw_vips SEC(".maps");

/* VIP address (be) -> 1: every address some service listens on (other traffic to it is dropped). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_SERVICES_MAX);
	__type(key, __u32);
	__type(value, __u8);
} sw_vip_addrs SEC(".maps");

/* Service index -> its VIP:port (the source of offloaded back-end segments). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_SERVICES_MAX);
	__type(key, __u32);
	__type(value, struct sw_service);
} sw_services SEC(".maps");

/* ARP target ip (be) -> MAC to answer with. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_ARP_MAX);
	__type(key, __u32);
	__type(value, struct arp_entry);
} sw_arp SEC(".maps");

/* Back-end service ip:port -> back-end index: marks "from backend". */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_BACKEND_SRC_MAX);
	__type(key, struct flow_key);
	__type(value, __u32);
} sw_backend_src SEC(".maps");

/* Client ip:port, service -> back-end index of an offloaded connection. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_OFFLOAD_MAX);
	__type(key, struct flow_key);
	__type(value, struct offload_entry);
} sw_offload SEC(".maps");

/* hash8(client ip, client port) -> front-end hop. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_BUCKETS);
	__type(key, __u32);
	__type(value, struct hop);
} sw_buckets SEC(".maps");

/* Back-end index -> service ip:port and hop. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_entry);
} sw_backends SEC(".maps");

/* Destination prefix -> hop (HOP_LOCAL: the switch's own addresses). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SW_ROUTES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route_key);
	__type(value, struct hop);
} sw_routes SEC(".maps");

/* TCP port (be) of the switch's own addresses that only front-ends may reach (the control API) -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_GUARDED_PORTS_MAX);
	__type(key, __u16);
	__type(value, __u8);
} sw_guarded_ports SEC(".maps");

/* Front-end address (be) -> the switch port (ifindex) its packets to a guarded port must arrive on. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_CTL_PEERS_MAX);
	__type(key, __u32);
	__type(value, __u32);
} sw_ctl_peers SEC(".maps");

/* enum sw_counter -> packets (decisions, then drop reasons). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sw_counters SEC(".maps");

/* Slot 0: ifindex of the last redirect, written only with SW_F_TRACE (packet tests). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sw_trace SEC(".maps");

static __always_inline void sw_count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&sw_counters, &idx);

	if (c)
		__sync_fetch_and_add(c, 1);
}

#endif
