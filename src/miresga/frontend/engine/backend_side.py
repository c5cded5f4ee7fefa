"""Segments from the back-end of a connection: its SYN-ACK (step 5), data and ACKs, a
TIME_WAIT answer, refusals and resets.

A part of `Engine` (core.py); the (state, event) table that calls it is states.py."""

from __future__ import annotations

from miresga.frontend.engine.actions import Action, Send
from miresga.frontend.engine.conn import Conn
from miresga.frontend.engine.states import Offload, State
from miresga.frontend.segment import ACK, FIN, RST, SYN, Segment, seq_add, seq_diff


class BackendSide:
    """Mixed into `Engine`: its state (conns, stats, config) is the engine's."""

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

    def _backend_segment(self, conn: Conn, seg: Segment, now: float, out: list[Action]) -> None:
        if conn.rtx is not None:
            self._confirm(conn, seg, out)
        if seq_diff(seg.end, conn.srv_end) > 0:
            conn.srv_end = seg.end
        if seg.payload:
            conn.slow_srv_bytes += len(seg.payload)
            if conn.watch is not None and seg.seq == conn.watch_next:
                if seg.flags & FIN and self.alog is None and self.fin_ends_watch:
                    conn.watch = None   # the response ends here: nothing left to offload
                else:
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
