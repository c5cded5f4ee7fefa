"""The front-end's splice engine, sans I/O (DESIGN.md §3 steps 1-3, 5-9).

Events in: `segment(seg, now)` for every TCP segment the switch steers here (to VIP:port from
clients, from back-ends' service ip:port), `tick(now)` for timers, `offload_result(...)` and
`switch_idle(...)` from the switch controller, `set_health(...)` from health checks. Each returns a
list of actions: `Send` (a segment to put on the wire), `OffloadInsert`, `OffloadDelete`.
`now` is TAI seconds (the cookie's clock), used for timers too.

The states and which events each allows live in `states.py`; everything else a segment can be is
a counted drop in `stats.drops`. All per-connection buffers are bounded by the config.
"""

from __future__ import annotations

import collections
from typing import MutableSequence

from miresga import cookie
from miresga.control.config import Deployment
from miresga.frontend.access_log import AccessLog
from miresga.frontend.engine.actions import Action
from miresga.frontend.engine.arrival import Arrival
from miresga.frontend.engine.backend_side import BackendSide
from miresga.frontend.engine.client_stream import ClientStream
from miresga.frontend.engine.closing import Closing
from miresga.frontend.engine.conn import Conn, Key, Stats
from miresga.frontend.engine.kernel_side import KernelSide
from miresga.frontend.engine.offload import Offloading
from miresga.frontend.engine.routing import Routing
from miresga.frontend.engine.states import TRANSITIONS, Ev, Offload, State
from miresga.frontend.engine.wire import Wire
from miresga.frontend.kernel.handover import KernelCheck, KernelRemove
from miresga.frontend.pools import Pools
from miresga.frontend.rules import service_rules
from miresga.frontend.segment import ACK, FIN, RST, SYN, Segment
from miresga.frontend.selection import Positions, Selector


class Engine(Offloading, KernelSide, Wire, Arrival, ClientStream, Routing, BackendSide, Closing):
    """One front-end's connections: the public entry points are here, the work by concern in
    the modules beside it (one mixin each)."""

    def __init__(self, cfg: Deployment, kernel: bool = False, positions: Positions | None = None,
                 counts: tuple[MutableSequence[int], MutableSequence[int]] | None = None):
        """`kernel`: the front-end's kernel path runs beside the engine (handover.py); `positions`
        and `counts`: the wheel positions the selectors walk and the connections per back-end
        (with the kernel-opened ones heard of): the kernel path's, so that both pick as one."""
        self.cfg = cfg
        self.fe = cfg.frontend
        self.backends = [(int(b.ip), b.port) for b in cfg.hosts.backends]
        self.by_service = {ep: i for i, ep in enumerate(self.backends)}
        self.healthy = [True] * len(self.backends)
        self.positions = positions or Positions()
        self.configure(cfg)
        self.active, self.heard = counts or ([0] * len(self.backends), [0] * len(self.backends))
        self.conns: dict[Key, Conn] = {}
        self.stats = Stats()
        self._cookie = cfg.switch.cookie
        self._keys_gen: int | None = None
        self._keys: tuple[cookie.CookieKey, ...] = ()
        self._gen = 0
        self._now = 0.0
        # Connections we ended ourselves, for a short while: their stragglers are not orphans.
        self._recent: collections.OrderedDict[Key, float] = collections.OrderedDict()
        self._held: dict[Key, tuple[float, Conn]] = {}   # connections holding an ACK: (deadline, conn)
        self.kernel = kernel
        self.alog: AccessLog | None = None   # set by the adapter when the access log is on

    def configure(self, cfg: Deployment) -> None:
        """Rules, pools, policies, weights, drain and limits, timeouts from `cfg` (at start and on
        a reload that `pools.check_reload` accepted: the back-end hosts are the same). Connections
        keep their back-end; their next request is routed by the new rules."""
        self.cfg, self.fe = cfg, cfg.frontend
        # By service index (the key's third part): its VIP and port. A reload may add services
        # at the end (pools.check_reload): the running ones keep their index.
        self.services = cfg.vip_endpoints()
        self.by_vip = {ep: i for i, ep in enumerate(self.services)}
        self.vip_addrs = frozenset(ip for ip, _ in self.services)
        self.vip, self.vport = self.services[0]   # the default service's (tests, tools)
        self.rulesets = service_rules(cfg)     # by service index
        names = [b.name for b in cfg.hosts.backends]
        self.rule_list = [r for rs in self.rulesets for r in rs.all()]  # by global rule index (REQUEST events)
        self.fin_ends_watch = all(rs.fin_ends_watch for rs in self.rulesets)
        # Per back-end: the one service whose rules can give it connections (None: several, or
        # none). A back-end's segment of a connection nobody holds is adopted only for that one.
        self.sole_service = [next(iter(s)) if len(s) == 1 else None for s in cfg.backend_services()]
        self.selectors = {r.index: Selector(r, names, [b.weight for b in cfg.hosts.backends], self.positions)
                          for r in self.rule_list}
        self.pools = Pools(cfg.hosts.backends)
        self._coalesce_s = cfg.frontend.ack_coalesce_ms / 1000.0

    def segment(self, seg: Segment, now: float) -> list[Action]:
        out: list[Action] = []
        self._now = now
        mine = self.classify(seg)
        if mine is None:
            self.stats.drops["not_ours"] += 1
            return out
        key, b = mine
        f = seg.flags
        if b is None:
            if f & RST:
                ev = Ev.C_RST
            elif f & SYN:
                ev = Ev.C_SYN
            elif seg.payload or f & FIN:
                ev = Ev.C_DATA
            else:
                ev = Ev.C_ACK
        else:
            if f & RST:
                ev = Ev.B_RST
            elif f & SYN:
                ev = Ev.B_SYNACK if f & ACK else Ev.B_SYN
            else:
                ev = Ev.B_SEG
        conn = self.conns.get(key)
        if conn is None:
            self._no_flow(seg, key, ev, now, out)
            self._handover_key(key, out)
            return out
        if conn.kernel:
            # The adapter takes a connection back (take_back) before it gives us its segments;
            # this one slipped through: take it without the kernel's state, never share it.
            self.stats.events["kernel_unsynced"] += 1
            conn.kernel = False
            out.append(KernelRemove(key))
        if b is not None and b != conn.backend:
            self.stats.drops["stale_backend"] += 1
            return out
        handler = TRANSITIONS.get((conn.state, ev))
        if handler is None:
            self.stats.drops[f"protocol:{conn.state.value}:{ev.value}"] += 1
            return out
        if conn.state is State.SPLICED:
            conn.deadline = now + self.fe.idle_timeout_s
        getattr(self, "_" + handler)(conn, seg, now, out)
        if conn.rtx is not None and conn.state is State.SPLICED:
            conn.deadline = min(conn.deadline, conn.rtx_at)
        self._handover_key(key, out)
        return out

    def classify(self, seg: Segment) -> tuple[Key, int | None] | None:
        """`seg`'s connection key, with the back-end for a back-end's segment (None for a
        client's); None: neither to a service's VIP:port nor from a back-end to a client."""
        svc = self.by_vip.get((seg.dst, seg.dport))
        if svc is not None:
            return (seg.src, seg.sport, svc), None
        b = self.by_service.get((seg.src, seg.sport))
        if b is None or seg.dst in self.vip_addrs:   # a VIP is nobody's client: never adopt or relay to it
            return None
        return self.backend_key(seg.dst, seg.dport, b), b

    def backend_key(self, ip: int, port: int, backend: int) -> Key:
        """The key of a back-end's segment to client ip:port. The segment does not say which
        VIP the client reached: the service whose connection uses this back-end (at most one
        does: the back-end cannot hold one 4-tuple twice, see `_port_busy`), else the only
        service whose rules use this back-end (to adopt, or a stale segment of its own), else one
        that has a connection of this port or ended one lately (a stale or straggling segment),
        else service 0. The only service comes before another service's connection on another
        back-end: that connection is not this segment's, and its presence must not keep the
        back-end's own service from adopting (one front-end's death orphans all services of a
        client port at once: they share its bucket)."""
        if len(self.services) == 1:
            return (ip, port, 0)
        conns = self.conns
        found = None
        for svc in range(len(self.services)):
            key = (ip, port, svc)
            conn = conns.get(key)
            if conn is not None:
                if conn.backend == backend:
                    return key
                found = found or key
            elif found is None and key in self._recent:
                found = key
        sole = self.sole_service[backend]
        if sole is not None:
            return (ip, port, sole)
        return found or (ip, port, 0)

    def flush(self, now: float) -> list[Action]:
        """Release the held ACKs whose time is up (call often: `next_flush()` says when)."""
        out: list[Action] = []
        held = self._held
        while held:
            key, (t, conn) = next(iter(held.items()))
            if t > now:
                break
            del held[key]
            self._release_acks(conn, out)
            self._handover_key(key, out)
        return out

    def next_flush(self) -> float | None:
        """When `flush` has something to do (None: nothing held)."""
        return next(iter(self._held.values()))[0] if self._held else None

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        self._now = now
        while self._recent and next(iter(self._recent.values())) <= now:
            self._recent.popitem(last=False)
        for conn in [c for c in self.conns.values() if c.deadline <= now]:
            if self.conns.get(conn.key) is not conn:
                continue
            if conn.kernel and conn.state in (State.SPLICED, State.SYN_SENT):
                # Only the kernel knows when it last relayed a segment, or whether the back-end
                # answered the splice SYN it sent: ask (kernel_checked).
                conn.deadline = now + self.fe.idle_timeout_s
                out.append(KernelCheck(conn.key))
            else:
                self._timeout(conn, now, out)
        return out

    def set_health(self, backend: int, healthy: bool) -> None:
        self.healthy[backend] = healthy

    def keys(self, now: float) -> tuple[cookie.CookieKey, ...]:
        g = int(now // self._cookie.rotate_seconds)
        if g != self._keys_gen:
            self._keys = cookie.keys_at(self._cookie.secret, now, self._cookie.rotate_seconds)
            self._keys_gen = g
        return self._keys

    def conns_by_state(self) -> dict[str, int]:
        out = {s.value: 0 for s in State}
        for c in self.conns.values():
            out[c.state.value] += 1
        return out

    def offloaded(self) -> int:
        return sum(1 for c in self.conns.values() if c.offload is Offload.INSTALLED)
