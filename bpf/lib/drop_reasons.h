/* Why a packet was dropped: negative values, one list for the whole data plane (cilium style).
 * Mirrored by miresga.bpf.drop_reasons.DropReason; a test checks that the two agree. */
#ifndef MIRESGA_DROP_REASONS_H
#define MIRESGA_DROP_REASONS_H

enum drop_reason {
	DROP_TRUNCATED_ETH = -1,
	DROP_TRUNCATED_IP = -2,
	DROP_BAD_IHL = -3,
	DROP_BAD_IP_LEN = -4,
	DROP_FRAGMENT = -5,
	DROP_TRUNCATED_TCP = -6,
	DROP_BAD_DOFF = -7,
	DROP_BAD_TCP_OPTIONS = -8,
	DROP_NOT_TCP_TO_VIP = -9,
	DROP_NO_ROUTE = -10,
	DROP_NO_FRONTEND = -11,
	DROP_NO_BACKEND = -12,
	DROP_REWRITE_FAILED = -13,
	DROP_TABLE_FULL = -14,
	DROP_AGENT_TABLE_FULL = -15,   /* agent: splice SYN refused, flow table full (the front-end retries) */
	DROP_AGENT_NOT_SPLICED = -16,  /* agent: segment before the back-end's SYN-ACK: its ack has no diff yet */
	DROP_SPOOFED_BACKEND = -17,    /* switch: a back-end's service source arriving on another back-end's or a client's port */
	DROP_SPOOFED_CLIENT = -18,     /* switch: to the VIP from a source whose route leads to another port */
	DROP_GUARDED_PORT = -19,       /* switch: to a guarded port (control API) of a switch-owned address, not from a front-end on its own port */
	/* Add new reasons above and keep DROP_REASON_MAX = number of reasons. */
	DROP_REASON_MAX = 19,
};

#endif
