"""The controller's gRPC service through the real client: statuses, states, error codes, token
auth, rate-limited writes, membership, and the insert rate of the control path."""

from __future__ import annotations

import time

import grpc
import pytest

from miresga.control.config import load_config
from miresga.switch.client import SwitchClient
from miresga.switch.server import ControlPlane, ControlServer, MemoryTables


def _cfg(**switch):
    cfg = load_config()
    return cfg.model_copy(update={"switch": cfg.switch.model_copy(update=switch)})


@pytest.fixture
def served():
    started = []

    def start(cfg=None, tables=None, dead_after_s=3.0):
        cfg = cfg or _cfg()
        tables = tables or MemoryTables()
        cp = ControlPlane(cfg, tables, dead_after_s=dead_after_s)
        srv = ControlServer(cp, "127.0.0.1:0").start()
        client = SwitchClient(f"127.0.0.1:{srv.port}", cfg.switch.control.token)
        started.append((srv, client))
        return cp, tables, client, srv
    yield start
    for srv, client in started:
        client.close()
        srv.stop()


def test_write_read_stats_roundtrip(served):
    cp, tables, c, _ = served()
    ins = [(0x0A000102, 40000 + i, 0, i % 3) for i in range(5)]
    assert c.write(ins, []) == ["ok"] * 5
    assert c.write(ins[:1], [(0x0A000102, 1, 0), (0x0A000102, 40001, 0)]) == ["exists", "not_found", "ok"]
    assert c.read([(0x0A000102, 40000, 0), (0x0A000102, 40001, 0)]) == {
        (0x0A000102, 40000, 0): "installed", (0x0A000102, 40001, 0): "absent"}
    assert set(tables.offload) == {(0x0A000102, 40000 + i, 0) for i in (0, 2, 3, 4)}
    assert tables.offload[(0x0A000102, 40003, 0)][0] == 0
    s = c.stats()
    assert (s["profile"], s["installed"], s["queue"]) == ("software", 4, 0)
    assert {m["name"] for m in s["members"]} == {"fe1", "fe2"}
    assert tables.key == cp.key is not None  # the cookie key reached the tables


def test_unauthenticated_refused_and_counted(served):
    cp, tables, c, srv = served()
    for token in ("wrong-token-wrong-token", ""):
        bad = SwitchClient(f"127.0.0.1:{srv.port}", token)
        with pytest.raises(grpc.RpcError) as e:
            bad.write([(1, 2, 0, 0)], [])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad.close()
    assert tables.offload == {}
    assert c.stats()["unauthenticated"] == 2


@pytest.mark.parametrize("call,code,words", [
    (lambda c: c.write([(1, 80, 0, 9)], []), grpc.StatusCode.INVALID_ARGUMENT, "backend index 9"),
    (lambda c: c.write([], [(1, 0, 0)]), grpc.StatusCode.INVALID_ARGUMENT, "port 0"),
    (lambda c: c.register("fe7", "10.0.2.2"), grpc.StatusCode.NOT_FOUND, "fe7"),
    (lambda c: c.heartbeat("nobody"), grpc.StatusCode.NOT_FOUND, "nobody"),
    (lambda c: c.register("fe1", "bogus"), grpc.StatusCode.INVALID_ARGUMENT, "bogus"),
])
def test_api_errors_carry_code_and_message(served, call, code, words):
    _, _, c, _ = served()
    with pytest.raises(grpc.RpcError) as e:
        call(c)
    assert e.value.code() == code and words in e.value.details()


def test_tofino_profile_queues_beyond_rate_and_installs_later(served):
    cfg = _cfg(profile="tofino", insert_rate=1000, batch_latency_ms=2.0, offload_capacity=150)
    _, tables, c, _ = served(cfg)
    ins = [(0x0A000102, 1000 + i, 0, 0) for i in range(200)]
    st = c.write(ins, [])
    ok = st.count("ok")
    # the burst (10 ms at 1000/s) plus what the rate allows while the call waits one batch
    # latency is installed when the reply comes; the rest waits in order, none lost
    assert 10 <= ok <= 20 and st[:ok] == ["ok"] * ok
    assert st[ok:150] == ["queued"] * (150 - ok)
    assert st[150:] == ["table_full"] * 50           # beyond capacity: stays slow path
    keys = [(ip, port, svc) for ip, port, svc, _ in ins[:150]]
    assert c.stats()["queue"] > 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and set(c.read(keys).values()) != {"installed"}:
        time.sleep(0.02)
    assert set(c.read(keys).values()) == {"installed"}
    assert len(tables.offload) == 150 and c.stats()["queue"] == 0


def test_membership_over_api(served):
    _, tables, c, _ = served(dead_after_s=0.3)
    r1 = c.register("fe1", "10.0.2.2")
    r2 = c.register("fe2", "10.0.3.2")
    assert len(r1["buckets"]) == len(r2["buckets"]) == 128
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and c.stats()["members"][1]["state"] != "dead":
        c.heartbeat("fe1")
        time.sleep(0.05)
    assert set(tables.buckets.values()) == {"fe1"}   # fe2 fell silent: all its buckets moved
    assert len(c.heartbeat("fe2")["buckets"]) == 128  # and came back
    assert sorted(list(tables.buckets.values()).count(n) for n in ("fe1", "fe2")) == [128, 128]
    assert c.stats()["bucket_moves"] == 256


def test_insert_rate_software_profile_through_grpc(served, record_property):
    _, tables, c, _ = served()
    n, batch = 20000, 1000
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        st = c.write([(0x0A000000 + (i >> 16), 1 + (i & 0xFFFF) % 65535, 0, 0) for i in range(s, s + batch)], [])
        assert st == ["ok"] * batch
    rate = n / (time.perf_counter() - t0)
    record_property("grpc_inserts_per_s", int(rate))
    print(f"software profile via gRPC (memory tables): {rate:.0f} inserts/s")
    assert len(tables.offload) == n and rate > 1000


def test_frontend_offload_worker_against_the_real_service(served):
    """The front-end's adapter (OffloadWorker) with the real SwitchClient and service under the
    tofino profile: inserts beyond the rate come back queued, then installed; deletes land."""
    import queue as q

    from miresga.frontend.engine import OffloadDelete, OffloadInsert
    from miresga.frontend.switch_link import OffloadWorker

    cfg = _cfg(profile="tofino", insert_rate=200, batch_latency_ms=1.0)
    cp, tables, c, srv = served(cfg)
    results = q.SimpleQueue()
    w = OffloadWorker(lambda: SwitchClient(f"127.0.0.1:{srv.port}", cfg.switch.control.token), "fe1", "10.0.2.2",
                      results, lambda: None, idle_interval=0.05, poll_interval=0.01)
    for i in range(30):
        w.submit(OffloadInsert(0x0A000102, 2000 + i, i % 3, i))
    w.start()
    try:
        deadline = time.monotonic() + 5
        final: dict[int, str] = {}
        seen: set[str] = set()
        while time.monotonic() < deadline and len([s for s in final.values() if s in ("ok", "installed")]) < 30:
            try:
                r = results.get(timeout=0.1)
            except q.Empty:
                continue
            if r[0] == "offload":
                final[r[2]] = r[4]
                assert r[5] == 0
                seen.add(r[4])
        assert sorted(final) == list(range(2000, 2030))
        assert set(final.values()) <= {"ok", "installed"}
        assert "queued" in seen and "installed" in seen  # beyond the rate, then polled to the end
        assert len(tables.offload) == 30
        w.submit(OffloadDelete(0x0A000102, 2000))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (0x0A000102, 2000, 0) in tables.offload:
            time.sleep(0.02)
        assert (0x0A000102, 2000, 0) not in tables.offload
        assert c.stats()["members"][0]["state"] == "alive"  # the worker registered and heartbeats
    finally:
        w.stop.set()
        w.join(2)


def test_idle_report(served):
    cfg = _cfg(idle_timeout_s=0.2)
    cp, tables, c, _ = served(cfg)
    assert c.write([(0x0A000102, 3000, 0, 0), (0x0A000102, 3001, 0, 1)], []) == ["ok", "ok"]
    assert c.idle() == []
    time.sleep(0.3)
    tables.offload[(0x0A000102, 3001, 0)] = (1, time.clock_gettime_ns(time.CLOCK_MONOTONIC))  # a hit
    cp.scan_idle()
    assert c.idle() == [(0x0A000102, 3000, 0)]
    c.write([], [(0x0A000102, 3000, 0)])
    assert c.idle() == []  # deleted since the scan: not reported again


def test_restarted_controller_adopts_installed_entries(served):
    tables = MemoryTables()
    tables.offload[(0x0A000102, 4000, 0)] = (2, 0)
    cp, _, c, _ = served(tables=tables)
    assert c.read([(0x0A000102, 4000, 0)]) == {(0x0A000102, 4000, 0): "installed"}
    assert c.write([(0x0A000102, 4000, 0, 1)], []) == ["exists"]
    assert c.stats()["installed"] == 1
    assert c.write([], [(0x0A000102, 4000, 0)]) == ["ok"] and tables.offload == {}


def _services_cfg(**switch):
    from miresga.control.config import Endpoint, Service
    cfg = _cfg(**switch)
    api = Service(name="api", vip=Endpoint(address=cfg.vip.address, port=8080))
    return cfg.model_copy(update={"services": [api]})


def test_service_field_round_trips_and_defaults_to_the_default_service(served):
    """One client ip:port with an entry per service (two back-ends); Read, Idle and Write's
    deletes carry the service; a caller that never sets the field (an older client) means
    service 0; a service the config does not have is answered `unknown_service` on its own."""
    from miresga._proto import control_pb2 as pb
    cp, tables, c, srv = served(_services_cfg(idle_timeout_s=0.2))
    ip = 0x0A000102
    assert c.write([(ip, 5000, 0, 0), (ip, 5000, 1, 2)], []) == ["ok", "ok"]
    assert {k: v[0] for k, v in tables.offload.items()} == {(ip, 5000, 0): 0, (ip, 5000, 1): 2}
    assert c.read([(ip, 5000, 1), (ip, 5001, 1)]) == {(ip, 5000, 1): "installed", (ip, 5001, 1): "absent"}
    time.sleep(0.3)
    cp.scan_idle()
    assert sorted(c.idle()) == [(ip, 5000, 0), (ip, 5000, 1)]
    # the raw messages without `service`, as a client built before the field existed sends them
    md = (("authorization", f"Bearer {cp.cfg.switch.control.token}"),)
    r = c._stub.Write(pb.WriteRequest(inserts=[pb.InsertEntry(client_ip=ip, client_port=5002, backend=1)],
                                      deletes=[pb.FlowKey(client_ip=ip, client_port=5000)]), metadata=md)
    assert list(r.statuses) == [pb.WRITE_OK, pb.WRITE_OK]
    assert set(tables.offload) == {(ip, 5000, 1), (ip, 5002, 0)}
    assert c.write([(ip, 5003, 2, 0), (ip, 5004, 1, 0)], []) == ["unknown_service", "ok"]
    with pytest.raises(grpc.RpcError) as e:
        c.write([(ip, 5003, 16, 0)], [])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "service 16 out of range" in e.value.details()


def test_services_added_by_a_reload_are_accepted(served):
    """`miresga switch` SIGHUP with a service appended (ControlPlane.set_services): offloads for
    the new index, answered `unknown_service` before, are accepted after."""
    from miresga.control.config import Endpoint, Service
    cfg = _services_cfg()
    cp, tables, c, srv = served(cfg)
    assert c.write([(0x0A000102, 6000, 2, 0)], []) == ["unknown_service"]
    late = Service(name="late", vip=Endpoint(address=cfg.vip.address, port=8081))
    new = cfg.model_copy(update={"services": [*cfg.services, late]})
    with cp.lock:
        cp.set_services(new)
    assert c.write([(0x0A000102, 6000, 2, 0)], []) == ["ok"]
    assert (0x0A000102, 6000, 2) in tables.offload and cp.cfg is new
