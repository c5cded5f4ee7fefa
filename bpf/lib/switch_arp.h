/* ARP responder of the switch: requests for a listed target (the VIP, the ports' gateway
 * addresses) are answered in place and sent back out the ingress port; anything else ARP is left
 * to the kernel. */
#ifndef MIRESGA_SWITCH_ARP_H
#define MIRESGA_SWITCH_ARP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "switch_maps.h"

#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

/* 1: the packet is now the reply; 0: not ours (pass to the kernel). */
static __always_inline int arp_answer(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *a = (void *)(eth + 1);
	struct arp_entry *e;
	__u32 target;

	if ((void *)(a + 1) > data_end)
		return 0;
	if (a->htype != bpf_htons(ARPHRD_ETHER) || a->ptype != bpf_htons(ETH_P_IP) ||
	    a->hlen != ETH_ALEN || a->plen != 4 || a->op != bpf_htons(ARPOP_REQUEST))
		return 0;
	target = a->tpa;
	e = bpf_map_lookup_elem(&sw_arp, &target);
	if (!e)
		return 0;
	a->op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(a->tha, a->sha, ETH_ALEN);
	a->tpa = a->spa;
	__builtin_memcpy(a->sha, e->mac, ETH_ALEN);
	a->spa = target;
	__builtin_memcpy(eth->h_dest, a->tha, ETH_ALEN);
	__builtin_memcpy(eth->h_source, e->mac, ETH_ALEN);
	return 1;
}

#endif
