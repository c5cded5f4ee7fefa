/* Structs and constants shared between the switch data plane (switch.bpf.c) and Python
 * (miresga.bpf.layouts mirrors every struct; miresga.switch.maps.Counter mirrors the counter enum).
 * Addresses and ports in keys and table values are in network byte order, as on the wire. */
#ifndef MIRESGA_SWITCH_H
#define MIRESGA_SWITCH_H

#include <linux/types.h>

/* sw_config.flags */
#define SW_F_TRACE 1 /* record the last redirect target in sw_trace (tests) */

/* hop.flags (routes) */
#define HOP_VALID 1    /* bucket/backend slot in use */
#define HOP_LOCAL 2    /* destination is the switch itself: hand to the kernel */
#define HOP_INTERNAL 4 /* destination inside the fabric (front-ends, back-ends, peers): never "to client" */

/* VIP:port services (config.MAX_SERVICES); a service's index `svc` is its position in
 * Deployment.all_services(), 0 = the top-level vip. */
#define SW_SERVICES_MAX 16

/* The one configuration slot, written by the controller. */
struct sw_config {
	__u32 key_slot;       /* which sw_keys slot signs (the controller fills the other, then flips) */
	__u32 n_services;     /* sw_services slots in use: 0 .. n_services-1 */
	__u16 mss;            /* MSS announced in the SYN-ACK */
	__u16 syn_window;     /* window field of the SYN-ACK */
	__u8 wscale;          /* window scale announced (if the client offered one) */
	__u8 sack;            /* announce SACK-permitted (if the client offered it) */
	__u16 _pad;
	__u32 bucket_seconds; /* cookie time bucket length */
	__u32 flags;          /* SW_F_* */
};

/* A SipHash key of the cookie (two slots: a rotation never tears the key being read). */
struct sw_key {
	__u64 k0;
	__u64 k1;
};

/* One VIP:port service (sw_services[svc]): what a back-end segment of an offloaded connection of
 * that service is rewritten to come from. */
struct sw_service {
	__u32 vip;   /* be */
	__u16 vport; /* be */
	__u16 _pad;
};

/* Client ip:port and service (offload table: one client ip:port may hold a connection to each
 * service at once), a VIP:port (sw_vips, svc 0) or a back-end service ip:port (sw_backend_src,
 * svc 0). */
struct flow_key {
	__u32 ip;   /* be */
	__u16 port; /* be */
	__u16 svc;  /* service index (offload keys); 0 in the other tables */
};

struct offload_entry {
	__u32 backend;     /* index into the backend table */
	__u32 _pad;
	__u64 last_hit_ns; /* bpf_ktime_get_ns() of the last packet that used the entry */
};

/* Where a packet leaves: egress port and the Ethernet addresses to write. */
struct hop {
	__u32 ifindex;
	__u8 smac[6]; /* switch port MAC */
	__u8 dmac[6]; /* host MAC behind that port */
	__u32 flags;  /* HOP_* */
};

struct backend_entry {
	__u32 ip;   /* be */
	__u16 port; /* be, service port */
	__u16 _pad;
	struct hop hop;
};

struct route_key {
	__u32 prefixlen;
	__u32 ip; /* be */
};

struct arp_entry {
	__u8 mac[6];
	__u16 _pad;
};

/* Counters: decisions first, then one slot per drop reason (index SW_CNT_DROP(reason)). */
enum sw_counter {
	SW_CNT_ARP_REPLY = 0,
	SW_CNT_SYNACK = 1,
	SW_CNT_TO_FRONTEND = 2,
	SW_CNT_TO_BACKEND = 3,  /* client ACK rewritten to the back-end (offloaded) */
	SW_CNT_TO_CLIENT = 4,   /* back-end segment rewritten to VIP:port (offloaded) */
	SW_CNT_ROUTED = 5,
	SW_CNT_TO_KERNEL = 6,   /* for the switch itself, or not IPv4 */
	SW_CNT_OFFLOAD_MISMATCH = 7, /* back-end segment whose client ip:port has entries, all naming other back-ends */
	SW_CNT_HANDSHAKE_ACK = 8, /* client's final handshake ACK (valid cookie): absorbed here */
	SW_CNT_DECISIONS = 9,
};
#define SW_CNT_DROP(reason) (SW_CNT_DECISIONS - 1 - (reason)) /* reason < 0 */

#endif
