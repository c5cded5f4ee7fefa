"""Python mirrors of the structs that BPF programs and user space share.

Each mirror names the C header it follows; tests/bpf/test_layouts.py checks sizes and field
offsets against the BTF of the built objects, so a drift breaks the build rather than the data.
"""

from __future__ import annotations

import ctypes


class IfCounters(ctypes.Structure):
    """bpf/counters.h: struct if_counters."""

    _c_name = "if_counters"
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class AgentFlowKey(ctypes.Structure):
    """bpf/agent.h: struct agent_flow_key (client ip:port, network byte order)."""

    _c_name = "agent_flow_key"
    _fields_ = [("addr", ctypes.c_uint32), ("port", ctypes.c_uint16), ("_pad", ctypes.c_uint16)]


class AgentFlow(ctypes.Structure):
    """bpf/agent.h: struct agent_flow (sequence numbers in host order)."""

    _c_name = "agent_flow"
    _fields_ = [("last_seen_ns", ctypes.c_uint64), ("switch_isn", ctypes.c_uint32), ("diff", ctypes.c_uint32),
                ("fin_in_end", ctypes.c_uint32), ("fin_out_end", ctypes.c_uint32), ("state", ctypes.c_uint8),
                ("backend_wscale", ctypes.c_uint8), ("promised_wscale", ctypes.c_uint8), ("fin_in", ctypes.c_uint8),
                ("fin_out", ctypes.c_uint8), ("fin_in_acked", ctypes.c_uint8), ("fin_out_acked", ctypes.c_uint8),
                ("_pad", ctypes.c_uint8)]


class AgentConfig(ctypes.Structure):
    """bpf/agent.h: struct agent_config (ports in network byte order)."""

    _c_name = "agent_config"
    _fields_ = [("service_ports", ctypes.c_uint16 * 4), ("window_scale", ctypes.c_uint8),
                ("_pad", ctypes.c_uint8 * 7)]
