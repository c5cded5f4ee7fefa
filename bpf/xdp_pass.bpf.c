/* A stub XDP program that passes every frame: the testbed puts it on the host end of a veth whose
 * switch end runs the switch in XDP mode. veth delivers frames that XDP redirects into it only
 * when its receiving end has an XDP program (that is what allocates the queues ndo_xdp_xmit
 * needs); a physical NIC of a real host needs nothing of the kind. Testbed only. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
