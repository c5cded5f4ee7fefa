"""Micro-benchmark of the splice engine: `python -m benchmarks.frontend_microbench [N]`.

Times are CPU time of this process (time.process_time), so other load on the machine inflates
them less than wall-clock time would (it still shares caches and cores).

setup:     a one-segment GET from a new client -> cookie check, HTTP parse, rule match, back-end
           choice, splice SYN (the cost the issue asks for)
relay:     one back-end data segment relayed to the client on an established connection
lifecycle: the same, plus SYN-ACK (request released), a one-segment response relayed, the
           client's ACK, FINs both ways and the linger expiry: one short connection end to end
"""

from __future__ import annotations

import sys
import time

from miresga import cookie
from miresga.control.config import load_config
from miresga.frontend.engine import Engine
from miresga.frontend.segment import ACK, FIN, PSH, SYN, Segment, seq_add

NOW = 1_800_000_000.0


def _clients(eng: Engine, n: int):
    cfg = eng.cfg
    key = cookie.keys_at(cfg.switch.cookie.secret, NOW, cfg.switch.cookie.rotate_seconds)[0]
    b = cookie.bucket_of(NOW, cfg.switch.cookie.bucket_seconds)
    ip = int.from_bytes(bytes((10, 0, 1, 2)), "big")
    out = []
    for i in range(n):
        port = 1024 + i % 60000
        cip = ip + i // 60000
        s = cookie.make_cookie(key, cip, port, eng.vip, eng.vport, b, 1460, 7, True)
        out.append((cip, port, 1000 + i, s))
    return out


REQ = b"GET /api/users/42 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"


def bench_setup(n: int) -> float:
    eng = Engine(load_config())
    cl = _clients(eng, n)
    segs = [Segment(cip, port, eng.vip, eng.vport, c + 1, seq_add(s, 1), ACK | PSH, 502, b"", REQ)
            for cip, port, c, s in cl]
    t0 = time.process_time()
    for seg in segs:
        acts = eng.segment(seg, NOW)
    dt = time.process_time() - t0
    assert acts[0].seg.flags == SYN and len(eng.conns) == n
    return dt / n * 1e6


def bench_lifecycle(n: int) -> float:
    eng = Engine(load_config())
    cl = _clients(eng, n)
    vip, vport = eng.vip, eng.vport
    work = []
    for cip, port, c, s in cl:
        req = Segment(cip, port, vip, vport, c + 1, s + 1, ACK | PSH, 502, b"", REQ)
        work.append((cip, port, c, s, req))
    t0 = time.process_time()
    for cip, port, c, s, req in work:
        acts = eng.segment(req, NOW)
        syn = acts[0].seg
        bip, bport = syn.dst, syn.dport
        eng.segment(Segment(bip, bport, cip, port, s, c + 1, SYN | ACK, 65535, b""), NOW)
        eng.segment(Segment(bip, bport, cip, port, s + 1, c + 1 + len(REQ), ACK | PSH, 500, b"", RESP), NOW)
        eng.segment(Segment(cip, port, vip, vport, c + 1 + len(REQ), s + 1 + len(RESP), ACK | FIN, 502), NOW)
        eng.segment(Segment(bip, bport, cip, port, s + 1 + len(RESP), c + 2 + len(REQ), ACK | FIN, 500), NOW)
        eng.segment(Segment(cip, port, vip, vport, c + 2 + len(REQ), s + 2 + len(RESP), ACK, 502), NOW)
    eng.tick(NOW + 10)
    dt = time.process_time() - t0
    assert not eng.conns, eng.stats.drops
    return dt / n * 1e6


def bench_relay(n: int) -> float:
    """µs per back-end data segment relayed on the slow path (an established connection)."""
    eng = Engine(load_config())
    (cip, port, c, s), = _clients(eng, 1)
    acts = eng.segment(Segment(cip, port, eng.vip, eng.vport, c + 1, s + 1, ACK | PSH, 502, b"", REQ), NOW)
    bip, bport = acts[0].seg.dst, acts[0].seg.dport
    eng.segment(Segment(bip, bport, cip, port, s, c + 1, SYN | ACK, 65535, b""), NOW)
    data = b"x" * 1448
    segs = [Segment(bip, bport, cip, port, seq_add(s, 1 + i * 1448), c + 1 + len(REQ), ACK, 500, b"", data)
            for i in range(n)]
    t0 = time.process_time()
    for seg in segs:
        eng.segment(seg, NOW)
    return (time.process_time() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    n = int((argv or sys.argv[1:] or ["20000"])[0])
    bench_setup(1000)   # warm up
    setup = min(bench_setup(n) for _ in range(3))
    life = min(bench_lifecycle(n) for _ in range(3))
    relay = min(bench_relay(n) for _ in range(3))
    print(f"engine, {n} connections: setup (cookie+parse+rules+SYN) {setup:.1f} us/request; "
          f"whole short connection (6 segments) {life:.1f} us; slow-path relay {relay:.2f} us/segment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
