"""A segment of no connection the engine knows (DESIGN.md §3 step 2): a new connection's first
request, a handshake ACK, a straggler, or a connection to adopt from another front-end.

A part of `Engine` (core.py); the (state, event) table that calls it is states.py."""

from __future__ import annotations

from miresga import cookie
from miresga.frontend.engine.actions import Action, Send
from miresga.frontend.engine.conn import UNKNOWN_OPTS, Conn, Key
from miresga.frontend.engine.states import Ev, Offload, State
from miresga.frontend.http import RequestStream
from miresga.frontend.kernel.handover import KernelMark, KernelRemove
from miresga.frontend.segment import ACK, FIN, RST, Segment, seq_add


class Arrival:
    """Mixed into `Engine`: its state (conns, stats, config) is the engine's."""

    def _no_flow(self, seg: Segment, key: Key, ev: Ev, now: float, out: list[Action]) -> None:
        st = self.stats
        if ev is Ev.C_ACK:
            st.events["handshake_ack"] += 1      # step 1: the switch's handshake; nothing to do
            return
        if ev in (Ev.B_SEG, Ev.B_RST) and self._recent.get(key, 0.0) > now:
            st.drops["after_close"] += 1        # a straggler of a connection we just ended
            return
        if ev is Ev.B_SEG and (seg.payload or seg.flags & FIN):
            if len(self.services) > 1 and self.sole_service[self.by_service[(seg.src, seg.sport)]] is None:
                # Which VIP did its client reach? A back-end's segment does not say, and several
                # services may use this back-end; a reply from the wrong VIP is a stranger to the
                # client: not adopted (docs/deploy.md). (One service only: `backend_key` chose it.)
                st.drops["adopt_ambiguous"] += 1
                return
            self._adopt(seg, key, now, out)
            return
        if ev is Ev.B_RST:
            self._to_client(seg, out, svc=key[2])  # whoever held the flow is gone; the client must know
            st.events["orphan_rst_relayed"] += 1
            return
        if ev is not Ev.C_DATA:
            st.drops[f"no_flow:{ev.value}"] += 1
            return
        if not seg.flags & ACK:
            st.drops["no_ack_flag"] += 1
            return
        s = seq_add(seg.ack, -1)
        opts = cookie.check_cookie(s, self.keys(now), key[0], key[1], *self.services[key[2]],
                                   cookie.bucket_of(now, self._cookie.bucket_seconds))
        if opts is None:
            st.drops["bad_cookie"] += 1
            return
        if not seg.payload:
            # A FIN before any request: nobody holds state; answer it without creating any.
            out.append(Send(Segment(*self.services[key[2]], key[0], key[1], seg.ack, seg.end, FIN | ACK, 1024),
                            "client"))
            st.events["early_fin"] += 1
            return
        if len(self.conns) >= self.fe.max_connections:
            # Refused, and told so at once (no state taken): a silent drop would leave the client
            # retransmitting its request until it gives up.
            st.drops["conn_limit"] += 1
            out.append(Send(Segment(*self.services[key[2]], key[0], key[1], seg.ack, seg.end, RST | ACK, 0), "client"))
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
        conn = Conn(key, seq_add(seg.seq, -1), UNKNOWN_OPTS, RequestStream(self.fe.max_header_bytes))
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
