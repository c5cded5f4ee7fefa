"""Loss and reordering on a testbed link, without netem (this kernel has no sch_netem).

`bpf/impair.bpf.c` sits on the TC egress of one interface: it drops a random share of frames and
marks another share for a slow HTB class, so those leave after frames sent later. TC (not
nftables) because frames that the eBPF switch redirects skip the nftables egress hook.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

from miresga.bpf.libbpf import BpfObject, TcAttachment, object_path
from miresga.bpf.netns import ifindex, run

SLOW_CLASS = 0x10020  # HTB 1:20


@dataclass
class Impairment:
    netns: str
    dev: str
    loss_percent: float = 1.0
    reorder_percent: float = 5.0
    slow_rate: str = "300mbit"   # the late class; everything else goes at line rate
    _obj: BpfObject | None = field(default=None, repr=False)
    _att: TcAttachment | None = field(default=None, repr=False)

    def __enter__(self) -> "Impairment":
        ns, dev = self.netns, self.dev
        run(ns, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
        try:
            run(ns, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "100gbit")
            run(ns, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", self.slow_rate)
            run(ns, "tc", "qdisc", "add", "dev", dev, "parent", "1:20", "pfifo", "limit", "1000")
            self._obj = BpfObject(object_path("impair"))
            self._obj.map("impair_config").update(
                ctypes.c_uint32(0), struct.pack("<IIII", int(self.loss_percent * 10000),
                                                int(self.reorder_percent * 10000), SLOW_CLASS, 0))
            self._att = TcAttachment(ns, ifindex(ns, dev), "egress", self._obj.program("impair_egress"), priority=2)
        except BaseException:
            self.close()
            raise
        return self

    def counts(self) -> dict[str, int]:
        """{"seen", "dropped", "delayed"} frames so far."""
        m = self._obj.map("impair_counts")
        vals = [struct.unpack("<Q", m.lookup(ctypes.c_uint32(i)))[0] for i in range(3)]
        return dict(zip(("seen", "dropped", "delayed"), vals))

    def close(self) -> None:
        if self._att:
            self._att.detach()
            self._att = None
        if self._obj:
            self._obj.close()
            self._obj = None
        run(self.netns, "tc", "qdisc", "del", "dev", self.dev, "root", check=False)

    def __exit__(self, *exc) -> None:
        self.close()
