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
#define FE_HELD_BUF 2048  /* a request frame's buffer (a power of two: offsets are masked into it) */
#define FE_HELD_MAX 1514  /* the largest request frame the kernel routes (one Ethernet frame) */
#define FE_OPS_MAX 1024   /* steps of the compiled rule program */
#define FE_RULES_MAX 64   /* rules, the implicit default included */
#define FE_WHEEL_MAX 4096 /* selection wheel slots, all rules together */
#define FE_BACKENDS_MAX 64
#define FE_WATCH_COPIES 2 /* response segments copied for a watched request (engine.WATCH_COPIES) */
#define FE_SERVICES_MAX 16 /* VIP:port services (config.MAX_SERVICES) */

/* The connection table key: the client's ip:port and the service (VIP:port) it reached, by its
 * index (config.all_services()). One client ip:port may reach two services at once (Linux reuses
 * a source port towards other destinations): two connections. */
struct fe_key {
	__u32 addr; /* be */
	__u16 port; /* be */
	__u16 svc;
};

/* fe_services: one per service, by index. Its rules and steps are stretches of fe_rules and
 * fe_ops (rule indices global: service 0's first, as the engine's rule_list). */
struct fe_service {
	__u32 vip;        /* be */
	__u16 vport;      /* be */
	__u16 _pad;
	__u16 first_rule; /* its first rule in fe_rules */
	__u16 n_rules;    /* its rules, its default (always matching) last */
	__u16 first_op;   /* its first step in fe_ops */
	__u16 n_ops;
};

/* fe_vips: VIP:port -> service index, for the services after the first (service 0 is checked
 * without a hash lookup). */
struct fe_vip_key {
	__u32 vip;  /* be */
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
	__u8 phase;            /* enum fe_phase */
	__u8 route_ok;         /* client side: FE_ROUTE_* (may the kernel route this connection's next request) */
	__u8 has_req_ack;      /* client side: last_req_ack holds a request's ack */
	__u8 backend;          /* the back-end's index (fe_backends, cfg.hosts.backends) */
	__u64 closing;         /* set once (atomic exchange) when both FINs were relayed */
	__u32 last_req_ack;    /* client side: the latest request's ack (the same ack again: pipelined) */
	__u32 requests;        /* client side: requests routed on this connection */
	__u32 c;               /* SYN_SENT: the splice SYN's sequence number (client ISN) */
	__u32 s;               /* SYN_SENT: the switch ISN (the cookie) */
};

#define FE_ROUTE_OK 1        /* the engine's parser waits for a request: the kernel may route it */
#define FE_ROUTE_OFFLOADED 2 /* the switch entry is asked for or in place: no offload decision left */

/* Who holds a connection that has an entry. */
enum fe_phase {
	FE_PHASE_RELAY = 0,    /* spliced: the kernel relays (and may route next requests) */
	FE_PHASE_SYN_SENT = 1, /* the kernel sent the splice SYN; the request waits in fe_held */
	FE_PHASE_PYTHON = 2,   /* a marker: the engine holds it; every segment goes up */
};

/* Slot 0 of fe_config, written by the loader and on every health or limit change. */
struct fe_config {
	__u16 n_services;     /* services in fe_services (0 and 1: service 0 only) */
	__u16 flags;          /* FE_CFG_* */
	__u32 _pad;
	__u64 healthy;        /* bit b: back-end b passes its health check */
	__u32 n_ops;          /* steps in fe_ops, all services' (0: the kernel routes nothing) */
	__u32 n_rules;        /* rules in fe_rules, all services' */
	__u32 max_header;     /* a request of more payload bytes (plus one per field) goes to Python */
	__u32 bucket_seconds; /* the cookie's time bucket */
	__u64 hrw_k0;         /* the rendezvous hash's key (selection.py) */
	__u64 hrw_k1;
};

#define FE_CFG_ROUTE 1    /* route next requests of kernel-held connections */
#define FE_CFG_FIRST 2    /* take first requests (new connections): below the connection limit */
#define FE_CFG_LOG 4      /* the access log is on: copy each routed request and its response header up */
#define FE_CFG_FIN_ENDS 8 /* a watched response segment with the back-end's FIN is not copied
			   * (rules.fin_ends_watch, and the access log off) */

/* One step of the compiled rules (miresga.frontend.kernel_rules): each checks one condition of
 * one rule; a rule whose step fails is out. The first rule still in wins. */
struct fe_op {
	__u8 kind;  /* enum fe_op_kind */
	__u8 rule;
	__u8 byte;  /* the byte to compare (host bytes lower-case) */
	__u8 _pad;
	__u16 arg;  /* an offset, a length or a method mask */
	__u16 _pad2;
};

enum fe_op_kind {
	FE_OP_METHOD = 1,      /* the request's method bit is in arg */
	FE_OP_HOST_LEN_EQ = 2, /* a Host, arg bytes long */
	FE_OP_HOST_LEN_GE = 3, /* a Host, at least arg bytes long */
	FE_OP_HOST_BYTE = 4,   /* host[arg] == byte */
	FE_OP_HOST_TAIL = 5,   /* host[len - arg] == byte */
	FE_OP_PATH_LEN_EQ = 6,
	FE_OP_PATH_LEN_GE = 7,
	FE_OP_PATH_BYTE = 8,   /* path[arg] == byte */
};

#define FE_M_GET 1
#define FE_M_HEAD 2

struct fe_rule {
	__u64 pool;           /* bit b: back-end b is in the rule's pool */
	__u16 wheel_off;      /* the rule's selection wheel in fe_wheel */
	__u16 wheel_len;      /* its healthy slots (0: nobody to pick in the kernel) */
	__u8 flags;           /* FE_RULE_* */
	__u8 _pad;
	__u16 after_requests; /* auto offload from this many requests on a connection (0: not by count) */
};

#define FE_RULE_KERNEL 1  /* all its conditions compiled, and an offload the kernel can follow */
#define FE_RULE_STICKY 2  /* a keep-alive connection may keep its back-end (not a hash policy) */
#define FE_RULE_WHEEL 4   /* round robin or weighted: the kernel picks from the wheel */
#define FE_RULE_WATCH 8   /* offload auto: watch the response header */
#define FE_RULE_LEASTCONN 16 /* least connections over the wheel (the healthy pool), ties in turn */
#define FE_RULE_HASH 32   /* rendezvous hash of the client address over the wheel (equal weights) */

struct fe_backend {
	__u32 ip;      /* be */
	__u16 port;    /* be */
	__u16 _pad;
	__u64 name_id; /* its id in the rendezvous hash (selection.name_id) */
};

/* fe_counts (one mmapable array, u64 slots): connections per back-end, for least connections.
 * The engine writes its count and how many kernel-opened connections it has heard of; the
 * kernel counts those it opened: the kernel's view is ENGINE + OPENED - HEARD. */
#define FE_COUNT_ENGINE 0
#define FE_COUNT_OPENED FE_BACKENDS_MAX
#define FE_COUNT_HEARD (2 * FE_BACKENDS_MAX)

struct fe_cookie_key {
	__u64 k0;
	__u64 k1;
};

/* A request the kernel turned into a splice SYN: its whole frame, released on the SYN-ACK. */
struct fe_held {
	__u32 len;
	__u32 _pad;
	__u8 frame[FE_HELD_BUF];
};

/* What the kernel tells Python through the ring buffer (fe_events). */
enum fe_event_kind {
	FE_EV_CLIENT_RST = 1,  /* client RST relayed; the entry is gone */
	FE_EV_BACKEND_RST = 2, /* back-end RST relayed; the entry is gone */
	FE_EV_CLOSING = 3,     /* both FINs relayed; the entry stays for the close linger */
	FE_EV_COPY = 4,        /* a copy of a response segment's first bytes follows the header */
	FE_EV_REQUEST = 5,     /* the kernel routed a request (FE_REQ_FIRST: and opened the splice);
				* with FE_CFG_LOG a copy of the request follows, as for FE_EV_COPY */
};

#define FE_REQ_FIRST 1     /* the connection's first request: the kernel sent the splice SYN */
#define FE_REQ_CLOSE 2     /* the request ends the connection (Connection: close, or HTTP/1.0) */
#define FE_REQ_HTTP10 4
#define FE_REQ_KEEP 8      /* it said Connection: keep-alive */

struct fe_event {
	__u16 kind;           /* enum fe_event_kind */
	__u16 svc;            /* the connection's service (fe_key.svc) */
	__u32 addr;           /* be: client */
	__u16 port;           /* be: client */
	__u16 copy_len;       /* FE_EV_COPY: bytes that follow */
	__u32 seq;            /* FE_EV_COPY: the segment's sequence number */
	__u32 payload_len;    /* FE_EV_COPY: the segment's whole payload length */
	__u32 cli_ack;        /* the entry's state when the event was sent */
	__u32 srv_end;
	__u32 cli_nxt;
	__u64 to_client_bytes;
	__u16 rule;           /* FE_EV_REQUEST: the rule (global index) and back-end */
	__u16 backend;
	__u32 req_flags;      /* FE_EV_REQUEST: FE_REQ_*, the cookie's option bits << 8 */
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
	FE_STAT_REQ_FIRST = 15,       /* first requests routed in the kernel (splice SYN sent) */
	FE_STAT_REQ_NEXT = 16,        /* keep-alive requests routed in the kernel */
	FE_STAT_REQ_PUNTED = 17,      /* requests the kernel left to Python (it could not judge them) */
	FE_STAT_RELEASED = 18,        /* held requests released on the back-end's SYN-ACK */
	FE_STAT_PASS_PYTHON = 19,     /* segments of connections the engine holds (marker entries) */
	FE_STAT_DROP_NO_ENTRY = 20,   /* a client ACK, RST or SYN of no connection: dropped (the engine ignores them) */
	FE_STAT_PORT_SHARED = 21,     /* a first request punted: the client ip:port has another service's connection */
	FE_STAT_MAX = 22,
};

#endif
