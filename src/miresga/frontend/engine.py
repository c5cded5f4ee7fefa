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
from dataclasses import dataclass
from typing import MutableSequence, Union

from miresga import cookie
from miresga.control.config import Deployment
from miresga.frontend.access_log import AccessLog
from miresga.frontend.handover import (REQ_CLOSE, REQ_FIRST, REQ_HTTP10, REQ_KEEP, EvKind, KernelCheck,
                                       KernelEntry, KernelEvent, KernelHandover, KernelMark, KernelRemove,
                                       Phase)
from miresga.frontend.http import (HttpError, RequestStream, ResponseWatcher, local_response,
                                   looks_like_request_start, request_start_certain)
from miresga.frontend.pools import Pools
from miresga.frontend.rules import CompiledRule, RuleSet
from miresga.frontend.segment import ACK, FIN, PSH, RST, SYN, Segment, seq_add, seq_diff, syn_options
from miresga.frontend.selection import Positions, Selector
from miresga.frontend.states import TRANSITIONS, Ev, Offload, State

Key = tuple[int, int]  # client ip, client port
_UNKNOWN_OPTS = cookie.ClientOptions(mss=536, wscale=None, sack=False)
MAX_WINDOW_AHEAD = 1 << 22  # a client segment further ahead than this is not in any window we gave
WATCH_COPIES = 2  # response segments the kernel copies for a watcher (a header beyond them is not read)


@dataclass(slots=True)
class Send:
    seg: Segment
    to: str  # "client" | "backend" (for metrics and tests; the adapter only needs seg)


@dataclass(slots=True)
class OffloadInsert:
    client_ip: int
    client_port: int
    backend: int
    gen: int  # echo it back in offload_result


@dataclass(slots=True)
class OffloadDelete:
    client_ip: int
    client_port: int


@dataclass(slots=True)
class OffloadCheck:
    """Ask the switch whether an entry we believe installed is still there (answer through
    offload_result with the same gen: installed|absent). An entry can vanish without us: another
    front-end acting on an idle report, a controller restart."""

    client_ip: int
    client_port: int
    gen: int


Action = Union[Send, OffloadInsert, OffloadDelete, OffloadCheck, KernelHandover, KernelCheck, KernelMark,
               KernelRemove]


class Stats:
    """Counters the metrics adapter exports (plain dicts: cheap to bump, easy to assert on)."""

    def __init__(self) -> None:
        self.drops: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.requests_rule: collections.Counter[str] = collections.Counter()
        self.requests_backend: collections.Counter[int] = collections.Counter()
        self.responses_local: collections.Counter[int] = collections.Counter()
        self.offload: collections.Counter[str] = collections.Counter()
        self.bytes: collections.Counter[str] = collections.Counter()  # slow_to_client/slow_to_backend/offloaded_est


class Conn:
    """One client connection (both halves of the splice)."""

    __slots__ = ("key", "state", "c", "s", "opts", "nxt", "ooo", "ooo_bytes", "held", "held_bytes",
                 "parser", "parser_idle", "req_ack", "req_start", "last_req_ack", "pipelined", "holding",
                 "backend", "rule", "deadline", "tries", "cli_fin", "srv_fin", "srv_end", "cli_ack",
                 "offload", "offload_gen", "watch", "watch_next", "slow_srv_bytes", "resp", "reset_after",
                 "resp_acked", "s0", "ever_installed", "adopted", "fe_acked", "rtx", "rtx_at", "rtx_tries",
                 "want_offload", "reinserted", "bad_request",
                 "start_certain", "requests", "ack_held", "kernel", "kbase", "tried", "alog")

    def __init__(self, key: Key, s: int, opts: cookie.ClientOptions, parser: RequestStream):
        self.key = key
        self.state = State.HEADER
        self.c = 0                  # client ISN of the current back-end connection
        self.s = s                  # "switch ISN" of the current back-end connection
        self.s0 = s                 # the cookie: start of the client's view of the server stream
        self.ever_installed = False
        self.adopted = 0            # 1: taken over without its start (see Engine._adopt); 2: checked
        self.fe_acked: int | None = None  # client bytes up to here acknowledged by us, not the back-end
        self.rtx: list[Segment] | None = None  # released segments we acknowledged: resent until confirmed
        self.rtx_at = 0.0
        self.rtx_tries = 0
        self.want_offload = False
        self.reinserted = False
        self.bad_request: str | None = None  # HEADER: a parse error at a start that was a guess
        self.start_certain = False  # the stream's first segment began with a whole method and SP
        self.requests = 0           # request headers routed on this client connection
        self.ack_held: list[Segment | None] | None = None  # [to back-end, to client]: see Engine._hold
        self.kernel = False         # the kernel path relays it (handover.py); the engine waits for it back
        self.kbase = 0              # slow_srv_bytes when handed over (the kernel counts from there)
        self.tried: tuple[int, ...] = ()  # back-ends whose splice SYN failed for this request (redispatch)
        self.alog = None            # the access log's record of the current request (access_log.py)
        self.opts = opts
        self.nxt: int | None = None  # next in-order client sequence number to parse
        self.ooo: dict[int, Segment] = {}
        self.ooo_bytes = 0
        self.held: list[Segment] = []
        self.held_bytes = 0
        self.parser = parser
        self.parser_idle = True
        self.req_ack = seq_add(s, 1)  # client's ack on the current request = where the response starts
        self.req_start = 0
        self.last_req_ack: int | None = None
        self.pipelined = False
        self.holding = False
        self.backend: int | None = None
        self.rule: CompiledRule | None = None
        self.deadline = 0.0
        self.tries = 0
        self.cli_fin = False
        self.srv_fin = False
        self.srv_end = seq_add(s, 1)  # highest back-end seq seen (switch space)
        self.cli_ack = seq_add(s, 1)
        self.offload = Offload.NONE
        self.offload_gen = 0
        self.watch: ResponseWatcher | None = None
        self.watch_next = 0
        self.slow_srv_bytes = 0
        self.resp: Segment | None = None
        self.reset_after = False
        self.resp_acked = False


class Engine:
    def __init__(self, cfg: Deployment, kernel: bool = False, positions: Positions | None = None,
                 counts: tuple[MutableSequence[int], MutableSequence[int]] | None = None):
        """`kernel`: the front-end's kernel path runs beside the engine (handover.py); `positions`
        and `counts`: the wheel positions the selectors walk and the connections per back-end
        (with the kernel-opened ones heard of): the kernel path's, so that both pick as one."""
        self.cfg = cfg
        self.fe = cfg.frontend
        self.vip = int(cfg.vip.address)
        self.vport = cfg.vip.port
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
        self.rules = RuleSet(cfg)
        names = [b.name for b in cfg.hosts.backends]
        self.rule_list = self.rules.all()      # by rule index (the kernel path's REQUEST events)
        self.selectors = {r.index: Selector(r, names, [b.weight for b in cfg.hosts.backends], self.positions)
                          for r in self.rule_list}
        self.pools = Pools(cfg.hosts.backends)
        self._coalesce_s = cfg.frontend.ack_coalesce_ms / 1000.0

    # ---------------------------------------------------------------- events in

    def segment(self, seg: Segment, now: float) -> list[Action]:
        out: list[Action] = []
        self._now = now
        if seg.dst == self.vip and seg.dport == self.vport:
            key = (seg.src, seg.sport)
            f = seg.flags
            if f & RST:
                ev = Ev.C_RST
            elif f & SYN:
                ev = Ev.C_SYN
            elif seg.payload or f & FIN:
                ev = Ev.C_DATA
            else:
                ev = Ev.C_ACK
            b = None
        else:
            b = self.by_service.get((seg.src, seg.sport))
            if b is None or seg.dst == self.vip:   # the VIP is nobody's client: never adopt or relay to it
                self.stats.drops["not_ours"] += 1
                return out
            key = (seg.dst, seg.dport)
            f = seg.flags
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

    def offload_result(self, client_ip: int, client_port: int, gen: int, status: str,
                       now: float) -> list[Action]:
        key = (client_ip, client_port)
        conn = self.conns.get(key)
        waiting = (conn is not None and conn.offload_gen == gen and conn.holding and conn.rule is not None
                   and conn.rule.offload_wait and conn.offload in (Offload.REQUESTED, Offload.QUEUED))
        out = self._offload_result(client_ip, client_port, gen, status, now)
        if waiting and self.conns.get(key) is conn and conn.offload not in (Offload.REQUESTED, Offload.QUEUED):
            # the request held for this entry goes now: on the fast path, or (refused) the slow one
            self._release_held(conn, out, now)  # type: ignore[arg-type]
            self._handover_key(key, out)
        return out

    def _offload_result(self, client_ip: int, client_port: int, gen: int, status: str,
                        now: float) -> list[Action]:
        """Answer of the switch controller to OffloadInsert `gen`: ok|exists|queued|table_full|
        installed|absent|error."""
        out: list[Action] = []
        key = (client_ip, client_port)
        conn = self.conns.get(key)
        present = status in ("ok", "exists", "installed")
        if conn is None or conn.offload_gen != gen or conn.offload is Offload.NONE:
            # Stale: the connection ended or dropped this request, and a delete went out after the
            # insert. An insert that completed late may have outlived that delete: delete again.
            if present and status == "installed" and (conn is None or conn.offload is Offload.NONE):
                out.append(OffloadDelete(client_ip, client_port))
            self.stats.offload["stale_result"] += 1
            return out
        if status == "exists" and not conn.reinserted:
            # Our connection is new, so the entry is a stale one of an earlier connection from
            # this client ip:port — perhaps to another back-end. Replace it (delete first: the
            # worker keeps the order), once.
            conn.reinserted = True
            out.append(OffloadDelete(client_ip, client_port))
            conn.offload = Offload.NONE
            self._insert(conn, out)
            self.stats.offload["replaced_stale"] += 1
            return out
        if present:
            if conn.alog is not None:
                conn.alog.fast = True
            if conn.offload is not Offload.INSTALLED:
                self.stats.offload["installed"] += 1
            conn.ever_installed = True
            conn.offload = Offload.INSTALLED
        elif status == "queued":
            if conn.offload is not Offload.INSTALLED:
                conn.offload = Offload.QUEUED
                self.stats.offload["queued"] += 1
        else:
            conn.offload = Offload.NONE
            self.stats.offload[f"refused_{status}"] += 1
        return out

    def switch_idle(self, keys: list[Key], now: float) -> list[Action]:
        """The switch reports offload entries without traffic. The entry goes; the connection
        falls back to the slow path and to the front-end's own idle timer."""
        out: list[Action] = []
        for key in keys:
            conn = self.conns.get(key)
            if conn is not None and conn.offload is not Offload.NONE:
                self._drop_offload(conn, out)
                conn.deadline = now + self.fe.idle_timeout_s
                self.stats.offload["idle_removed"] += 1
            elif conn is None:
                out.append(OffloadDelete(*key))
                self.stats.offload["idle_orphan"] += 1
        return out

    def set_health(self, backend: int, healthy: bool) -> None:
        self.healthy[backend] = healthy

    # ---------------------------------------------------------------- the kernel path (handover.py)

    def kernel_key(self, seg: Segment) -> Key | None:
        """The key of `seg`'s connection if the kernel holds it: the adapter must take it back
        (take_back) before giving us the segment."""
        if not self.kernel:
            return None
        key = (seg.src, seg.sport) if seg.dst == self.vip and seg.dport == self.vport else (seg.dst, seg.dport)
        conn = self.conns.get(key)
        return key if conn is not None and conn.kernel else None

    def take_back(self, key: Key, entry: KernelEntry | None, now: float) -> list[Action]:
        """The adapter removed the connection's kernel entry (`None`: the kernel had removed it
        itself, and its event was handled or lost): the engine owns the connection again."""
        out: list[Action] = []
        conn = self.conns.get(key)
        if conn is None or not conn.kernel:
            return out
        conn.kernel = False
        self.stats.events["kernel_take_back"] += 1
        if entry is not None and entry.phase is Phase.SYN_SENT:
            if entry.held is not None:      # the request the kernel held, as the engine holds it
                conn.held, conn.held_bytes = [entry.held], len(entry.held.payload)
            return out
        if entry is not None:
            if conn.state is State.SYN_SENT:
                self._kernel_spliced(conn, now)
            self._merge_kernel(conn, entry.cli_ack, entry.srv_end, entry.cli_fin, entry.cli_nxt, entry.srv_fin,
                               entry.to_client_bytes)
            self._maybe_closing(conn, now, out)
        return out

    def kernel_checked(self, key: Key, entry: KernelEntry | None, now: float) -> list[Action]:
        """Answer to KernelCheck: the connection taken back, with how long the kernel saw it idle."""
        out = self.take_back(key, entry, now)
        conn = self.conns.get(key)
        if conn is None:
            return out
        idle = entry.idle_s if entry is not None else self.fe.idle_timeout_s
        left = self.fe.idle_timeout_s - idle
        if conn.state is State.SPLICED and left > 0:
            conn.deadline = now + left
            self._handover(conn, out, idle)     # still idle since then, as far as the kernel knows
        else:
            self._timeout(conn, now, out)
            self._handover_key(key, out)
        return out

    def kernel_event(self, ev: KernelEvent, now: float) -> list[Action]:
        """A record from the kernel path's ring buffer."""
        out: list[Action] = []
        kind = ev.kind
        if kind is EvKind.REQUEST and ev.req_flags & REQ_FIRST:
            self._kernel_opened(ev, now, out)
            return out
        conn = self.conns.get(ev.key)
        if conn is None or not conn.kernel:
            self.stats.events["kernel_event_stale"] += 1
            return out
        if conn.state is State.SYN_SENT:     # anything after the SYN means the back-end answered
            self._kernel_spliced(conn, now)
        if kind is EvKind.REQUEST:
            self._kernel_request(conn, ev, now)
        elif kind is EvKind.COPY:
            if conn.watch is not None and ev.seq == conn.watch_next:
                self._watch_response(conn, ev.seq, ev.payload_len, ev.data, out)
        elif kind is EvKind.CLOSING:
            self._merge_kernel(conn, ev.cli_ack, ev.srv_end, True, ev.cli_nxt, True, ev.to_client_bytes)
            self._maybe_closing(conn, now, out)
        else:   # a RST either way, relayed; the kernel removed its entry
            conn.kernel = False
            self._merge_kernel(conn, ev.cli_ack, ev.srv_end, False, 0, False, ev.to_client_bytes)
            self.stats.events["client_rst" if kind is EvKind.CLIENT_RST else "backend_rst"] += 1
            self._forget(conn, out)
        return out

    def _kernel_opened(self, ev: KernelEvent, now: float, out: list[Action]) -> None:
        """The kernel took a new connection's first request and sent the splice SYN (DESIGN.md §3
        steps 2-3): the same books as `_no_flow`, `_in_order` and `_route` keep for it."""
        key = ev.key
        old = self.conns.get(key)
        if old is not None:
            if not old.kernel:      # cannot be: the engine's connections carry a marker
                self.stats.events["kernel_conflict"] += 1
                return
            # The client reused the port of a connection lingering in the kernel (closed both
            # ways): the kernel took it for a new one, as _new_incarnation would.
            self.stats.events["port_reused"] += 1
            old.kernel = False
            self._forget(old, out, kernel_entry=False)
        s = seq_add(ev.cli_ack, -1)
        conn = Conn(key, s, cookie.decode_options((ev.req_flags >> 8) & 0x7F),
                    RequestStream(self.fe.max_header_bytes))
        conn.kernel = conn.start_certain = True
        self.conns[key] = conn
        self.stats.events["new_conn"] += 1
        self._kernel_request(conn, ev, now)
        self._set_backend(conn, ev.backend)
        conn.tried = (ev.backend,)
        self.heard[ev.backend] += 1     # the kernel counted it when it opened it
        conn.c, conn.s = seq_add(ev.seq, -1), s
        conn.state = State.SYN_SENT
        conn.deadline = now + self.fe.syn_retransmit_s

    def _kernel_request(self, conn: Conn, ev: KernelEvent, now: float) -> None:
        """A request the kernel routed (a first one, or a keep-alive one it relayed to the
        connection's back-end, step 8): the books `_in_order` and `_route` keep for it."""
        conn.nxt = seq_add(ev.seq, ev.payload_len)
        conn.cli_ack = conn.req_ack = conn.last_req_ack = ev.cli_ack
        conn.req_start = ev.seq
        conn.pipelined = False
        if conn.alog is not None:       # the previous response is over
            self.alog.finish(conn, now)  # type: ignore[union-attr]
        # (a request routed by the rules before a reload replaced them: counted under the default)
        rule = self.rule_list[ev.rule] if ev.rule < len(self.rule_list) else self.rules.default
        self.stats.requests_rule[rule.name] += 1
        self.stats.requests_backend[ev.backend] += 1
        conn.requests += 1
        conn.rule = rule
        if self.alog is not None and ev.data:    # the kernel copied the request up for the log
            head = next((e[1] for e in RequestStream(self.fe.max_header_bytes).feed(ev.data) if e[0] == "head"), None)
            if head is not None:
                self.alog.request(conn, head, rule.name, now)
                if conn.alog is not None:
                    conn.alog.backend = ev.backend
        self._watch(conn, rule)
        if ev.req_flags & (REQ_CLOSE | REQ_HTTP10):
            # The engine's parser never saw the request: give it the framing it would have left
            # (a close after it), so that what follows is judged as it would be.
            conn.parser.after_request(bool(ev.req_flags & REQ_HTTP10), bool(ev.req_flags & REQ_CLOSE),
                                      bool(ev.req_flags & REQ_KEEP))

    def _kernel_spliced(self, conn: Conn, now: float) -> None:
        """The kernel released the held request on the back-end's SYN-ACK (step 5): what
        `_backend_synack` does, but for the request (the kernel sent it)."""
        conn.state = State.SPLICED
        conn.deadline = now + self.fe.idle_timeout_s

    def handover_refused(self, key: Key) -> None:
        """The kernel's table is full: the engine keeps relaying the connection."""
        conn = self.conns.get(key)
        if conn is not None and conn.kernel:
            conn.kernel = False
            self.stats.events["kernel_full"] += 1

    def kernel_held(self) -> int:
        return sum(1 for c in self.conns.values() if c.kernel)

    def _handover_key(self, key: Key, out: list[Action]) -> None:
        conn = self.conns.get(key)
        if conn is not None:
            self._handover(conn, out)

    def _handover(self, conn: Conn, out: list[Action], idle_s: float = 0.0) -> None:
        """Give an established connection to the kernel when nothing in it waits for the engine:
        no request being collected, nothing held, reordered or owed to the back-end. Put first,
        so the entry is in place before the segments of this step leave. Offloaded connections
        too: the switch carries their responses and ACKs, and the kernel routes their next
        requests (the entry says so, and that no offload decision is left)."""
        if (not self.kernel or conn.kernel or conn.state not in (State.SPLICED, State.CLOSING) or conn.rtx is not None
                or conn.holding or conn.ooo or conn.ack_held is not None or conn.backend is None
                or conn.nxt is None):
            return
        ip, port = self.backends[conn.backend]
        w = conn.watch is not None
        # The kernel may route the next request when the engine's parser waits for one and the
        # connection may carry it (not a tunnel, not adopted mid-stream, not closing).
        route = (conn.state is State.SPLICED and not conn.cli_fin and conn.parser_idle and not conn.parser.tunnel
                 and not conn.parser.closed and not conn.adopted and conn.bad_request is None)
        entry = KernelEntry(ip, port, conn.nxt, conn.cli_ack, conn.srv_end, conn.cli_fin, conn.srv_fin,
                            conn.state is State.CLOSING, conn.watch_next if w else 0, WATCH_COPIES if w else 0,
                            idle_s=idle_s, route_ok=route, last_req_ack=conn.last_req_ack,
                            requests=conn.requests, backend=conn.backend,
                            offloaded=conn.offload is not Offload.NONE)
        conn.kernel = True
        conn.kbase = conn.slow_srv_bytes
        self.stats.events["kernel_handover"] += 1
        out.insert(0, KernelHandover(conn.key, entry))

    @staticmethod
    def _merge_kernel(conn: Conn, cli_ack: int, srv_end: int, cli_fin: bool, cli_nxt: int, srv_fin: bool,
                      to_client_bytes: int) -> None:
        """What the kernel relayed while it held the connection, as the engine would have seen it."""
        if seq_diff(cli_ack, conn.cli_ack) > 0:
            conn.cli_ack = cli_ack
        if seq_diff(srv_end, conn.srv_end) > 0:
            conn.srv_end = srv_end
        if conn.nxt is not None and seq_diff(cli_nxt, conn.nxt) > 0:
            conn.nxt = cli_nxt      # requests the kernel routed, or the client's FIN
        if cli_fin and not conn.cli_fin:
            conn.cli_fin = True
            conn.nxt = cli_nxt
        if srv_fin:
            conn.srv_fin = True
        conn.slow_srv_bytes = conn.kbase + to_client_bytes

    # ---------------------------------------------------------------- helpers

    def keys(self, now: float) -> tuple[cookie.CookieKey, ...]:
        g = int(now // self._cookie.rotate_seconds)
        if g != self._keys_gen:
            self._keys = cookie.keys_at(self._cookie.secret, now, self._cookie.rotate_seconds)
            self._keys_gen = g
        return self._keys

    def _to_backend(self, conn: Conn, seg: Segment, out: list[Action], hold: bool = False) -> None:
        ip, port = self.backends[conn.backend]  # type: ignore[index]
        new = Segment(seg.src, seg.sport, ip, port, seg.seq, seg.ack, seg.flags, seg.window, seg.options,
                      seg.payload)
        if conn.ack_held is not None:
            self._supersede(conn, 0, new, out)
        if hold:
            self._hold(conn, 0, new)
            return
        out.append(Send(new, "backend"))
        self.stats.bytes["slow_to_backend"] += len(seg.payload)

    def _to_client(self, seg: Segment, out: list[Action], conn: Conn | None = None, hold: bool = False) -> None:
        new = Segment(self.vip, self.vport, seg.dst, seg.dport, seg.seq, seg.ack, seg.flags, seg.window,
                      seg.options, seg.payload)
        if conn is not None and conn.ack_held is not None:
            self._supersede(conn, 1, new, out)
        if hold:
            self._hold(conn, 1, new)  # type: ignore[arg-type]
            return
        out.append(Send(new, "client"))
        self.stats.bytes["slow_to_client"] += len(seg.payload)

    # ACK coalescing. A pure ACK that acknowledges everything the other side has sent (as far as
    # we relayed it) cannot hold that side back: it has nothing in flight. So it may wait a few
    # ms: the segment that usually follows in the same direction (the back-end's response after
    # its ACK of the request; the client's FIN after its ACK of the back-end's FIN) carries the
    # same ack and makes it redundant — one front-end crossing less. Held at most
    # `ack_coalesce_ms`, far below any retransmission timeout (200 ms at least). Not while an
    # offload entry is asked for or in place: the segment that would supersede it may then pass
    # the switch instead of us, and the held ACK would arrive late and stale.

    def _hold(self, conn: Conn, d: int, seg: Segment) -> None:
        if conn.ack_held is None:
            conn.ack_held = [None, None]
        if conn.ack_held[d] is not None:
            self.stats.events["ack_coalesced"] += 1   # replaced by a newer one
        conn.ack_held[d] = seg
        if conn.key not in self._held:
            self._held[conn.key] = (self._now + self._coalesce_s, conn)

    def _supersede(self, conn: Conn, d: int, new: Segment, out: list[Action]) -> None:
        """`new` goes the way of a held ACK: the held one is redundant if `new` acknowledges as
        much, else it goes first."""
        held = conn.ack_held[d]  # type: ignore[index]
        if held is None:
            return
        conn.ack_held[d] = None  # type: ignore[index]
        if conn.ack_held[1 - d] is None:  # type: ignore[index]
            self._discard_acks(conn)
        if new.flags & ACK and seq_diff(new.ack, held.ack) >= 0:
            self.stats.events["ack_coalesced"] += 1
        else:
            out.append(Send(held, "backend" if d == 0 else "client"))

    def _discard_acks(self, conn: Conn) -> None:
        """The connection ends or answers itself: its held ACKs are no use any more."""
        if conn.ack_held is not None:
            conn.ack_held = None
            self._held.pop(conn.key, None)

    def _release_acks(self, conn: Conn, out: list[Action]) -> None:
        held, conn.ack_held = conn.ack_held, None
        if held is not None:
            for d, seg in enumerate(held):
                if seg is not None:
                    out.append(Send(seg, "backend" if d == 0 else "client"))

    def _rst_backend(self, conn: Conn, seq: int, out: list[Action]) -> None:
        ip, port = self.backends[conn.backend]  # type: ignore[index]
        out.append(Send(Segment(conn.key[0], conn.key[1], ip, port, seq, 0, RST, 0), "backend"))

    def _rst_client(self, conn: Conn, out: list[Action]) -> None:
        out.append(Send(Segment(self.vip, self.vport, conn.key[0], conn.key[1], conn.cli_ack,
                                conn.nxt or 0, RST | ACK, 0), "client"))

    def _syn(self, conn: Conn, out: list[Action]) -> None:
        ip, port = self.backends[conn.backend]  # type: ignore[index]
        o = conn.opts
        # ACK flag off: the agent reads the raw ack field (s) and clears it (DESIGN.md step 4).
        out.append(Send(Segment(conn.key[0], conn.key[1], ip, port, conn.c, conn.s, SYN, 65535,
                                syn_options(o.mss, o.wscale, o.sack)), "backend"))

    def _insert(self, conn: Conn, out: list[Action]) -> None:
        if conn.offload is not Offload.NONE or conn.backend is None:
            return
        if conn.rtx is not None:     # the back-end's ACKs would bypass us: confirm first
            conn.want_offload = True
            return
        self._gen += 1
        conn.offload_gen = self._gen
        conn.offload = Offload.REQUESTED
        out.append(OffloadInsert(conn.key[0], conn.key[1], conn.backend, self._gen))
        self.stats.offload["requested"] += 1

    def _drop_offload(self, conn: Conn, out: list[Action]) -> None:
        if conn.offload is not Offload.NONE:
            out.append(OffloadDelete(*conn.key))
            conn.offload = Offload.NONE
            self.stats.offload["deleted"] += 1

    def _set_backend(self, conn: Conn, b: int | None) -> None:
        if conn.backend is not None:
            self.active[conn.backend] -= 1
        conn.backend = b
        if b is not None:
            self.active[b] += 1

    def _forget(self, conn: Conn, out: list[Action], kernel_entry: bool = True) -> None:
        """`kernel_entry` False: the kernel already put a new connection's entry in its place."""
        if conn.alog is not None:
            self.alog.finish(conn, self._now)  # type: ignore[union-attr]
        if self.kernel and kernel_entry:    # its entry, or the marker that kept the kernel off it
            conn.kernel = False
            out.append(KernelRemove(conn.key, conn.nxt if conn.cli_fin else None))
        self._drop_offload(conn, out)
        self._discard_acks(conn)
        if conn.ever_installed:
            # Server bytes the client acknowledged minus those we relayed: what took the fast path.
            total = seq_diff(conn.cli_ack, seq_add(conn.s0, 1))
            if total > conn.slow_srv_bytes:
                self.stats.bytes["offloaded_est"] += total - conn.slow_srv_bytes
        self._set_backend(conn, None)
        self.conns.pop(conn.key, None)
        self._recent[conn.key] = self._now + self.fe.close_linger_s
        self._recent.move_to_end(conn.key)
        if len(self._recent) > 65536:
            self._recent.popitem(last=False)

    # ---------------------------------------------------------------- no connection yet

    def _no_flow(self, seg: Segment, key: Key, ev: Ev, now: float, out: list[Action]) -> None:
        st = self.stats
        if ev is Ev.C_ACK:
            st.events["handshake_ack"] += 1      # step 1: the switch's handshake; nothing to do
            return
        if ev in (Ev.B_SEG, Ev.B_RST) and self._recent.get(key, 0.0) > now:
            st.drops["after_close"] += 1        # a straggler of a connection we just ended
            return
        if ev is Ev.B_SEG and (seg.payload or seg.flags & FIN):
            self._adopt(seg, key, now, out)
            return
        if ev is Ev.B_RST:
            self._to_client(seg, out)           # whoever held the flow is gone; the client must know
            st.events["orphan_rst_relayed"] += 1
            return
        if ev is not Ev.C_DATA:
            st.drops[f"no_flow:{ev.value}"] += 1
            return
        if not seg.flags & ACK:
            st.drops["no_ack_flag"] += 1
            return
        s = seq_add(seg.ack, -1)
        opts = cookie.check_cookie(s, self.keys(now), key[0], key[1], self.vip, self.vport,
                                   cookie.bucket_of(now, self._cookie.bucket_seconds))
        if opts is None:
            st.drops["bad_cookie"] += 1
            return
        if not seg.payload:
            # A FIN before any request: nobody holds state; answer it without creating any.
            out.append(Send(Segment(self.vip, self.vport, key[0], key[1], seg.ack, seg.end, FIN | ACK, 1024),
                            "client"))
            st.events["early_fin"] += 1
            return
        if len(self.conns) >= self.fe.max_connections:
            # Refused, and told so at once (no state taken): a silent drop would leave the client
            # retransmitting its request until it gives up.
            st.drops["conn_limit"] += 1
            out.append(Send(Segment(self.vip, self.vport, key[0], key[1], seg.ack, seg.end, RST | ACK, 0), "client"))
            if self.kernel:
                out.append(KernelRemove(key))   # the marker the kernel left when it passed it up
            return
        conn = Conn(key, s, opts, RequestStream(self.fe.max_header_bytes))
        conn.deadline = now + self.fe.header_timeout_s
        self.conns[key] = conn
        if self.kernel:
            out.append(KernelMark(key))
        st.events["new_conn"] += 1
        self._client_stream(conn, seg, now, out)

    def _adopt(self, seg: Segment, key: Key, now: float, out: list[Action]) -> None:
        """A back-end sends data or FIN on a connection we hold no state for: the front-end that
        spliced it died or restarted (its buckets moved here), or it was offloaded and we forgot
        it. The flow is genuine (the switch steered it from a back-end's service port), so take it
        over: relay it, treat its offload entry as present (deleted when it ends), relay the
        client's side. What we cannot know — the client's SYN options — only forbids re-routing
        it to another back-end."""
        if len(self.conns) >= self.fe.max_connections:
            self.stats.drops["conn_limit"] += 1
            return
        b = self.by_service[(seg.src, seg.sport)]
        conn = Conn(key, seq_add(seg.seq, -1), _UNKNOWN_OPTS, RequestStream(self.fe.max_header_bytes))
        conn.adopted = 1
        conn.state = State.SPLICED
        conn.nxt = conn.req_start = seg.ack        # what the back-end expects next from the client
        conn.cli_ack = seg.seq
        conn.req_ack = seg.seq
        self._set_backend(conn, b)
        self._gen += 1
        conn.offload_gen = self._gen
        conn.offload = Offload.INSTALLED
        conn.deadline = now + self.fe.idle_timeout_s
        self.conns[key] = conn
        if self.kernel:
            out.append(KernelMark(key))
        self.stats.events["adopted"] += 1
        self._backend_segment(conn, seg, now, out)

    # ---------------------------------------------------------------- client stream

    def _client_stream(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        """A client segment with payload or FIN: put it in order, then parse and dispose of it."""
        if conn.nxt is None:  # HEADER: where does the client's stream begin?
            if conn.ooo or not looks_like_request_start(seg.payload):
                self._find_start(conn, seg, now, out)
                return
            conn.c = seq_add(seg.seq, -1)
            conn.nxt = conn.req_start = seg.seq
            conn.start_certain = request_start_certain(seg.payload)
        d = seq_diff(seg.seq, conn.nxt)  # type: ignore[arg-type]
        if conn.state is State.SPLICED and seg.payload and self._reincarnated(conn, seg, d, now):
            # The client's port was reused for a new connection while we still held the old one
            # (one we adopted after a restart, whose client had gone): free the old back-end
            # connection and start the new one, never hand its request to the old stream.
            self.stats.events["port_reused"] += 1
            self._rst_backend(conn, conn.nxt, out)  # type: ignore[arg-type]
            self._forget(conn, out)
            self._no_flow(seg, conn.key, Ev.C_DATA, now, out)
            return
        if d > 0:  # a gap before it: hold until the gap fills
            if d > MAX_WINDOW_AHEAD:
                self.stats.drops["out_of_window"] += 1
            else:
                self._stash(conn, seg)
            return
        if conn.state is State.HEADER and seq_diff(seg.seq, conn.req_start) < 0:
            self._rebase(conn, seg, now, out)
            return
        if seq_diff(seg.end, conn.nxt) <= 0:  # type: ignore[arg-type]
            self._duplicate(conn, seg, out, now)
            return
        self._in_order(conn, seg, -d, now, out)
        while conn.ooo and self.conns.get(conn.key) is conn and conn.state is not State.RESPONDED:
            nxt = conn.nxt
            ready = [k for k in conn.ooo if seq_diff(k, nxt) <= 0]  # type: ignore[arg-type]
            if not ready:
                break
            k = min(ready, key=lambda k: seq_diff(k, nxt))  # type: ignore[arg-type]
            s2 = conn.ooo.pop(k)
            conn.ooo_bytes -= len(s2.payload)
            if seq_diff(s2.end, nxt) <= 0:  # type: ignore[arg-type]
                self._duplicate(conn, s2, out, now)
                continue
            self._in_order(conn, s2, -seq_diff(s2.seq, nxt), now, out)  # type: ignore[arg-type]

    def _reincarnated(self, conn: Conn, seg: Segment, d: int, now: float) -> bool:
        """Client data that is no part of this stream (neither a retransmission within 16 MB
        behind it nor data in the window ahead) and acknowledges a valid cookie of ours for this
        ip:port: the first request of a new connection on a reused port. Without the cookie it
        is ignored as before (a blind segment cannot end a connection)."""
        if -(1 << 24) < d <= MAX_WINDOW_AHEAD:
            return False
        key = conn.key
        return cookie.check_cookie(seq_add(seg.ack, -1), self.keys(now), key[0], key[1], self.vip, self.vport,
                                   cookie.bucket_of(now, self._cookie.bucket_seconds)) is not None

    def _stash(self, conn: Conn, seg: Segment) -> None:
        if seg.seq in conn.ooo:
            self.stats.drops["dup_ooo"] += 1
            return
        if conn.ooo_bytes + len(seg.payload) > self.fe.max_held_bytes:
            self.stats.drops["reorder_full"] += 1
            return
        conn.ooo[seg.seq] = seg
        conn.ooo_bytes += len(seg.payload)
        self.stats.events["out_of_order"] += 1

    def _duplicate(self, conn: Conn, seg: Segment, out: list[Action], now: float) -> None:
        """Data we have already seen: a retransmission. Once spliced, the back-end must see it
        (its ACK may have been lost); data of a request we hold is ours to deliver."""
        held = conn.state in (State.HEADER, State.SYN_SENT) or (
            conn.holding and seq_diff(seg.end, conn.req_start) > 0)
        if not held:
            self._to_backend(conn, seg, out)
            return
        self.stats.drops["dup_held"] += 1
        if conn.fe_acked is not None and conn.state is not State.SYN_SENT and conn.parser.in_header:
            self._ack_client(conn, out)      # our ACK was lost

    def _find_start(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        """The stream's first byte is not known yet: wait for a segment that looks like the
        start of a request and has no lower segment before it (its predecessor may be lost)."""
        self._stash(conn, seg)
        if not conn.ooo:     # refused (larger than max_held_bytes; counted): nothing to start from yet
            return
        first = min(conn.ooo.values(), key=lambda x: seq_diff(x.seq, seg.seq))
        if looks_like_request_start(first.payload):
            del conn.ooo[first.seq]
            conn.ooo_bytes -= len(first.payload)
            conn.c = seq_add(first.seq, -1)
            conn.nxt = conn.req_start = first.seq
            conn.start_certain = request_start_certain(first.payload)
            conn.deadline = now + self.fe.header_timeout_s
            self._client_stream(conn, first, now, out)
        else:
            conn.deadline = min(conn.deadline, now + self.fe.reorder_grace_s)

    def _rebase(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        """A segment below what we took for the stream's start: the real first segment was late.
        Nothing has been decided yet in HEADER, so start over from everything held."""
        self.stats.events["rebase"] += 1
        segs = [*conn.held, *conn.ooo.values(), seg]
        conn.held, conn.held_bytes, conn.ooo, conn.ooo_bytes = [], 0, {}, 0
        conn.nxt = None
        conn.parser = RequestStream(self.fe.max_header_bytes)
        conn.parser_idle, conn.last_req_ack, conn.pipelined = True, None, False
        conn.bad_request = None
        for s in sorted(segs, key=lambda x: seq_diff(x.seq, seg.seq)):
            if self.conns.get(conn.key) is not conn or conn.state is not State.HEADER:
                break
            self._client_stream(conn, s, now, out)

    def _in_order(self, conn: Conn, seg: Segment, overlap: int, now: float, out: list[Action]) -> None:
        """`seg` continues the client stream at conn.nxt; its first `overlap` bytes were seen."""
        new = seg.payload[overlap:] if overlap else seg.payload
        holding_state = conn.state in (State.HEADER, State.SYN_SENT)
        if (holding_state or conn.holding) and conn.held_bytes + len(seg.payload) > \
                self.fe.max_held_bytes + self.fe.max_header_bytes:
            self.stats.drops["hold_full"] += 1   # not consumed: the client will retransmit it
            return
        conn.nxt = seg.end
        start = seq_add(seg.seq, overlap)
        if seg.flags & FIN:
            conn.cli_fin = True
        conn.cli_ack = seg.ack if seg.flags & ACK else conn.cli_ack
        if conn.bad_request is not None:        # waiting for a rebase or the 400
            conn.held.append(seg)
            conn.held_bytes += len(seg.payload)
            return
        if new and conn.adopted == 1:
            # Taken over mid-stream: parse only if this is where a request starts.
            conn.adopted = 2
            if not looks_like_request_start(new):
                conn.parser.tunnel = True
        if new:
            was_idle = conn.parser_idle
            try:
                events = conn.parser.feed(new)
            except HttpError as e:
                if e.status == 400 and conn.state is State.HEADER and not conn.start_certain:
                    # The stream's start was only guessed (a short segment that may be the tail of
                    # a method): a lower segment may still arrive and restart the parse.
                    conn.bad_request = e.reason
                    conn.deadline = min(conn.deadline, now + self.fe.reorder_grace_s)
                    conn.held.append(seg)
                    conn.held_bytes += len(seg.payload)
                    return
                self._refuse(conn, e.status, e.reason, now, out)
                return
            for i, ev in enumerate(events):
                kind = ev[0]
                if kind == "begin":
                    conn.parser_idle = False
                    at_start = was_idle and i == 0
                    conn.pipelined = (not at_start) or (conn.last_req_ack is not None
                                                        and seg.ack == conn.last_req_ack)
                    conn.last_req_ack = seg.ack
                    if not conn.pipelined:
                        conn.req_ack = seg.ack
                        if conn.alog is not None:   # the previous response is over
                            self.alog.finish(conn, now)  # type: ignore[union-attr]
                        conn.req_start = start
                        if conn.state is State.SPLICED:
                            conn.holding = True
                elif kind == "head":
                    if not self._route(conn, ev[1], now, out):
                        return
                elif kind == "end":
                    conn.parser_idle = True
                elif kind == "upgrade":
                    conn.parser_idle = True   # a tunnel from here on: relayed unparsed
        # dispose of the segment
        if conn.state in (State.HEADER, State.SYN_SENT) or conn.holding:
            conn.held.append(seg)
            conn.held_bytes += len(seg.payload)
            if conn.state is State.HEADER and conn.cli_fin:
                self._refuse(conn, 400, "request incomplete at FIN", now, out)
            elif conn.parser.in_header and conn.offload is Offload.NONE:
                self._ack_client(conn, out)
        else:
            self._to_backend(conn, seg, out)
            self._maybe_closing(conn, now, out)

    def _route(self, conn: Conn, head, now: float, out: list[Action]) -> bool:
        """A request header is complete: pick its back-end. False if the connection was closed."""
        rule = self.rules.match(head)
        sel = self.selectors[rule.index]
        self.stats.requests_rule[rule.name] += 1
        conn.requests += 1
        if self.alog is not None:
            self.alog.request(conn, head, rule.name, now)
        cur = conn.backend
        keep = cur is not None and cur in rule.pool and self.healthy[cur] and not self.pools.drain[cur]
        if conn.pipelined and cur is not None:
            if keep:
                self.stats.requests_backend[cur] += 1
                self.stats.events["pipelined"] += 1
                return True
            # Another back-end would need the earlier responses finished first: refuse cleanly.
            self.stats.drops["pipelined_reroute"] += 1
            self._abort_both(conn, out)
            return False
        if keep and sel.sticky:
            b: int | None = cur
        else:
            b = sel.pick(self.pools.eligible(self.healthy, self.active), self.active, conn.key[0], head)
        if conn.adopted and b != cur:
            # No client options for a new back-end SYN: keep the back-end if the rule allows it.
            if cur is not None and cur in rule.pool:
                b = cur
            else:
                self.stats.drops["adopted_reroute"] += 1
                self._abort_both(conn, out)
                return False
        if b is None:
            self._refuse(conn, 503, self.pools.why_none(rule.pool, self.healthy, self.active), now, out)
            return False
        self.stats.requests_backend[b] += 1
        conn.rule = rule
        if conn.alog is not None:
            conn.alog.backend = b
        self._watch(conn, rule)
        if b == cur:
            if rule.offload_wait:
                self._insert_and_wait(conn, out, now)
                return True
            self._release_held(conn, out, now)
            if self._offload_now(conn) and (conn.alog is None or conn.watch is None):
                self._insert(conn, out)   # (with the access log: once its header was read)
            return True
        if cur is not None:  # step 8: re-route to another back-end
            self.stats.events["reroute"] += 1
            # The client asked again, so the old back-end got all we owed it.
            conn.rtx, conn.want_offload = None, False
            self._rst_backend(conn, conn.req_start, out)
            self._drop_offload(conn, out)
        self._set_backend(conn, b)
        conn.c = seq_add(conn.req_start, -1)
        conn.s = seq_add(conn.req_ack, -1)
        conn.state = State.SYN_SENT
        conn.holding = False
        conn.tries = 0
        conn.tried = (b,)
        conn.deadline = now + self.fe.syn_retransmit_s
        self._syn(conn, out)
        return True

    def _redispatch(self, conn: Conn, now: float, out: list[Action]) -> bool:
        """The splice SYN to conn.backend was refused or never answered: send it to another
        eligible back-end of the rule's pool (at most rule.redispatch times per request), with
        the same sequence numbers. False: none left, the caller answers 503."""
        rule = conn.rule
        if rule is None or conn.adopted or len(conn.tried) > rule.redispatch:
            return False
        b = self.pools.another(rule.pool, conn.tried, self.healthy, self.active)
        if b is None:
            return False
        self._set_backend(conn, b)
        conn.tried += (b,)
        conn.tries = 0
        conn.deadline = now + self.fe.syn_retransmit_s
        self.stats.events["redispatch"] += 1
        self.stats.requests_backend[b] += 1
        if conn.alog is not None:
            conn.alog.backend = b
        self._syn(conn, out)
        return True

    def _watch(self, conn: Conn, rule: CompiledRule) -> None:
        """Read the request's response header: for `auto` (Content-Length), or for the access log."""
        if (rule.offload == "auto" and conn.offload is Offload.NONE and not self._offload_now(conn)
                or conn.alog is not None):
            conn.watch = ResponseWatcher(self.fe.max_header_bytes)
            conn.watch_next = conn.req_ack
        else:
            conn.watch = None

    @staticmethod
    def _offload_now(conn: Conn) -> bool:
        """Offload as soon as the back-end connection is up: `always`, or `auto` on a keep-alive
        connection that has carried `offload_after_requests` requests. Such a connection is worth
        an entry whatever its response sizes: its responses and the client's bare ACKs then take
        the switch, and only requests (with payload, step 8) still cross the front-end."""
        rule = conn.rule
        if rule is None:
            return False
        if rule.offload == "always":
            return True
        n = rule.offload_after_requests
        return rule.offload == "auto" and n > 0 and conn.requests >= n

    def _ack_client(self, conn: Conn, out: list[Action]) -> None:
        """Acknowledge a header still being collected. Nobody else can: without it a client that
        writes its header in pieces (Nagle) or beyond its first flight would wait forever. What
        we acknowledge, we must deliver: see `_release_held`."""
        conn.fe_acked = conn.nxt
        out.append(Send(Segment(self.vip, self.vport, conn.key[0], conn.key[1], conn.req_ack, conn.nxt,  # type: ignore
                                ACK, 512), "client"))
        self.stats.events["header_acked"] += 1

    def _release_held(self, conn: Conn, out: list[Action], now: float) -> None:
        for s in conn.held:
            self._to_backend(conn, s, out)
        if conn.fe_acked is not None and conn.held:
            # The client will not retransmit what we acknowledged: keep it until the back-end does.
            conn.rtx = conn.held
            conn.rtx_tries = 0
            conn.rtx_at = now + self.fe.response_rto_s
            conn.deadline = min(conn.deadline, conn.rtx_at)
        conn.held, conn.held_bytes, conn.holding = [], 0, False

    def _confirm(self, conn: Conn, seg: Segment, out: list[Action]) -> None:
        """A back-end segment acknowledging everything we acknowledged for it ends our duty."""
        if seg.flags & ACK and seq_diff(seg.ack, conn.fe_acked) >= 0:  # type: ignore[arg-type]
            conn.rtx, conn.fe_acked = None, None
            if conn.want_offload:
                conn.want_offload = False
                self._insert(conn, out)

    # ---------------------------------------------------------------- back-end side

    def _backend_synack(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        if seg.seq != conn.s or seg.ack != seq_add(conn.c, 1):
            self.stats.drops["bad_synack"] += 1
            return
        conn.state = State.SPLICED
        conn.deadline = now + self.fe.idle_timeout_s
        if conn.rule is not None and conn.rule.offload_wait:
            self._insert_and_wait(conn, out, now)
        else:
            self._release_held(conn, out, now)
            if self._offload_now(conn) and (conn.alog is None or conn.watch is None):
                self._insert(conn, out)   # (with the access log: once its header was read)
        self._maybe_closing(conn, now, out)

    def _insert_and_wait(self, conn: Conn, out: list[Action], now: float) -> None:
        """Prism's blocking table sync (rule `offload_wait`): every request gets a fresh entry
        (delete + insert: two table operations per request) and stays held until the switch
        confirms it (offload_result), so its whole response takes the switch; a refused insert
        releases it onto the slow path."""
        self._drop_offload(conn, out)
        self._insert(conn, out)
        if conn.offload is Offload.REQUESTED:
            conn.holding = True
            self.stats.offload["waited"] += 1
        else:
            self._release_held(conn, out, now)

    def _backend_segment(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        if conn.rtx is not None:
            self._confirm(conn, seg, out)
        if seq_diff(seg.end, conn.srv_end) > 0:
            conn.srv_end = seg.end
        if seg.payload:
            conn.slow_srv_bytes += len(seg.payload)
            if conn.watch is not None and seg.seq == conn.watch_next:
                self._watch_response(conn, seg.seq, len(seg.payload), seg.payload, out)
            if conn.alog is not None and conn.alog.resp_end is not None and conn.alog.total is None \
                    and seq_diff(seg.end, conn.alog.resp_end) >= 0:
                conn.alog.total = now - conn.alog.t0
        if seg.flags & FIN:
            conn.srv_fin = True
        # the back-end acknowledges a whole request (nothing more to come from the client for it)
        # before its response: that response will carry the same ack
        hold = (self._coalesce_s > 0 and seg.flags == ACK and not seg.payload and not seg.options
                and seg.ack == conn.nxt and conn.parser_idle and not conn.cli_fin and not conn.srv_fin
                and not conn.ooo and conn.offload is Offload.NONE)
        self._to_client(seg, out, conn, hold)
        self._maybe_closing(conn, now, out)

    def _watch_response(self, conn: Conn, seq: int, size: int, data: bytes, out: list[Action]) -> None:
        """The in-order response segment at `seq` (`size` bytes, of which `data` is the start):
        read its header for `auto` offload."""
        w = conn.watch
        assert w is not None
        conn.watch_next = seq_add(seq, size)
        unseen = size - len(data)     # a copy from the kernel path may be cut short
        cl = w.feed(data)
        if w.done:
            conn.watch = None
            rule = conn.rule
            if conn.alog is not None:
                self.alog.response(conn, w.status, cl, seq_diff(conn.watch_next, conn.req_ack) - unseen  # type: ignore
                                   - w.body_seen, self._now)
            # Only the bytes still to come can take the switch: a new connection's first
            # flight already carries ~14 KB, so a 64 KB response is nearly through.
            if (cl is not None and rule is not None and rule.offload == "auto"
                    and cl - w.body_seen - unseen >= rule.offload_threshold
                    or conn.alog is not None and self._offload_now(conn)):
                self._insert(conn, out)
        elif unseen:
            conn.watch = None         # the rest of the header is not ours to read
            if conn.alog is not None and self._offload_now(conn):
                self._insert(conn, out)

    def _backend_in_time_wait(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        """The back-end answered the splice SYN with a bare ACK: the same client ip:port was its
        peer a moment ago, and that connection is in TIME_WAIT there, with a SYN that is not
        "after" it (a re-route's SYN starts mid-stream; a reused port's ISN is random to it). A
        TIME_WAIT socket takes a RST at the sequence number its ACK asks for (RFC 1337's case,
        which Linux accepts by default): send that, then the SYN again at once, instead of waiting
        out the SYN timer and the back-end's 60 s of TIME_WAIT."""
        if seg.payload or seg.flags & (FIN | SYN) or not seg.flags & ACK or conn.tries > self.fe.syn_retries:
            self.stats.drops["protocol:syn_sent:backend_segment"] += 1
            return
        ip, port = self.backends[conn.backend]  # type: ignore[index]
        out.append(Send(Segment(conn.key[0], conn.key[1], ip, port, seg.ack, 0, RST, 0), "backend"))
        conn.tries += 1
        self.stats.events["backend_time_wait"] += 1
        self._syn(conn, out)

    def _backend_refused(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        self.stats.drops["backend_refused"] += 1
        if self._redispatch(conn, now, out):
            return
        self._refuse(conn, 503, "back-end refused the connection", now, out, rst_backend=False)

    def _backend_abort(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        self._to_client(seg, out, conn)
        self.stats.events["backend_rst"] += 1
        self._forget(conn, out)

    # ---------------------------------------------------------------- relaying and closing

    def _relay_to_backend(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        if seg.flags & ACK:
            conn.cli_ack = seg.ack
        # the client acknowledges all the back-end sent and may still send (its next request, its FIN)
        hold = (self._coalesce_s > 0 and seg.flags == ACK and not seg.options and conn.state is State.SPLICED
                and not conn.cli_fin and seg.ack == conn.srv_end and conn.offload is Offload.NONE)
        self._to_backend(conn, seg, out, hold)

    def _new_incarnation(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> bool:
        """A client port is reused while we still linger on its previous connection: a segment
        that is no retransmission of the old stream starts a new connection (the old one is done;
        relaying the new request to the old back-end would meet its TIME_WAIT)."""
        if conn.nxt is None:
            return False
        behind = seq_diff(conn.nxt, seg.seq)
        if 0 < behind < (1 << 24) and seq_diff(seg.end, conn.nxt) <= 0:
            return False
        self.stats.events["port_reused"] += 1
        self._forget(conn, out)
        self._no_flow(seg, conn.key, Ev.C_DATA, now, out)
        return True

    def _closing_client_data(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        if not self._new_incarnation(conn, seg, now, out):
            self._relay_to_backend(conn, seg, now, out)

    def _relay_to_client(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        self._to_client(seg, out, conn)

    def _maybe_closing(self, conn: Conn, now: float, out: list[Action]) -> None:
        if conn.state is State.SPLICED and conn.cli_fin and conn.srv_fin:
            conn.state = State.CLOSING
            conn.deadline = now + self.fe.close_linger_s
            self._drop_offload(conn, out)

    def _client_abort(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        if conn.backend is not None and conn.state in (State.SPLICED, State.CLOSING, State.SYN_SENT):
            self._to_backend(conn, seg, out)
        self.stats.events["client_rst"] += 1
        self._forget(conn, out)

    def _abort_both(self, conn: Conn, out: list[Action]) -> None:
        if conn.backend is not None and conn.state is not State.HEADER:
            self._rst_backend(conn, conn.req_start if conn.holding else (conn.nxt or 0), out)
        self._rst_client(conn, out)
        self._forget(conn, out)

    def _ignore(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        self.stats.events[f"ignored:{conn.state.value}"] += 1

    def _drop_conn(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        self._forget(conn, out)

    # ---------------------------------------------------------------- the front-end answers itself

    def _refuse(self, conn: Conn, status: int, reason: str, now: float, out: list[Action],
                rst_backend: bool = True) -> None:
        """Send `status` to the client from VIP:port at the start of the current response slot,
        with FIN; the back-end connection of this request (if any) is reset."""
        self.stats.responses_local[status] += 1
        self._discard_acks(conn)
        if conn.backend is not None:
            if rst_backend and conn.state in (State.SPLICED, State.SYN_SENT):
                seq = seq_add(conn.c, 1) if conn.state is State.SYN_SENT else conn.req_start
                self._rst_backend(conn, seq, out)
            self._set_backend(conn, None)
        self._drop_offload(conn, out)
        body = local_response(status, reason)
        if conn.alog is not None:
            self.alog.local(conn, status, len(body), now)  # type: ignore[union-attr]
        if conn.nxt is not None:
            ack = conn.nxt
        else:   # the stream's start was never found: acknowledge nothing of it
            ref = next(iter(conn.ooo), 0)
            ack = min(conn.ooo, key=lambda k: seq_diff(k, ref), default=seq_add(conn.c, 1))
        conn.resp = Segment(self.vip, self.vport, conn.key[0], conn.key[1], conn.req_ack, ack,
                            ACK | PSH | FIN, 1024, b"", body)
        conn.reset_after = status == 431
        conn.state = State.RESPONDED
        conn.held, conn.held_bytes, conn.ooo, conn.ooo_bytes = [], 0, {}, 0
        conn.tries = 0
        conn.deadline = now + self.fe.response_rto_s
        out.append(Send(conn.resp, "client"))

    def _responded_client(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        resp = conn.resp
        assert resp is not None
        if seg.payload and conn.resp_acked and self._new_incarnation(conn, seg, now, out):
            return
        if seg.payload:     # we answered this request ourselves: the rest of it goes nowhere
            self.stats.drops["after_response"] += 1
        if seg.flags & ACK and seq_diff(seg.ack, resp.end) >= 0:
            conn.resp_acked = True
            if conn.reset_after:
                out.append(Send(Segment(self.vip, self.vport, conn.key[0], conn.key[1], resp.end, 0, RST, 0),
                                "client"))
                self._forget(conn, out)
                return
            if seg.flags & FIN:
                out.append(Send(Segment(self.vip, self.vport, conn.key[0], conn.key[1], resp.end, seg.end,
                                        ACK, 1024), "client"))
                self._forget(conn, out)
                return
            conn.deadline = now + self.fe.close_linger_s
        elif seg.flags & FIN:
            # The client closed without having seen our answer: repeat it (timers do the rest).
            out.append(Send(resp, "client"))

    # ---------------------------------------------------------------- timers

    def _timeout(self, conn: Conn, now: float, out: list[Action]) -> None:
        st, fe = self.stats, self.fe
        state = conn.state
        if state is State.HEADER:
            if conn.nxt is None or conn.bad_request is not None:
                self._refuse(conn, 400, conn.bad_request or "no request start", now, out)
            else:
                st.drops["header_timeout"] += 1
                self._rst_client(conn, out)
                self._forget(conn, out)
        elif state is State.SYN_SENT:
            if conn.tries < fe.syn_retries:
                conn.tries += 1
                st.events["syn_retransmit"] += 1
                conn.deadline = now + fe.syn_retransmit_s * (1 << conn.tries)
                self._syn(conn, out)
            else:
                st.drops["backend_timeout"] += 1
                # the SYN-ACK may still come: the old back-end must not keep a half-open splice
                self._rst_backend(conn, seq_add(conn.c, 1), out)
                if not self._redispatch(conn, now, out):
                    self._refuse(conn, 503, "back-end did not answer", now, out, rst_backend=False)
        elif state is State.SPLICED and conn.rtx is not None and now >= conn.rtx_at:
            if conn.rtx_tries < fe.syn_retries + 2:
                conn.rtx_tries += 1
                st.events["held_retransmit"] += 1
                for s in conn.rtx:
                    self._to_backend(conn, s, out)
                conn.rtx_at = now + fe.response_rto_s * (1 << conn.rtx_tries)
                conn.deadline = min(now + fe.idle_timeout_s, conn.rtx_at)
            else:
                st.drops["held_unconfirmed"] += 1
                self._abort_both(conn, out)
        elif state is State.SPLICED:
            if conn.offload is Offload.INSTALLED:
                # Only the switch can tell an offloaded connection is idle; make sure the entry
                # is still there, else the slow path (and this timer) is in charge again.
                conn.deadline = now + fe.idle_timeout_s
                out.append(OffloadCheck(conn.key[0], conn.key[1], conn.offload_gen))
            else:
                st.events["idle_expired"] += 1
                self._abort_both(conn, out)
        elif state is State.CLOSING:
            self._forget(conn, out)
        elif state is State.RESPONDED:
            if conn.resp_acked or conn.tries >= fe.response_retries:
                resp = conn.resp
                assert resp is not None
                out.append(Send(Segment(self.vip, self.vport, conn.key[0], conn.key[1], resp.end, 0, RST, 0),
                                "client"))
                self._forget(conn, out)
            else:
                conn.tries += 1
                conn.deadline = now + fe.response_rto_s * (1 << conn.tries)
                out.append(Send(conn.resp, "client"))  # type: ignore[arg-type]

    # ---------------------------------------------------------------- introspection

    def conns_by_state(self) -> dict[str, int]:
        out = {s.value: 0 for s in State}
        for c in self.conns.values():
            out[c.state.value] += 1
        return out

    def offloaded(self) -> int:
        return sum(1 for c in self.conns.values() if c.offload is Offload.INSTALLED)
