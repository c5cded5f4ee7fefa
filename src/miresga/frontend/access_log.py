"""The access log: one line per request, built from the engine's own request/response bookkeeping.

The engine calls four small hooks (no I/O in them):
  `request`   a request header was routed (method, host, path, rule; the back-end it went to);
  `response`  the response's header was read — by the engine on the slow path, or from the copy
              of its first segment that the kernel path reports (the same `ResponseWatcher` that
              the `auto` offload policy uses), giving status, Content-Length and time to first byte;
  `local`     the front-end answered itself (400/431/503);
  `finish`    the response is over: the client's next request on the connection, or its end.
Finished lines collect in `lines`; the front-end's loop hands them to a `LogFile` (a file reopened
on SIGUSR1 for logrotate, or stdout). Sampling drops a request before any of its work is done: an
unsampled request costs one random draw and no response watch.

Response bytes are the bytes of the whole response (header and body, like nginx's `$bytes_sent`):
the header's length plus Content-Length where the header was read (offloaded responses included),
otherwise how far the client acknowledged the server's stream. `fast_path` is true when the switch
carried (part of) the response. `status` is unknown ("-" / null) when the response went by the
switch before the front-end could read its header (a connection already offloaded).
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Callable

from miresga.frontend.segment import seq_add, seq_diff
from miresga.frontend.engine.states import Offload

_encode_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # C: a JSON string literal


@dataclass(slots=True)
class Record:
    t0: float                    # engine clock when the header was routed
    wall: float                  # wall clock then (the line's timestamp)
    client: tuple[int, int]
    method: str
    host: str | None
    path: str
    referer: str | None
    agent: str | None
    rule: str
    backend: int | None
    resp_start: int              # server stream sequence number where the response starts
    status: int | None = None
    resp_end: int | None = None  # where it ends, once header length and Content-Length are known
    fast: bool = False
    ttfb: float | None = None
    total: float | None = None


class AccessLog:
    def __init__(self, backend_names: list[str], fmt: str = "json", sample: float = 1.0,
                 rand: Callable[[], float] = random.random, wall: Callable[[], float] = time.time):
        self.names, self.fmt, self.sample = backend_names, fmt, sample
        self._rand, self._wall = rand, wall
        self.lines: list[str] = []
        self.sampled_out = 0
        self._ts_sec, self._ts = -1, ""

    # ---------------------------------------------------------------- hooks (engine)

    def request(self, conn: Any, head: Any, rule: str, now: float) -> None:
        if conn.alog is not None:              # the previous request's response is over
            self.finish(conn, now)
        if self.sample < 1.0 and self._rand() >= self.sample:
            self.sampled_out += 1
            return
        path = head.path + ("?" + head.query if head.query else "")
        h = head.headers
        conn.alog = Record(now, self._wall(), conn.key, head.method, head.host, path, h.get("referer"),
                           h.get("user-agent"), rule, conn.backend, conn.req_ack,
                           fast=conn.offload is Offload.INSTALLED)

    def response(self, conn: Any, status: int | None, content_length: int | None, header_len: int,
                 now: float) -> None:
        r = conn.alog
        if r.status is None:
            r.status = status
            r.ttfb = now - r.t0
            if content_length is not None:
                r.resp_end = seq_add(r.resp_start, header_len + content_length)

    def local(self, conn: Any, status: int, size: int, now: float) -> None:
        r = conn.alog
        r.status, r.backend, r.ttfb, r.total = status, None, now - r.t0, now - r.t0
        r.resp_end = seq_add(r.resp_start, size)
        self.finish(conn, now)

    def finish(self, conn: Any, now: float) -> None:
        r = conn.alog
        conn.alog = None
        if r.resp_end is not None:
            size: int | None = seq_diff(r.resp_end, r.resp_start)
        else:   # as far as the client acknowledged (its next request's ack, or at the end)
            end = conn.req_ack if seq_diff(conn.req_ack, r.resp_start) > 0 else conn.cli_ack
            if conn.srv_fin and seq_diff(end, conn.srv_end) >= 0:
                end = seq_add(conn.srv_end, -1)
            size = seq_diff(end, r.resp_start)
            if size < 0 or size >= 1 << 31:
                size = None
        self.lines.append(self.format(r, size))

    # ---------------------------------------------------------------- lines

    def format(self, r: Record, size: int | None) -> str:
        backend = self.names[r.backend] if r.backend is not None else None
        client = f"{_ip(r.client[0])}:{r.client[1]}"
        if self.fmt == "combined":
            t = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(r.wall))

            def q(v: str | None) -> str:
                return '"' + (v.replace('"', '\\"') if v else "-") + '"'
            ms = lambda v: f"{v * 1000:.3f}" if v is not None else "-"  # noqa: E731
            return (f'{_ip(r.client[0])} - - [{t}] "{r.method} {r.path} HTTP/1.1" {r.status or "-"} '
                    f'{size if size is not None else "-"} {q(r.referer)} {q(r.agent)} client={client} '
                    f'host={r.host or "-"} rule={r.rule} backend={backend or "-"} fast={int(r.fast)} '
                    f'ttfb={ms(r.ttfb)} total={ms(r.total)}')
        # Written out by hand: json.dumps of a dict costs twice as much, per request.
        sec = int(r.wall)
        if sec != self._ts_sec:
            self._ts_sec, self._ts = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return (f'{{"ts":"{self._ts}.{int((r.wall - sec) * 1000):03d}Z","client":"{client}",'
                f'"method":{_js(r.method)},"host":{_js(r.host)},"path":{_js(r.path)},"rule":{_js(r.rule)},'
                f'"backend":{_js(backend)},"status":{_num(r.status)},"bytes":{_num(size)},'
                f'"fast_path":{"true" if r.fast else "false"},"ttfb_ms":{_ms(r.ttfb)},"total_ms":{_ms(r.total)}}}')


def _js(v: str | None) -> str:
    return "null" if v is None else _encode_str(v)


def _num(v: int | None) -> str:
    return "null" if v is None else str(v)


def _ms(v: float | None) -> str:
    return "null" if v is None else str(round(v * 1000, 3))


def _ip(addr: int) -> str:
    return socket.inet_ntoa(addr.to_bytes(4, "big"))


class LogFile:
    """Where the lines go: a file opened for append (reopened after logrotate moved it: SIGUSR1)
    or stdout ("-")."""

    def __init__(self, path: str):
        self.path = path
        self._f: IO[str] | None = None
        self.reopen()

    def reopen(self) -> None:
        if self.path == "-":
            self._f = sys.stdout
            return
        old, self._f = self._f, open(self.path, "a", buffering=1 << 16)
        if old is not None:
            old.close()

    def write(self, lines: list[str]) -> None:
        if lines:
            self._f.write("\n".join(lines) + "\n")  # type: ignore[union-attr]
            self._f.flush()  # type: ignore[union-attr]
            lines.clear()

    def close(self) -> None:
        if self._f is not None and self._f is not sys.stdout:
            self._f.close()
        self._f = None
