"""Per-host packet and byte counters (bpf/counters.bpf.c) on the testbed hosts' interfaces.

The maps are pinned so that another process (`miresga testbed status`) can read them; the pins
go with the testbed instance's pin directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from miresga.bpf.layouts import IfCounters
from miresga.bpf.libbpf import BpfError, BpfObject, Map, TcAttachment, ensure_bpffs, object_path
from miresga.bpf.netns import ifindex

# Runs first on the interface and passes the packet on (TC_ACT_UNSPEC), so other programs
# (the agent on back-ends) still see every packet.
COUNTERS_PRIORITY = 1


class CountersAttachment:
    def __init__(self, netns: str | None, iface: str, pin_dir: Path):
        ensure_bpffs()
        self.pin_dir = pin_dir
        self.obj = BpfObject(object_path("counters"))
        self.attachments: list[TcAttachment] = []
        try:
            idx = ifindex(netns, iface)
            for direction in ("ingress", "egress"):
                prog = self.obj.program(f"count_{direction}")
                self.attachments.append(TcAttachment(netns, idx, direction, prog, priority=COUNTERS_PRIORITY))
            self.obj.map("if_counters").pin(pin_dir / "if_counters")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for a in self.attachments:
            a.detach()
        self.attachments.clear()
        self.obj.close()
        shutil.rmtree(self.pin_dir, ignore_errors=True)


def attach_counters(netns: str | None, iface: str, pin_dir: Path) -> CountersAttachment:
    return CountersAttachment(netns, iface, pin_dir)


def read_counters(pin_dir: Path) -> dict[str, dict[str, int]] | None:
    """{"ingress": {"packets", "bytes"}, "egress": {...}} summed over interfaces; None if not pinned."""
    try:
        m = Map.from_pin(pin_dir / "if_counters")
    except BpfError:
        return None
    out = {"ingress": {"packets": 0, "bytes": 0}, "egress": {"packets": 0, "bytes": 0}}
    try:
        for k, v in m.items():
            c = IfCounters.from_buffer_copy(v)
            d = out["egress" if int.from_bytes(k, "little") & 1 else "ingress"]
            d["packets"] += c.packets
            d["bytes"] += c.bytes
    finally:
        m.close()
    return out
