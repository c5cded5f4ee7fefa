"""Relaying once the request is out, closing (both FINs, the linger), aborts, the answers the
front-end gives itself (400/431/503), and the timers.

A part of `Engine` (core.py); the (state, event) table that calls it is states.py."""

from __future__ import annotations

from miresga.frontend.engine.actions import Action, OffloadCheck, Send
from miresga.frontend.engine.conn import Conn
from miresga.frontend.engine.states import Ev, Offload, State
from miresga.frontend.http import local_response
from miresga.frontend.segment import ACK, FIN, PSH, RST, Segment, seq_add, seq_diff


class Closing:
    """Mixed into `Engine`: its state (conns, stats, config) is the engine's."""

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
        conn.resp = Segment(*self.services[conn.key[2]], conn.key[0], conn.key[1], conn.req_ack, ack,
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
                out.append(Send(Segment(*self.services[conn.key[2]], conn.key[0], conn.key[1], resp.end, 0, RST, 0),
                                "client"))
                self._forget(conn, out)
                return
            if seg.flags & FIN:
                out.append(Send(Segment(*self.services[conn.key[2]], conn.key[0], conn.key[1], resp.end, seg.end,
                                        ACK, 1024), "client"))
                self._forget(conn, out)
                return
            conn.deadline = now + self.fe.close_linger_s
        elif seg.flags & FIN:
            # The client closed without having seen our answer: repeat it (timers do the rest).
            out.append(Send(resp, "client"))

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
                out.append(OffloadCheck(conn.key[0], conn.key[1], conn.offload_gen, conn.key[2]))
            else:
                st.events["idle_expired"] += 1
                self._abort_both(conn, out)
        elif state is State.CLOSING:
            self._forget(conn, out)
        elif state is State.RESPONDED:
            if conn.resp_acked or conn.tries >= fe.response_retries:
                resp = conn.resp
                assert resp is not None
                out.append(Send(Segment(*self.services[conn.key[2]], conn.key[0], conn.key[1], resp.end, 0, RST, 0),
                                "client"))
                self._forget(conn, out)
            else:
                conn.tries += 1
                conn.deadline = now + fe.response_rto_s * (1 << conn.tries)
                out.append(Send(conn.resp, "client"))  # type: ignore[arg-type]
