"""A client port reused while the engine still holds a spliced connection on it (found by the soak).

After a front-end restarts, the back-end segments of its predecessor's connections are adopted
(`_adopt`); an adopted connection whose client has already gone stays SPLICED until it idles out.
When the client later reuses that ip:port for a new connection (wrk with a new connection per
request cycles through its ports), the new request used to be taken as data of the old stream:
far behind it, relayed to the old back-end as a "retransmission" (whose socket is gone: the back-end
answers with a RST that carries exactly the new client's expected sequence number, and the client's
new connection is reset: wrk counted `read` errors); far ahead of it, dropped as out of window
(the client stalls). A segment that is no part of the old stream and carries a valid cookie for
this ip:port is a new connection."""

from __future__ import annotations

import pytest
from frontend_helpers import ACK, FIN, NOW, RST, SYN, Backend, Client, get, make_cfg, sends, seq_add

from miresga.frontend.engine import Engine
from miresga.frontend.engine.states import State


@pytest.fixture
def eng():
    return Engine(make_cfg())


def zombie(eng):
    """A connection adopted from its back-end's data (its front-end restarted); its client left."""
    cl = Client(eng, c=0x10000000)
    cl.sent = 100
    be = Backend(eng, 0, cl)
    be.sent = 5000
    eng.segment(be.seg(b"x" * 1000), NOW)
    conn = eng.conns[cl.key]
    assert conn.state is State.SPLICED and conn.adopted
    return cl, be, conn


# A client's ISN for one ip:port pair follows a clock (RFC 6528; Linux: 1 per 64 ns, so it wraps
# every 275 s): a port reused 1-137 s later starts far "ahead" of the old stream (dropped as out of
# window before), 137-275 s later far "behind" it (relayed as a retransmission before: the RSTs).
@pytest.mark.parametrize("new_c", [seq_add(0x10000000, 60 * 15_625_000),     # reused 60 s later
                                   seq_add(0x10000000, 180 * 15_625_000)])   # reused 180 s later
def test_new_connection_on_a_port_held_by_an_adopted_connection_starts_afresh(eng, new_c):
    old, be, conn = zombie(eng)
    new = Client(eng, c=new_c)
    a = eng.segment(new.seg(get("/b")), NOW + 30)
    to_be = sends(a, "backend")
    # the old back-end connection is reset at its own sequence number, the new one spliced
    assert [s.flags for s in to_be] == [RST, SYN]
    assert to_be[0].seq == conn.nxt and to_be[1].seq == new.c
    assert not to_be[0].payload and not to_be[1].payload     # the request is never given to the old stream
    assert not sends(a, "client")
    assert eng.conns[new.key] is not conn and eng.conns[new.key].state is State.SYN_SENT
    assert eng.stats.events["port_reused"] == 1 and eng.active == [1, 0, 0]
    fwd = sends(eng.segment(Backend(eng, 0, new).synack(), NOW + 30), "backend")
    assert b"".join(s.payload for s in fwd) == get("/b")


def test_the_old_streams_own_segments_are_still_its_own(eng):
    old, be, conn = zombie(eng)
    # a retransmission of data the back-end already has, and the next request of the same stream
    (rtx,) = sends(eng.segment(old.seg(b"y" * 50, off=50), NOW + 1), "backend")
    assert rtx.seq == seq_add(old.c, 51) and eng.conns[old.key] is conn
    old.acked = be.sent
    (nxt,) = sends(eng.segment(old.seg(get("/x")), NOW + 1), "backend")
    assert nxt.payload == get("/x") and eng.conns[old.key] is conn
    assert eng.stats.events["port_reused"] == 0


def test_a_forged_segment_out_of_the_stream_does_not_end_the_connection(eng):
    """Without a valid cookie, a segment off the stream is no new connection (a blind attacker
    cannot tear a connection down with one)."""
    old, be, conn = zombie(eng)
    forged = Client(eng, c=0x10000000 + 900_000_000)
    forged.s ^= 0x5A5A5A00                       # no cookie of ours
    eng.segment(forged.seg(get("/b")), NOW + 1)
    assert eng.conns[old.key] is conn and eng.stats.events["port_reused"] == 0


def test_reuse_after_a_regular_close_still_works(eng):
    """Unchanged path: a port reused during the close linger (CLOSING) starts a new connection."""
    cl = Client(eng)
    a = eng.segment(cl.seg(get("/a")), NOW)
    be = Backend(eng, 0, cl)
    eng.segment(be.synack(), NOW)
    eng.segment(be.seg(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", flags=ACK | FIN), NOW)
    cl.acked = be.sent
    eng.segment(cl.seg(b"", flags=ACK | FIN), NOW)
    assert eng.conns[cl.key].state is State.CLOSING and a
    new = Client(eng, c=0x12345678)
    (syn,) = sends(eng.segment(new.seg(get("/b")), NOW + 0.5), "backend")
    assert syn.flags == SYN and eng.stats.events["port_reused"] == 1
