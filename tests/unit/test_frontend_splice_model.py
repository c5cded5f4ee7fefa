"""Property test against a protocol-following model: a keep-alive client sends requests (split,
reordered, duplicated) that the rules route to different back-ends; model back-ends answer in the
switch's sequence space (as the agent makes them appear). Whatever the order, every back-end
connection receives exactly the requests routed to it, contiguous from its ISN, and the client
receives exactly the responses, contiguous from the cookie."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from frontend_helpers import ACK, NOW, PSH, RST, SYN, Client, get, make_cfg, seq_add
from miresga.frontend.engine import Engine, OffloadInsert, Send
from miresga.frontend.segment import Segment, seq_diff

PATHS = {"/a": 0, "/api/x": 1, "/dl/y": 2}   # default -> be1, api -> be2, dl -> be3 (make_cfg rules)


class ModelBackend:
    def __init__(self, eng, index, cl):
        self.eng, self.index, self.cl = eng, index, cl
        self.ip, self.port = eng.backends[index]
        self.conns = []            # one dict per splice SYN: c0, s0, data, srv_sent

    def on_segment(self, seg, responses, out):
        if seg.flags & SYN:
            if not self.conns or self.conns[-1]["c0"] != seg.seq:
                self.conns.append({"c0": seg.seq, "s0": seg.ack, "data": {}, "rcv": seq_add(seg.seq, 1),
                                   "srv": seq_add(seg.ack, 1), "answered": 0})
            c = self.conns[-1]
            out.append(Segment(self.ip, self.port, self.cl.ip, self.cl.port, c["s0"], seq_add(c["c0"], 1),
                               SYN | ACK, 65535))
            return
        if seg.flags & RST or not self.conns:
            return
        c = self.conns[-1]
        if seg.payload:
            c["data"][seg.seq] = seg.payload
            while True:          # reassemble in order (overlaps are whole duplicates here)
                nxt = next((k for k in c["data"] if seq_diff(k, c["rcv"]) <= 0
                            and seq_diff(seq_add(k, len(c["data"][k])), c["rcv"]) > 0), None)
                if nxt is None:
                    break
                chunk = c["data"].pop(nxt)
                new = chunk[seq_diff(c["rcv"], nxt):]
                c.setdefault("stream", bytearray()).extend(new)
                c["rcv"] = seq_add(c["rcv"], len(new))
            # answer every complete request
            stream = bytes(c.get("stream", b""))
            while stream.count(b"\r\n\r\n") > c["answered"]:
                body = responses.pop(0)
                out.append(Segment(self.ip, self.port, self.cl.ip, self.cl.port, c["srv"], c["rcv"], ACK | PSH,
                                   500, b"", body))
                c["srv"] = seq_add(c["srv"], len(body))
                c["answered"] += 1
            out.append(Segment(self.ip, self.port, self.cl.ip, self.cl.port, c["srv"], c["rcv"], ACK, 500))


@st.composite
def scripts(draw):
    n = draw(st.integers(1, 5))
    reqs = []
    for _ in range(n):
        path = draw(st.sampled_from(sorted(PATHS)))
        pad = draw(st.integers(0, 300))
        data = get(path, extra=f"X-Pad: {'p' * pad}\r\n")
        cuts = sorted(draw(st.lists(st.integers(1, len(data) - 1), max_size=3, unique=True)))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        order = draw(st.permutations(list(range(len(parts)))))
        dups = draw(st.lists(st.integers(0, len(parts) - 1), max_size=2))
        resp_len = draw(st.integers(1, 3000))
        reqs.append((path, data, parts, [*order, *dups], resp_len))
    synack_dup = draw(st.booleans())
    return reqs, synack_dup


@settings(max_examples=300, deadline=None)
@given(scripts())
def test_splice_and_reroute_deliver_exact_streams(script):
    reqs, synack_dup = script
    eng = Engine(make_cfg())
    cl = Client(eng)
    bes = [ModelBackend(eng, i, cl) for i in range(3)]
    responses = [f"HTTP/1.1 200 OK\r\nContent-Length: {r[4]}\r\n\r\n".encode() + b"r" * r[4] for r in reqs]
    pending = list(responses)
    got = bytearray()
    rcv = seq_add(cl.s, 1)
    client_ooo = {}
    routed = {0: [], 1: [], 2: []}
    t = NOW

    def pump(actions):
        nonlocal rcv
        queue = list(actions)
        while queue:
            a = queue.pop(0)
            if isinstance(a, OffloadInsert):
                queue += eng.offload_result(a.client_ip, a.client_port, a.gen, "table_full", t)
                continue
            if not isinstance(a, Send):
                continue
            seg = a.seg
            if a.to == "backend":
                b = eng.by_service[(seg.dst, seg.dport)]
                out = []
                bes[b].on_segment(seg, pending, out)
                if synack_dup and seg.flags & SYN:
                    out.append(out[-1])
                for o in out:
                    queue += eng.segment(o, t)
            else:
                assert (seg.src, seg.sport) == (eng.vip, eng.vport)
                if seg.payload:
                    client_ooo[seg.seq] = seg.payload
                    while rcv in client_ooo:
                        p = client_ooo.pop(rcv)
                        got.extend(p)
                        rcv = seq_add(rcv, len(p))

    for i, (path, data, parts, order, resp_len) in enumerate(reqs):
        base = cl.sent
        offs = [base + sum(len(p) for p in parts[:k]) for k in range(len(parts))]
        for k in order:
            pump(eng.segment(cl.seg(parts[k], off=offs[k]), t))
        cl.sent = base + len(data)
        routed[PATHS[path]].append(data)
        # the client has the whole response before its next request (no pipelining)
        want_len = sum(len(r) for r in responses[:i + 1])
        assert len(got) == want_len, (i, len(got), want_len, dict(eng.stats.drops))
        cl.acked = len(got)
        pump(eng.segment(cl.seg(b"", flags=ACK), t))
        t += 0.01
    assert bytes(got) == b"".join(responses)
    # each back-end connection got exactly its run of requests, contiguous from its ISN + 1
    for b, be in enumerate(bes):
        received = b"".join(bytes(c.get("stream", b"")) for c in be.conns)
        assert received == b"".join(routed[b]), b
        for c in be.conns:
            assert seq_diff(c["rcv"], c["c0"]) == 1 + len(c.get("stream", b""))
    assert not any(k.startswith("protocol") or k in ("bad_synack", "hold_full") for k in eng.stats.drops), \
        dict(eng.stats.drops)
