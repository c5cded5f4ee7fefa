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
    _fields_ = [("key_slot", ctypes.c_uint32), ("n_services", ctypes.c_uint32),
                ("mss", ctypes.c_uint16), ("syn_window", ctypes.c_uint16), ("wscale", ctypes.c_uint8),
                ("sack", ctypes.c_uint8), ("_pad", ctypes.c_uint16), ("bucket_seconds", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


SW_SERVICES_MAX = 16   # bpf/switch.h (= miresga.control.config.MAX_SERVICES)


class SwService(ctypes.Structure):
    """bpf/switch.h: struct sw_service (one VIP:port, network order)."""

    _c_name = "sw_service"
    _fields_ = [("vip", ctypes.c_uint32), ("vport", ctypes.c_uint16), ("_pad", ctypes.c_uint16)]


class SwKey(ctypes.Structure):
    """bpf/switch.h: struct sw_key (one cookie key slot)."""

    _c_name = "sw_key"
    _fields_ = [("k0", ctypes.c_uint64), ("k1", ctypes.c_uint64)]


class FlowKey(ctypes.Structure):
    """bpf/switch.h: struct flow_key (ip, port in network order; svc: service index, host order)."""

    _c_name = "flow_key"
    _fields_ = [("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("svc", ctypes.c_uint16)]


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
    """bpf/frontend.h: struct fe_key (client ip:port, network byte order; the service's index)."""

    _c_name = "fe_key"
    _fields_ = [("addr", ctypes.c_uint32), ("port", ctypes.c_uint16), ("svc", ctypes.c_uint16)]


class FeService(ctypes.Structure):
    """bpf/frontend.h: struct fe_service (VIP:port network byte order; its stretch of the rules)."""

    _c_name = "fe_service"
    _fields_ = [("vip", ctypes.c_uint32), ("vport", ctypes.c_uint16), ("_pad", ctypes.c_uint16),
                ("first_rule", ctypes.c_uint16), ("n_rules", ctypes.c_uint16), ("first_op", ctypes.c_uint16),
                ("n_ops", ctypes.c_uint16)]


class FeVipKey(ctypes.Structure):
    """bpf/frontend.h: struct fe_vip_key (network byte order)."""

    _c_name = "fe_vip_key"
    _fields_ = [("vip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("_pad", ctypes.c_uint16)]


class FeConn(ctypes.Structure):
    """bpf/frontend.h: struct fe_conn (addresses network order, sequence numbers host order)."""

    _c_name = "fe_conn"
    _fields_ = [("last_seen_ns", ctypes.c_uint64), ("to_client_bytes", ctypes.c_uint64),
                ("backend_ip", ctypes.c_uint32), ("backend_port", ctypes.c_uint16),
                ("cli_fin", ctypes.c_uint8), ("srv_fin", ctypes.c_uint8), ("cli_nxt", ctypes.c_uint32),
                ("cli_ack", ctypes.c_uint32), ("srv_end", ctypes.c_uint32), ("watch_next", ctypes.c_uint32),
                ("watch_segs", ctypes.c_uint32), ("phase", ctypes.c_uint8), ("route_ok", ctypes.c_uint8),
                ("has_req_ack", ctypes.c_uint8), ("backend", ctypes.c_uint8), ("closing", ctypes.c_uint64),
                ("last_req_ack", ctypes.c_uint32), ("requests", ctypes.c_uint32), ("c", ctypes.c_uint32),
                ("s", ctypes.c_uint32)]


class FeConfig(ctypes.Structure):
    """bpf/frontend.h: struct fe_config (network byte order)."""

    _c_name = "fe_config"
    _fields_ = [("n_services", ctypes.c_uint16), ("flags", ctypes.c_uint16), ("_pad", ctypes.c_uint32),
                ("healthy", ctypes.c_uint64), ("n_ops", ctypes.c_uint32), ("n_rules", ctypes.c_uint32),
                ("max_header", ctypes.c_uint32), ("bucket_seconds", ctypes.c_uint32),
                ("hrw_k0", ctypes.c_uint64), ("hrw_k1", ctypes.c_uint64)]


class FeOp(ctypes.Structure):
    """bpf/frontend.h: struct fe_op (one step of the compiled rules)."""

    _c_name = "fe_op"
    _fields_ = [("kind", ctypes.c_uint8), ("rule", ctypes.c_uint8), ("byte", ctypes.c_uint8),
                ("_pad", ctypes.c_uint8), ("arg", ctypes.c_uint16), ("_pad2", ctypes.c_uint16)]


class FeRule(ctypes.Structure):
    """bpf/frontend.h: struct fe_rule."""

    _c_name = "fe_rule"
    _fields_ = [("pool", ctypes.c_uint64), ("wheel_off", ctypes.c_uint16), ("wheel_len", ctypes.c_uint16),
                ("flags", ctypes.c_uint8), ("_pad", ctypes.c_uint8), ("after_requests", ctypes.c_uint16)]


class FeBackend(ctypes.Structure):
    """bpf/frontend.h: struct fe_backend (network byte order)."""

    _c_name = "fe_backend"
    _fields_ = [("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("_pad", ctypes.c_uint16),
                ("name_id", ctypes.c_uint64)]


class FeCookieKey(ctypes.Structure):
    """bpf/frontend.h: struct fe_cookie_key."""

    _c_name = "fe_cookie_key"
    _fields_ = [("k0", ctypes.c_uint64), ("k1", ctypes.c_uint64)]


FE_HELD_BUF = 2048   # bpf/frontend.h


class FeHeld(ctypes.Structure):
    """bpf/frontend.h: struct fe_held (a request frame waiting for the back-end's SYN-ACK)."""

    _c_name = "fe_held"
    _fields_ = [("len", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("frame", ctypes.c_uint8 * FE_HELD_BUF)]


class FeEvent(ctypes.Structure):
    """bpf/frontend.h: struct fe_event (a FE_EV_COPY record carries copy_len bytes after it)."""

    _c_name = "fe_event"
    _fields_ = [("kind", ctypes.c_uint16), ("svc", ctypes.c_uint16), ("addr", ctypes.c_uint32), ("port", ctypes.c_uint16),
                ("copy_len", ctypes.c_uint16), ("seq", ctypes.c_uint32), ("payload_len", ctypes.c_uint32),
                ("cli_ack", ctypes.c_uint32), ("srv_end", ctypes.c_uint32), ("cli_nxt", ctypes.c_uint32),
                ("to_client_bytes", ctypes.c_uint64), ("rule", ctypes.c_uint16), ("backend", ctypes.c_uint16),
                ("req_flags", ctypes.c_uint32)]
