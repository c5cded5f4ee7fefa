/* Shared between counters.bpf.c and Python (miresga.bpf.layouts.IfCounters). */
#ifndef MIRESGA_COUNTERS_H
#define MIRESGA_COUNTERS_H
#include <linux/types.h>

struct if_counters {
	__u64 packets;
	__u64 bytes;
};

#endif
