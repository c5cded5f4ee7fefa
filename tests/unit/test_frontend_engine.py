"""The splice engine driven with segments as data: every transition, loss, duplication, reorder."""

from __future__ import annotations

import pytest

from frontend_helpers import (ACK, FIN, NOW, PSH, RST, RULES, SYN, Backend, Client, deletes, get, inserts,
                              make_cfg, sends, seq_add)
from miresga import cookie
from miresga.frontend.engine import Engine
from miresga.frontend.segment import OPT_MSS, OPT_SACK_PERM, OPT_WSCALE, Segment, parse_options
from miresga.frontend.engine.states import Offload, State


@pytest.fixture
def eng():
    return Engine(make_cfg())


def open_conn(eng, path="/", client=None, backend=0, now=NOW):
    """Client sends a one-segment GET, engine SYNs, back-end SYN-ACKs: returns (client, backend, actions)."""
    cl = client or Client(eng)
    a1 = eng.segment(cl.seg(get(path)), now)
    syn = sends(a1, "backend")
    assert len(syn) == 1 and syn[0].flags == SYN
    be = Backend(eng, backend, cl)
    assert (syn[0].dst, syn[0].dport) == (be.ip, be.port)
    a2 = eng.segment(be.synack(), now)
    return cl, be, a1 + a2


def test_handshake_ack_is_ignored(eng):
    cl = Client(eng)
    assert eng.segment(cl.handshake_ack(), NOW) == []
    assert not eng.conns and eng.stats.events["handshake_ack"] == 1


def test_one_segment_get_splices(eng):
    cl = Client(eng, mss=1440, wscale=9, sack=True)
    req = get("/index.html")
    a = eng.segment(cl.seg(req), NOW)
    (syn,) = sends(a)
    be1 = eng.backends[0]
    # DESIGN step 3: from the client's ip:port, seq c, s in the ack field with the ACK flag off
    assert (syn.src, syn.sport, syn.dst, syn.dport) == (cl.ip, cl.port, *be1)
    assert syn.seq == cl.c and syn.ack == cl.s and syn.flags == SYN and syn.payload == b""
    opts = parse_options(syn.options)
    assert int.from_bytes(opts[OPT_MSS], "big") == 1440 and opts[OPT_WSCALE] == bytes([9])
    assert OPT_SACK_PERM in opts and 8 not in opts  # no timestamps
    assert eng.conns[cl.key].state is State.SYN_SENT
    be = Backend(eng, 0, cl)
    a = eng.segment(be.synack(), NOW)
    (fwd,) = sends(a, "backend")
    assert (fwd.src, fwd.sport, fwd.dst, fwd.dport) == (cl.ip, cl.port, *be1)
    assert fwd.seq == seq_add(cl.c, 1) and fwd.ack == seq_add(cl.s, 1) and fwd.payload == req
    assert eng.conns[cl.key].state is State.SPLICED
    # response relayed from VIP:port, untouched sequence numbers
    resp = be.seg(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    (out,) = sends(eng.segment(resp, NOW), "client")
    assert (out.src, out.sport, out.dst, out.dport) == (eng.vip, eng.vport, cl.ip, cl.port)
    assert out.seq == resp.seq and out.ack == resp.ack and out.payload == resp.payload
    cl.acked = len(resp.payload)
    # it acknowledges all the back-end sent: held for ACK coalescing, then released
    assert sends(eng.segment(cl.seg(b"", flags=ACK), NOW)) == []
    (ack,) = sends(eng.flush(NOW + eng.fe.ack_coalesce_ms / 1000), "backend")
    assert ack.dst == be1[0] and ack.ack == seq_add(cl.s, 1 + len(resp.payload))
    assert eng.stats.requests_rule["default"] == 1 and eng.stats.requests_backend[0] == 1


def test_forged_cookie_dropped(eng):
    cl = Client(eng)
    cl.s ^= 0x1000
    assert eng.segment(cl.seg(get()), NOW) == []
    assert eng.stats.drops["bad_cookie"] == 1 and not eng.conns


def test_cookie_of_other_client_port_dropped(eng):
    cl = Client(eng)
    seg = cl.seg(get())
    seg.sport += 1
    assert eng.segment(seg, NOW) == [] and eng.stats.drops["bad_cookie"] == 1


def test_expired_cookie_dropped_previous_bucket_accepted(eng):
    bs = eng.cfg.switch.cookie.bucket_seconds
    old = Client(eng, port=1, bucket=cookie.bucket_of(NOW, bs) - 2)
    assert eng.segment(old.seg(get()), NOW) == [] and eng.stats.drops["bad_cookie"] == 1
    prev = Client(eng, port=2, bucket=cookie.bucket_of(NOW, bs) - 1)
    assert sends(eng.segment(prev.seg(get()), NOW))[0].flags == SYN


def test_previous_key_accepted_after_rotation(eng):
    rot = eng.cfg.switch.cookie.rotate_seconds
    later = (NOW // rot + 1) * rot + 1       # just after a key rotation
    cl = Client(eng, now=later - 2)          # cookie from the old generation, same-ish bucket
    assert sends(eng.segment(cl.seg(get()), later))[0].flags == SYN
    too_old = Client(eng, port=3, key=cookie.CookieKey.derive(eng.cfg.switch.cookie.secret,
                                                             int(later // rot) - 2), now=later)
    assert eng.segment(too_old.seg(get()), later) == []


def test_header_across_segments_in_order_and_out_of_order(eng):
    req = get("/x", extra="X-Long: " + "a" * 300 + "\r\n")
    parts = [req[:100], req[100:250], req[250:]]
    for order in ([0, 1, 2], [0, 2, 1], [1, 2, 0], [2, 1, 0]):
        eng = Engine(make_cfg())
        cl = Client(eng)
        segs = []
        for p in parts:
            segs.append(cl.seg(p))
        acts = []
        for i in order:
            acts += eng.segment(segs[i], NOW)
        syn = sends(acts, "backend")
        assert len(syn) == 1 and syn[0].flags == SYN, order
        # the incomplete header is acknowledged by us (nobody else can yet), in order only
        acks = sends(acts, "client")
        assert all(a.flags == ACK and a.seq == seq_add(cl.s, 1) for a in acks)
        assert [a.ack for a in acks] == [s.end for s in segs[:len(acks)]]
        be = Backend(eng, 0, cl)
        fwd = sends(eng.segment(be.synack(), NOW))
        assert b"".join(s.payload for s in fwd) == req
        assert [s.seq for s in fwd] == sorted(s.seq for s in segs)


def test_duplicate_header_segments(eng):
    cl = Client(eng)
    req = get("/dup")
    s1 = cl.seg(req[:10])
    s2 = cl.seg(req[10:])
    (ack,) = sends(eng.segment(s1, NOW))
    assert ack.ack == s1.end
    assert sends(eng.segment(s1, NOW)) == [ack]   # duplicate while collecting: our ACK was lost
    a = eng.segment(s2, NOW)
    assert sends(a)[0].flags == SYN
    assert sends(eng.segment(s2, NOW)) == []  # duplicate while waiting for SYN-ACK
    be = Backend(eng, 0, cl)
    fwd = sends(eng.segment(be.synack(), NOW))
    assert b"".join(s.payload for s in fwd) == req
    # lost on the way to the back-end: the client retransmits, we relay it again
    again = sends(eng.segment(s1, NOW), "backend")
    assert again and again[0].payload == req[:10]
    # we acknowledged req[:10] ourselves: until the back-end does, we retransmit it
    t = NOW + eng.fe.response_rto_s + 0.01
    assert [s.payload for s in sends(eng.tick(t))] == [req[:10], req[10:]]
    eng.segment(Backend(eng, 0, cl).seg(b"", flags=ACK), t)
    assert eng.conns[cl.key].rtx is None
    assert sends(eng.flush(t + 1))   # the back-end's ACK, held for coalescing, reaches the client
    assert sends(eng.tick(t + 5)) == []


def test_first_segment_lost_then_retransmitted(eng):
    cl = Client(eng)
    req = get("/y", extra="X-A: b\r\n")
    s1, s2 = cl.seg(req[:12]), cl.seg(req[12:])
    assert eng.segment(s2, NOW) == []   # does not look like a request start: wait
    a = eng.segment(s1, NOW + 0.3)       # the retransmission
    assert sends(a, "backend")[0].flags == SYN
    fwd = sends(eng.segment(Backend(eng, 0, cl).synack(), NOW))
    assert b"".join(s.payload for s in fwd) == req


def test_garbage_gets_400_after_grace(eng):
    cl = Client(eng)
    assert eng.segment(cl.seg(b"\x16\x03\x01\x00\xa5garbage"), NOW) == []
    a = eng.tick(NOW + eng.fe.reorder_grace_s + 0.01)
    (r,) = sends(a, "client")
    assert r.payload.startswith(b"HTTP/1.1 400 ") and r.flags & FIN and r.seq == seq_add(cl.s, 1)


def test_malformed_request_400(eng):
    cl = Client(eng)
    a = eng.segment(cl.seg(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), NOW)
    (r,) = sends(a)
    assert r.payload.startswith(b"HTTP/1.1 400 ") and (r.src, r.sport) == (eng.vip, eng.vport)
    assert r.seq == seq_add(cl.s, 1) and r.flags & FIN and r.ack == seq_add(cl.c, 1 + cl.sent)
    # the client acknowledges our FIN and closes: we ACK its FIN and forget
    cl.acked = len(r.payload) + 1
    a = eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
    assert sends(a)[0].flags == ACK and not eng.conns


def test_oversized_header_431_then_reset(eng):
    cl = Client(eng)
    acts = []
    for _ in range(6):
        acts += eng.segment(cl.seg(b"GET / HTTP/1.1\r\n" if cl.sent == 0 else b"X-Pad: " + b"p" * 250 + b"\r\n"), NOW)
    (r,) = [s for s in sends(acts) if s.payload]
    assert r.payload.startswith(b"HTTP/1.1 431 ") and r.flags & FIN
    assert eng.stats.responses_local[431] == 1
    cl.acked = len(r.payload) + 1
    a = eng.segment(cl.seg(b"", flags=ACK), NOW)
    (rst,) = sends(a)
    assert rst.flags & RST and rst.seq == r.end and not eng.conns


def test_local_response_retransmitted_then_reset(eng):
    cl = Client(eng)
    (r,) = sends(eng.segment(cl.seg(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), NOW))
    t = NOW
    for i in range(eng.fe.response_retries):
        t += eng.fe.response_rto_s * (1 << i) + 0.01
        (again,) = sends(eng.tick(t))
        assert again.payload == r.payload
    t += 100
    (rst,) = sends(eng.tick(t))
    assert rst.flags & RST and not eng.conns


def test_no_healthy_backend_503(eng):
    for i in range(3):
        eng.set_health(i, False)
    cl = Client(eng)
    (r,) = sends(eng.segment(cl.seg(get()), NOW))
    assert r.payload.startswith(b"HTTP/1.1 503 ") and r.seq == seq_add(cl.s, 1)


def test_unhealthy_backend_leaves_pool():
    eng = Engine(make_cfg(RULE_RR))
    eng.set_health(1, False)
    picked = set()
    for p in range(12):
        cl = Client(eng, port=1000 + p)
        (syn,) = sends(eng.segment(cl.seg(get()), NOW))
        picked.add(syn.dst)
    assert picked == {eng.backends[0][0], eng.backends[2][0]}


RULE_RR = """
rules:
  - {name: all, pool: [be1, be2, be3], policy: round_robin}
"""


def test_syn_lost_retransmitted_then_503(eng):
    cl = Client(eng)
    (syn,) = sends(eng.segment(cl.seg(get()), NOW))
    t = NOW
    for i in range(eng.fe.syn_retries):
        t += eng.fe.syn_retransmit_s * (1 << i) + 0.01
        (again,) = sends(eng.tick(t))
        assert again == syn
    t += 60
    (r,) = sends(eng.tick(t), "client")
    assert r.payload.startswith(b"HTTP/1.1 503 ") and eng.stats.drops["backend_timeout"] == 1


def test_backend_refuses_503(eng):
    cl = Client(eng)
    eng.segment(cl.seg(get()), NOW)
    be = Backend(eng, 0, cl)
    rst = be.synack()
    rst.flags = RST | ACK
    (r,) = sends(eng.segment(rst, NOW))
    assert r.payload.startswith(b"HTTP/1.1 503 ") and r.dst == cl.ip


def test_bad_synack_ignored_then_good_one(eng):
    cl = Client(eng)
    eng.segment(cl.seg(get()), NOW)
    be = Backend(eng, 0, cl)
    bad = be.synack()
    bad.seq ^= 1
    assert eng.segment(bad, NOW) == [] and eng.stats.drops["bad_synack"] == 1
    assert sends(eng.segment(be.synack(), NOW))[0].payload == get()
    # retransmitted SYN-ACK after splice: no second copy of the request
    assert eng.segment(be.synack(), NOW) == []


def test_post_body_spanning_segments_forwarded_whole(eng):
    body = bytes(range(256)) * 20
    req = f"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    cl = Client(eng)
    chunks = [req[i:i + 1000] for i in range(0, len(req), 1000)]
    segs = [cl.seg(c) for c in chunks]
    fwd = []
    fwd += sends(eng.segment(segs[0], NOW), "backend")     # header + start of body -> SYN
    fwd += sends(eng.segment(segs[2], NOW), "backend")     # out of order, held
    fwd += sends(eng.segment(segs[1], NOW), "backend")
    assert [s.flags for s in fwd] == [SYN]
    be = Backend(eng, 0, cl)
    fwd = sends(eng.segment(be.synack(), NOW))
    for s in segs[3:]:
        fwd += sends(eng.segment(s, NOW))
    data = b"".join(s.payload for s in sorted(fwd, key=lambda s: (s.seq - cl.c) & 0xFFFFFFFF))
    assert data == req
    assert eng.stats.requests_rule["default"] == 1  # body bytes never look like a new request


def test_pipelined_same_backend_forwarded(eng):
    cl = Client(eng)
    two = get("/a") + get("/b")
    eng.segment(cl.seg(two), NOW)
    be = Backend(eng, 0, cl)
    fwd = sends(eng.segment(be.synack(), NOW))
    assert fwd[0].payload == two
    assert eng.stats.events["pipelined"] == 1 and eng.stats.requests_rule["default"] == 2


def test_pipelined_to_other_backend_refused_with_reset(eng):
    cl, be, _ = open_conn(eng, "/a")
    cl.acked = 0
    # a pipelined request (no new response byte acknowledged) that the rules send elsewhere
    a = eng.segment(cl.seg(get("/api/x")), NOW)
    rsts = [s for s in sends(a) if s.flags & RST]
    assert {s.dst for s in rsts} == {cl.ip, be.ip} and not eng.conns
    assert eng.stats.drops["pipelined_reroute"] == 1


def keepalive_response(eng, cl, be, body=b"ok", cl_hdr=None):
    n = len(body) if cl_hdr is None else cl_hdr
    resp = be.seg(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode() + body)
    a = eng.segment(resp, NOW)
    cl.acked += len(resp.payload)
    return a


def test_keepalive_same_backend_no_new_syn(eng):
    cl, be, _ = open_conn(eng, "/a")
    keepalive_response(eng, cl, be)
    a = eng.segment(cl.seg(get("/b")), NOW)
    (fwd,) = sends(a)
    assert fwd.dst == be.ip and fwd.payload == get("/b") and not fwd.flags & SYN


def test_reroute_to_other_backend(eng):
    cl, be, _ = open_conn(eng, "/a")
    keepalive_response(eng, cl, be)
    req2 = get("/api/users")
    start = seq_add(cl.c, 1 + cl.sent)
    s = cl.seg(req2)
    a = eng.segment(s, NOW)
    out = sends(a)
    rst = [x for x in out if x.flags & RST]
    syn = [x for x in out if x.flags & SYN]
    assert len(rst) == 1 and rst[0].dst == be.ip and rst[0].seq == start
    be2 = eng.backends[1]
    assert len(syn) == 1 and (syn[0].dst, syn[0].dport) == be2
    assert syn[0].seq == seq_add(start, -1) and syn[0].ack == seq_add(s.ack, -1)
    # the new back-end's SYN-ACK continues the client's view of the server stream
    nb = Backend(eng, 1, cl, s=seq_add(s.ack, -1), c=seq_add(start, -1))
    (fwd,) = sends(eng.segment(nb.synack(), NOW))
    assert fwd.payload == req2 and fwd.dst == be2[0] and fwd.seq == start
    # a straggler of the old back-end is dropped
    assert eng.segment(be.seg(b"late"), NOW) == [] and eng.stats.drops["stale_backend"] == 1
    # responses of the new one are relayed
    assert sends(eng.segment(nb.seg(b"HTTP/1.1 200 OK\r\n\r\n"), NOW))[0].dst == cl.ip
    assert eng.stats.events["reroute"] == 1 and eng.active == [0, 1, 0]


def test_reroute_header_spanning_segments_held(eng):
    cl, be, _ = open_conn(eng, "/a")
    keepalive_response(eng, cl, be)
    req2 = get("/api/long", extra="X-Pad: " + "x" * 200 + "\r\n")
    s1, s2 = cl.seg(req2[:50]), cl.seg(req2[50:])
    assert sends(eng.segment(s1, NOW), "backend") == []   # held: its route is not known yet
    out = sends(eng.segment(s2, NOW))
    assert [x.flags for x in out] == [RST, SYN]
    nb = Backend(eng, 1, cl, s=seq_add(s1.ack, -1), c=seq_add(s1.seq, -1))
    fwd = sends(eng.segment(nb.synack(), NOW))
    assert b"".join(x.payload for x in fwd) == req2


def test_offload_auto_large_response(eng):
    cl, be, _ = open_conn(eng, "/big/file")
    a = keepalive_response(eng, cl, be, b"x" * 1000, cl_hdr=1 << 20)
    (ins,) = inserts(a)
    assert (ins.client_ip, ins.client_port, ins.backend) == (cl.ip, cl.port, 0)
    conn = eng.conns[cl.key]
    assert conn.offload is Offload.REQUESTED
    eng.offload_result(cl.ip, cl.port, ins.gen, "ok", NOW)
    assert conn.offload is Offload.INSTALLED
    # idle timer never expires an offloaded connection...
    a = eng.tick(NOW + 10 * eng.fe.idle_timeout_s)
    assert sends(a) == [] and deletes(a) == [] and cl.key in eng.conns   # only a check of the entry
    # ...until the switch says its entry is idle; then the slow path and our timer take over
    a = eng.switch_idle([cl.key], NOW + 1000)
    assert deletes(a) and conn.offload is Offload.NONE
    a = eng.tick(NOW + 1000 + eng.fe.idle_timeout_s + 1)
    assert {s.dst for s in sends(a) if s.flags & RST} == {cl.ip, be.ip} and not eng.conns


@pytest.mark.parametrize("cl,first,offloaded", [(65536, 14480, False), (65536 + 14480, 14480, True),
                                                 (1 << 20, 14480, True), (1 << 20, 1 << 20, False)])
def test_offload_auto_counts_only_the_bytes_still_to_come(eng, cl, first, offloaded):
    """A new connection's first flight (~14 KB) is through before an entry could help: `auto`
    offloads when Content-Length minus the body already seen reaches the threshold."""
    cl_, be, _ = open_conn(eng, "/big/x")
    a = keepalive_response(eng, cl_, be, b"x" * first, cl_hdr=cl)
    assert len(inserts(a)) == (1 if offloaded else 0)


def test_offload_auto_small_response_stays_slow(eng):
    cl, be, _ = open_conn(eng, "/big/small")
    assert inserts(keepalive_response(eng, cl, be, b"x" * 100)) == []


def test_offload_auto_keepalive_after_n_requests_small_responses(eng):
    """`auto` also offloads a keep-alive connection from its Nth request (default 2), whatever the
    response size; a re-route drops the entry and the new back-end connection gets one again."""
    cl, be, acts = open_conn(eng, "/a")
    assert inserts(acts) == [] and inserts(keepalive_response(eng, cl, be)) == []
    a = eng.segment(cl.seg(get("/b")), NOW)            # request 2: relayed, then offloaded
    (fwd,) = sends(a)
    assert fwd.dst == be.ip and fwd.payload == get("/b")
    (ins,) = inserts(a)
    assert (ins.client_ip, ins.client_port, ins.backend) == (cl.ip, cl.port, 0)
    eng.offload_result(cl.ip, cl.port, ins.gen, "ok", NOW)
    conn = eng.conns[cl.key]
    assert conn.offload is Offload.INSTALLED and conn.watch is None
    keepalive_response(eng, cl, be, b"x" * 100)
    a = eng.segment(cl.seg(get("/c")), NOW)            # request 3: relayed, nothing new to insert
    assert [s.payload for s in sends(a)] == [get("/c")] and inserts(a) == []
    keepalive_response(eng, cl, be)
    # re-route to the `never` rule's back-end: entry deleted, no insert after the new splice
    req = get("/api/x")
    s = cl.seg(req)
    a = eng.segment(s, NOW)
    assert len(deletes(a)) == 1 and conn.offload is Offload.NONE
    nb = Backend(eng, 1, cl, s=seq_add(s.ack, -1), c=seq_add(s.seq, -1))
    a = eng.segment(nb.synack(), NOW)
    assert [x.payload for x in sends(a)] == [req] and inserts(a) == []
    keepalive_response(eng, cl, nb)
    # and back to the default rule: a keep-alive connection again, offloaded once spliced
    req = get("/d")
    s = cl.seg(req)
    a = eng.segment(s, NOW)
    assert inserts(a) == []                             # not before the SYN-ACK
    b1 = Backend(eng, 0, cl, s=seq_add(s.ack, -1), c=seq_add(s.seq, -1))
    a = eng.segment(b1.synack(), NOW)
    (ins,) = inserts(a)
    assert ins.backend == 0 and [x.payload for x in sends(a)] == [req]


def test_offload_after_requests_zero_disables_count():
    eng = Engine(make_cfg(RULES.replace("offload: auto}", "offload: auto, offload_after_requests: 0}")))
    cl, be, acts = open_conn(eng, "/a")
    for path in ("/b", "/c", "/d"):
        keepalive_response(eng, cl, be)
        assert inserts(eng.segment(cl.seg(get(path)), NOW)) == []
    # the Content-Length threshold still works
    assert len(inserts(keepalive_response(eng, cl, be, b"x" * 10, cl_hdr=1 << 20))) == 1


def test_offload_never_rule(eng):
    cl, be, _ = open_conn(eng, "/api/x", backend=1)
    assert inserts(keepalive_response(eng, cl, be, b"x" * 10, cl_hdr=1 << 30)) == []


def test_offload_always_after_synack_and_deleted_on_close(eng):
    cl, be, acts = open_conn(eng, "/dl/x", backend=2)
    (ins,) = inserts(acts)
    eng.offload_result(cl.ip, cl.port, ins.gen, "queued", NOW)
    assert eng.conns[cl.key].offload is Offload.QUEUED
    eng.offload_result(cl.ip, cl.port, ins.gen, "installed", NOW)
    assert eng.conns[cl.key].offload is Offload.INSTALLED
    # close from the back-end first, then the client
    a = eng.segment(be.seg(b"", flags=ACK | FIN), NOW)
    assert sends(a)[0].flags & FIN and not deletes(a)
    cl.acked += 1
    a = eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
    assert sends(a)[0].flags & FIN and len(deletes(a)) == 1
    assert eng.conns[cl.key].state is State.CLOSING
    (last,) = sends(eng.segment(be.seg(b"", flags=ACK), NOW))   # the last ACK, relayed
    assert last.dst == cl.ip
    assert eng.tick(NOW + eng.fe.close_linger_s + 1) == [] and not eng.conns


def test_offload_table_full_stays_on_slow_path(eng):
    cl, be, acts = open_conn(eng, "/dl/x", backend=2)
    (ins,) = inserts(acts)
    eng.offload_result(cl.ip, cl.port, ins.gen, "table_full", NOW)
    assert eng.conns[cl.key].offload is Offload.NONE
    assert sends(eng.segment(be.seg(b"data"), NOW))[0].dst == cl.ip
    a = eng.segment(cl.seg(b"", flags=RST), NOW)
    assert deletes(a) == []   # nothing installed, nothing to delete


def test_close_from_client_first(eng):
    cl, be, _ = open_conn(eng, "/")
    keepalive_response(eng, cl, be)
    a = eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
    assert sends(a)[0].flags & FIN and eng.conns[cl.key].state is State.SPLICED
    a = eng.segment(be.seg(b"", flags=ACK | FIN), NOW)
    assert sends(a)[0].flags & FIN and eng.conns[cl.key].state is State.CLOSING
    # a lost FIN is retransmitted and still relayed during the linger
    be.sent -= 1
    assert sends(eng.segment(be.seg(b"", flags=ACK | FIN), NOW))
    eng.tick(NOW + 5)
    assert not eng.conns and eng.active == [0, 0, 0]


def test_client_rst(eng):
    cl, be, acts = open_conn(eng, "/dl/", backend=2)
    (ins,) = inserts(acts)
    eng.offload_result(cl.ip, cl.port, ins.gen, "ok", NOW)
    a = eng.segment(cl.seg(b"", flags=RST), NOW)
    assert sends(a)[0].dst == be.ip and sends(a)[0].flags & RST and len(deletes(a)) == 1
    assert not eng.conns


def test_backend_rst(eng):
    cl, be, _ = open_conn(eng, "/")
    a = eng.segment(be.seg(b"", flags=RST | ACK), NOW)
    (r,) = sends(a)
    assert r.dst == cl.ip and r.src == eng.vip and r.flags & RST and not eng.conns


def test_header_timeout_resets_client(eng):
    cl = Client(eng)
    eng.segment(cl.seg(b"GET / HTTP/1.1\r\nHost: a\r\n"), NOW)
    (r,) = sends(eng.tick(NOW + eng.fe.header_timeout_s + 1))
    assert r.flags & RST and r.dst == cl.ip and not eng.conns


def test_idle_slow_path_connection_expires(eng):
    cl, be, _ = open_conn(eng, "/")
    assert eng.tick(NOW + eng.fe.idle_timeout_s - 1) == []
    a = eng.tick(NOW + eng.fe.idle_timeout_s + 1)
    assert {s.dst for s in sends(a)} == {cl.ip, be.ip} and not eng.conns


def test_early_fin_answered_without_state(eng):
    cl = Client(eng)
    (r,) = sends(eng.segment(cl.seg(b"", flags=ACK | FIN), NOW))
    assert r.flags == FIN | ACK and r.seq == seq_add(cl.s, 1) and r.ack == seq_add(cl.c, 2)
    assert not eng.conns


def test_client_fin_mid_header_400(eng):
    cl = Client(eng)
    eng.segment(cl.seg(b"GET / HTTP/1.1\r\n"), NOW)
    (r,) = sends(eng.segment(cl.seg(b"", flags=ACK | FIN), NOW))
    assert r.payload.startswith(b"HTTP/1.1 400 ")


def test_host_rule(eng):
    cl = Client(eng)
    (syn,) = sends(eng.segment(cl.seg(get("/", host="WWW.two.example:80")), NOW))
    assert syn.dst == eng.backends[2][0]


def test_unexpected_events_are_counted_drops(eng):
    cl = Client(eng)
    eng.segment(cl.seg(get("/x", extra="X: y\r\n")[:10]), NOW)   # HEADER
    be = Backend(eng, 0, cl)
    assert eng.segment(be.synack(), NOW) == []      # no back-end chosen yet
    assert eng.stats.drops["stale_backend"] == 1
    syn = cl.seg(b"", flags=SYN)
    assert eng.segment(syn, NOW) == [] and eng.stats.drops["protocol:header:client_syn"] == 1
    eng.segment(cl.seg(get("/x", extra="X: y\r\n")[10:]), NOW)    # -> SYN_SENT
    assert eng.segment(be.seg(b"early"), NOW) == []
    assert eng.stats.drops["protocol:syn_sent:backend_segment"] == 1


def test_not_ours_dropped(eng):
    cl = Client(eng)
    s = cl.seg(get())
    s.dport = 81
    assert eng.segment(s, NOW) == [] and eng.stats.drops["not_ours"] == 1


def test_orphan_flow_is_adopted_after_frontend_restart(eng):
    """Another front-end spliced and offloaded this connection, then died; its buckets came here.
    The back-end's FIN (FIN always goes to a front-end) must still reach the client, and the
    client's side must still reach the back-end."""
    cl = Client(eng)
    cl.sent = len(get("/dl/x"))               # the request went through the dead front-end
    be = Backend(eng, 2, cl)
    be.sent = 5000                            # the response went through the switch's fast path
    cl.acked = 5000
    a = eng.segment(be.seg(b"", flags=ACK | FIN), NOW)
    (fin,) = sends(a)
    assert fin.flags & FIN and (fin.src, fin.sport, fin.dst) == (eng.vip, eng.vport, cl.ip)
    conn = eng.conns[cl.key]
    assert conn.state is State.SPLICED and conn.offload is Offload.INSTALLED and eng.active == [0, 0, 1]
    cl.acked += 1
    a = eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
    (cfin,) = sends(a)
    assert cfin.dst == be.ip and cfin.flags & FIN
    assert len(deletes(a)) == 1 and conn.state is State.CLOSING   # its entry goes with it
    eng.tick(NOW + 10)
    assert not eng.conns and eng.active == [0, 0, 0]


def test_adopted_connection_keeps_serving_its_backend_but_never_reroutes(eng):
    cl = Client(eng)
    cl.sent = 100
    be = Backend(eng, 0, cl)
    be.sent = 300
    eng.segment(be.seg(b"tail of a response"), NOW)
    cl.acked = be.sent
    (fwd,) = sends(eng.segment(cl.seg(get("/x")), NOW))          # default rule: be1, same back-end
    assert fwd.dst == be.ip and fwd.payload == get("/x")
    keepalive_response(eng, cl, be)
    a = eng.segment(cl.seg(get("/api/x")), NOW)                   # rule wants be2: cannot splice anew
    assert {s.dst for s in sends(a) if s.flags & RST} == {cl.ip, be.ip}
    assert eng.stats.drops["adopted_reroute"] == 1 and not eng.conns


def test_adopted_mid_body_is_relayed_unparsed(eng):
    cl = Client(eng)
    be = Backend(eng, 0, cl)
    eng.segment(be.seg(b"HTTP/1.1 100 Continue\r\n\r\n"), NOW)
    (fwd,) = sends(eng.segment(cl.seg(b"\x00\x01 rest of an upload body"), NOW))
    assert fwd.dst == be.ip and eng.conns[cl.key].parser.tunnel


def test_orphan_backend_rst_relayed_without_state(eng):
    cl = Client(eng)
    be = Backend(eng, 0, cl)
    (r,) = sends(eng.segment(be.seg(b"", flags=RST | ACK), NOW))
    assert r.dst == cl.ip and r.src == eng.vip and r.flags & RST and not eng.conns


def test_header_over_limit_in_one_segment_431(eng):
    """A whole oversized header in one (GSO) segment is refused as well as one that trickles in."""
    cl = Client(eng)
    (r,) = sends(eng.segment(cl.seg(get("/", extra="X-Big: " + "b" * 2000 + "\r\n")), NOW))
    assert r.payload.startswith(b"HTTP/1.1 431 ")


def test_garbage_400_acknowledges_nothing(eng):
    cl = Client(eng)
    g = cl.seg(b"GARBAGE\r\n\r\n")
    eng.segment(g, NOW)
    eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
    (r,) = sends(eng.tick(NOW + eng.fe.reorder_grace_s + 0.1))
    assert r.payload.startswith(b"HTTP/1.1 400 ") and r.ack == g.seq


def test_header_beyond_initial_window_is_acknowledged_then_limited():
    """The client can send ~10 segments before anyone acknowledges: we acknowledge the header
    while it is incomplete, so a long header keeps coming until the configured limit."""
    eng = Engine(make_cfg(RULES_BIGHDR))
    cl = Client(eng, mss=1460)
    acts = eng.segment(cl.seg(b"GET / HTTP/1.1\r\n"), NOW)
    for _ in range(60):
        acts += eng.segment(cl.seg(b"X: " + b"h" * 1440 + b"\r\n"), NOW)
        if eng.conns[cl.key].state is State.RESPONDED:
            break
    out = sends(acts)
    assert sum(1 for s in out if s.flags == ACK) > 10
    assert out[-1].payload.startswith(b"HTTP/1.1 431 ")
    assert 65536 < cl.sent < 70000


def test_slow_client_small_partial_header_is_not_refused(eng):
    cl = Client(eng)
    s1 = cl.seg(b"GET / HTTP/1.1\r\n")
    (ack,) = sends(eng.segment(s1, NOW))
    assert ack.flags == ACK and ack.ack == s1.end      # so a Nagle client sends the rest
    (syn,) = sends(eng.segment(cl.seg(b"Host: a\r\n\r\n"), NOW + 1))
    assert syn.flags == SYN


def test_retransmitted_held_request_is_not_sent_to_the_old_backend(eng):
    cl, be, _ = open_conn(eng, "/a")
    keepalive_response(eng, cl, be)
    s1 = cl.seg(b"GET /api/x HTTP/1.1\r\n")
    assert sends(eng.segment(s1, NOW), "backend") == []
    assert sends(eng.segment(s1, NOW), "backend") == []   # its duplicate is held too, not relayed


RULES_BIGHDR = """
rules:
  - {name: default, pool: [be1]}
frontend: {max_header_bytes: 65536}
"""


def test_exists_replaces_a_stale_entry_once(eng):
    cl, be, acts = open_conn(eng, "/dl/x", backend=2)
    (ins,) = inserts(acts)
    a = eng.offload_result(cl.ip, cl.port, ins.gen, "exists", NOW)
    assert [type(x).__name__ for x in a] == ["OffloadDelete", "OffloadInsert"]
    (ins2,) = inserts(a)
    assert ins2.backend == 2 and ins2.gen != ins.gen
    eng.offload_result(cl.ip, cl.port, ins2.gen, "exists", NOW)   # again: it is ours now
    assert eng.conns[cl.key].offload is Offload.INSTALLED


def test_client_port_reused_during_linger_starts_a_new_connection(eng):
    """wrk reuses a client port within our close linger: the new request must start a new splice,
    not be relayed to the old back-end (whose TIME_WAIT would answer with a stray ACK)."""
    cl, be, _ = open_conn(eng, "/a")
    keepalive_response(eng, cl, be)
    eng.segment(be.seg(b"", flags=ACK | FIN), NOW)
    cl.acked += 1
    eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
    assert eng.conns[cl.key].state is State.CLOSING
    # a retransmitted FIN of the old connection is still relayed
    cl.sent -= 1
    (old,) = sends(eng.segment(cl.seg(b"", flags=ACK | FIN), NOW))
    assert old.dst == be.ip and eng.conns[cl.key].state is State.CLOSING
    new = Client(eng, c=0x12345678)                     # same ip:port, same bucket: same cookie
    (syn,) = sends(eng.segment(new.seg(get("/b")), NOW + 0.5))
    assert syn.flags == SYN and syn.seq == new.c
    assert eng.conns[cl.key].state is State.SYN_SENT and eng.stats.events["port_reused"] == 1


def test_fragment_of_a_method_is_not_taken_for_the_start(eng):
    """Found by the splice model: 'T', ' /a ...' arriving before 'G', 'E' must not be parsed as a
    request starting with 'T' (then 400); the lower segments restart the parse."""
    cl = Client(eng)
    req = get("/a")
    parts = [req[:1], req[1:2], req[2:3], req[3:]]
    segs = [cl.seg(p) for p in parts]
    acts = []
    for i in (2, 3, 0, 1):
        acts += eng.segment(segs[i], NOW)
    (syn,) = sends(acts, "backend")
    assert syn.flags == SYN and syn.seq == cl.c and not eng.stats.responses_local
    fwd = sends(eng.segment(Backend(eng, 0, cl).synack(), NOW), "backend")
    assert b"".join(s.payload for s in fwd) == req


def test_stragglers_of_a_connection_we_ended_are_not_adopted(eng):
    cl, be, _ = open_conn(eng, "/")
    eng.segment(cl.seg(b"", flags=RST), NOW)
    assert eng.segment(be.seg(b"late data"), NOW + 0.1) == [] and not eng.conns
    assert eng.stats.drops["after_close"] == 1
    eng.tick(NOW + 10)                                   # long after: an orphan again
    assert sends(eng.segment(be.seg(b"x"), NOW + 10)) and eng.stats.events["adopted"] == 1


# ------------------------------------------------------------------ ACK coalescing

def test_ack_coalescing_saves_two_crossings_of_a_short_connection(eng):
    """A new connection whose back-end closes (wrk with Connection: close): the back-end's ACK of
    the request is made redundant by its response, the client's ACK of the back-end's FIN by
    the client's FIN. 5 segments leave instead of 7; nothing is lost."""
    cl, be, acts = open_conn(eng, "/a")
    assert [s.to for s in acts if hasattr(s, "to")] == ["backend", "backend"]   # SYN, request
    a = eng.segment(be.seg(b"", flags=ACK), NOW)               # quick ACK of the request
    assert sends(a) == [] and eng.next_flush() == NOW + eng.fe.ack_coalesce_ms / 1000
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    (resp,) = sends(eng.segment(be.seg(body, flags=ACK | PSH | FIN), NOW))
    assert resp.payload == body and resp.ack == seq_add(cl.c, 1 + cl.sent)    # carries that ack
    cl.acked = len(body) + 1
    assert sends(eng.segment(cl.seg(b"", flags=ACK), NOW)) == []              # ACK of data + FIN
    (fin,) = sends(eng.segment(cl.seg(b"", flags=ACK | FIN), NOW))
    assert fin.flags & FIN and fin.ack == seq_add(cl.s, 1 + cl.acked) and fin.dst == be.ip
    (last,) = sends(eng.segment(be.seg(b"", flags=ACK), NOW))                 # CLOSING: at once
    assert last.dst == cl.ip
    assert eng.stats.events["ack_coalesced"] == 2
    assert eng.next_flush() is None and eng.flush(NOW + 1) == []


def test_held_ack_released_when_nothing_follows(eng):
    cl, be, _ = open_conn(eng, "/a")
    ack = be.seg(b"", flags=ACK)
    assert sends(eng.segment(ack, NOW)) == []
    assert eng.flush(NOW + 0.001) == []                        # not yet
    (out,) = sends(eng.flush(NOW + eng.fe.ack_coalesce_ms / 1000), "client")
    assert out.ack == ack.ack and out.flags == ACK and out.src == eng.vip
    assert eng.next_flush() is None


@pytest.mark.parametrize("case", ["client acks part", "back-end acks part of a body", "sack option",
                                  "client closed"])
def test_acks_that_may_hold_a_sender_back_go_at_once(eng, case):
    cl, be, _ = open_conn(eng, "/a")
    if case == "client acks part":
        eng.segment(be.seg(b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n" + b"x" * 1000), NOW)
        eng.segment(be.seg(b"x" * 1000), NOW)
        cl.acked = 1000                                         # the back-end has more in flight
        seg, to = cl.seg(b"", flags=ACK), "backend"
    elif case == "back-end acks part of a body":
        post = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"y" * 100
        eng.segment(be.seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), NOW)
        cl.acked = be.sent
        eng.segment(cl.seg(post), NOW)
        seg, to = be.seg(b"", flags=ACK), "client"              # the client must go on sending
    elif case == "sack option":
        seg, to = be.seg(b"", flags=ACK), "client"
        seg.options = b"\x01\x01\x05\x0a" + b"\x00" * 8
    else:
        eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
        seg, to = be.seg(b"", flags=ACK), "client"
    (out,) = sends(eng.segment(seg, NOW))
    assert out.ack == seg.ack and out.flags == ACK and (out.dst == be.ip) == (to == "backend")


def test_held_ack_goes_before_a_segment_that_does_not_cover_it(eng):
    cl, be, _ = open_conn(eng, "/a")
    ack = be.seg(b"", flags=ACK)
    eng.segment(ack, NOW)
    rst = be.seg(b"", flags=RST)
    rst.ack = 0
    out = sends(eng.segment(rst, NOW))
    assert [s.flags for s in out] == [ACK, RST] and not eng.conns and eng.next_flush() is None


def test_held_ack_dropped_when_the_connection_ends(eng):
    cl, be, _ = open_conn(eng, "/a")
    eng.segment(be.seg(b"", flags=ACK), NOW)
    a = eng.segment(cl.seg(b"", flags=RST), NOW)
    assert all(s.flags & RST for s in sends(a)) and eng.next_flush() is None
    assert eng.flush(NOW + 1) == []


def test_ack_coalescing_off():
    eng = Engine(make_cfg(RULES.replace("frontend: {", "frontend: {ack_coalesce_ms: 0, ")))
    cl, be, _ = open_conn(eng, "/a")
    assert len(sends(eng.segment(be.seg(b"", flags=ACK), NOW))) == 1 and eng.next_flush() is None


def test_no_ack_held_once_offload_is_asked_for(eng):
    cl, be, acts = open_conn(eng, "/dl/x", backend=2)    # `always`: insert requested at the splice
    assert inserts(acts)
    assert len(sends(eng.segment(be.seg(b"", flags=ACK), NOW))) == 1 and eng.next_flush() is None


def test_backend_in_time_wait_gets_a_rst_and_the_syn_again():
    """A back-end still in TIME_WAIT with the client's ip:port answers the splice SYN with a bare
    ACK: the engine resets that TIME_WAIT (RST at the ACK's ack) and sends the SYN again at once."""
    eng = Engine(make_cfg())
    cl = Client(eng)
    out = eng.segment(cl.seg(get("/")), NOW)
    syn = sends(out, "backend")[0]
    be = Backend(eng, eng.conns[cl.key].backend, cl)
    old_ack = Segment(be.ip, be.port, cl.ip, cl.port, 123456, 987654, ACK, 500)
    out = eng.segment(old_ack, NOW + 0.01)
    rst, syn2 = sends(out, "backend")
    assert rst.flags == RST and rst.seq == 987654 and (rst.dst, rst.dport) == (be.ip, be.port)
    assert syn2.flags == SYN and (syn2.seq, syn2.ack, syn2.options) == (syn.seq, syn.ack, syn.options)
    assert eng.stats.events["backend_time_wait"] == 1
    out = eng.segment(be.synack(), NOW + 0.02)         # now the back-end takes it
    assert sends(out, "backend")[0].payload == get("/")
