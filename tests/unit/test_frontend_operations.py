"""Operating the front-end: redispatch, drain, max_connections, reload (Engine.configure and
pools.check_reload) and the access log, driven through the sans-I/O engine."""

from __future__ import annotations

import json

import pytest

from frontend_helpers import ACK, FIN, NOW, PSH, RST, Backend, Client, get, make_cfg, open_on, sends, syn_to
from miresga.frontend.access_log import AccessLog
from miresga.frontend.engine import Engine
from miresga.frontend.pools import check_reload
from miresga.frontend.engine.states import State

POOL3 = """
rules:
  - {name: api, match: {path_prefix: /api/}, pool: [be1, be2, be3], policy: round_robin, offload: never}
  - {name: one, match: {path_prefix: /one/}, pool: [be1], offload: never}
  - {name: default, pool: [be1, be2], offload: never}
frontend: {max_header_bytes: 1024, syn_retries: 1}
"""


def with_backends(extra: str) -> str:
    """POOL3 plus per-back-end settings, written into the default config's hosts.backends."""
    return POOL3 + extra


def test_refused_syn_redispatched_to_another_backend():
    eng = Engine(make_cfg(POOL3))
    cl = Client(eng)
    first = syn_to(eng.segment(cl.seg(get("/api/x")), NOW))
    b0 = [ip for ip, _ in eng.backends].index(first)
    rst = Backend(eng, b0, cl).synack()
    rst.flags = RST | ACK
    out = eng.segment(rst, NOW)
    second = syn_to(out)
    assert second != first and not sends(out, "client")
    assert eng.stats.events["redispatch"] == 1
    b1 = [ip for ip, _ in eng.backends].index(second)
    # the new back-end answers: the held request goes to it, the client never sees a 503
    rel = sends(eng.segment(Backend(eng, b1, cl).synack(), NOW))
    assert rel[0].payload == get("/api/x") and rel[0].dst == second
    assert eng.conns[cl.key].state is State.SPLICED and eng.active[b1] == 1 and eng.active[b0] == 0


def test_unanswered_syn_redispatched_after_retries():
    eng = Engine(make_cfg(POOL3))
    cl = Client(eng)
    first = syn_to(eng.segment(cl.seg(get("/api/x")), NOW))
    t = NOW + eng.fe.syn_retransmit_s + 0.01
    assert syn_to(eng.tick(t)) == first           # its retry
    out = eng.tick(t + 10)
    rst = [s for s in sends(out, "backend") if s.flags & RST]
    assert [s.dst for s in rst] == [first]        # the silent one is told to forget it
    assert syn_to(out) != first and eng.stats.events["redispatch"] == 1


def test_redispatch_bounded_then_503():
    eng = Engine(make_cfg(POOL3.replace("policy: round_robin, offload: never}",
                                        "policy: round_robin, offload: never, redispatch: 1}")))
    cl = Client(eng)
    ips = [ip for ip, _ in eng.backends]
    dst = syn_to(eng.segment(cl.seg(get("/api/x")), NOW))
    for i in range(2):
        rst = Backend(eng, ips.index(dst), cl).synack()
        rst.flags = RST | ACK
        out = eng.segment(rst, NOW)
        if i == 0:
            dst = syn_to(out)
    (r,) = sends(out, "client")
    assert r.payload.startswith(b"HTTP/1.1 503 ") and eng.stats.events["redispatch"] == 1


def test_redispatch_off_and_single_pool_answer_503():
    eng = Engine(make_cfg(POOL3.replace("offload: never}\n  - {name: one", "offload: never, redispatch: 0}\n"
                                        "  - {name: one")))
    for path in ("/api/x", "/one/x"):
        cl = Client(eng, port=41000 + len(path) + path.count("o"))
        dst = syn_to(eng.segment(cl.seg(get(path)), NOW))
        rst = Backend(eng, [ip for ip, _ in eng.backends].index(dst), cl).synack()
        rst.flags = RST | ACK
        (r,) = sends(eng.segment(rst, NOW), "client")
        assert r.payload.startswith(b"HTTP/1.1 503 ")
    assert eng.stats.events["redispatch"] == 0


def drained(cfg, name):
    d = cfg.model_dump()
    for b in d["hosts"]["backends"]:
        if b["name"] == name:
            b["drain"] = True
    return type(cfg).model_validate(d)


def test_drain_reload_keeps_connection_until_next_request():
    cfg = make_cfg(POOL3)
    eng = Engine(cfg)
    cl = Client(eng)
    b, be = open_on(eng, cl, "/api/a")
    name = cfg.hosts.backends[b].name
    new = drained(cfg, name)
    assert check_reload(cfg, new) == []
    eng.configure(new)
    # the established connection is untouched: its response still flows
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    (r,) = sends(eng.segment(be.seg(resp), NOW), "client")
    assert r.payload == resp
    cl.acked += len(resp)
    # new connections never go to the drained back-end
    for port in range(42000, 42012):
        dst = syn_to(eng.segment(Client(eng, port=port).seg(get("/api/a")), NOW))
        assert dst != eng.backends[b][0]
    # its next request is routed by the new state: re-routed away (old back-end reset)
    out = eng.segment(cl.seg(get("/api/b")), NOW)
    assert [s.dst for s in sends(out, "backend") if s.flags & RST] == [eng.backends[b][0]]
    assert syn_to(out) != eng.backends[b][0]
    assert eng.active[b] == 0


def test_drained_only_backend_503_with_reason():
    cfg = make_cfg(POOL3)
    eng = Engine(drained(cfg, "be1"))
    cl = Client(eng)
    (r,) = sends(eng.segment(cl.seg(get("/one/x")), NOW), "client")
    assert r.payload.startswith(b"HTTP/1.1 503 ") and b"drained" in r.payload


def test_max_connections_skips_full_backend_then_503():
    cfg = make_cfg(POOL3)
    d = cfg.model_dump()
    for bk in d["hosts"]["backends"]:
        bk["max_connections"] = 1
    eng = Engine(type(cfg).model_validate(d))
    used = set()
    for port in range(43000, 43003):
        b, _ = open_on(eng, Client(eng, port=port), "/api/x")
        used.add(b)
    assert used == {0, 1, 2}                        # each took one: the full ones were skipped
    (r,) = sends(eng.segment(Client(eng, port=43100).seg(get("/api/x")), NOW), "client")
    assert r.payload.startswith(b"HTTP/1.1 503 ") and b"max_connections" in r.payload


def test_reload_changes_rule_pool_for_next_request():
    cfg = make_cfg(POOL3)
    eng = Engine(cfg)
    cl = Client(eng)
    b, be = open_on(eng, cl, "/one/a")
    assert b == 0
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    eng.segment(be.seg(resp), NOW)
    cl.acked += len(resp)
    new = make_cfg(POOL3.replace("pool: [be1], offload: never", "pool: [be3], offload: never"))
    assert check_reload(cfg, new) == []
    eng.configure(new)
    out = eng.segment(cl.seg(get("/one/b")), NOW)
    assert syn_to(out) == eng.backends[2][0] and eng.stats.events["reroute"] == 1


def test_check_reload_refuses_host_changes_and_names_them():
    cfg = make_cfg(POOL3)
    d = cfg.model_dump()
    d["hosts"]["backends"][1]["port"] = 81
    why = check_reload(cfg, type(cfg).model_validate(d))
    assert len(why) == 1 and "hosts.backends.1 (be2): port" in why[0]
    d = cfg.model_dump()
    d["hosts"]["backends"].pop()
    d["rules"] = [r for r in d["rules"] if "be3" not in r["pool"]]
    assert "hosts.backends" in check_reload(cfg, type(cfg).model_validate(d))[0]
    d = cfg.model_dump()
    d["frontend"]["kernel_path"] = not d["frontend"]["kernel_path"]
    assert check_reload(cfg, type(cfg).model_validate(d)) == ["frontend.kernel_path: takes effect only at start"]


# ---------------------------------------------------------------- access log

class Wall:
    t = 1_790_000_000.25

    def __call__(self):
        return self.t


def logged(eng, sample=1.0, fmt="json", rand=None):
    eng.alog = AccessLog([b.name for b in eng.cfg.hosts.backends], fmt, sample, rand=rand or (lambda: 0.5),
                         wall=Wall())
    return eng.alog


def test_access_log_keepalive_lines_match_the_exchange():
    eng = Engine(make_cfg(POOL3))
    log = logged(eng)
    cl = Client(eng, ip="10.0.1.9", port=45000)
    b, be = open_on(eng, cl, "/one/a?x=1")
    r1 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    eng.segment(be.seg(r1), NOW + 0.002)
    cl.acked += len(r1)
    assert log.lines == []                       # not over until the next request or the end
    eng.segment(cl.seg(get("/one/b", extra="User-Agent: t\r\n")), NOW + 0.01)
    r2 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    eng.segment(be.seg(r2), NOW + 0.013)
    cl.acked += len(r2)
    eng.segment(cl.seg(b"", flags=ACK | FIN), NOW + 0.02)
    eng.segment(be.seg(b"", flags=ACK | FIN), NOW + 0.02)
    eng.tick(NOW + 60)
    lines = [json.loads(x) for x in log.lines]
    assert [(x["method"], x["path"], x["status"], x["bytes"], x["rule"], x["backend"]) for x in lines] == [
        ("GET", "/one/a?x=1", 200, len(r1), "one", "be1"), ("GET", "/one/b", 404, len(r2), "one", "be1")]
    assert lines[0]["client"] == "10.0.1.9:45000" and lines[0]["host"] == "a.example"
    assert lines[0]["ttfb_ms"] == pytest.approx(2.0) and lines[0]["total_ms"] == pytest.approx(2.0)
    assert lines[1]["ttfb_ms"] == pytest.approx(3.0) and lines[0]["fast_path"] is False
    assert lines[0]["ts"] == "2026-09-21T14:13:20.250Z"


def test_access_log_local_503_and_combined_format():
    eng = Engine(drained(make_cfg(POOL3), "be1"))
    log = logged(eng, fmt="combined")
    cl = Client(eng, ip="10.0.1.9", port=45001)
    (r,) = sends(eng.segment(cl.seg(get("/one/x", extra="User-Agent: curl/8\r\n")), NOW), "client")
    (line,) = log.lines
    assert line.startswith('10.0.1.9 - - [21/Sep/2026:14:13:20 +0000] "GET /one/x HTTP/1.1" 503 '
                           f'{len(r.payload)} "-" "curl/8" client=10.0.1.9:45001 host=a.example rule=one '
                           'backend=- fast=0')


def test_access_log_sampling_skips_requests_and_their_watch():
    eng = Engine(make_cfg(POOL3))
    draws = iter([0.9, 0.1])
    log = logged(eng, sample=0.5, rand=lambda: next(draws))
    for port in (46000, 46001):
        cl = Client(eng, port=port)
        b, be = open_on(eng, cl, "/one/a")
        assert (eng.conns[cl.key].watch is None) == (port == 46000)
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        eng.segment(be.seg(resp), NOW)
        cl.acked += len(resp)
        eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
        eng.segment(be.seg(b"", flags=ACK | FIN), NOW)
    eng.tick(NOW + 60)
    assert len(log.lines) == 1 and log.sampled_out == 1 and '"client":"10.0.1.2:46001"' in log.lines[0]


def test_access_log_reads_the_header_before_a_keepalive_offload():
    """From a keep-alive connection's 2nd request on, `auto` offloads at once; with the log on the
    entry is asked for once the response's header was read, so the line has its status."""
    from frontend_helpers import inserts
    for with_log in (False, True):
        eng = Engine(make_cfg(POOL3.replace("{name: one, match: {path_prefix: /one/}, pool: [be1], offload: never}",
                                            "{name: one, match: {path_prefix: /one/}, pool: [be1], offload: auto}")))
        log = logged(eng) if with_log else None
        cl = Client(eng)
        b, be = open_on(eng, cl, "/one/a")
        r1 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        eng.segment(be.seg(r1), NOW)
        cl.acked += len(r1)
        out = eng.segment(cl.seg(get("/one/b")), NOW)           # 2nd request: same back-end
        assert len(inserts(out)) == (0 if with_log else 1)
        r2 = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc"
        out = eng.segment(be.seg(r2), NOW + 0.001)
        assert len(inserts(out)) == (1 if with_log else 0)
        if with_log:
            eng.segment(cl.seg(get("/one/c")), NOW + 0.01)
            assert json.loads(log.lines[-1])["status"] == 201 and json.loads(log.lines[-1])["bytes"] == len(r2)
