"""The switch's BPF maps as typed Python calls: the thin layer that writes tables and reads counters.

Both the dataplane loader and the controller's map adapter use it; packet tests use it to set up
cases. Addresses and ports are given as Python values (dotted strings or ints in host order) and
stored in network order, as the data plane reads them from the wire. Offload keys are
(client ip, client port, service index): one client port may hold a connection to each service.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct
import time
from enum import IntEnum
from typing import Iterator, Sequence

from miresga.bpf.drop_reasons import DropReason
from miresga.bpf.layouts import (SW_SERVICES_MAX, ArpEntry, BackendEntry, FlowKey, Hop, OffloadEntry, RouteKey,
                                 SwConfig, SwKey, SwService)
from miresga.bpf.libbpf import _lib as _libbpf
from miresga.bpf.libbpf import BPF_NOEXIST, BpfObject, Map

_libbpf.bpf_map_lookup_batch.restype = ctypes.c_int
_libbpf.bpf_map_lookup_batch.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]


def dump_batched(m: Map, key_type, value_type, chunk: int = 4096) -> Iterator[tuple]:
    """All (key, value) of a hash map with BPF_MAP_LOOKUP_BATCH: ~20x fewer syscalls than
    get_next_key + lookup per entry (the idle scan reads the whole offload table)."""
    keys = (key_type * chunk)()
    values = (value_type * chunk)()
    token_in, token_out = ctypes.create_string_buffer(8), ctypes.create_string_buffer(8)
    first = True
    while True:
        count = ctypes.c_uint32(chunk)
        rc = _libbpf.bpf_map_lookup_batch(m.fd, None if first else token_in, token_out, keys, values,
                                          ctypes.byref(count), None)
        err = ctypes.get_errno() if rc else 0
        if rc and err != errno.ENOENT:
            raise OSError(err, f"lookup_batch {m.name}: {errno.errorcode.get(err, err)}")
        for i in range(count.value):
            yield key_type.from_buffer_copy(keys[i]), value_type.from_buffer_copy(values[i])  # buffers are reused
        if rc:  # ENOENT: that was the last batch
            return
        first = False
        ctypes.memmove(token_in, token_out, 8)

SW_F_TRACE = 1
HOP_VALID, HOP_LOCAL, HOP_INTERNAL = 1, 2, 4
BUCKETS = 256
BACKENDS = 256


class Counter(IntEnum):
    """bpf/switch.h: enum sw_counter (decision counters; drop reasons follow)."""

    ARP_REPLY = 0
    SYNACK = 1
    TO_FRONTEND = 2
    TO_BACKEND = 3
    TO_CLIENT = 4
    ROUTED = 5
    TO_KERNEL = 6
    OFFLOAD_MISMATCH = 7
    HANDSHAKE_ACK = 8


DECISIONS = 9  # SW_CNT_DECISIONS


def drop_index(reason: DropReason) -> int:
    """SW_CNT_DROP(reason)."""
    return DECISIONS - 1 - int(reason)


def counter_names() -> dict[int, str]:
    names = {int(c): c.name.lower() for c in Counter}
    names.update({drop_index(r): f"drop_{r.name.lower()}" for r in DropReason})
    return names


def mac_bytes(mac: str | bytes) -> bytes:
    if isinstance(mac, bytes):
        return mac
    return bytes(int(x, 16) for x in mac.split(":"))


def _ip_be(ip: int | str | ipaddress.IPv4Address) -> int:
    """An IPv4 address as the u32 a little-endian host reads from network-order bytes."""
    return struct.unpack("=I", ipaddress.IPv4Address(ip).packed)[0]


def _ip_from_be(v: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(struct.pack("=I", v))


def _port_be(port: int) -> int:
    return socket.htons(port)


def hop(ifindex: int, smac: str | bytes, dmac: str | bytes, flags: int = HOP_VALID) -> Hop:
    h = Hop(ifindex=ifindex, flags=flags)
    ctypes.memmove(h.smac, mac_bytes(smac), 6)
    ctypes.memmove(h.dmac, mac_bytes(dmac), 6)
    return h


def flow_key(ip: int | str | ipaddress.IPv4Address, port: int, svc: int = 0) -> FlowKey:
    return FlowKey(ip=_ip_be(ip), port=_port_be(port), svc=svc)


def flow_of(key: bytes) -> tuple[int, int, int]:
    """(ip, port, svc) of a flow_key's bytes (ip an int in host order)."""
    k = FlowKey.from_buffer_copy(key)
    return int(_ip_from_be(k.ip)), socket.ntohs(k.port), k.svc


def monotonic_ns() -> int:
    """The clock of bpf_ktime_get_ns() (CLOCK_MONOTONIC), for last-hit times."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class SwitchMaps:
    """Typed access to the maps of one loaded switch.bpf.o."""

    def __init__(self, obj: BpfObject):
        self.obj = obj
        self.config = obj.map("sw_config")
        self.vips = obj.map("sw_vips")
        self.vip_addrs = obj.map("sw_vip_addrs")
        self.services = obj.map("sw_services")
        self.keys = obj.map("sw_keys")
        self.arp = obj.map("sw_arp")
        self.backend_src = obj.map("sw_backend_src")
        self.offload = obj.map("sw_offload")
        self.buckets = obj.map("sw_buckets")
        self.backends = obj.map("sw_backends")
        self.routes = obj.map("sw_routes")
        self.counters = obj.map("sw_counters")
        self.trace = obj.map("sw_trace")
        self.guarded_ports = obj.map("sw_guarded_ports")
        self.ctl_peers = obj.map("sw_ctl_peers")

    # --- configuration tables -------------------------------------------------------------
    def set_config(self, *, services: Sequence[tuple[str | ipaddress.IPv4Address, int]], key: tuple[int, int],
                   mss: int, wscale: int, sack: bool, bucket_seconds: int, syn_window: int = 65535,
                   flags: int = 0) -> None:
        """`services`: (VIP, port) by service index (Deployment.all_services() order). Replaces
        the VIP tables: every slot of sw_services (unused ones zero), sw_vips and sw_vip_addrs."""
        if not 1 <= len(services) <= SW_SERVICES_MAX:
            raise ValueError(f"{len(services)} services: the switch serves 1 to {SW_SERVICES_MAX}")
        want = [(self.vips, {bytes(flow_key(vip, vport)) for vip, vport in services}),
                (self.vip_addrs, {struct.pack("=I", _ip_be(vip)) for vip, _ in services})]
        for m, keys in want:
            for k in [k for k in m.keys() if k not in keys]:
                m.delete(k)
        for svc in range(SW_SERVICES_MAX):
            vip, vport = services[svc] if svc < len(services) else ("0.0.0.0", 0)
            self.services.update(struct.pack("=I", svc), SwService(vip=_ip_be(vip), vport=_port_be(vport)))
            if svc < len(services):
                self.vips.update(flow_key(vip, vport), struct.pack("=I", svc))
                self.vip_addrs.update(struct.pack("=I", _ip_be(vip)), b"\x01")
        self.keys.update(struct.pack("=I", 0), SwKey(k0=key[0], k1=key[1]))
        c = SwConfig(key_slot=0, n_services=len(services), mss=mss, syn_window=syn_window, wscale=wscale,
                     sack=int(sack), bucket_seconds=bucket_seconds, flags=flags)
        self.config.update(struct.pack("=I", 0), c)

    def get_services(self, n: int | None = None) -> list[tuple[ipaddress.IPv4Address, int]]:
        """(VIP, port) of the first `n` service slots (default: the config's n_services)."""
        n = self.get_config().n_services if n is None else n
        out = []
        for svc in range(n):
            s = SwService.from_buffer_copy(self.services.lookup(struct.pack("=I", svc)))
            out.append((_ip_from_be(s.vip), socket.ntohs(s.vport)))
        return out

    def get_config(self) -> SwConfig:
        return SwConfig.from_buffer_copy(self.config.lookup(struct.pack("=I", 0)))

    def set_key(self, key: tuple[int, int]) -> None:
        """Rotate the cookie key: fill the idle slot, then flip to it (a SYN being answered keeps
        reading a whole key, old or new)."""
        c = self.get_config()
        slot = 1 - (c.key_slot & 1)
        self.keys.update(struct.pack("=I", slot), SwKey(k0=key[0], k1=key[1]))
        c.key_slot = slot
        self.config.update(struct.pack("=I", 0), c)

    def get_key(self) -> tuple[int, int]:
        k = SwKey.from_buffer_copy(self.keys.lookup(struct.pack("=I", self.get_config().key_slot & 1)))
        return k.k0, k.k1

    def set_arp(self, ip: str, mac: str | bytes) -> None:
        e = ArpEntry()
        ctypes.memmove(e.mac, mac_bytes(mac), 6)
        self.arp.update(struct.pack("=I", _ip_be(ip)), e)

    def set_backend(self, index: int, ip: str, port: int, h: Hop) -> None:
        self.backends.update(struct.pack("=I", index), BackendEntry(ip=_ip_be(ip), port=_port_be(port), hop=h))
        self.backend_src.update(flow_key(ip, port), struct.pack("=I", index))

    def set_bucket(self, index: int, h: Hop | None) -> None:
        self.buckets.update(struct.pack("=I", index), h if h is not None else Hop())

    def set_route(self, network: str | ipaddress.IPv4Network, h: Hop) -> None:
        net = ipaddress.IPv4Network(network, strict=False)
        self.routes.update(RouteKey(prefixlen=net.prefixlen, ip=_ip_be(net.network_address)), h)

    def guard_port(self, port: int) -> None:
        """Only front-ends (set_ctl_peer) may reach this TCP port of the switch's own addresses."""
        self.guarded_ports.update(struct.pack("=H", _port_be(port)), b"\x01")

    def set_ctl_peer(self, ip: str, ifindex: int) -> None:
        """A front-end's address and the port its packets to a guarded port must arrive on."""
        self.ctl_peers.update(struct.pack("=I", _ip_be(ip)), struct.pack("=I", ifindex))

    # --- offload table --------------------------------------------------------------------
    # Keys: client ip, client port and service index (svc; 0: the default service).
    def offload_insert(self, ip: int | str, port: int, backend: int, now_ns: int | None = None,
                       svc: int = 0) -> int:
        """0, or the errno: EEXIST (already there), E2BIG/ENOMEM (table full)."""
        e = OffloadEntry(backend=backend, last_hit_ns=monotonic_ns() if now_ns is None else now_ns)
        return self.offload.try_update(flow_key(ip, port, svc), e, BPF_NOEXIST)

    def offload_delete(self, ip: int | str, port: int, svc: int = 0) -> bool:
        return self.offload.delete(flow_key(ip, port, svc))

    def offload_get(self, ip: int | str, port: int, svc: int = 0) -> OffloadEntry | None:
        v = self.offload.lookup(flow_key(ip, port, svc))
        return OffloadEntry.from_buffer_copy(v) if v is not None else None

    def offload_items(self) -> Iterator[tuple[tuple[int, int, int], OffloadEntry]]:
        """((client ip, client port, svc), entry) of every offload entry."""
        for k, v in dump_batched(self.offload, FlowKey, OffloadEntry):
            yield (int(_ip_from_be(k.ip)), socket.ntohs(k.port), k.svc), v

    # --- counters -------------------------------------------------------------------------
    def counter(self, index: int) -> int:
        v = self.counters.lookup(struct.pack("=I", index))
        return struct.unpack("=Q", v)[0] if v else 0

    def read_counters(self) -> dict[str, int]:
        return {name: self.counter(i) for i, name in sorted(counter_names().items())}

    def reset_counters(self) -> None:
        for i in counter_names():
            self.counters.update(struct.pack("=I", i), struct.pack("=Q", 0))

    def last_redirect(self) -> int:
        """ifindex of the last redirect (only recorded with SW_F_TRACE)."""
        return struct.unpack("=I", self.trace.lookup(struct.pack("=I", 0)))[0]

    def clear_trace(self) -> None:
        self.trace.update(struct.pack("=I", 0), struct.pack("=I", 0))


OFFLOAD_FULL_ERRNOS = (errno.E2BIG, errno.ENOMEM, errno.ENOSPC)
