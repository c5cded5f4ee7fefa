"""Property tests: random segment streams (valid, mangled, duplicated, reordered) never crash
the engine, keep its state bounded, and leave no offload entry once connections end."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend_helpers import ACK, FIN, NOW, PSH, RST, SYN, Backend, Client, get, make_cfg, seq_add
from miresga.frontend.engine import Engine, Send
from miresga.frontend.segment import Segment
from miresga.fuzz.engine_fuzz import FakeSwitch  # the controller's table, shared with the engine fuzz target

CFG = make_cfg()
PAYLOADS = [b"", get("/big/x")[:7], get("/big/x")[7:], get("/big/x"), get("/api/a"), get("/dl/f"),
            get("/a") + get("/api/b"), b"\x00\xffgarbage", b"X" * 700,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\nxxxx", b"HTTP/1.1 200 OK\r\n\r\n"]


@st.composite
def ops(draw):
    n = draw(st.integers(1, 60))
    out = []
    for _ in range(n):
        kind = draw(st.sampled_from(["c"] * 4 + ["b"] * 3 + ["synack"] * 2 + ["tick", "deliver", "queue", "idle"]))
        out.append((kind, draw(st.integers(0, 2)), draw(st.integers(0, len(PAYLOADS) - 1)),
                    draw(st.sampled_from([0] * 8 + [-3, -1, 1, 3])), draw(st.sampled_from([ACK | PSH] * 6 + [ACK] * 2 + [ACK | FIN] * 2 +
                                                                  [RST, RST | ACK, SYN, SYN | ACK, PSH, 0])),
                    draw(st.integers(0, 2)), draw(st.sampled_from(["ok", "queue", "full"]))))
    return out


def run_stream(script):
    eng = Engine(CFG)
    sw = FakeSwitch()
    clients = [Client(eng, port=5000 + i, c=(0xFFFFFF00 + i * 0x1000) & 0xFFFFFFFF) for i in range(3)]
    now = NOW
    mode = "ok"
    for kind, ci, pi, jitter, flags, bi, m in script:
        mode = m
        cl = clients[ci]
        payload = PAYLOADS[pi]
        if kind == "c":
            seg = cl.seg(payload, flags=flags, advance=True)
            seg.seq = seq_add(seg.seq, jitter * 7 if jitter else 0)
            acts = eng.segment(seg, now)
        elif kind == "b":
            conn = eng.conns.get(cl.key)
            # mostly the connection's own back-end, in its sequence space; sometimes a stranger
            if conn is not None and conn.backend is not None and bi:
                be = Backend(eng, conn.backend, cl, s=conn.s, c=conn.c)
            else:
                be = Backend(eng, bi, cl)
            be.sent = max(0, jitter) * 50
            seg = be.seg(payload, flags=flags)
            acts = eng.segment(seg, now)
            if bi == 2 and jitter == 0:
                cl.acked += len(payload)   # the client received it: its next request is not pipelined
        elif kind == "synack":
            conn = eng.conns.get(cl.key)
            if conn is not None and conn.backend is not None:
                be = Backend(eng, conn.backend, cl, s=conn.s, c=conn.c)
                seg = be.synack()
                if jitter:
                    seg.seq = seq_add(seg.seq, jitter)
            else:
                seg = Backend(eng, bi, cl).synack()
            acts = eng.segment(seg, now)
        elif kind == "tick":
            now += [0.3, 2.0, 20.0, 200.0][bi + (1 if jitter > 0 else 0)]
            acts = eng.tick(now)
        elif kind == "deliver":
            acts = []
            for r in sw.pending:
                acts += eng.offload_result(r[0], r[1], r[2], r[3], now, r[4])
            sw.pending.clear()
        elif kind == "queue":
            sw.install_queued()
            acts = []
        else:
            acts = eng.switch_idle(list(sw.table), now)
        sw.apply(acts, mode)
        for a in acts:
            if isinstance(a, Send):
                assert isinstance(a.seg, Segment) and 0 <= a.seg.seq <= 0xFFFFFFFF
        # bounded state
        assert len(eng.conns) <= len(clients)
        for c in eng.conns.values():
            assert c.held_bytes <= eng.fe.max_held_bytes + eng.fe.max_header_bytes
            assert c.ooo_bytes <= eng.fe.max_held_bytes
        assert all(v >= 0 for v in eng.active)
    # end every connection: clients reset, then let every timer and report run out
    for cl in clients:
        sw.apply(eng.segment(cl.seg(b"", flags=RST), now), "ok")
    for _ in range(3):
        sw.install_queued()
        for r in sw.pending[:]:
            sw.apply(eng.offload_result(r[0], r[1], r[2], r[3], now, r[4]), "ok")
        sw.pending.clear()
        now += 1000
        sw.apply(eng.tick(now), "ok")
        sw.apply(eng.switch_idle(list(sw.table), now), "ok")
    assert not eng.conns
    assert sw.table == {}, "offload entries left behind"
    assert eng.active == [0, 0, 0]
    return eng


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops())
def test_random_streams(script):
    run_stream(script)


def test_valid_lifecycle_through_the_harness_leaves_nothing():
    # a deterministic script that reaches offload and close, as a sanity check of the harness
    script = [("c", 0, 5, 0, ACK | PSH, 0, "ok"), ("synack", 0, 0, 0, 0, 0, "ok"), ("deliver", 0, 0, 0, 0, 0, "ok")]
    eng = run_stream(script)
    assert eng.stats.offload["installed"] == 1 and eng.stats.offload["deleted"] >= 1
