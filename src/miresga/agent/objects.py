"""The agent's BPF objects for one ingress mode: TC (bpf/agent.bpf.c as is) or XDP.

XDP has no egress hook, so an XDP agent is two objects built from the same source: the TC object
(its egress program and all maps) and the XDP build (build/bpf/agent_xdp.bpf.o, only the ingress
program) loaded on the TC object's maps, so both directions share one flow table.
"""

from __future__ import annotations

from miresga.bpf.libbpf import BpfObject, Map, Program, object_path

MAPS = ("agent_flows", "agent_config", "agent_stats", "agent_drops")


class AgentObjects:
    """`program("agent_ingress")` is the XDP one when `xdp`; everything else is the TC object's."""

    def __init__(self, xdp: bool, capacity: int, reuse: dict[str, Map] | None = None):
        self.xdp = xdp
        self.tc = BpfObject(object_path("agent"), max_entries={"agent_flows": capacity}, reuse=reuse)
        self.xdp_obj: BpfObject | None = None
        if xdp:
            try:
                self.xdp_obj = BpfObject(object_path("agent_xdp"), max_entries={"agent_flows": capacity},
                                         reuse={n: self.tc.map(n) for n in MAPS})
            except BaseException:
                self.tc.close()
                raise

    def program(self, name: str) -> Program:
        if self.xdp_obj is not None and name == "agent_ingress":
            return self.xdp_obj.program(name)
        return self.tc.program(name)

    def map(self, name: str) -> Map:
        return self.tc.map(name)

    def close(self) -> None:
        if self.xdp_obj is not None:
            self.xdp_obj.close()
            self.xdp_obj = None
        self.tc.close()

    def __enter__(self) -> "AgentObjects":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
