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


# --- bpf/switch.h (the switch data plane) ---------------------------------------------------

class SwConfig(ctypes.Structure):
    """bpf/switch.h: struct sw_config (addresses/ports network order, as bytes on the wire)."""

    _c_name = "sw_config"
    _fields_ = [("key_slot", ctypes.c_uint32), ("vip", ctypes.c_uint32),
                ("vport", ctypes.c_uint16), ("mss", ctypes.c_uint16), ("syn_window", ctypes.c_uint16),
                ("wscale", ctypes.c_uint8), ("sack", ctypes.c_uint8), ("bucket_seconds", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


class SwKey(ctypes.Structure):
    """bpf/switch.h: struct sw_key (one cookie key slot)."""

    _c_name = "sw_key"
    _fields_ = [("k0", ctypes.c_uint64), ("k1", ctypes.c_uint64)]


class FlowKey(ctypes.Structure):
    """bpf/switch.h: struct flow_key (ip, port in network order)."""

    _c_name = "flow_key"
    _fields_ = [("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("_pad", ctypes.c_uint16)]


class OffloadEntry(ctypes.Structure):
    """bpf/switch.h: struct offload_entry."""

    _c_name = "offload_entry"
    _fields_ = [("backend", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("last_hit_ns", ctypes.c_uint64)]


class Hop(ctypes.Structure):
    """bpf/switch.h: struct hop."""

    _c_name = "hop"
    _fields_ = [("ifindex", ctypes.c_uint32), ("smac", ctypes.c_uint8 * 6), ("dmac", ctypes.c_uint8 * 6),
                ("flags", ctypes.c_uint32)]


class BackendEntry(ctypes.Structure):
    """bpf/switch.h: struct backend_entry."""

    _c_name = "backend_entry"
    _fields_ = [("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("_pad", ctypes.c_uint16), ("hop", Hop)]


class RouteKey(ctypes.Structure):
    """bpf/switch.h: struct route_key (LPM trie key)."""

    _c_name = "route_key"
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ip", ctypes.c_uint32)]


class ArpEntry(ctypes.Structure):
    """bpf/switch.h: struct arp_entry."""

    _c_name = "arp_entry"
    _fields_ = [("mac", ctypes.c_uint8 * 6), ("_pad", ctypes.c_uint16)]


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


# --- bpf/frontend.h (the front-end's kernel path) --------------------------------------------

class FeKey(ctypes.Structure):
    """bpf/frontend.h: struct fe_key (client ip:port, network byte order)."""

    _c_name = "fe_key"
    _fields_ = [("addr", ctypes.c_uint32), ("port", ctypes.c_uint16), ("_pad", ctypes.c_uint16)]


class FeConn(ctypes.Structure):
    """bpf/frontend.h: struct fe_conn (addresses network order, sequence numbers host order)."""

    _c_name = "fe_conn"
    _fields_ = [("last_seen_ns", ctypes.c_uint64), ("to_client_bytes", ctypes.c_uint64),
                ("backend_ip", ctypes.c_uint32), ("backend_port", ctypes.c_uint16),
                ("cli_fin", ctypes.c_uint8), ("srv_fin", ctypes.c_uint8), ("cli_nxt", ctypes.c_uint32),
                ("cli_ack", ctypes.c_uint32), ("srv_end", ctypes.c_uint32), ("watch_next", ctypes.c_uint32),
                ("watch_segs", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("closing", ctypes.c_uint64)]


class FeConfig(ctypes.Structure):
    """bpf/frontend.h: struct fe_config (network byte order)."""

    _c_name = "fe_config"
    _fields_ = [("vip", ctypes.c_uint32), ("vport", ctypes.c_uint16), ("_pad", ctypes.c_uint16)]


class FeEvent(ctypes.Structure):
    """bpf/frontend.h: struct fe_event (a FE_EV_COPY record carries copy_len bytes after it)."""

    _c_name = "fe_event"
    _fields_ = [("kind", ctypes.c_uint32), ("addr", ctypes.c_uint32), ("port", ctypes.c_uint16),
                ("copy_len", ctypes.c_uint16), ("seq", ctypes.c_uint32), ("payload_len", ctypes.c_uint32),
                ("cli_ack", ctypes.c_uint32), ("srv_end", ctypes.c_uint32), ("cli_nxt", ctypes.c_uint32),
                ("to_client_bytes", ctypes.c_uint64)]
