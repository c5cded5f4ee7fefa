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


class RequestStream:
    """Feed the client's byte stream in order; get events per chunk.

    Events: ("begin",) when a request starts, ("head", RequestHead) when its header is complete,
    ("end",) when the whole message (body included) has passed, ("upgrade",) when the connection
    leaves HTTP (Upgrade/CONNECT; everything after is relayed unparsed).
    Raises HttpError(431) when a header grows past `max_header_bytes`, HttpError(400) on a
    malformed request.
    """

    __slots__ = ("max_header_bytes", "_p", "_events", "_url", "_headers", "_hdr_bytes", "in_header",
                 "tunnel", "_size", "_replay", "closed")
    # _size: bytes of the header as parsed (request line and fields); a header that arrives whole
    # in one chunk is measured by it, one that trickles in by _hdr_bytes

    def __init__(self, max_header_bytes: int):
        self.max_header_bytes = max_header_bytes
        self._p: httptools.HttpRequestParser | None = None   # made on the first feed: most
        # connections' requests are the kernel path's, and never need one
        self._events: list[tuple] = []
        self._url = b""
        self._headers: dict[str, str] = {}
        self._hdr_bytes = 0
        self._size = 0
        self.in_header = False
        self.tunnel = False
        self._replay: bytes | None = None
        self.closed = False         # a request said the connection ends after it

    def after_request(self, http10: bool, close: bool, keep: bool) -> None:
        """A whole request passed without this parser (the kernel path routed it): take the state
        it would have left — after a `Connection: close` (or an HTTP/1.0 request without
        keep-alive) more data is an error — the next time it is fed."""
        self.closed = close
        version = b"1.0" if http10 else b"1.1"
        conn = b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n" if keep else b""
        self._replay = b"GET / HTTP/" + version + b"\r\n" + conn + b"\r\n"

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._hdr_bytes = 0
        self._size = 0
        self.in_header = True
        self._events.append(("begin",))

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= 128:
            raise HttpError(431, "too many header fields")
        self._size += len(name) + len(value) + 4
        if self._size > self.max_header_bytes:
            raise HttpError(431, "request header too large")
        k = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        self._headers[k] = f"{self._headers[k]}, {v}" if k in self._headers else v

    def on_headers_complete(self) -> None:
        self.in_header = False
        self.closed = not self._p.should_keep_alive()
        if self._size + 16 > self.max_header_bytes:   # + method, version, separators
            raise HttpError(431, "request header too large")
        try:
            u = httptools.parse_url(self._url) if self._url != b"*" else None
        except httptools.HttpParserInvalidURLError:
            raise HttpError(400, "bad request target") from None
        path = (u.path or b"/").decode("latin-1") if u else "*"
        query = (u.query or b"").decode("latin-1") if u else ""
        host = self._headers.get("host")
        if u is not None and u.host:
            host = u.host.decode("latin-1")
        if host is not None:
            host = _strip_port(host).lower()
        self._events.append(("head", RequestHead(self._p.get_method().decode("latin-1"), path, query,
                                                 host, self._headers)))

    def on_message_complete(self) -> None:
        self._events.append(("end",))

    def feed(self, data: bytes) -> list[tuple]:
        if self._p is None:
            self._p = httptools.HttpRequestParser(self)
        if self._replay is not None:
            replay, self._replay = self._replay, None
            self._p.feed_data(replay)
        self._events = []
        if self.tunnel:
            return []
        try:
            self._p.feed_data(data)
        except HttpError:
            raise
        except httptools.HttpParserUpgrade:
            self.tunnel = True
            self._events.append(("upgrade",))
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, HttpError):
                raise e.__context__ from None
            raise HttpError(400, f"malformed request: {e}") from None
        if self.in_header:
            # Bytes of the header seen so far: whole chunks since the request began (an upper bound
            # that is exact to within one chunk, which is all a limit needs).
            self._hdr_bytes += len(data)
            if self._hdr_bytes > self.max_header_bytes:
                raise HttpError(431, "request header too large")
        return self._events


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class ResponseWatcher:
    """Reads the start of a back-end's response until its header is complete, to learn
    Content-Length (the `auto` offload policy). Bounded: gives up after `limit` bytes."""

    __slots__ = ("_p", "_cl", "done", "_seen", "limit", "status", "body_seen")

    def __init__(self, limit: int = 16384):
        self._p = httptools.HttpResponseParser(self)
        self._cl: int | None = None
        self.done = False
        self._seen = 0
        self.limit = limit
        self.status: int | None = None
        self.body_seen = 0      # body bytes in what was fed (those after the header)

    def on_body(self, body: bytes) -> None:
        self.body_seen += len(body)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length":
            try:
                self._cl = int(value)
            except ValueError:
                self._cl = None

    def on_headers_complete(self) -> None:
        self.done = True
        self.status = self._p.get_status_code()

    def feed(self, data: bytes) -> int | None:
        """Content-Length once the header is complete (None while incomplete or if absent)."""
        if self.done:
            return self._cl
        self._seen += len(data)
        try:
            self._p.feed_data(data)
        except httptools.HttpParserError:
            self.done = True
            return None
        if not self.done and self._seen > self.limit:
            self.done = True
        return self._cl if self.done else None


REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


def local_response(status: int, detail: str = "") -> bytes:
    """A complete `Connection: close` response the front-end sends itself."""
    body = f"{status} {REASONS.get(status, '')}{': ' + detail if detail else ''}\n".encode()
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nServer: miresga\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
