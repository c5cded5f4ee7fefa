/* Shared between the back-end agent (agent.bpf.c) and Python (miresga.bpf.layouts mirrors every
 * struct; miresga.agent.manager.AgentStat mirrors the counter enum; tests check both against this
 * file/BTF).
 * Addresses and ports in keys and config are in network byte order, as on the wire; sequence
 * numbers and offsets in flow state are in host order. */
#ifndef MIRESGA_AGENT_H
#define MIRESGA_AGENT_H

#include <linux/types.h>

#define AGENT_MAX_SERVICE_PORTS 4
#define AGENT_WSCALE_NONE 0xFF /* the SYN-ACK carried no window-scale option: no scaling at all */

/* agent_flow.state */
#define AGENT_FLOW_SYN 1         /* splice SYN seen, waiting for the back-end's SYN-ACK */
#define AGENT_FLOW_ESTABLISHED 2 /* diff known: translating both ways */

/* The flow table key: the client's (remote) ip:port as seen by the back-end. */
struct agent_flow_key {
	__u32 addr; /* be */
	__u16 port; /* be */
	__u16 _pad;
};

/* Per-flow state. Each close-tracking byte is written by one direction only (ingress: fin_in,
 * fin_out_acked; egress: fin_out, fin_in_acked), so the two programs never race on one field. */
struct agent_flow {
	__u64 last_seen_ns;  /* bpf_ktime_get_ns() of the last packet either way */
	__u32 switch_isn;    /* s: the ISN the switch gave the client */
	__u32 diff;          /* b - s (mod 2^32), valid in AGENT_FLOW_ESTABLISHED */
	__u32 fin_in_end;    /* client FIN's seq + 1 (client space) */
	__u32 fin_out_end;   /* back-end FIN's seq + 1 (back-end space) */
	__u8 state;          /* AGENT_FLOW_* */
	__u8 backend_wscale; /* from the SYN-ACK, or AGENT_WSCALE_NONE */
	__u8 promised_wscale;/* the switch's window scale (config) at SYN-ACK time */
	__u8 fin_in;         /* client FIN seen (ingress) */
	__u8 fin_out;        /* back-end FIN seen (egress) */
	__u8 fin_in_acked;   /* back-end acknowledged the client's FIN (egress) */
	__u8 fin_out_acked;  /* client acknowledged the back-end's FIN (ingress) */
	__u8 _pad;
};

/* Slot 0 of agent_config, written by the manager. */
struct agent_config {
	__u16 service_ports[AGENT_MAX_SERVICE_PORTS]; /* be; 0 = unused slot */
	__u8 window_scale;                            /* what the switch promises clients */
	__u8 _pad[7];
};

/* Counters (per-CPU array agent_stats). Keep miresga.agent.manager.AgentStat in sync. */
enum agent_stat {
	AGENT_STAT_SPLICE_SYN = 0,    /* splice SYN: new flow stored */
	AGENT_STAT_RESPLICE = 1,      /* splice SYN replaced an existing flow (re-route) */
	AGENT_STAT_SYN_RETRANS = 2,   /* splice SYN with the flow's own switch ISN again */
	AGENT_STAT_SYNACK = 3,        /* back-end SYN-ACK: diff stored */
	AGENT_STAT_XLATE_IN = 4,      /* ingress segments translated */
	AGENT_STAT_XLATE_OUT = 5,     /* egress segments translated */
	AGENT_STAT_SACK_BLOCKS = 6,   /* SACK blocks translated */
	AGENT_STAT_WINDOW_RESCALED = 7, /* egress window fields rescaled */
	AGENT_STAT_REMOVED_RST = 8,   /* flows removed after a RST */
	AGENT_STAT_REMOVED_FIN = 9,   /* flows removed after both FINs were acknowledged */
	AGENT_STAT_REMOVED_PLAIN_SYN = 10, /* flows removed by a plain SYN from the same ip:port */
	AGENT_STAT_INSERT_REFUSED = 11, /* splice SYN refused: table full */
	AGENT_STAT_BAD_OPTIONS = 12,  /* options malformed: walked as far as the kernel would */
	AGENT_STAT_UNKNOWN = 13,      /* service-port segments of unknown flows (passed untouched) */
	AGENT_STAT_UNPARSED = 14,     /* broken Ethernet/IPv4/TCP headers (passed untouched) */
	AGENT_STAT_MAX = 15,
};

#endif
