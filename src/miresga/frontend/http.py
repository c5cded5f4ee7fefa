"""HTTP/1.1 for the front-end: incremental request parsing (httptools) with a bounded header,
a response-header watcher for the `auto` offload policy, and the responses the front-end sends
itself (400, 431, 503).

The parser only observes the client's stream; the bytes themselves are relayed untouched, so a
request's body never needs to be held here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools

# Methods a request may start with. No proper suffix of one is another (but LOCK/UNLOCK), so the
# tail of a split method ("ET /" of "GET /") is never taken for a request start.
METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
           b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"PURGE")


def looks_like_request_start(data: bytes) -> bool:
    """True if `data` may be the first bytes of an HTTP request: a known method and a space, or
    a prefix of one when the segment is that short. Used to find where the client's stream
    begins when its first segment went missing and a later one arrived first."""
    data = data[:24].lstrip(b"\r\n")
    token, sp, _ = data.partition(b" ")
    if sp:
        return token in METHODS
    return bool(token) and any(m.startswith(token) for m in METHODS)


def request_start_certain(data: bytes) -> bool:
    """A whole known method and a space: the start of a request, not a guess from a fragment."""
    token, sp, _ = data[:24].lstrip(b"\r\n").partition(b" ")
    return bool(sp) and token in METHODS


class HttpError(Exception):
    """A request the front-end refuses; `status` is what the client gets."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class RequestHead:
    method: str
    path: str
    query: str
    host: str | None
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class _RequestCallbacks:
    """httptools' protocol object for `RequestStream`: what the parser reports, kept apart from
    the parser itself. The parser holds this object (its bound callbacks); this object sees the
    parser only during a feed (`p`). A parser and a protocol that held each other would be a
    reference cycle per request, freed only by the cyclic collector: at thousands of requests
    a second its gen-0 runs, each freeing tens of thousands of objects, stopped the front-end's
    loop for 100-500 ms (a punted request then waited for the client's retransmission)."""

    __slots__ = ("max_header_bytes", "p", "events", "url", "headers", "size", "hdr_bytes", "in_header", "closed")
    # size: bytes of the header as parsed (request line and fields); a header that arrives whole
    # in one chunk is measured by it, one that trickles in by hdr_bytes (RequestStream.feed)

    def __init__(self, max_header_bytes: int):
        self.max_header_bytes = max_header_bytes
        self.p: httptools.HttpRequestParser | None = None
        self.events: list[tuple] = []
        self.url = b""
        self.headers: dict[str, str] = {}
        self.size = 0
        self.hdr_bytes = 0
        self.in_header = False
        self.closed = False         # a request said the connection ends after it

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.size = 0
        self.hdr_bytes = 0
        self.in_header = True
        self.events.append(("begin",))

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= 128:
            raise HttpError(431, "too many header fields")
        self.size += len(name) + len(value) + 4
        if self.size > self.max_header_bytes:
            raise HttpError(431, "request header too large")
        k = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        self.headers[k] = f"{self.headers[k]}, {v}" if k in self.headers else v

    def on_headers_complete(self) -> None:
        self.in_header = False
        self.closed = not self.p.should_keep_alive()  # type: ignore[union-attr]
        if self.size + 16 > self.max_header_bytes:   # + method, version, separators
            raise HttpError(431, "request header too large")
        try:
            u = httptools.parse_url(self.url) if self.url != b"*" else None
        except httptools.HttpParserInvalidURLError:
            raise HttpError(400, "bad request target") from None
        path = (u.path or b"/").decode("latin-1") if u else "*"
        query = (u.query or b"").decode("latin-1") if u else ""
        host = self.headers.get("host")
        if u is not None and u.host:
            host = u.host.decode("latin-1")
        if host is not None:
            host = _strip_port(host).lower()
        self.events.append(("head", RequestHead(self.p.get_method().decode("latin-1"), path, query,  # type: ignore
                                                host, self.headers)))

    def on_message_complete(self) -> None:
        self.events.append(("end",))


class RequestStream:
    """Feed the client's byte stream in order; get events per chunk.

    Events: ("begin",) when a request starts, ("head", RequestHead) when its header is complete,
    ("end",) when the whole message (body included) has passed, ("upgrade",) when the connection
    leaves HTTP (Upgrade/CONNECT; everything after is relayed unparsed).
    Raises HttpError(431) when a header grows past `max_header_bytes`, HttpError(400) on a
    malformed request.
    """

    __slots__ = ("_p", "_cb", "tunnel", "_replay")

    def __init__(self, max_header_bytes: int):
        self._p: httptools.HttpRequestParser | None = None   # made on the first feed: most
        # connections' requests are the kernel path's, and never need one
        self._cb = _RequestCallbacks(max_header_bytes)
        self.tunnel = False
        self._replay: bytes | None = None

    @property
    def in_header(self) -> bool:
        return self._cb.in_header

    @property
    def closed(self) -> bool:
        """A request said the connection ends after it."""
        return self._cb.closed

    def after_request(self, http10: bool, close: bool, keep: bool) -> None:
        """A whole request passed without this parser (the kernel path routed it): take the state
        it would have left — after a `Connection: close` (or an HTTP/1.0 request without
        keep-alive) more data is an error — the next time it is fed."""
        self._cb.closed = close
        version = b"1.0" if http10 else b"1.1"
        conn = b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n" if keep else b""
        self._replay = b"GET / HTTP/" + version + b"\r\n" + conn + b"\r\n"

    def feed(self, data: bytes) -> list[tuple]:
        cb = self._cb
        if self._p is None:
            self._p = httptools.HttpRequestParser(cb)
        cb.p = self._p
        try:
            if self._replay is not None:
                replay, self._replay = self._replay, None
                self._p.feed_data(replay)
            cb.events = []
            if self.tunnel:
                return []
            try:
                self._p.feed_data(data)
            except HttpError:
                raise
            except httptools.HttpParserUpgrade:
                self.tunnel = True
                cb.events.append(("upgrade",))
            except httptools.HttpParserError as e:
                if isinstance(e.__context__, HttpError):
                    raise e.__context__ from None
                raise HttpError(400, f"malformed request: {e}") from None
        finally:
            cb.p = None
        if cb.in_header:
            # Bytes of the header seen so far: whole chunks since the request began (an upper bound
            # that is exact to within one chunk, which is all a limit needs).
            cb.hdr_bytes += len(data)
            if cb.hdr_bytes > cb.max_header_bytes:
                raise HttpError(431, "request header too large")
        return cb.events


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _ResponseCallbacks:
    """httptools' protocol object for `ResponseWatcher`, apart from the parser (see
    `_RequestCallbacks`: no reference cycle per response)."""

    __slots__ = ("p", "cl", "done", "status", "body_seen")

    def __init__(self) -> None:
        self.p: httptools.HttpResponseParser | None = None
        self.cl: int | None = None
        self.done = False
        self.status: int | None = None
        self.body_seen = 0      # body bytes in what was fed (those after the header)

    def on_body(self, body: bytes) -> None:
        self.body_seen += len(body)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length":
            try:
                self.cl = int(value)
            except ValueError:
                self.cl = None

    def on_headers_complete(self) -> None:
        self.done = True
        self.status = self.p.get_status_code()  # type: ignore[union-attr]


class ResponseWatcher:
    """Reads the start of a back-end's response until its header is complete, to learn
    Content-Length (the `auto` offload policy) and the status (the access log). Bounded: gives
    up after `limit` bytes."""

    __slots__ = ("_p", "_cb", "_seen", "limit")

    def __init__(self, limit: int = 16384):
        self._cb = _ResponseCallbacks()
        self._p = httptools.HttpResponseParser(self._cb)
        self._seen = 0
        self.limit = limit

    @property
    def done(self) -> bool:
        return self._cb.done

    @property
    def status(self) -> int | None:
        return self._cb.status

    @property
    def body_seen(self) -> int:
        return self._cb.body_seen

    def feed(self, data: bytes) -> int | None:
        """Content-Length once the header is complete (None while incomplete or if absent)."""
        cb = self._cb
        if cb.done:
            return cb.cl
        self._seen += len(data)
        cb.p = self._p
        try:
            self._p.feed_data(data)
        except httptools.HttpParserError:
            cb.done = True
            return None
        finally:
            cb.p = None
        if not cb.done and self._seen > self.limit:
            cb.done = True
        return cb.cl if cb.done else None


REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


def local_response(status: int, detail: str = "") -> bytes:
    """A complete `Connection: close` response the front-end sends itself."""
    body = f"{status} {REASONS.get(status, '')}{': ' + detail if detail else ''}\n".encode()
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nServer: miresga\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
