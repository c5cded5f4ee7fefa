"""Findings of `miresga fuzz` in the front-end engine, kept as plain tests (the invariant each
broke is named in the test)."""

from __future__ import annotations

from frontend_helpers import ACK, NOW, PSH, Client, make_cfg, sends
from miresga.frontend.engine import Engine


def test_data_after_our_own_answer_is_counted():
    """Invariant "every drop is counted": the rest of a request the front-end answered itself
    (400) was discarded without a counter."""
    eng = Engine(make_cfg())
    cl = Client(eng)
    sends(eng.segment(cl.seg(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), NOW))
    assert eng.stats.drops["after_response"] == 0
    assert eng.segment(cl.seg(b"more of the body"), NOW) == []
    assert eng.stats.drops["after_response"] == 1

