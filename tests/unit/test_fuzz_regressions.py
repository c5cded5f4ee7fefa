"""Findings of `miresga fuzz` in the front-end engine, kept as plain tests (the invariant each
broke is named in the test)."""

from __future__ import annotations

from frontend_helpers import ACK, NOW, PSH, Client, make_cfg, sends
from miresga.frontend.engine import Engine
from miresga.frontend.segment import Segment


def test_data_after_our_own_answer_is_counted():
    """Invariant "every drop is counted": the rest of a request the front-end answered itself
    (400) was discarded without a counter."""
    eng = Engine(make_cfg())
    cl = Client(eng)
    sends(eng.segment(cl.seg(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), NOW))
    assert eng.stats.drops["after_response"] == 0
    assert eng.segment(cl.seg(b"more of the body"), NOW) == []
    assert eng.stats.drops["after_response"] == 1


def test_backend_segment_to_the_vip_is_not_adopted():
    """Invariants "nothing sent to an address nobody talked to" and "no state without a
    connection": a segment from a back-end's service ip:port addressed to the VIP (any port) was
    adopted as a connection whose client is the VIP, and relayed to VIP:port."""
    eng = Engine(make_cfg())
    bip, bport = eng.backends[0]
    seg = Segment(bip, bport, eng.vip, 49784, 1000, 1, ACK | PSH, 500, b"", b"HTTP/1.1 200 OK\r\n\r\n")
    assert eng.segment(seg, NOW) == []
    assert not eng.conns and eng.stats.drops["not_ours"] == 1


def test_first_segment_beyond_max_held_bytes_is_refused_not_raised():
    """Invariant "no exception": a connection's first segment that does not start a request and
    is larger than max_held_bytes was refused by the reorder buffer, which then was empty, and
    `_find_start` raised ValueError (min() of nothing) out of Engine.segment — out of the
    server's loop. Reachable when max_held_bytes is set below the 64 KB a GSO frame carries."""
    from frontend_helpers import RULES
    eng = Engine(make_cfg(RULES.replace("syn_retries: 2", "syn_retries: 2, max_held_bytes: 1024")))
    cl = Client(eng)
    assert eng.segment(cl.seg(b"X" * 1500), NOW) == []
    assert eng.stats.drops["reorder_full"] == 1
    assert sum(c.ooo_bytes for c in eng.conns.values()) == 0
