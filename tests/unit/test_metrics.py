"""The switch's and the agents' Prometheus collectors, the shared endpoint, and the dashboard
against the metrics reference (docs/metrics.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from miresga.agent.manager import AgentStat
from miresga.agent.metrics import AgentMetrics
from miresga.bpf.drop_reasons import DropReason
from miresga.control.config import load_config
from miresga.metrics import Endpoint, dashboard_metrics, promql_metrics, scrape_samples
from miresga.switch.maps import counter_names
from miresga.switch.metrics import SwitchMetrics
from miresga.switch.server import ControlPlane, MemoryTables

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "miresga.json"
REFERENCE = ROOT / "docs" / "metrics.md"


def served(collector) -> dict:
    """Every sample of `collector`, through a real endpoint on an ephemeral loopback port."""
    with Endpoint(collector, 0) as ep:
        return scrape_samples(f"http://127.0.0.1:{ep.port}/metrics")


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class CountingTables(MemoryTables):
    """Memory tables with the data plane's counter names (as MapTables reads them)."""

    def __init__(self, capacity: int = 1 << 30):
        super().__init__(capacity)
        self.values = {name: 0 for name in counter_names().values()}

    def counters(self):
        return dict(self.values)


def test_switch_metrics_follow_the_control_plane():
    clock = Clock()
    tables = CountingTables()
    tables.values.update(synack=7, to_client=11, drop_guarded_port=2)
    cp = ControlPlane(load_config(), tables, clock=clock, dead_after_s=3.0)
    cp.start_tables()
    ip = 0x0A000102
    assert [s.value for s in cp.write([(ip, 40000, 0, 0), (ip, 40001, 0, 1), (ip, 40000, 0, 0)], [(ip, 1, 0)])] == \
        ["ok", "ok", "exists", "not_found"]
    cp.write([], [(ip, 40001, 0)])
    cp.register("fe1", "10.0.1.2")
    cp.identity_refused = 3
    cp.ctl.unauthenticated = 1

    m = served(SwitchMetrics(cp, {"p-c1": "xdp", "p-fe1": "tc"}))
    one = {name: next(iter(v.values())) for name, v in m.items() if len(v) == 1 and () in v}
    assert {(dict(k)["interface"], dict(k)["mode"]): v for k, v in m["miresga_switch_port_attach"].items()} == \
        {("p-c1", "xdp"): 1, ("p-fe1", "tc"): 1}

    def by(name, label):
        return {dict(k)[label]: v for k, v in m[name].items()}
    assert one["miresga_switch_offload_entries"] == 1
    assert one["miresga_switch_offload_capacity"] == cp.profile.capacity
    assert one["miresga_switch_insert_queue"] == 0
    assert by("miresga_switch_offload_applied_total", "op") == {"insert": 2, "delete": 1}
    writes = {(dict(k)["op"], dict(k)["status"]): v for k, v in m["miresga_switch_offload_writes_total"].items()}
    assert writes == {("insert", "ok"): 2, ("insert", "exists"): 1, ("insert", "table_full"): 0,
                      ("insert", "queued"): 0, ("insert", "unknown_service"): 0,
                      ("delete", "ok"): 1, ("delete", "not_found"): 1,
                      ("delete", "queued"): 0}
    decisions = by("miresga_switch_packets_total", "decision")
    drops = by("miresga_switch_drops_total", "reason")
    assert decisions["synack"] == 7 and decisions["to_client"] == 11 and "drop_guarded_port" not in decisions
    assert drops["guarded_port"] == 2 and set(drops) == {r.name.lower() for r in DropReason}
    assert by("miresga_switch_frontend_alive", "frontend") == {"fe1": 1, "fe2": 0}
    assert by("miresga_switch_frontend_buckets", "frontend") == {"fe1": 128, "fe2": 128}
    states = {(dict(k)["frontend"], dict(k)["state"]): v for k, v in m["miresga_switch_frontend_state"].items()}
    assert states[("fe1", "alive")] == 1 and states[("fe2", "static")] == 1 and sum(states.values()) == 2
    assert by("miresga_switch_control_refused_total", "reason") == {"tls": 0, "token": 1, "identity": 3}
    vip = cp.cfg.vip
    assert [dict(k) for k in m["miresga_switch_service"]] == [
        {"index": "0", "service": "default", "vip": f"{vip.address}:{vip.port}"}]

    clock.t += 10  # fe1 silent: dead, its buckets move
    cp.tick()
    m = served(SwitchMetrics(cp))
    assert by("miresga_switch_frontend_alive", "frontend") == {"fe1": 0, "fe2": 0}
    assert by("miresga_switch_frontend_buckets", "frontend") == {"fe1": 0, "fe2": 256}
    assert next(iter(m["miresga_switch_bucket_moves_total"].values())) == 128


def test_switch_insert_queue_under_a_rate_limited_profile():
    cfg = load_config()
    cfg = cfg.model_copy(update={"switch": cfg.switch.model_copy(update={"profile": "tofino", "insert_rate": 100,
                                                                        "batch_latency_ms": 500.0})})
    clock = Clock()
    cp = ControlPlane(cfg, MemoryTables(), clock=clock)
    cp.start_tables()
    cp.ctl.write([(0x0A000102, 40000 + i, 0, 0) for i in range(50)], [], clock())
    m = served(SwitchMetrics(cp))
    assert next(iter(m["miresga_switch_insert_queue"].values())) == 50
    assert next(iter(m["miresga_switch_insert_rate_limit"].values())) == 100
    writes = {(dict(k)["op"], dict(k)["status"]): v for k, v in m["miresga_switch_offload_writes_total"].items()}
    assert writes[("insert", "queued")] == 50


class FakeFlows:
    max_entries = 1024

    def keys(self):
        return iter([b"a", b"b", b"c"])


class FakeAgent:
    """What AgentMetrics reads of an AgentManager."""

    swept = 4
    maps = {"agent_flows": FakeFlows()}
    ingress_mode = "xdp"

    def counters(self):
        c = {s.name.lower(): 0 for s in AgentStat}
        c.update(xlate_in=10, xlate_out=20, splice_syn=3)
        return c

    def drops(self, zeros=False):
        return {"agent_not_spliced": 2, **({"agent_table_full": 0} if zeros else {})}


def test_agent_metrics():
    m = served(AgentMetrics(FakeAgent()))
    assert next(iter(m["miresga_agent_flows"].values())) == 3
    assert next(iter(m["miresga_agent_flow_capacity"].values())) == 1024
    assert {dict(k)["direction"]: v for k, v in m["miresga_agent_translations_total"].items()} == {"in": 10, "out": 20}
    assert {dict(k)["reason"]: v for k, v in m["miresga_agent_drops_total"].items()} == \
        {"agent_not_spliced": 2, "agent_table_full": 0}
    stats = {dict(k)["counter"]: v for k, v in m["miresga_agent_stats_total"].items()}
    assert set(stats) == {s.name.lower() for s in AgentStat} and stats["splice_syn"] == 3
    assert next(iter(m["miresga_agent_swept_total"].values())) == 4
    assert {dict(k)["mode"]: v for k, v in m["miresga_agent_ingress_attach"].items()} == {"xdp": 1}


# ---------------------------------------------------------------- dashboard and reference

def documented_metrics() -> set[str]:
    """Metric names from the reference's tables (first column, in backticks)."""
    return set(re.findall(r"^\| `(miresga_[a-z0-9_]+)`", REFERENCE.read_text(), re.M))


def test_promql_metric_extraction():
    assert promql_metrics('sum by (rule) (rate(miresga_frontend_requests_total{rule!~"x|y"}[$__rate_interval]))') \
        == {"miresga_frontend_requests_total"}
    assert promql_metrics("miresga_switch_offload_entries / ignoring(x) miresga_switch_offload_capacity * 100") \
        == {"miresga_switch_offload_entries", "miresga_switch_offload_capacity"}
    assert promql_metrics("up == bool 1 offset 5m") == {"up"}


def test_dashboard_uses_only_documented_miresga_metrics():
    d = json.loads(DASHBOARD.read_text())
    used = dashboard_metrics(DASHBOARD)
    assert used, "no PromQL expressions found"
    assert {n for n in used if not n.startswith("miresga_")} == set()
    assert used - documented_metrics() == set()
    assert all(t.get("expr") for p in d["panels"] for t in p.get("targets", [])) and \
        len({p["id"] for p in d["panels"]}) == len(d["panels"])


def wire_names(collector) -> set[str]:
    """The names a collector's families carry on the wire (counters with _total)."""
    return {f.name + ("_total" if f.type == "counter" else "") for f in collector.collect()}


def test_reference_lists_exactly_what_the_collectors_export():
    """Every family the switch, front-end and agent collectors yield is in docs/metrics.md, and
    the reference names nothing they do not export."""
    from miresga.frontend.engine import Engine
    from miresga.frontend.health import HealthTracker
    from miresga.frontend.metrics import MetricsPublisher
    from miresga.frontend.packetio import IoStats
    cfg = load_config()
    names = [b.name for b in cfg.hosts.backends]
    fe = MetricsPublisher(Engine(cfg), IoStats(), {}, HealthTracker(len(names)), names)
    exported = (wire_names(SwitchMetrics(ControlPlane(cfg, CountingTables()))) | wire_names(AgentMetrics(FakeAgent()))
                | wire_names(fe))
    assert exported == documented_metrics()


def test_endpoint_names_the_address_it_cannot_take():
    class Empty:
        def collect(self):
            return []
    with Endpoint(Empty(), 0) as ep:
        try:
            Endpoint(Empty(), ep.port)
        except OSError as e:
            assert f"metrics endpoint 127.0.0.1:{ep.port}" in str(e)
        else:
            raise AssertionError("a second endpoint took the same port")
