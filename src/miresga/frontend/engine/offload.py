"""The switch's fast path, as the engine asks for it (DESIGN.md §3 steps 6-7): inserts and
deletes, the controller's answers, idle reports, and the `auto` watch that reads the response
header to decide.

A part of `Engine` (core.py); the (state, event) table that calls it is states.py."""

from __future__ import annotations

from miresga.frontend.engine.actions import Action, OffloadDelete, OffloadInsert
from miresga.frontend.engine.conn import Conn, Key
from miresga.frontend.engine.states import Offload
from miresga.frontend.http import ResponseWatcher
from miresga.frontend.rules import CompiledRule
from miresga.frontend.segment import seq_add, seq_diff


class Offloading:
    """Mixed into `Engine`: its state (conns, stats, config) is the engine's."""

    def offload_result(self, client_ip: int, client_port: int, gen: int, status: str,
                       now: float, svc: int = 0) -> list[Action]:
        key = (client_ip, client_port, svc)
        conn = self.conns.get(key)
        waiting = (conn is not None and conn.offload_gen == gen and conn.holding and conn.rule is not None
                   and conn.rule.offload_wait and conn.offload in (Offload.REQUESTED, Offload.QUEUED))
        out = self._offload_result(key, gen, status, now)
        if waiting and self.conns.get(key) is conn and conn.offload not in (Offload.REQUESTED, Offload.QUEUED):
            # the request held for this entry goes now: on the fast path, or (refused) the slow one
            self._release_held(conn, out, now)  # type: ignore[arg-type]
            self._handover_key(key, out)
        return out

    def _offload_result(self, key: Key, gen: int, status: str, now: float) -> list[Action]:
        """Answer of the switch controller to OffloadInsert `gen`: ok|exists|queued|table_full|
        installed|absent|error."""
        out: list[Action] = []
        conn = self.conns.get(key)
        present = status in ("ok", "exists", "installed")
        if conn is None or conn.offload_gen != gen or conn.offload is Offload.NONE:
            # Stale: the connection ended or dropped this request, and a delete went out after the
            # insert. An insert that completed late may have outlived that delete: delete again.
            if present and status == "installed" and (conn is None or conn.offload is Offload.NONE):
                out.append(OffloadDelete(*key))
            self.stats.offload["stale_result"] += 1
            return out
        if status == "exists" and not conn.reinserted:
            # Our connection is new, so the entry is a stale one of an earlier connection from
            # this client ip:port — perhaps to another back-end. Replace it (delete first: the
            # worker keeps the order), once.
            conn.reinserted = True
            out.append(OffloadDelete(*key))
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

    def _insert(self, conn: Conn, out: list[Action]) -> None:
        if conn.offload is not Offload.NONE or conn.backend is None:
            return
        if conn.rtx is not None:     # the back-end's ACKs would bypass us: confirm first
            conn.want_offload = True
            return
        self._gen += 1
        conn.offload_gen = self._gen
        conn.offload = Offload.REQUESTED
        out.append(OffloadInsert(conn.key[0], conn.key[1], conn.backend, self._gen, conn.key[2]))
        self.stats.offload["requested"] += 1

    def _drop_offload(self, conn: Conn, out: list[Action]) -> None:
        if conn.offload is not Offload.NONE:
            out.append(OffloadDelete(*conn.key))
            conn.offload = Offload.NONE
            self.stats.offload["deleted"] += 1

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
