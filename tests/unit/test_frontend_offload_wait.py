"""Rule option `offload_wait` (Prism's blocking table sync, the bench's `prism` system): every
request gets a fresh offload entry and is held until the switch confirms it."""

from __future__ import annotations

import pytest

from frontend_helpers import NOW, Backend, Client, deletes, get, inserts, make_cfg, sends
from miresga.control.config import ConfigError, parse_config
from miresga.frontend.engine import Engine
from miresga.frontend.engine.states import Offload

RULES = """
rules:
  - {name: prism, match: {host: prism.bench}, pool: [be1], offload: always, offload_wait: true}
  - {name: default, pool: [be1], offload: auto}
"""


@pytest.fixture
def eng():
    return Engine(make_cfg(RULES))


def spliced(eng, cl=None):
    cl = cl or Client(eng)
    req = get("/obj/1k", host="prism.bench")
    a1 = eng.segment(cl.seg(req), NOW)
    be = Backend(eng, 0, cl)
    a2 = eng.segment(be.synack(), NOW)
    return cl, be, req, a1 + a2


def test_request_held_until_the_entry_is_installed(eng):
    cl, be, req, acts = spliced(eng)
    (ins,) = inserts(acts)
    assert [s.payload for s in sends(acts, "backend") if s.payload] == []   # held
    assert eng.offload_result(cl.ip, cl.port, ins.gen, "queued", NOW) == []
    assert eng.conns[cl.key].offload is Offload.QUEUED
    out = eng.offload_result(cl.ip, cl.port, ins.gen, "installed", NOW)
    assert [s.payload for s in sends(out, "backend")] == [req]
    assert eng.conns[cl.key].offload is Offload.INSTALLED
    assert eng.stats.offload["waited"] == 1


def test_refused_insert_releases_onto_the_slow_path(eng):
    cl, be, req, acts = spliced(eng)
    (ins,) = inserts(acts)
    out = eng.offload_result(cl.ip, cl.port, ins.gen, "table_full", NOW)
    assert [s.payload for s in sends(out, "backend")] == [req]
    assert eng.conns[cl.key].offload is Offload.NONE
    assert sends(eng.segment(be.seg(b"response"), NOW), "client")[0].payload == b"response"


def test_keepalive_request_gets_a_fresh_entry(eng):
    cl, be, req, acts = spliced(eng)
    (ins,) = inserts(acts)
    eng.offload_result(cl.ip, cl.port, ins.gen, "ok", NOW)
    be.seg(b"x" * 100)          # the response takes the switch
    cl.acked += 100
    req2 = get("/obj/4k", host="prism.bench")
    a = eng.segment(cl.seg(req2), NOW)
    assert len(deletes(a)) == 1 and len(inserts(a)) == 1          # two table operations
    assert not [s for s in sends(a, "backend") if s.payload]       # held again
    (ins2,) = inserts(a)
    out = eng.offload_result(cl.ip, cl.port, ins2.gen, "ok", NOW)
    assert [s.payload for s in sends(out, "backend")] == [req2]


def test_stale_result_releases_nothing(eng):
    cl, be, req, acts = spliced(eng)
    (ins,) = inserts(acts)
    assert sends(eng.offload_result(cl.ip, cl.port, ins.gen + 7, "ok", NOW)) == []
    assert eng.conns[cl.key].holding


def test_other_rules_unchanged(eng):
    cl = Client(eng)
    eng.segment(cl.seg(get("/obj/1k")), NOW)
    a = eng.segment(Backend(eng, 0, cl).synack(), NOW)
    assert [s.payload for s in sends(a, "backend") if s.payload] and not inserts(a)


def test_offload_wait_only_means_something_with_always():
    cfg = make_cfg("rules:\n  - {name: r, pool: [be1], offload: auto, offload_wait: true}\n")
    assert Engine(cfg).rulesets[0].all()[0].offload_wait is False
    with pytest.raises(ConfigError):
        parse_config(make_cfg(RULES).model_dump_json().replace('"offload_wait":true', '"offload_wait":"x"'))
