"""What a veth testbed needs when the switch (or an agent) runs in XDP mode; real hosts need none
of it (docs/deploy.md).

- veth delivers a frame that XDP redirects into it only when its receiving end (the host's eth0)
  has an XDP program: `bpf/xdp_pass.bpf.c` goes there, except on a back-end whose agent brings
  its own XDP program.
- A local stack sends over veth with the TCP checksum left to the "hardware" (CHECKSUM_PARTIAL);
  XDP cannot see that state, and XDP_TX/REDIRECT drop it, so such a frame would leave the switch
  with a half checksum. Real NICs hand XDP complete checksums; on the testbed the hosts turn off
  transmit checksum offload on eth0 toward an XDP switch port.
"""

from __future__ import annotations

from miresga.bpf import netns as nsx
from miresga.bpf.libbpf import BpfObject, XdpAttachment, object_path


def prepare_host_end(ns: str, iface: str, stub: bool) -> None:
    """Host end of a veth whose switch end runs XDP: checksums complete, and (`stub`) the XDP
    pass program. Netlink-attached XDP outlives this process; the namespace's removal ends it."""
    nsx.run(ns, "ethtool", "-K", iface, "tx", "off")
    if stub:
        with BpfObject(object_path("xdp_pass")) as obj:
            XdpAttachment(ns, nsx.ifindex(ns, iface), obj.program("xdp_pass"))
