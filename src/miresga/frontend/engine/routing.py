"""A request header read: its rule and back-end (step 3, re-routed at step 8), redispatch
after a refused SYN, and the held request released to the back-end.

A part of `Engine` (core.py); the (state, event) table that calls it is states.py."""

from __future__ import annotations

from miresga.frontend.engine.actions import Action, Send
from miresga.frontend.engine.conn import Conn
from miresga.frontend.engine.states import State
from miresga.frontend.segment import ACK, Segment, seq_add, seq_diff


class Routing:
    """Mixed into `Engine`: its state (conns, stats, config) is the engine's."""

    def _route(self, conn: Conn, head, now: float, out: list[Action]) -> bool:
        """A request header is complete: pick its back-end. False if the connection was closed."""
        rule = self.rulesets[conn.key[2]].match(head)
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
            ok = self.pools.eligible(self.healthy, self.active)
            busy = self._port_busy(conn)
            if busy:
                ok = [e and i not in busy for i, e in enumerate(ok)]
            b = sel.pick(ok, self.active, conn.key[0], head)
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

    def _port_busy(self, conn: Conn) -> tuple[int, ...]:
        """The back-ends that the same client ip:port's connections to other services use. A
        back-end cannot take a second connection with that ip:port (its 4-tuple would be taken),
        so none of them may be picked for this one."""
        if len(self.services) == 1:
            return ()
        ip, port, svc = conn.key
        busy = tuple(o.backend for s in range(len(self.services))
                     if s != svc and (o := self.conns.get((ip, port, s))) is not None and o.backend is not None)
        if busy:
            self.stats.events["port_shared"] += 1
        return busy

    def _redispatch(self, conn: Conn, now: float, out: list[Action]) -> bool:
        """The splice SYN to conn.backend was refused or never answered: send it to another
        eligible back-end of the rule's pool (at most rule.redispatch times per request), with
        the same sequence numbers. False: none left, the caller answers 503."""
        rule = conn.rule
        if rule is None or conn.adopted or len(conn.tried) > rule.redispatch:
            return False
        b = self.pools.another(rule.pool, conn.tried + self._port_busy(conn), self.healthy, self.active)
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

    def _ack_client(self, conn: Conn, out: list[Action]) -> None:
        """Acknowledge a header still being collected. Nobody else can: without it a client that
        writes its header in pieces (Nagle) or beyond its first flight would wait forever. What
        we acknowledge, we must deliver: see `_release_held`."""
        conn.fe_acked = conn.nxt
        out.append(Send(Segment(*self.services[conn.key[2]], conn.key[0], conn.key[1], conn.req_ack, conn.nxt,  # type: ignore
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
