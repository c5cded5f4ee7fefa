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
import mmap
import socket
import struct
import time

from typing import Sequence

from miresga.bpf import layouts as L
from miresga.bpf.libbpf import BPF_NOEXIST, BpfObject, Map, RingBuffer, TcAttachment, map_ops, object_path
from miresga.control.config import Deployment
from miresga.cookie import CookieKey
from miresga.frontend.kernel.handover import EvKind, Key, KernelEntry, KernelEvent, Phase
from miresga.frontend.kernel.rules import BACKENDS_MAX, KernelRules, compile_rules, wheels
from miresga.frontend.packetio import FrameCodec
from miresga.frontend.rules import RuleSet
from miresga.frontend.selection import HRW_K0, HRW_K1, name_id

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
    REQ_FIRST = 15
    REQ_NEXT = 16
    REQ_PUNTED = 17
    RELEASED = 18
    PASS_PYTHON = 19
    DROP_NO_ENTRY = 20
    PORT_SHARED = 21


CFG_ROUTE, CFG_FIRST, CFG_LOG, CFG_FIN_ENDS = 1, 2, 4, 8   # bpf/frontend.h FE_CFG_*
ROUTE_OK, ROUTE_OFFLOADED = 1, 2  # FE_ROUTE_*
SERVICES_MAX = 16   # FE_SERVICES_MAX (config.MAX_SERVICES)
_HELD_CODEC = FrameCodec(b"\0" * 6, b"\0" * 6)   # parses a held frame (MACs unused)


def fe_key(key: Key) -> L.FeKey:
    return L.FeKey(socket.htonl(key[0]), socket.htons(key[1]), key[2])


def decode_entry(c: L.FeConn, now_ns: int) -> KernelEntry:
    return KernelEntry(socket.ntohl(c.backend_ip), socket.ntohs(c.backend_port), c.cli_nxt, c.cli_ack, c.srv_end,
                       bool(c.cli_fin), bool(c.srv_fin), bool(c.closing), c.watch_next, c.watch_segs,
                       c.to_client_bytes, max(0.0, (now_ns - c.last_seen_ns) / 1e9), Phase(c.phase),
                       bool(c.route_ok & ROUTE_OK), c.last_req_ack if c.has_req_ack else None, c.requests, c.backend,
                       c.c, c.s)


_EV = struct.Struct("<HHIHHIIIIIQHHI")   # struct fe_event (tests/bpf/test_layouts.py checks the size)
_EV_KINDS = {k.value: k for k in EvKind}
_ntohl, _ntohs = socket.ntohl, socket.ntohs


def decode_event(raw: bytes) -> KernelEvent:
    """One ring-buffer record (struct.unpack: a third of what a ctypes copy costs per event)."""
    (kind, svc, addr, port, copy_len, seq, plen, cli_ack, srv_end, cli_nxt, tcb, rule, backend,
     flags) = _EV.unpack_from(raw)
    data = raw[_EV_SIZE:_EV_SIZE + copy_len] if copy_len else b""
    return KernelEvent(_EV_KINDS[kind], (_ntohl(addr), _ntohs(port), svc), cli_ack, srv_end, cli_nxt, tcb, seq, plen,
                       data, rule, backend, flags)


class KernelPositions:
    """The wheel positions the kernel path keeps per rule (fe_rr), for Python's selector: both
    walk one counter. Python's step is a read and a write, not atomic with the kernel's; a pick
    that races one in the kernel may repeat a slot, which moves the distribution by one."""

    def __init__(self, m: Map):
        self.map = m
        self._key, self._val = ctypes.c_uint32(), ctypes.c_uint64()

    def next(self, rule_index: int) -> int:
        self._key.value = rule_index
        raw = self.map.lookup(self._key)
        p = (int.from_bytes(raw, "little") if raw else 0) + 1
        self._val.value = p
        self.map.update(self._key, self._val)
        return p


class KernelMaps:
    """The program's maps, for the server (and for tests through BPF_PROG_TEST_RUN).
    `services`: (VIP, port) by service index (`Engine.services`, host order)."""

    def __init__(self, obj: BpfObject, services: Sequence[tuple[int, int]]):
        if not 1 <= len(services) <= SERVICES_MAX:
            raise ValueError(f"{len(services)} services (the kernel path takes 1 to {SERVICES_MAX})")
        self.conns: Map = obj.map("fe_conns")
        self.held: Map = obj.map("fe_held")
        self.stats_map: Map = obj.map("fe_stats")
        self.config_map: Map = obj.map("fe_config")
        self._maps = {n: obj.map(n) for n in ("fe_ops", "fe_rules", "fe_wheel", "fe_backends", "fe_keys",
                                              "fe_services", "fe_vips")}
        self.positions = KernelPositions(obj.map("fe_rr"))
        # Connections per back-end, shared by memory (no system call per change): the engine's
        # count, kernel-opened connections it heard of, and (the kernel's) those it opened.
        counts = obj.map("fe_counts")
        self._counts_mm = mmap.mmap(counts.fd, counts.value_size * counts.max_entries, mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE)
        self.services = [L.FeService(socket.htonl(ip), socket.htons(port)) for ip, port in services]
        for i, sv in enumerate(self.services):
            self._maps["fe_services"].update(ctypes.c_uint32(i), sv)
            self._maps["fe_vips"].update(L.FeVipKey(sv.vip, sv.vport), ctypes.c_uint32(i))
        self.config = L.FeConfig(len(services), 0, hrw_k0=HRW_K0, hrw_k1=HRW_K1)
        self.config_map.update(ctypes.c_uint32(0), self.config)
        self.ring = RingBuffer(obj.map("fe_events"))
        self._kr: KernelRules | None = None
        self._rules: Sequence[RuleSet] = ()
        self._weights: list[int] = []
        self._marker = L.FeConn(phase=Phase.PYTHON)
        # One key and one value buffer, reused: a hand-over and a take-back cost a request two
        # map calls, and ctypes objects built per call cost more than the system calls.
        self._key, self._val = L.FeKey(), L.FeConn()
        self._ops = map_ops(self.conns.fd, ctypes.byref(self._key), ctypes.byref(self._val))

    # ------------------------------------------------------------ rules, health, keys, limits

    def counts(self, backends: int) -> tuple[ctypes.Array, ctypes.Array]:
        """(the engine's connections per back-end, kernel-opened ones it heard of): views the
        engine writes in place (bpf/frontend.h FE_COUNT_*), zeroed."""
        self._counts_mm[:] = bytes(len(self._counts_mm))
        arr = ctypes.c_uint64 * backends
        return arr.from_buffer(self._counts_mm, 0), arr.from_buffer(self._counts_mm, 2 * BACKENDS_MAX * 8)

    def add_services(self, services: Sequence[tuple[int, int]]) -> None:
        """A reload added services (at the end: the running ones keep their index and VIP:port).
        They are written by the next `load_rules`, their VIP:port last, so that the kernel never
        finds a service without its rules."""
        cur = [(socket.ntohl(s.vip), socket.ntohs(s.vport)) for s in self.services]
        if [tuple(ep) for ep in services[:len(cur)]] != cur or len(services) > SERVICES_MAX:
            raise ValueError(f"services {list(services)} do not extend the running ones {cur}")
        self.services += [L.FeService(socket.htonl(ip), socket.htons(port)) for ip, port in services[len(cur):]]

    def load_rules(self, cfg: Deployment, rulesets: Sequence[RuleSet], healthy: Sequence[bool]) -> KernelRules:
        """Compile every service's rules (`Engine.rulesets`, by service index) into the maps and
        start routing (unless they do not fit, all together: then the kernel only relays, and
        `KernelRules.why` says why)."""
        if len(rulesets) != len(self.services):
            raise ValueError(f"rules for {len(rulesets)} services, the kernel path has {len(self.services)}")
        kr = compile_rules(rulesets, cfg)
        self._kr, self._rules = kr, rulesets
        self._weights = [b.weight for b in cfg.hosts.backends]
        u32 = ctypes.c_uint32
        for i, b in enumerate(cfg.hosts.backends[:BACKENDS_MAX]):
            self._maps["fe_backends"].update(u32(i), L.FeBackend(socket.htonl(int(b.ip)), socket.htons(b.port), 0,
                                                                 name_id(b.name)))
        if kr.usable:
            for i, op in enumerate(kr.ops):
                self._maps["fe_ops"].update(u32(i), L.FeOp(op.kind, op.rule, op.byte, 0, op.arg, 0))
        for i, sv in enumerate(self.services):
            r = kr.services[i]
            sv.first_rule, sv.n_rules, sv.first_op, sv.n_ops = r.first_rule, r.n_rules, r.first_op, r.n_ops
            self._maps["fe_services"].update(u32(i), sv)
        for i in range(self.config.n_services, len(self.services)):     # added by a reload
            sv = self.services[i]
            self._maps["fe_vips"].update(L.FeVipKey(sv.vip, sv.vport), u32(i))
        c = self.config
        c.n_services = len(self.services)
        c.n_ops, c.n_rules = (len(kr.ops), len(kr.rules)) if kr.usable else (0, 0)
        c.max_header = cfg.frontend.max_header_bytes
        c.bucket_seconds = cfg.switch.cookie.bucket_seconds
        self.set_health(healthy)
        return kr

    def set_health(self, healthy: Sequence[bool]) -> None:
        """Health (or a drain) changed: the rules' wheels and the set of back-ends that may take
        connections, rewritten (wheels first)."""
        kr, rulesets = self._kr, self._rules
        if kr is None:
            return
        u32 = ctypes.c_uint32
        for i, ((off, w), k) in enumerate(zip(wheels(rulesets, kr, healthy, self._weights), kr.rules)):
            if not kr.usable:
                break       # rules beyond the maps: the kernel reads none of them
            for j, b in enumerate(w):
                self._maps["fe_wheel"].update(u32(off + j), u32(b))
            self._maps["fe_rules"].update(u32(i), L.FeRule(k.pool, off, len(w), k.flags, 0, k.after_requests))
        self.config.healthy = sum(1 << b for b, ok in enumerate(healthy) if ok and b < BACKENDS_MAX)
        self._write_config()

    def set_keys(self, keys: Sequence[CookieKey]) -> None:
        """The cookie keys first requests are checked with (current, previous generation)."""
        for slot in range(2):
            k = keys[slot] if slot < len(keys) else CookieKey(0, 0)
            self._maps["fe_keys"].update(ctypes.c_uint32(slot), L.FeCookieKey(k.k0, k.k1))

    def set_routing(self, route: bool, first: bool, log: bool = False) -> None:
        """Whether the kernel routes next requests (route) and takes new connections (first: off
        at the connection limit, so that the engine refuses them as it does today), and whether
        it copies routed requests and their response headers up for the access log."""
        usable = self._kr is not None and self._kr.usable
        # as the engine's (global: all services' rules)
        fin_ends = bool(self._rules) and all(rs.fin_ends_watch for rs in self._rules) and not log
        flags = ((CFG_ROUTE if route and usable else 0) | (CFG_FIRST if first and usable else 0)
                 | (CFG_LOG if log else 0) | (CFG_FIN_ENDS if fin_ends else 0))
        if flags != self.config.flags:
            self.config.flags = flags
            self._write_config()

    def _write_config(self) -> None:
        self.config_map.update(ctypes.c_uint32(0), self.config)

    # ------------------------------------------------------------ connections

    def _set_key(self, key: Key) -> None:
        self._key.addr = socket.htonl(key[0])
        self._key.port = socket.htons(key[1])
        self._key.svc = key[2]

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
        v.phase, v.backend, v.requests = Phase.RELAY, e.backend, e.requests & 0xFFFFFFFF
        v.route_ok = (ROUTE_OK if e.route_ok else 0) | (ROUTE_OFFLOADED if e.offloaded else 0)
        v.has_req_ack, v.last_req_ack = e.last_req_ack is not None, e.last_req_ack or 0
        v.c = v.s = 0
        rc = self._ops.update()
        if rc == 0:
            return True
        if rc in (errno.E2BIG, errno.ENOMEM):
            return False
        raise OSError(rc, f"fe_conns update: {errno.errorcode.get(rc, rc)}")

    def take(self, key: Key) -> KernelEntry | None:
        """Read and remove the entry in one step (nothing the kernel writes in between is lost),
        and leave a marker in its place: the engine holds the connection now, and the kernel
        must not take its next segment for a new connection's first request. A marker found is
        no entry (None). A connection taken while its splice SYN was out brings its held request."""
        self._set_key(key)
        rc = self._ops.lookup_and_delete()
        if rc == errno.ENOENT:
            self._mark()
            return None
        if rc:
            raise OSError(rc, f"fe_conns lookup_and_delete: {errno.errorcode.get(rc, rc)}")
        entry = decode_entry(self._val, time.monotonic_ns())
        self._mark()
        if entry.phase is Phase.PYTHON:
            return None
        if entry.phase is Phase.SYN_SENT:
            raw = self.held.lookup_and_delete(self._key)
            if raw is not None:
                h = L.FeHeld.from_buffer_copy(raw)
                entry.held = _HELD_CODEC.parse(memoryview(b"\0" * 10 + bytes(h.frame)[:h.len]))
        return entry

    def mark(self, key: Key) -> None:
        """A marker for an engine's connection that has no entry (KernelMark)."""
        self._set_key(key)
        self._mark()

    def sweep(self, known, idle_s: float) -> int:
        """Remove entries of connections the engine does not know (a lost REQUEST event, a
        marker left for a segment the engine then refused) once idle for `idle_s`; how many."""
        now, gone = time.monotonic_ns(), 0
        for raw_key, raw in list(self.conns.items()):
            k = L.FeKey.from_buffer_copy(raw_key)
            key = (socket.ntohl(k.addr), socket.ntohs(k.port), k.svc)
            if known(key) or now - L.FeConn.from_buffer_copy(raw).last_seen_ns < idle_s * 1e9:
                continue
            self.remove(key)
            gone += 1
        return gone

    def _mark(self) -> None:
        """A marker for the key in self._key (the engine's connection); none if the table is full
        (then a segment of it may be taken for a first request: counted by the kernel)."""
        ctypes.memmove(ctypes.byref(self._val), ctypes.byref(self._marker), ctypes.sizeof(self._val))
        self._val.last_seen_ns = time.monotonic_ns()
        self._ops.update(BPF_NOEXIST)

    def remove(self, key: Key, cli_nxt: int | None = None) -> bool:
        """The engine forgot the connection: its entry, marker or held request go. With `cli_nxt`
        (a connection the client closed, whose sequence ends there) an entry whose client
        sequence is elsewhere is a new connection on the reused port, and stays: False."""
        self._set_key(key)
        if cli_nxt is not None and self._ops.lookup() == 0 and self._val.phase != Phase.PYTHON \
                and self._val.cli_nxt != cli_nxt:
            return False
        rc = self._ops.delete()
        if rc not in (0, errno.ENOENT):
            raise OSError(rc, f"fe_conns delete: {errno.errorcode.get(rc, rc)}")
        if rc == 0:
            self.held.delete(self._key)
        return True

    def events(self) -> list[KernelEvent]:
        return [decode_event(r) for r in self.ring.consume()]

    def stats(self) -> dict[str, int]:
        return {s.name.lower(): self.stats_map.percpu_u64_sum(ctypes.c_uint32(s)) for s in FeStat}

    def close(self) -> None:
        self.ring.close()


class KernelPath(KernelMaps):
    """Load and attach the program on `ifindex` (in the current namespace)."""

    PRIORITY = 5   # before anything else a host might attach at the default priority

    def __init__(self, ifname: str, services: Sequence[tuple[int, int]], max_connections: int):
        self.obj = BpfObject(object_path("frontend"), max_entries={"fe_conns": max_connections})
        try:
            super().__init__(self.obj, services)
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


__all__ = ["KernelPath", "KernelMaps", "KernelPositions", "FeStat", "fe_key", "decode_entry", "decode_event"]
