"""The front-end's kernel path, user-space side: load `bpf/frontend.bpf.c`, attach it to the
front-end's interface, and turn the engine's hand-over actions into map operations and the ring
buffer's records into `KernelEvent`s. The engine never imports this module (it stays sans I/O).

Life cycle (libbpf-bootstrap): open, load, configure, attach; `close()` detaches and frees only
what it made. The program sits on TC ingress; the packet socket is bound to ETH_P_IP, which the
kernel serves after TC ingress, so a frame the program relays never reaches Python.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import socket
import time

from miresga.bpf import layouts as L
from miresga.bpf.libbpf import BpfObject, Map, RingBuffer, TcAttachment, object_path
from miresga.frontend.handover import EvKind, Key, KernelEntry, KernelEvent

FE_COPY_MAX = 1024
_EV_SIZE = ctypes.sizeof(L.FeEvent)


class FeStat(enum.IntEnum):
    """bpf/frontend.h: enum fe_stat."""

    TO_BACKEND = 0
    TO_CLIENT = 1
    TO_BACKEND_BYTES = 2
    TO_CLIENT_BYTES = 3
    PASS_DATA = 4
    PASS_NO_ENTRY = 5
    PASS_OTHER = 6
    NOT_OURS = 7
    SYNACK_DROPPED = 8
    CLIENT_RST = 9
    BACKEND_RST = 10
    CLOSING = 11
    COPIES = 12
    EVENTS_LOST = 13
    REWRITE_FAILED = 14


def fe_key(key: Key) -> L.FeKey:
    return L.FeKey(socket.htonl(key[0]), socket.htons(key[1]), 0)


def encode_entry(e: KernelEntry, now_ns: int) -> L.FeConn:
    return L.FeConn(last_seen_ns=now_ns - int(e.idle_s * 1e9), to_client_bytes=0, backend_ip=socket.htonl(e.backend_ip),
                    backend_port=socket.htons(e.backend_port), cli_fin=int(e.cli_fin), srv_fin=int(e.srv_fin),
                    cli_nxt=e.cli_nxt, cli_ack=e.cli_ack, srv_end=e.srv_end, watch_next=e.watch_next,
                    watch_segs=e.watch_segs, closing=int(e.closing))


def decode_entry(raw: bytes, now_ns: int) -> KernelEntry:
    c = L.FeConn.from_buffer_copy(raw)
    return KernelEntry(socket.ntohl(c.backend_ip), socket.ntohs(c.backend_port), c.cli_nxt, c.cli_ack, c.srv_end,
                       bool(c.cli_fin), bool(c.srv_fin), bool(c.closing), c.watch_next, c.watch_segs,
                       c.to_client_bytes, max(0.0, (now_ns - c.last_seen_ns) / 1e9))


def decode_event(raw: bytes) -> KernelEvent:
    h = L.FeEvent.from_buffer_copy(raw[:_EV_SIZE])
    data = raw[_EV_SIZE:_EV_SIZE + h.copy_len] if h.kind == EvKind.COPY else b""
    return KernelEvent(EvKind(h.kind), (socket.ntohl(h.addr), socket.ntohs(h.port)), h.cli_ack, h.srv_end,
                       h.cli_nxt, h.to_client_bytes, h.seq, h.payload_len, data)


class KernelMaps:
    """The program's maps, for the server (and for tests through BPF_PROG_TEST_RUN)."""

    def __init__(self, obj: BpfObject, vip: int, vport: int):
        self.conns: Map = obj.map("fe_conns")
        self.stats_map: Map = obj.map("fe_stats")
        obj.map("fe_config").update(ctypes.c_uint32(0), L.FeConfig(socket.htonl(vip), socket.htons(vport), 0))
        self.ring = RingBuffer(obj.map("fe_events"))

    def handover(self, key: Key, entry: KernelEntry) -> bool:
        """Install the entry; False if the table is full (the engine keeps the connection)."""
        rc = self.conns.try_update(fe_key(key), encode_entry(entry, time.monotonic_ns()))
        if rc == 0:
            return True
        if rc in (errno.E2BIG, errno.ENOMEM):
            return False
        raise OSError(rc, f"fe_conns update: {errno.errorcode.get(rc, rc)}")

    def take(self, key: Key) -> KernelEntry | None:
        raw = self.conns.lookup_and_delete(fe_key(key))
        return None if raw is None else decode_entry(raw, time.monotonic_ns())

    def remove(self, key: Key) -> None:
        self.conns.delete(fe_key(key))

    def events(self) -> list[KernelEvent]:
        return [decode_event(r) for r in self.ring.consume()]

    def stats(self) -> dict[str, int]:
        return {s.name.lower(): self.stats_map.percpu_u64_sum(ctypes.c_uint32(s)) for s in FeStat}

    def entries(self) -> int:
        return sum(1 for _ in self.conns.keys())

    def close(self) -> None:
        self.ring.close()


class KernelPath(KernelMaps):
    """Load and attach the program on `ifindex` (in the current namespace)."""

    PRIORITY = 5   # before anything else a host might attach at the default priority

    def __init__(self, ifname: str, vip: int, vport: int, max_connections: int):
        self.obj = BpfObject(object_path("frontend"), max_entries={"fe_conns": max_connections})
        try:
            super().__init__(self.obj, vip, vport)
            self.attachment = TcAttachment(None, socket.if_nametoindex(ifname), "ingress",
                                           self.obj.program("frontend_ingress"), priority=self.PRIORITY,
                                           replace=True)   # a killed predecessor's program goes
        except BaseException:
            self.obj.close()
            raise

    def fileno(self) -> int:
        return self.ring.fileno()

    def close(self) -> None:
        self.attachment.detach()
        super().close()
        self.obj.close()


__all__ = ["KernelPath", "KernelMaps", "FeStat", "fe_key", "encode_entry", "decode_entry", "decode_event"]
