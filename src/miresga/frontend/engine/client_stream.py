"""The client's byte stream: in order, duplicated, out of order, reincarnated on a reused
port, and where requests start in it (reassembly up to the header's end).

A part of `Engine` (core.py); the (state, event) table that calls it is states.py."""

from __future__ import annotations

from miresga import cookie
from miresga.frontend.engine.actions import Action
from miresga.frontend.engine.conn import MAX_WINDOW_AHEAD, Conn
from miresga.frontend.engine.states import Ev, Offload, State
from miresga.frontend.http import HttpError, RequestStream, looks_like_request_start, request_start_certain
from miresga.frontend.segment import ACK, FIN, Segment, seq_add, seq_diff


class ClientStream:
    """Mixed into `Engine`: its state (conns, stats, config) is the engine's."""

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
        return cookie.check_cookie(seq_add(seg.ack, -1), self.keys(now), key[0], key[1], *self.services[key[2]],
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
