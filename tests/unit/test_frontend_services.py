"""Several VIPs (services) in the engine: one client ip:port may reach two of them at once, each
connection routed by its own service's rules, answered from its own VIP:port, its back-end's
segments found through (client, back-end), never two of them on one back-end."""

from __future__ import annotations

import pytest
import yaml

from frontend_helpers import NOW, RULES, Backend, Client, get, inserts, make_cfg, sends
from miresga.control.config import DEFAULT_CONFIG, ConfigError, parse_config
from miresga.frontend.engine import Engine
from miresga.frontend.engine.states import State
from miresga.frontend.pools import check_reload
from miresga.frontend.segment import FIN, ACK, SYN, ip_int

SERVICES = RULES + """
services:
  - name: api
    vip: {address: 10.0.100.1, port: 8080}
    rules:
      - {name: api-all, pool: [be2, be3], policy: round_robin, offload: never}
  - name: alt
    vip: {address: 10.0.100.7, port: 80}
    rules:
      - {name: alt-dl, match: {path_prefix: /dl/}, pool: [be1], offload: always}
      - {name: alt-rest, pool: [be1, be3], policy: round_robin, offload: never}
"""


@pytest.fixture
def eng():
    return Engine(make_cfg(SERVICES))


def first_request(eng, cl, path, backend=None):
    """The client's one-segment request: returns (the back-end index picked, the SYN)."""
    (syn,) = sends(eng.segment(cl.seg(get(path)), NOW), "backend")
    assert syn.flags == SYN and (syn.src, syn.sport) == (cl.ip, cl.port)
    b = eng.backends.index((syn.dst, syn.dport))
    assert backend is None or b == backend
    return b, syn


def test_services_are_indexed_default_first(eng):
    assert eng.services == [(ip_int("10.0.100.1"), 80), (ip_int("10.0.100.1"), 8080), (ip_int("10.0.100.7"), 80)]
    names = [r.name for r in eng.rule_list]
    assert names[:5] == ["api", "big", "dl", "site2", "default"]      # service 0's, its default last
    assert names[5:] == ["api/api-all", "alt/alt-dl", "alt/alt-rest"]   # catch-alls last: no implicit default
    assert [r.index for r in eng.rule_list] == list(range(len(names)))  # global indices


def test_one_client_port_two_services(eng):
    """Same client ip:port to the default VIP and to `alt`: two connections, each by its own rules,
    its responses from its own VIP:port, its back-end's segments matched to it."""
    c0 = Client(eng, port=40000, svc=0)
    c2 = Client(eng, port=40000, svc=2, c=0x12345678)
    b0, _ = first_request(eng, c0, "/api/x", backend=1)   # service 0: /api/ -> be2
    b2, _ = first_request(eng, c2, "/dl/f", backend=0)    # alt: /dl/ -> be1
    assert set(eng.conns) == {(c0.ip, 40000, 0), (c2.ip, 40000, 2)}
    for cl, b in ((c0, b0), (c2, b2)):
        be = Backend(eng, b, cl)
        eng.segment(be.synack(), NOW)
        assert eng.conns[cl.key].state is State.SPLICED
        resp = be.seg(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        (out,) = sends(eng.segment(resp, NOW), "client")
        assert (out.src, out.sport, out.dst, out.dport) == (cl.vip, cl.vport, cl.ip, cl.port)
        assert out.payload == resp.payload
    # alt's /dl/ rule offloads always: the insert names alt's service
    assert eng.conns[c2.key].rule.name == "alt/alt-dl" and eng.conns[c0.key].rule.name == "api"
    assert eng.stats.requests_rule["alt/alt-dl"] == 1 and eng.stats.requests_rule["api"] == 1


def test_offload_insert_carries_the_service(eng):
    cl = Client(eng, port=40100, svc=2)
    b, _ = first_request(eng, cl, "/dl/f", backend=0)
    acts = eng.segment(Backend(eng, b, cl).synack(), NOW)
    (ins,) = inserts(acts)
    assert ins.key == cl.key and ins.svc == 2
    # the switch's answer finds the connection by its service
    eng.offload_result(cl.ip, cl.port, ins.gen, "ok", NOW, svc=2)
    assert eng.conns[cl.key].offload.value == "installed"
    assert eng.stats.offload["stale_result"] == 0


def test_an_insert_for_a_service_the_switch_lacks_stays_on_the_slow_path(eng):
    """A switch whose config is older than ours (the front-ends reloaded with a new service
    first) answers `unknown_service`: that connection stays on the slow path, counted."""
    cl = Client(eng, port=40101, svc=2)
    b, _ = first_request(eng, cl, "/dl/f", backend=0)
    (ins,) = inserts(eng.segment(Backend(eng, b, cl).synack(), NOW))
    assert eng.offload_result(cl.ip, cl.port, ins.gen, "unknown_service", NOW, svc=2) == []
    assert eng.conns[cl.key].offload.value == "none"
    assert eng.stats.offload["refused_unknown_service"] == 1


def test_the_same_request_routes_by_each_services_rules(eng):
    """/api/ is service 0's api rule (be2 only); on `api` (port 8080) every request goes to be2 or
    be3; on `alt` to be1 or be3 — three clients, the same request, three rule sets."""
    got = {}
    for svc in (0, 1, 2):
        picks = set()
        for i in range(4):
            b, _ = first_request(eng, Client(eng, port=41000 + 10 * svc + i, svc=svc), "/api/x")
            picks.add(b)
        got[svc] = picks
    assert got == {0: {1}, 1: {1, 2}, 2: {0, 2}}


def test_no_backend_twice_for_one_client_port(eng):
    """alt holds be1 for client port P: service 0's `big` rule (be1 only) answers P with a 503
    rather than a second connection with P's 4-tuple on be1; a rule with room picks around it."""
    c2 = Client(eng, port=42000, svc=2)
    first_request(eng, c2, "/dl/f", backend=0)
    c0 = Client(eng, port=42000, svc=0, c=0x2000)
    acts = eng.segment(c0.seg(get("/big/x")), NOW)        # service 0's big: pool [be1] only
    assert not [s for s in sends(acts, "backend") if s.flags & SYN]
    (resp,) = sends(acts, "client")
    assert resp.payload.startswith(b"HTTP/1.1 503")
    assert eng.stats.events["port_shared"] >= 1
    # service 0 holds be3 for port P': alt-rest (be1, be3, round robin) always picks be1 for P'
    c0b = Client(eng, port=42001, svc=0, c=0x3000)
    first_request(eng, c0b, "/dl/y", backend=2)            # service 0's dl: be3
    for i in range(3):
        c2b = Client(eng, port=42001, svc=2, c=0x4000 + i)
        b, _ = first_request(eng, c2b, "/other")           # alt-rest: be1 or be3, but be3 is taken
        assert b == 0
        del eng.conns[c2b.key]


def test_backend_segment_matches_by_backend(eng):
    """A back-end's segment to client ip:port goes to the service whose connection uses that
    back-end; from a back-end nobody uses for that port it is stale (counted), not misdelivered."""
    c0 = Client(eng, port=43000, svc=0)
    c1 = Client(eng, port=43000, svc=1, c=0x5000)
    b0, _ = first_request(eng, c0, "/api/x", backend=1)   # be2
    b1, _ = first_request(eng, c1, "/x")                   # api-all: be2 is taken -> be3
    assert b1 == 2
    assert eng.backend_key(c0.ip, 43000, 1) == c0.key and eng.backend_key(c0.ip, 43000, 2) == c1.key
    stale = Backend(eng, 0, c0).seg(b"zz")                  # be1: neither connection's
    assert sends(eng.segment(stale, NOW)) == [] and eng.stats.drops["stale_backend"] == 1


def test_backend_data_without_a_connection_is_not_adopted_with_several_services(eng):
    cl = Client(eng, port=44000)
    be = Backend(eng, 0, cl)
    assert eng.segment(be.seg(b"HTTP/1.1 200 OK\r\n\r\n"), NOW) == []
    assert eng.stats.drops["adopt_ambiguous"] == 1 and not eng.conns
    one = Engine(make_cfg())                                # one service: adopted as before
    cl1 = Client(one, port=44000)
    one.segment(Backend(one, 0, cl1).seg(b"HTTP/1.1 200 OK\r\n\r\n"), NOW)
    assert one.stats.events["adopted"] == 1


def test_client_fin_and_close_per_service(eng):
    """Closing one service's connection leaves the other one of the same client port alone."""
    c0 = Client(eng, port=45000, svc=0)
    c1 = Client(eng, port=45000, svc=1, c=0x6000)
    b0, _ = first_request(eng, c0, "/api/x", backend=1)
    b1, _ = first_request(eng, c1, "/x")
    eng.segment(Backend(eng, b0, c0).synack(), NOW)
    eng.segment(c0.seg(b"", flags=FIN | ACK), NOW)
    assert eng.conns[c0.key].cli_fin and not eng.conns[c1.key].cli_fin
    assert eng.conns[c1.key].state is State.SYN_SENT


# ------------------------------------------------------------------ config


def _cfg_dict():
    text = DEFAULT_CONFIG.read_text()
    return yaml.safe_load(text[:text.index("rules:")] + SERVICES)


@pytest.mark.parametrize("change, key", [
    (lambda d: d["services"][1].update(name="api"), "services.1.name"),
    (lambda d: d["services"][1]["vip"].update(address="10.0.100.1", port=8080), "services.1.vip"),
    (lambda d: d["services"][0]["vip"].update(port=80), "services.0.vip"),
    (lambda d: d["services"][0]["rules"][0].update(pool=["nope"]), "services.0.rules.0.pool"),
    (lambda d: d["services"][1].update(name="default"), "services.1.name"),
    (lambda d: d["services"][0]["vip"].update(address="10.0.4.9"), "services.0.vip.address"),
    (lambda d: d["services"][1]["rules"][0]["match"].update(path_regex="(unclosed"),
     "services.1.rules.0.match.path_regex"),
    (lambda d: d["services"].extend({"name": f"s{i}", "vip": {"address": "10.0.100.9", "port": 1000 + i}}
                                    for i in range(14)), "services"),
])
def test_bad_services_name_the_key(change, key):
    d = _cfg_dict()
    change(d)
    with pytest.raises(ConfigError) as e:
        parse_config(yaml.safe_dump(d))
    assert key in str(e.value), str(e.value)


def test_check_config_warns_of_a_single_shared_backend():
    """A rule whose pool is one back-end that another service uses: that rule's request gets a
    503 when its client ip:port already has the other service's connection there. Warned (the
    key named), not refused; each service over back-ends of its own: no warning."""
    warnings = parse_config(yaml.safe_dump(_cfg_dict())).service_warnings()
    assert [w.split(":")[0] for w in warnings] == [
        "rules.0.pool", "rules.1.pool", "rules.2.pool", "rules.3.pool", "rules.4.pool", "services.1.rules.0.pool"]
    assert warnings[2].startswith("rules.2.pool: only be3, which services api, alt also use")
    assert warnings[-1].startswith("services.1.rules.0.pool: only be1, which service default also uses")
    assert all("503" in w for w in warnings)
    assert make_cfg(DISJOINT).service_warnings() == []
    assert make_cfg().service_warnings() == []          # one service: nothing to share


def test_reload_takes_rules_not_vips():
    old = parse_config(yaml.safe_dump(_cfg_dict()))
    d = _cfg_dict()
    d["services"][0]["rules"][0]["pool"] = ["be3"]
    assert check_reload(old, parse_config(yaml.safe_dump(d))) == []
    d["services"][1]["vip"]["port"] = 81
    (why,) = check_reload(old, parse_config(yaml.safe_dump(d)))
    assert why.startswith("services:")


def test_reload_adds_services_at_the_end_only():
    """A service appended is a reload; removing one, or inserting one before the running ones
    (it would move their indices), needs a restart."""
    old = parse_config(yaml.safe_dump(_cfg_dict()))
    d = _cfg_dict()
    d["services"].append({"name": "new", "vip": {"address": "10.0.100.8", "port": 80},
                          "rules": [{"name": "new-all", "pool": ["be3"]}]})
    assert check_reload(old, parse_config(yaml.safe_dump(d))) == []
    d["services"].insert(0, d["services"].pop())
    (why,) = check_reload(old, parse_config(yaml.safe_dump(d)))
    assert why.startswith("services:") and "added at the end" in why
    d = _cfg_dict()
    d["services"].pop()
    assert check_reload(old, parse_config(yaml.safe_dump(d)))[0].startswith("services:")


def test_reload_with_an_added_service_serves_it_and_keeps_the_rest(eng):
    """After the reload the engine answers the new VIP:port by the new service's rules (a first
    request's splice, answered from the new VIP), and keeps a running connection of another
    service on its back-end."""
    held = Client(eng, port=46100, svc=1)
    b_held, _ = first_request(eng, held, "/x")
    d = _cfg_dict()
    d["services"].append({"name": "new", "vip": {"address": "10.0.100.8", "port": 80},
                          "rules": [{"name": "new-all", "pool": ["be3"], "offload": "never"}]})
    eng.configure(parse_config(yaml.safe_dump(d)))
    assert eng.services[3] == (ip_int("10.0.100.8"), 80) and eng.by_vip[(ip_int("10.0.100.8"), 80)] == 3
    cl = Client(eng, port=46101, svc=3)
    assert (cl.vip, cl.vport) == (ip_int("10.0.100.8"), 80)
    b, syn = first_request(eng, cl, "/anything")
    assert b == 2 and eng.conns[cl.key].rule.name == "new/new-all"
    be = Backend(eng, b, cl)
    eng.segment(be.synack(), NOW)
    (out,) = sends(eng.segment(be.seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), NOW), "client")
    assert (out.src, out.sport) == (cl.vip, cl.vport)
    assert eng.conns[held.key].backend == b_held and eng.conns[held.key].state is State.SYN_SENT


def test_reload_reroutes_by_the_new_service_rules(eng):
    d = _cfg_dict()
    d["services"][0]["rules"][0]["pool"] = ["be1"]
    eng.configure(parse_config(yaml.safe_dump(d)))
    b, _ = first_request(eng, Client(eng, port=46000, svc=1), "/x")
    assert b == 0


DISJOINT = """
rules:
  - {name: web, pool: [be1], offload: never}
frontend: {max_header_bytes: 1024, syn_retries: 2}
services:
  - name: shop
    vip: {address: 10.0.100.9, port: 443}
    rules:
      - {name: shop-all, pool: [be2, be3], offload: never}
"""


def test_backend_data_adopted_for_the_only_service_that_uses_the_backend():
    """Each service with its own catch-all over its own back-ends: a back-end's data for a
    connection nobody holds (its front-end died) belongs to the one service using that back-end,
    and is answered from that service's VIP:port."""
    eng = Engine(make_cfg(DISJOINT))
    assert eng.sole_service == [0, 1, 1]
    cl = Client(eng, port=44100, svc=1)
    be = Backend(eng, 2, cl)
    (out,) = sends(eng.segment(be.seg(b"HTTP/1.1 200 OK\r\n\r\n"), NOW), "client")
    assert eng.stats.events["adopted"] == 1 and set(eng.conns) == {cl.key}
    assert (out.src, out.sport, out.dst, out.dport) == (cl.vip, cl.vport, cl.ip, cl.port)
    web = Client(eng, port=44101, svc=0)
    eng.segment(Backend(eng, 0, web).seg(b"HTTP/1.1 200 OK\r\n\r\n"), NOW)
    assert web.key in eng.conns and eng.stats.drops["adopt_ambiguous"] == 0


def test_backend_data_adopted_beside_another_services_connection_of_the_port():
    """The client port already has a connection of another service on another back-end (e.g. one
    adopted a moment before, after the same front-end's death): a segment from a back-end only
    one service uses is still that service's to adopt, not a stale segment of the other's."""
    eng = Engine(make_cfg(DISJOINT))
    web = Client(eng, port=44102, svc=0)
    eng.segment(Backend(eng, 0, web).seg(b"HTTP/1.1 200 OK\r\n\r\n"), NOW)   # be1: default's
    assert set(eng.conns) == {web.key}
    shop = Client(eng, port=44102, svc=1)
    (out,) = sends(eng.segment(Backend(eng, 2, shop).seg(b"HTTP/1.1 200 OK\r\n\r\n"), NOW), "client")
    assert eng.stats.events["adopted"] == 2 and set(eng.conns) == {web.key, shop.key}
    assert (out.src, out.sport) == (shop.vip, shop.vport) and eng.stats.drops["stale_backend"] == 0
    # and a segment from a back-end that neither connection uses, but one service could: stale
    # only if its own service holds the port on another back-end
    eng.segment(Backend(eng, 1, shop).seg(b"zz"), NOW)                       # be2: shop's, held on be3
    assert eng.stats.drops["stale_backend"] == 1 and set(eng.conns) == {web.key, shop.key}
