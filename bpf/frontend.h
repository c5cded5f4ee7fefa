/* Shared between the front-end's kernel path (frontend.bpf.c) and Python
 * (miresga.bpf.layouts mirrors every struct, miresga.frontend.kernel_path the enums; a test checks
 * them against the BTF). Addresses and ports are in network byte order, as on the wire; sequence
 * numbers in host order.
 *
 * One entry per connection the Python engine has handed to the kernel (DESIGN.md §10): the
 * engine stays the authority, the entry holds only what relaying needs. Each field has one writer
 * per direction: client-side fields are written by the client's segments, back-end-side fields
 * by the back-end's, so the two directions never race on one field. */
#ifndef MIRESGA_FRONTEND_H
#define MIRESGA_FRONTEND_H

#include <linux/types.h>

#define FE_COPY_MAX 1024 /* bytes of a response segment copied to Python (auto offload) */

/* The connection table key: the client's ip:port. */
struct fe_key {
	__u32 addr; /* be */
	__u16 port; /* be */
	__u16 _pad;
};

struct fe_conn {
	__u64 last_seen_ns;    /* bpf_ktime_get_ns() of the last relayed segment, either way */
	__u64 to_client_bytes; /* payload relayed back-end -> client since the hand-over */
	__u32 backend_ip;      /* be: the back-end's service address */
	__u16 backend_port;    /* be */
	__u8 cli_fin;          /* client side: the client's FIN was relayed */
	__u8 srv_fin;          /* back-end side: the back-end's FIN was relayed */
	__u32 cli_nxt;         /* client side: next client sequence number (only a bare FIN moves it) */
	__u32 cli_ack;         /* client side: the client's latest ack */
	__u32 srv_end;         /* back-end side: end of the highest back-end segment relayed */
	__u32 watch_next;      /* back-end side: seq of the next response byte Python wants a copy of */
	__u32 watch_segs;      /* back-end side: copies still wanted (0: none) */
	__u32 _pad;
	__u64 closing;         /* set once (atomic exchange) when both FINs were relayed */
};

/* Slot 0 of fe_config, written by the loader. */
struct fe_config {
	__u32 vip;   /* be */
	__u16 vport; /* be */
	__u16 _pad;
};

/* What the kernel tells Python through the ring buffer (fe_events). */
enum fe_event_kind {
	FE_EV_CLIENT_RST = 1,  /* client RST relayed; the entry is gone */
	FE_EV_BACKEND_RST = 2, /* back-end RST relayed; the entry is gone */
	FE_EV_CLOSING = 3,     /* both FINs relayed; the entry stays for the close linger */
	FE_EV_COPY = 4,        /* a copy of a response segment's first bytes follows the header */
};

struct fe_event {
	__u32 kind;           /* enum fe_event_kind */
	__u32 addr;           /* be: client */
	__u16 port;           /* be: client */
	__u16 copy_len;       /* FE_EV_COPY: bytes that follow */
	__u32 seq;            /* FE_EV_COPY: the segment's sequence number */
	__u32 payload_len;    /* FE_EV_COPY: the segment's whole payload length */
	__u32 cli_ack;        /* the entry's state when the event was sent */
	__u32 srv_end;
	__u32 cli_nxt;
	__u64 to_client_bytes;
};

/* Counters (per-CPU array fe_stats). Keep miresga.frontend.kernel_path.FeStat in sync. */
enum fe_stat {
	FE_STAT_TO_BACKEND = 0,       /* client segments relayed to the back-end */
	FE_STAT_TO_CLIENT = 1,        /* back-end segments relayed to the client */
	FE_STAT_TO_BACKEND_BYTES = 2, /* their payload bytes */
	FE_STAT_TO_CLIENT_BYTES = 3,
	FE_STAT_PASS_DATA = 4,        /* client payload: up to Python (every request is routed there) */
	FE_STAT_PASS_NO_ENTRY = 5,    /* no kernel entry: Python's */
	FE_STAT_PASS_OTHER = 6,       /* an entry, but a segment the kernel leaves to Python */
	FE_STAT_NOT_OURS = 7,         /* not spliced traffic (the host's own, ARP, ...) */
	FE_STAT_SYNACK_DROPPED = 8,   /* a back-end's retransmitted SYN-ACK (the engine ignores it too) */
	FE_STAT_CLIENT_RST = 9,
	FE_STAT_BACKEND_RST = 10,
	FE_STAT_CLOSING = 11,
	FE_STAT_COPIES = 12,          /* response copies sent to Python */
	FE_STAT_EVENTS_LOST = 13,     /* ring buffer full: an event Python will not see */
	FE_STAT_REWRITE_FAILED = 14,  /* a helper failed; the segment went to Python instead */
	FE_STAT_MAX = 15,
};

#endif
