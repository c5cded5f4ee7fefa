"""Every metric of the Grafana dashboard exists in a scrape of a running testbed: the switch,
every front-end and every agent scraped inside their namespaces, after a little traffic (requests,
an offloaded download, and a data segment with a bad cookie for a front-end drop)."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

from miresga.bpf.netns import in_netns
from miresga.control.config import load_config
from miresga.fuzz.wire import tcp_frame
from miresga.metrics import dashboard_metrics, scrape_in

pytestmark = pytest.mark.netns

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "miresga.json"
ACK, PSH = 0x10, 0x08


@pytest.fixture(scope="module")
def lb():
    from miresga.testbed import Testbed
    with Testbed(load_config(), lb="miresga") as tb:
        yield tb


def scrape_all(tb) -> dict[str, dict]:
    """{process: samples} for the switch, each front-end and each agent."""
    cfg = tb.cfg
    out = {"switch": scrape_in(tb.ns_switch, str(cfg.switch.metrics_address), cfg.switch.metrics_port)}
    for f in cfg.hosts.frontends:
        out[f.name] = scrape_in(tb.ns(f.name), str(cfg.frontend.metrics_address), cfg.frontend.metrics_port)
    for b in cfg.hosts.backends:
        out[f"agent-{b.name}"] = scrape_in(tb.ns(b.name), str(cfg.agent.metrics_address), cfg.agent.metrics_port)
    return out


def total(samples: dict, name: str, **labels) -> float:
    return sum(v for k, v in samples.get(name, {}).items() if labels.items() <= dict(k).items())


def curl(tb, path: str, *args: str) -> bytes:
    vip = f"http://{tb.cfg.vip.address}:{tb.cfg.vip.port}{path}"
    return subprocess.run(["ip", "netns", "exec", tb.ns("c1"), "curl", "-sf", "--max-time", "20", *args, vip],
                          capture_output=True, check=True, timeout=30).stdout


def send_bad_cookie_segment(tb) -> None:
    """A data segment to the VIP whose ack is no cookie: the switch passes it to a front-end,
    which drops it (drops_total{reason="bad_cookie"})."""
    c = tb.topo.node("c1")
    ip = lambda a: int.from_bytes(socket.inet_aton(str(a)), "big")  # noqa: E731
    rng = random.Random(13)
    frame = tcp_frame(bytes.fromhex(c.mac.replace(":", "")), bytes.fromhex(c.port_mac.replace(":", "")),
                      ip(c.ip), ip(tb.cfg.vip.address), 40013, tb.cfg.vip.port, rng.getrandbits(32),
                      rng.getrandbits(32), ACK | PSH, payload=b"GET / HTTP/1.1\r\n\r\n")
    with in_netns(c.netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    with s:
        s.bind((c.iface, 0))
        for _ in range(3):
            s.send(bytes(frame))


def test_every_dashboard_metric_is_in_a_scrape(lb):
    want = dashboard_metrics(DASHBOARD)
    assert len(want) >= 20, want
    assert curl(lb, "/whoami")
    assert len(curl(lb, "/download/1m")) == 1 << 20   # offloaded part-way (64 KB threshold)
    assert curl(lb, "/api/x")
    send_bad_cookie_segment(lb)
    # The switch's metrics port on its fabric addresses is guarded like the control API: a client's
    # connection attempt to its gateway on that port is dropped (and counted), not even refused.
    c1 = lb.topo.node("c1")
    with in_netns(c1.netns), socket.socket() as s:
        s.settimeout(1.0)
        assert s.connect_ex((str(c1.gateway), lb.cfg.switch.metrics_port)) != 0

    deadline = time.monotonic() + 20  # front-ends publish once a second
    while True:
        scrapes = scrape_all(lb)
        seen = {name for samples in scrapes.values() for name in samples}
        missing = want - seen
        # every name may be there (zeros) before the front-ends published the requests above
        counted = sum(total(scrapes[f.name], "miresga_frontend_requests_total") for f in lb.cfg.hosts.frontends)
        if (not missing and counted >= 3) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert missing == set(), f"dashboard metrics in no scrape: {sorted(missing)}"

    # Each process serves its own component's metrics, and they say what happened.
    for proc, samples in scrapes.items():
        prefix = {"switch": "miresga_switch_"}.get(proc, "miresga_agent_" if proc.startswith("agent-")
                                                     else "miresga_frontend_")
        assert samples and all(n.startswith(prefix) for n in samples if n.startswith("miresga_")), proc
    sw = scrapes["switch"]
    fes = [scrapes[f.name] for f in lb.cfg.hosts.frontends]
    agents = [s for p, s in scrapes.items() if p.startswith("agent-")]
    assert total(sw, "miresga_switch_frontend_alive") == len(fes)
    assert total(sw, "miresga_switch_frontend_buckets") == 256
    assert total(sw, "miresga_switch_packets_total", decision="synack") >= 3
    assert total(sw, "miresga_switch_offload_applied_total", op="insert") >= 1
    assert total(sw, "miresga_switch_drops_total", reason="guarded_port") >= 1
    assert sum(total(f, "miresga_frontend_requests_total") for f in fes) >= 3
    assert sum(total(f, "miresga_frontend_drops_total", reason="bad_cookie") for f in fes) >= 1
    assert sum(total(a, "miresga_agent_stats_total", counter="splice_syn") for a in agents) >= 3
    assert sum(total(a, "miresga_agent_translations_total") for a in agents) > 0
