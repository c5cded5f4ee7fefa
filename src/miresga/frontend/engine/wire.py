"""What the engine puts on the wire for a connection, and how it ends one: segments to either
side (with the held and coalesced ACKs), resets, the splice SYN, the back-end count and the
final forgetting.

A part of `Engine` (core.py); the (state, event) table that calls it is states.py."""

from __future__ import annotations

from miresga.frontend.engine.actions import Action, Send
from miresga.frontend.engine.conn import Conn
from miresga.frontend.kernel.handover import KernelRemove
from miresga.frontend.segment import ACK, RST, SYN, Segment, seq_add, seq_diff, syn_options


class Wire:
    """Mixed into `Engine`: its state (conns, stats, config) is the engine's."""

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

    def _to_client(self, seg: Segment, out: list[Action], conn: Conn | None = None, hold: bool = False,
                   svc: int = 0) -> None:
        """`svc`: the service whose VIP speaks, when there is no `conn` to say it."""
        new = Segment(*self.services[conn.key[2] if conn is not None else svc], seg.dst, seg.dport, seg.seq, seg.ack, seg.flags, seg.window,
                      seg.options, seg.payload)
        if conn is not None and conn.ack_held is not None:
            self._supersede(conn, 1, new, out)
        if hold:
            self._hold(conn, 1, new)  # type: ignore[arg-type]
            return
        out.append(Send(new, "client"))
        self.stats.bytes["slow_to_client"] += len(seg.payload)

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
        out.append(Send(Segment(*self.services[conn.key[2]], conn.key[0], conn.key[1], conn.cli_ack,
                                conn.nxt or 0, RST | ACK, 0), "client"))

    def _syn(self, conn: Conn, out: list[Action]) -> None:
        ip, port = self.backends[conn.backend]  # type: ignore[index]
        o = conn.opts
        # ACK flag off: the agent reads the raw ack field (s) and clears it (DESIGN.md step 4).
        out.append(Send(Segment(conn.key[0], conn.key[1], ip, port, conn.c, conn.s, SYN, 65535,
                                syn_options(o.mss, o.wscale, o.sack)), "backend"))

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
