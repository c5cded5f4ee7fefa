"""`frontend.max_connections`: a new connection beyond it is refused with a reset and counted;
the connections already held are untouched."""

from __future__ import annotations

from frontend_helpers import NOW, RST, Client, get, make_cfg, sends
from miresga.frontend.engine import Engine

RULES = """
rules:
  - {name: default, pool: [be1], offload: auto}
frontend: {max_connections: 2}
"""


def test_beyond_max_connections_reset_and_counted():
    eng = Engine(make_cfg(RULES))
    held = [Client(eng, port=40000 + i) for i in range(2)]
    for c in held:
        eng.segment(c.seg(get("/obj/1k")), NOW)
    extra = Client(eng, port=41000)
    seg = extra.seg(get("/obj/1k"))
    (rst,) = sends(eng.segment(seg, NOW), "client")
    assert rst.flags & RST and (rst.dst, rst.dport) == (extra.ip, extra.port) and rst.seq == seg.ack
    assert eng.stats.drops["conn_limit"] == 1
    assert set(eng.conns) == {c.key for c in held}
