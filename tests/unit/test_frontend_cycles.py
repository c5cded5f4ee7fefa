"""The front-end leaves no reference cycles behind a request: what a request or a connection
allocated is freed when the last reference goes, never by the cyclic collector.

Why it matters: a parser and its callback object that held each other made ~15 objects of
cyclic garbage per request. At thousands of requests a second the collector's gen-0 runs freed
tens of thousands of objects each and stopped the front-end's loop for 100-500 ms; a request
punted to Python in such a pause waited for the client's retransmission (wrk timeouts in
tests/integration/test_operations.py on a loaded machine)."""

from __future__ import annotations

import gc
from collections import Counter

import pytest

from frontend_helpers import ACK, FIN, NOW, Client, get, make_cfg, open_on
from miresga.frontend.access_log import AccessLog
from miresga.frontend.engine import Engine
from miresga.frontend.http import HttpError, RequestStream, ResponseWatcher

OURS = ("miresga", "httptools")


def cyclic_garbage(work) -> Counter:
    """Run `work` with the collector off; the types (of our modules and httptools) of the
    objects that only the collector could free afterwards."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        work()
        gc.collect()
        found = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                        if type(o).__module__.startswith(OURS))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return found


REQ = b"GET /a?x=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_a_cycle_is_seen():
    """The check itself: an object that holds itself is reported."""
    def work():
        s = RequestStream(1024)
        s.feed(REQ)
        s.tunnel = s   # type: ignore[assignment]

    assert cyclic_garbage(work)["miresga.frontend.http.RequestStream"] == 1


def test_parsers_leave_no_cycles():
    def work():
        for _ in range(50):
            s = RequestStream(1024)
            s.feed(REQ[:10])
            s.feed(REQ[10:] + REQ)                        # split, then two in one chunk
            s.after_request(False, False, True)
            s.feed(b"GET /u HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
            for bad in (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"y" * 2000 + b"\r\n\r\n", b"\x00\x01 junk\r\n\r\n"):
                with pytest.raises(HttpError):
                    RequestStream(1024).feed(bad)
            w = ResponseWatcher()
            assert w.feed(RESP[:8]) is None and w.feed(RESP[8:]) == 5 and w.status == 200 and w.body_seen == 5
            ResponseWatcher().feed(b"not a response\r\n\r\n")
            ResponseWatcher(limit=10).feed(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 40)

    assert cyclic_garbage(work) == Counter()


def test_engine_connections_leave_no_cycles():
    """Keep-alive connections with the access log on (a watcher per response), closed both ways
    and expired: nothing of them is left for the collector."""
    eng = Engine(make_cfg())
    eng.alog = AccessLog([b.name for b in eng.cfg.hosts.backends], "json", 1.0)

    def work():
        for port in range(41000, 41040):
            cl = Client(eng, port=port)
            _, be = open_on(eng, cl, "/x")
            for path in ("/y", "/z"):
                eng.segment(be.seg(RESP), NOW)
                cl.acked += len(RESP)
                eng.segment(cl.seg(get(path)), NOW)
            eng.segment(be.seg(RESP), NOW)
            cl.acked += len(RESP)
            eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
            eng.segment(be.seg(b"", flags=ACK | FIN), NOW)
        eng.tick(NOW + 120)
        assert not eng.conns and len(eng.alog.lines) == 120, (len(eng.conns), len(eng.alog.lines))

    assert cyclic_garbage(work) == Counter()


def test_loop_stats_count_what_the_collector_frees():
    """The front-end's `gc_collected_objects` metric: a collection that frees cycles is counted,
    with its generation and pause."""
    from miresga.frontend.metrics import LoopStats
    st = LoopStats()
    gc.collect()
    gc.callbacks.append(st.gc_callback)
    try:
        for _ in range(10):
            a: list = []
            a.append(a)
        del a
        gc.collect()
    finally:
        gc.callbacks.remove(st.gc_callback)
    assert st.collections[2] == 1 and st.collected >= 10 and st.pause_s > 0
    st.turn(0.002)
    st.turn(0.001)
    assert st.turn_max == 0.002


def test_kernel_routed_connections_leave_no_cycles():
    """The same for connections the kernel path opened and relayed (the engine hears them as
    ring records: a request copied up for the access log, a response's first bytes for its
    watcher, both FINs), taken from the records through the close linger."""
    from miresga.frontend.kernel.handover import REQ_FIRST, REQ_KEEP, EvKind, KernelEvent
    from miresga.frontend.segment import seq_add
    eng = Engine(make_cfg(), kernel=True)
    eng.alog = AccessLog([b.name for b in eng.cfg.hosts.backends], "json", 1.0)

    def work():
        for port in range(42000, 42040):
            cl = Client(eng, port=port)
            srv = seq_add(cl.s, 1)
            req = get("/x")
            eng.kernel_event(KernelEvent(EvKind.REQUEST, cl.key, cli_ack=srv, seq=seq_add(cl.c, 1),
                                         payload_len=len(req), data=req, rule=len(eng.rule_list) - 1,
                                         backend=0, req_flags=REQ_FIRST | REQ_KEEP), NOW)
            eng.kernel_event(KernelEvent(EvKind.COPY, cl.key, seq=srv, payload_len=len(RESP), data=RESP), NOW)
            end_c, end_s = seq_add(cl.c, 2 + len(req)), seq_add(srv, 1 + len(RESP))
            eng.kernel_event(KernelEvent(EvKind.CLOSING, cl.key, cli_ack=end_s, srv_end=end_s, cli_nxt=end_c,
                                         to_client_bytes=len(RESP)), NOW)
        eng.tick(NOW + 120)
        assert not eng.conns and len(eng.alog.lines) == 40, (len(eng.conns), eng.stats.events)
        assert '"status":200' in eng.alog.lines[0], eng.alog.lines[0]

    assert cyclic_garbage(work) == Counter()
