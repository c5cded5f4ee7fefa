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
from miresga.bpf.libbpf import BpfObject, Map, RingBuffer, TcAttachment, map_ops, object_path
from miresga.frontend.handover import EvKind, Key, KernelEntry, KernelEvent

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


def decode_entry(c: L.FeConn, now_ns: int) -> KernelEntry:
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
        # One key and one value buffer, reused: a hand-over and a take-back cost a request two
        # map calls, and ctypes objects built per call cost more than the system calls.
        self._key, self._val = L.FeKey(), L.FeConn()
        self._ops = map_ops(self.conns.fd, ctypes.byref(self._key), ctypes.byref(self._val))

    def _set_key(self, key: Key) -> None:
        self._key.addr = socket.htonl(key[0])
        self._key.port = socket.htons(key[1])

    def handover(self, key: Key, entry: KernelEntry) -> bool:
        """Install the entry; False if the table is full (the engine keeps the connection)."""
        self._set_key(key)
        v, e = self._val, entry
        v.last_seen_ns = time.monotonic_ns() - int(e.idle_s * 1e9)
        v.to_client_bytes = 0
        v.backend_ip, v.backend_port = socket.htonl(e.backend_ip), socket.htons(e.backend_port)
        v.cli_fin, v.srv_fin, v.closing = e.cli_fin, e.srv_fin, e.closing
        v.cli_nxt, v.cli_ack, v.srv_end = e.cli_nxt, e.cli_ack, e.srv_end
        v.watch_next, v.watch_segs = e.watch_next, e.watch_segs
        rc = self._ops.update()
        if rc == 0:
            return True
        if rc in (errno.E2BIG, errno.ENOMEM):
            return False
        raise OSError(rc, f"fe_conns update: {errno.errorcode.get(rc, rc)}")

    def take(self, key: Key) -> KernelEntry | None:
        """Read and remove the entry in one step (nothing the kernel writes in between is lost)."""
        self._set_key(key)
        rc = self._ops.lookup_and_delete()
        if rc == errno.ENOENT:
            return None
        if rc:
            raise OSError(rc, f"fe_conns lookup_and_delete: {errno.errorcode.get(rc, rc)}")
        return decode_entry(self._val, time.monotonic_ns())

    def remove(self, key: Key) -> None:
        self._set_key(key)
        rc = self._ops.delete()
        if rc not in (0, errno.ENOENT):
            raise OSError(rc, f"fe_conns delete: {errno.errorcode.get(rc, rc)}")

    def events(self) -> list[KernelEvent]:
        return [decode_event(r) for r in self.ring.consume()]

    def stats(self) -> dict[str, int]:
        return {s.name.lower(): self.stats_map.percpu_u64_sum(ctypes.c_uint32(s)) for s in FeStat}

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


__all__ = ["KernelPath", "KernelMaps", "FeStat", "fe_key", "decode_entry", "decode_event"]
