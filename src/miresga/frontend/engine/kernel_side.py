"""The engine's side of the hand-over to the front-end's kernel path (frontend/kernel/): what it
hands over, takes back and hears from the ring buffer, and the books it keeps for requests
the kernel routed, so that both layers act as one.

A part of `Engine` (core.py); the (state, event) table that calls it is states.py."""

from __future__ import annotations

from miresga import cookie
from miresga.frontend.engine.actions import Action
from miresga.frontend.engine.conn import WATCH_COPIES, Conn, Key
from miresga.frontend.engine.states import Offload, State
from miresga.frontend.http import RequestStream
from miresga.frontend.kernel.handover import (REQ_CLOSE, REQ_FIRST, REQ_HTTP10, REQ_KEEP, EvKind, KernelEntry,
                                              KernelEvent, KernelHandover, Phase)
from miresga.frontend.segment import Segment, seq_add, seq_diff


class KernelSide:
    """Mixed into `Engine`: its state (conns, stats, config) is the engine's."""

    def kernel_key(self, seg: Segment) -> Key | None:
        """The key of `seg`'s connection if the kernel holds it: the adapter must take it back
        (take_back) before giving us the segment."""
        if not self.kernel:
            return None
        mine = self.classify(seg)
        if mine is None:
            return None
        conn = self.conns.get(mine[0])
        return mine[0] if conn is not None and conn.kernel else None

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
        rule = self.rule_list[ev.rule] if ev.rule < len(self.rule_list) else self.rulesets[conn.key[2]].default
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
