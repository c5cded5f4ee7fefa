"""Differential tests of the front-end's kernel path with several services (VIP:port each with its
own rules): the same twin as test_frontend_kernel.py (the engine alone against the kernel path
plus the engine), over a config of three services — another VIP, and the first VIP on another
port. One client ip:port may have a connection to two services at once (Linux reuses a source
port towards other destinations); each is its own connection, routed by its service's rules,
answered from its own VIP:port, and never to a back-end the other one uses."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend_helpers import ACK, FIN, RST, RULES, Backend, Client, get, make_cfg
from test_frontend_kernel import SCENARIOS, Conn, System, Twin, _respond, frame, loaded, relay_entries
from miresga.bpf.layouts import FeKey
from miresga.bpf.testrun import TC_ACT_OK, TC_ACT_REDIRECT
from miresga.cookie import tai_seconds
from miresga.frontend.engine import Engine
from miresga.frontend.engine.states import State
from miresga.frontend.kernel.rules import compile_rules
from miresga.frontend.rules import service_rules
from miresga.frontend.segment import Segment

pytestmark = pytest.mark.netns   # root: loads BPF programs

SERVICES = """
services:
  - name: shop
    vip: {address: 10.0.100.2, port: 80}
    rules:
      - {name: shop_api, match: {path_prefix: /api/}, pool: [be3], offload: never}
      - {name: shop_pair, match: {path_prefix: /pair/}, pool: [be2, be1], policy: round_robin, offload: never}
      - {name: shop_one, match: {path_prefix: /one/}, pool: [be1], offload: never}
      - {name: shop_all, pool: [be2, be3], offload: auto}
  - name: alt
    vip: {address: 10.0.100.1, port: 8080}
    rules:
      - {name: alt_all, pool: [be3], offload: never}
"""
CFG = make_cfg(RULES.replace("syn_retries: 2}", "syn_retries: 2, ack_coalesce_ms: 0}") + SERVICES)


@pytest.fixture(scope="module")
def bpf():
    yield from loaded(CFG)


@pytest.fixture
def now() -> float:
    """The kernel's clock (first requests need a cookie it accepts), read anew for each test."""
    return tai_seconds()


def client(t: Twin, svc: int, now: float, port: int = 40000, c: int = 0xFFFFFF00) -> Client:
    return Client(t.ref, port=port, svc=svc, now=now, c=c)


def test_config_has_three_services():
    eng = Engine(CFG)
    assert eng.services == [(0x0A006401, 80), (0x0A006402, 80), (0x0A006401, 8080)]
    assert [r.name for r in eng.rule_list] == ["api", "big", "dl", "site2", "default", "shop/shop_api",
                                               "shop/shop_pair", "shop/shop_one", "shop/shop_all", "alt/alt_all"]


@pytest.mark.parametrize("svc,path,rule", [
    (0, "/api/x", "api"), (1, "/api/x", "shop/shop_api"), (2, "/api/x", "alt/alt_all"),
    (0, "/x", "default"), (1, "/x", "shop/shop_all"), (2, "/one/x", "alt/alt_all"), (1, "/one/x", "shop/shop_one"),
])
def test_each_service_routes_by_its_own_rules_in_the_kernel(bpf, now, svc, path, rule):
    """A first request to each service: the kernel takes it (splice SYN) by its service's rules,
    to the back-end the engine picks; the response goes out from that service's VIP:port; the
    engine hears the request under its service's key and global rule index."""
    t = Twin(*bpf, cfg=CFG, now=now)
    cl = client(t, svc, now)
    t.segment(cl.seg(get(path)), now)
    assert t.sys.verdicts[-1] == TC_ACT_REDIRECT, "the kernel routes it"
    conn = t.sys.eng.conns[cl.key]
    assert conn.rule.name == t.ref.conns[cl.key].rule.name == rule
    be = Backend(t.ref, conn.backend, cl)
    t.segment(be.synack(), now)
    c = Conn(cl, be)
    out = t.segment(_respond(c), now)
    assert t.sys.verdicts[-2:] == [TC_ACT_REDIRECT] * 2
    assert [(s.src, s.sport) for s in out if isinstance(s, Segment)] == [t.ref.services[svc]], \
        "answered from the service's VIP:port"
    assert t.sys.eng.stats.requests_rule == t.ref.stats.requests_rule
    for step in SCENARIOS[2][2][1:]:        # client FIN, back-end FIN, last ACK: all relayed
        t.segment(step(c), now)
    assert t.sys.verdicts[-3:] == [TC_ACT_REDIRECT] * 3
    t.tick(now + CFG.frontend.close_linger_s + 0.1)
    assert not t.sys.eng.conns and not list(t.sys.maps.conns.keys()) and not list(t.sys.maps.held.keys())


def test_request_event_carries_service_and_global_rule(bpf, now):
    """The kernel's REQUEST record names the connection by (client ip, port, service) and its
    rule by global index (Engine.rule_list); the entry is keyed by the service too."""
    sys_ = System(*bpf, cfg=CFG, now=now)
    cl = Client(sys_.eng, svc=2, now=now)
    assert sys_.prog.test_run(frame(cl.seg(get("/")))).retval == TC_ACT_REDIRECT
    (ev,) = sys_.maps.events()
    assert ev.key == (cl.ip, cl.port, 2) and sys_.eng.rule_list[ev.rule].name == "alt/alt_all"
    assert [FeKey.from_buffer_copy(k).svc for k in relay_entries(sys_.maps)] == [2]


def test_one_client_port_on_two_services(bpf, now):
    """One client ip:port with a connection to service 0 (the kernel's) and then to service 1:
    the second request's rule would have the kernel pick service 0's back-end at this wheel
    position; the port is shared, so the engine routes it (to the other back-end). Then both
    connections are the kernel's: each back-end's segments are found by (client, back-end) and
    leave from their own VIP:port, each client's reach their own back-end, keep-alive requests
    are routed in the kernel for each, and both close."""
    t = Twin(*bpf, cfg=CFG, now=now)
    a, b = client(t, 0, now), client(t, 1, now, c=0x22222200)
    assert (a.ip, a.port) == (b.ip, b.port) and a.key != b.key
    t.segment(a.seg(get("/")), now)
    ca = Conn(a, Backend(t.ref, 0, a))
    t.segment(ca.be.synack(), now)
    assert t.sys.verdicts == [TC_ACT_REDIRECT] * 2 and t.ref.conns[a.key].backend == 0
    stats = t.sys.maps.stats()
    t.segment(b.seg(get("/pair/x")), now)
    assert t.sys.verdicts[-1] == TC_ACT_OK, "the engine's: the port has another service's connection"
    after = t.sys.maps.stats()
    assert after["port_shared"] - stats["port_shared"] == 1 and after["req_punted"] - stats["req_punted"] == 1
    assert t.ref.conns[b.key].backend == t.sys.eng.conns[b.key].backend == 1    # not be1: a's
    cb = Conn(b, Backend(t.ref, 1, b))
    t.segment(cb.be.synack(), now)
    assert t.sys.eng.conns[a.key].kernel and t.sys.eng.conns[b.key].kernel
    n = len(t.sys.verdicts)
    for c, svc in ((ca, 0), (cb, 1), (ca, 0)):
        out = t.segment(_respond(c), now)
        assert [(s.src, s.sport, s.dst, s.dport) for s in out if isinstance(s, Segment)] == \
            [(*t.ref.services[svc], a.ip, a.port)]
        out = t.segment(c.cl.seg(b"", flags=ACK), now)
        assert [(s.dst, s.dport) for s in out] == [t.ref.backends[t.ref.conns[c.cl.key].backend]]
    t.segment(b.seg(get("/pair/y")), now)        # stays on be2 (sticky round robin): the kernel's
    t.segment(_respond(cb), now)
    assert t.sys.verdicts[n:] == [TC_ACT_REDIRECT] * 8, t.sys.verdicts[n:]
    assert t.sys.eng.conns[b.key].requests == t.ref.conns[b.key].requests == 2
    assert t.sys.eng.stats.requests_rule == t.ref.stats.requests_rule
    # a third back-end speaking for the client port: neither connection's, the engine judges
    t.segment(Backend(t.ref, 2, a).seg(b"stray", ACK), now)
    assert t.sys.verdicts[-1] == TC_ACT_OK
    for c in (ca, cb):
        for step in SCENARIOS[2][2][1:]:
            t.segment(step(c), now)
    t.tick(now + CFG.frontend.close_linger_s + 0.1)
    assert not t.sys.eng.conns and not list(t.sys.maps.conns.keys())


def test_port_collision_leaves_nobody_for_the_rule(bpf, now):
    """Service 1's rule has only the back-end that the same client port's service-0 connection
    uses: the kernel does not open it (it would be that back-end's 4-tuple twice); the engine
    answers 503, as it does alone."""
    t = Twin(*bpf, cfg=CFG, now=now)
    a, b = client(t, 0, now), client(t, 1, now, c=0x22222200)
    t.segment(a.seg(get("/")), now)                  # default: be1
    t.segment(b.seg(get("/one/x")), now)             # shop_one: [be1] only
    assert t.sys.verdicts == [TC_ACT_REDIRECT, TC_ACT_OK]
    assert t.ref.stats.responses_local[503] == t.sys.eng.stats.responses_local[503] == 1
    assert t.sys.eng.conns[a.key].state is State.SYN_SENT


def test_backend_segment_of_the_other_service(bpf, now):
    """Two services' connections of one client port, on two back-ends, both in the kernel; a
    back-end's RST ends its own connection only (the kernel found it by the back-end), and the
    RST leaves from that connection's VIP."""
    t = Twin(*bpf, cfg=CFG, now=now)
    a, b = client(t, 2, now), client(t, 0, now, c=0x33333300)
    t.segment(a.seg(get("/")), now)                  # alt_all: be3
    ca = Conn(a, Backend(t.ref, 2, a))
    t.segment(ca.be.synack(), now)
    t.segment(b.seg(get("/x")), now)                 # default: be1; the port is shared: the engine's
    cb = Conn(b, Backend(t.ref, 0, b))
    t.segment(cb.be.synack(), now)
    out = t.segment(ca.be.seg(b"", ACK | RST), now)    # from be3
    assert t.sys.verdicts[-1] == TC_ACT_REDIRECT
    assert [(s.src, s.sport) for s in out if isinstance(s, Segment)] == [t.ref.services[2]]
    assert a.key not in t.sys.eng.conns and t.sys.eng.conns[b.key].kernel
    t.segment(_respond(cb), now)
    assert t.sys.verdicts[-1] == TC_ACT_REDIRECT


def test_rules_compiled_per_service():
    """Each service's steps come from its own rules, with global rule indices, in its stretch."""
    kr = compile_rules(service_rules(CFG), CFG)
    assert kr.usable
    assert [(r.first_rule, r.n_rules) for r in kr.services] == [(0, 5), (5, 4), (9, 1)]
    for svc, r in enumerate(kr.services):
        ops = kr.ops[r.first_op:r.first_op + r.n_ops]
        assert all(r.first_rule <= op.rule < r.first_rule + r.n_rules for op in ops), svc
    shop = kr.ops[kr.services[1].first_op:kr.services[1].first_op + kr.services[1].n_ops]
    assert bytes(op.byte for op in shop if op.rule == 6 and op.kind == 8) == b"/pair/"


def test_rules_too_many_across_services():
    """The limits hold for all services together: too many rules in all, the kernel routes none."""
    rules = "\n".join(f"      - {{name: r{i}, match: {{path_exact: /{i}}}, pool: [be1]}}" for i in range(60))
    cfg = make_cfg(RULES + f"""
services:
  - name: one
    vip: {{address: 10.0.100.2, port: 80}}
    rules:
{rules}
""")
    kr = compile_rules(service_rules(cfg), cfg)
    assert not kr.usable and "66 rules" in kr.why


PATHS = ["/", "/api/x", "/pair/x", "/one/x", "/big/x"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["req", "synack", "resp", "ack", "fin"]), st.integers(0, 2),
                                st.integers(0, 2), st.sampled_from(PATHS)), min_size=1, max_size=14))
def test_random_services_and_ports_equal(bpf, steps):
    """Random first requests to the three services from three client ports (so ports shared
    between services), back-ends' answers, responses, ACKs and FINs: the kernel path and the engine
    send the same segments."""
    now = tai_seconds()
    t = Twin(*bpf, cfg=CFG, now=now)
    conns: dict = {}
    for kind, svc, p, path in steps:
        key = (Client(t.ref).ip, 41000 + p, svc)
        conn, c = t.ref.conns.get(key), conns.get(key)
        if kind == "req":
            if conn is not None:
                continue
            cl = client(t, svc, now, port=41000 + p, c=0x10000000 * (svc + 1))
            conns[key] = c = Conn(cl, None)   # type: ignore[arg-type]
            t.segment(cl.seg(get(path)), now)
            if cl.key in t.ref.conns and t.ref.conns[cl.key].backend is not None:
                c.be = Backend(t.ref, t.ref.conns[cl.key].backend, cl)
            continue
        if conn is None or c is None or c.be is None:
            continue
        if kind == "synack":
            seg = c.be.synack()
        elif conn.state is not State.SPLICED:
            continue
        elif kind == "resp":
            seg = _respond(c)
        elif kind == "ack":
            seg = c.cl.seg(b"", flags=ACK)
        else:
            seg = c.cl.seg(b"", flags=ACK | FIN)
        t.segment(seg, now)


# ------------------------------------------------------------------ a reload adds a service

CFG_TWO = make_cfg(RULES.replace("syn_retries: 2}", "syn_retries: 2, ack_coalesce_ms: 0}")
                   + SERVICES[:SERVICES.index("  - name: alt")])


@pytest.fixture(scope="module")
def bpf_two():
    yield from loaded(CFG_TWO)


def test_reload_adds_a_service_to_the_running_kernel_path(bpf_two, now):
    """The kernel path loaded for two services; a connection of service 1 runs; a reload appends
    service 2 (`alt`, VIP:8080): both layers take it as the engine alone does (`Engine.configure`,
    `KernelMaps.add_services` + `load_rules`, as operations.py does): its first request is routed
    in the kernel by its own rule and answered from its VIP:port, and the running connection goes
    on. A list that does not extend the running services is refused."""
    t = Twin(*bpf_two, cfg=CFG_TWO, now=now)
    a = client(t, 1, now, port=41000)
    t.segment(a.seg(get("/x")), now)
    ca = Conn(a, Backend(t.ref, t.ref.conns[a.key].backend, a))
    t.segment(ca.be.synack(), now)
    assert t.sys.verdicts == [TC_ACT_REDIRECT] * 2
    maps = t.sys.maps
    with pytest.raises(ValueError):
        maps.add_services(CFG.vip_endpoints()[::-1])
    t.ref.configure(CFG)
    t.sys.eng.configure(CFG)
    maps.add_services(CFG.vip_endpoints())
    maps.load_rules(CFG, t.sys.eng.rulesets, t.sys.eng.healthy)
    maps.set_routing(True, True)
    b = client(t, 2, now, port=41001, c=0x33333300)
    t.segment(b.seg(get("/api/x")), now)
    assert t.sys.verdicts[-1] == TC_ACT_REDIRECT, "the kernel routes the new service's first request"
    assert t.sys.eng.conns[b.key].rule.name == t.ref.conns[b.key].rule.name == "alt/alt_all"
    cb = Conn(b, Backend(t.ref, t.ref.conns[b.key].backend, b))
    t.segment(cb.be.synack(), now)
    out = t.segment(_respond(cb), now)
    assert [(s.src, s.sport) for s in out if isinstance(s, Segment)] == [t.ref.services[2]]
    out = t.segment(_respond(ca), now)       # the connection from before the reload goes on
    assert [(s.src, s.sport) for s in out if isinstance(s, Segment)] == [t.ref.services[1]]
    assert t.sys.verdicts[-3:] == [TC_ACT_REDIRECT] * 3
