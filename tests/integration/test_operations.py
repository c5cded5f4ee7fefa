"""Operating a running Miresga on the testbed: live reloads under load (a rule's pool changed, a
back-end removed and drained), a refused reload that changes nothing, redispatch away from a
back-end whose service port refuses while its health check passes, and the access log checked
line by line against what a client sent and received."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from miresga.bpf.netns import in_netns
from miresga.control.config import load_config

pytestmark = pytest.mark.netns

RULES = [
    {"name": "api", "match": {"path_prefix": "/api/"}, "pool": ["be1", "be2"], "policy": "round_robin",
     "offload": "never"},
    {"name": "default", "pool": ["be1", "be2", "be3"], "policy": "round_robin", "offload": "auto"},
]


# A connection whose last segment was lost (an RST is never retransmitted; a loaded machine drops
# frames at the packet socket) is let go of by the idle timers: the agent's is the longest.
LETGO_S = load_config().agent.idle_timeout_s + 10


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("alog")
    d.chmod(0o755)
    return d


@pytest.fixture(scope="module")
def lb(logdir):
    from miresga.testbed import Testbed
    cfg = load_config()
    d = cfg.model_dump(mode="json")
    d["rules"] = RULES
    d["frontend"]["access_log"] = {"file": str(logdir / "access-{frontend}.log")}
    with Testbed(type(cfg).model_validate(d), lb="miresga") as tb:
        yield tb


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "miresga.control.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def instance_yaml(tb) -> dict:
    return yaml.safe_load((tb.run_dir / "config.yaml").read_text())


def reload_with(tb, data: dict, tmp: Path) -> subprocess.CompletedProcess:
    f = tmp / "new.yaml"
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    return cli("reload", "--instance", tb.instance, "--config", str(f))


def fe_metric(tb, name: str, label: str) -> float:
    return sum(tb.frontend_metrics(f.name).get(name, {}).get(label, 0.0) for f in tb.cfg.hosts.frontends)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last {last!r})")


def wait_nothing_left(tb, timeout: float) -> None:
    """Until no component holds state for a connection; on a timeout, names what is still held."""
    deadline = time.monotonic() + timeout
    while True:
        held = {k: v for k, v in tb.leftovers().items() if v}
        if not held:
            return
        if time.monotonic() > deadline:
            shown = ("connections", "packets", "drops", "kernel_path")
            fes = {f.name: {k: tb.frontend_metrics(f.name).get(k) for k in shown} for f in tb.cfg.hosts.frontends}
            raise AssertionError(f"state still held {timeout}s after the load ended: {held}; "
                                 f"front-ends: {fes}; switch: {tb.switch_stats()}")
        time.sleep(0.3)


def wrk(tb, path: str, seconds: int, close: bool) -> subprocess.Popen:
    extra = ["-H", "Connection: close"] if close else []
    return subprocess.Popen(["ip", "netns", "exec", tb.ns("c1"), "wrk", "-t1", "-c8", f"-d{seconds}s", *extra,
                             f"http://{tb.cfg.vip.address}{path}"], stdout=subprocess.PIPE, text=True)


def wrk_ok(p: subprocess.Popen) -> str:
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 0 and "Non-2xx" not in out and "Socket errors" not in out, out
    return out


def test_reloads_under_load_lose_nothing_and_drain(lb, tmp_path):
    loads = [wrk(lb, "/api/x", 9, close=False), wrk(lb, "/obj/1k", 9, close=True)]
    try:
        time.sleep(2)
        data = instance_yaml(lb)
        data["rules"][0]["pool"] = ["be2", "be3"]            # 1: the api rule moves to another pool
        r = reload_with(lb, data, tmp_path)
        assert r.returncode == 0 and r.stdout.count("applied") == 2, r.stdout + r.stderr
        time.sleep(2)
        wait_for(lambda: fe_metric(lb, "backend_requests", "be3") > 0, 5, "be3 in the api pool")
        r = cli("backend", "remove", "be3", "--instance", lb.instance)   # 2: be3 out and drained
        assert r.returncode == 0 and r.stdout.count("applied") == 2, r.stdout + r.stderr
        time.sleep(1.2)                                        # metrics are published once a second
        be3_at_drain = fe_metric(lb, "backend_requests", "be3")
        time.sleep(2)
    finally:
        outs = [wrk_ok(p) for p in loads]
    assert all("requests in" in o for o in outs)
    for f in lb.cfg.hosts.frontends:
        # what requests allocated was freed by reference counting: a cycle per request (once ~15
        # objects each) would show here, and its collections as loop stalls (wrk timeouts)
        m = lb.frontend_metrics(f.name)
        served = sum(m["requests"].values())
        assert served > 10000 and m["gc_collected_objects"][""] < served / 100, (f.name, served, m["gc_collected_objects"])
    time.sleep(1.2)
    assert fe_metric(lb, "backend_requests", "be3") == be3_at_drain   # no request went there since
    assert fe_metric(lb, "local_responses", "503") == 0
    listed = json.loads(cli("backend", "list", "--instance", lb.instance, "--json").stdout)
    be3 = next(b for b in listed if b["name"] == "be3")
    assert be3["drain"] and be3["rules"] == []
    wait_for(lambda: lb.agent_stats("be3")["flows"] == 0, 30, "be3's flows to end")
    wait_nothing_left(lb, LETGO_S)
    # back in: undrained and in the api pool again
    r = cli("backend", "add", "be3", "--rule", "api", "--instance", lb.instance)
    assert r.returncode == 0, r.stdout + r.stderr
    assert instance_yaml(lb)["rules"][0]["pool"] == ["be2", "be3"]


def test_invalid_reload_is_refused_and_changes_nothing(lb, tmp_path):
    before = (lb.run_dir / "config.yaml").read_text()
    data = instance_yaml(lb)
    data["rules"][0]["pool"] = ["be9"]                        # no such back-end
    r = reload_with(lb, data, tmp_path)
    assert r.returncode == 1 and "unknown back-ends ['be9']" in r.stderr, r.stderr
    data = instance_yaml(lb)
    data["hosts"]["backends"][0]["port"] = 81                 # parses, but only a restart can do it
    r = reload_with(lb, data, tmp_path)
    assert r.returncode == 1 and "hosts.backends.0 (be1): port need a restart" in r.stderr, r.stderr
    assert (lb.run_dir / "config.yaml").read_text() == before
    # the front-ends check too: a broken file in place, then SIGHUP
    time.sleep(1.2)
    refused = fe_metric(lb, "events", "reload_refused")
    conf = lb.run_dir / "config.yaml"
    try:
        conf.write_text(before + "\nbogus_key: 1\n")
        for k, pid in lb.state["procs"].items():
            if k.startswith("frontend-"):
                subprocess.run(["kill", "-HUP", str(pid)], check=True)
        wait_for(lambda: fe_metric(lb, "events", "reload_refused") >= refused + 2, 10, "both front-ends refuse")
    finally:
        conf.write_text(before)
    out = subprocess.run(["ip", "netns", "exec", lb.ns("c1"), "curl", "-sf", f"http://{lb.cfg.vip.address}/api/x"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0


def test_refusing_service_port_is_redispatched(lb):
    ns = lb.ns("be1")
    rules = ("table inet mgtest {\n chain service {\n  type filter hook input priority 0; policy accept;\n"
             "  tcp dport 80 reject with tcp reset\n }\n}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        time.sleep(1.2)
        red0, s503 = fe_metric(lb, "events", "redispatch"), fe_metric(lb, "local_responses", "503")
        for i in range(12):
            out = subprocess.run(["ip", "netns", "exec", lb.ns("c1"), "curl", "-s", "-o", "/dev/null", "-w",
                                  "%{http_code}", f"http://{lb.cfg.vip.address}/obj/1k?r={i}"],
                                 capture_output=True, text=True, timeout=30)
            assert out.stdout == "200", out
        time.sleep(1.2)
        assert lb.frontend_metrics("fe1")["backend_healthy"]["be1"] == 1     # its health check still passes
        assert fe_metric(lb, "events", "redispatch") - red0 >= 3             # default rule, round robin over be1, be2
        assert fe_metric(lb, "local_responses", "503") == s503
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "mgtest"])


def _exchange(tb, requests: list[bytes]) -> tuple[int, list[tuple[int, int]]]:
    """Send each request on one connection in turn, read each whole response: (local port,
    [(status, bytes of the response)])."""
    with in_netns(tb.ns("c1")):
        s = socket.create_connection((str(tb.cfg.vip.address), tb.cfg.vip.port), timeout=10)
    got = []
    with s:
        port = s.getsockname()[1]
        buf = b""
        for req in requests:
            s.sendall(req)
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, _ = buf.partition(b"\r\n\r\n")
            cl = int(next(l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")).split(b":")[1])
            need = len(head) + 4 + cl
            while len(buf) < need:
                buf += s.recv(65536)
            got.append((int(head.split(b" ")[1]), need))
            buf = buf[need:]
    return port, got


def test_access_log_line_by_line(lb, logdir):
    ka = [b"GET /api/one?q=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t1\r\n\r\n",
          b"GET /obj/10k HTTP/1.1\r\nHost: a.example\r\n\r\n",
          b"GET /nope HTTP/1.1\r\nHost: a.example\r\n\r\n"]
    sent = {}
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    port, got = _exchange(lb, ka)
    sent[port] = [(r, g) for r, g in zip(ka, got)]
    # 10 MB: long enough that its offload is in place before its end (the kernel path relays a
    # 1 MB response faster than the switch installs the entry)
    for path in ("/obj/1k", "/obj/64k", "/obj/10m"):
        req = f"GET {path} HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n".encode()
        port, got = _exchange(lb, [req])
        sent[port] = [(req, got[0])]

    def lines():
        out = []
        for f in logdir.glob("access-*.log"):
            for line in f.read_text().splitlines():
                rec = json.loads(line)
                if int(rec["client"].split(":")[1]) in sent and rec["ts"] >= start:
                    out.append(rec)
        return out if len(out) >= 6 else None
    recs = wait_for(lines, 15, "the six lines")   # the last of a connection is written when it ends
    assert len(recs) == 6
    for port, exchanges in sent.items():
        mine = sorted((r for r in recs if r["client"].endswith(f":{port}")), key=lambda r: r["ts"])
        assert len(mine) == len(exchanges)
        for rec, (req, (status, size)) in zip(mine, exchanges):
            line0 = req.split(b"\r\n")[0].decode().split(" ")
            host = req.split(b"Host: ")[1].split(b"\r\n")[0].decode()
            assert (rec["method"], rec["path"], rec["host"]) == (line0[0], line0[1], host)
            assert rec["bytes"] == size, (rec, size)
            assert rec["rule"] == ("api" if line0[1].startswith("/api/") else "default")
            assert rec["backend"] in ("be1", "be2", "be3")
            if rec["status"] is None:   # only a response the switch carried before we could read it
                at = exchanges.index((req, (status, size)))
                if not (rec["fast_path"] and rec["ttfb_ms"] is None and at >= 2):
                    pytest.fail("no status in " + json.dumps({  # whole (an assert's message is cut short)
                        "record": rec, "exchange": at, "kernel_path": {
                            f.name: lb.frontend_metrics(f.name).get("kernel_path") for f in lb.cfg.hosts.frontends},
                        "events": {f.name: lb.frontend_metrics(f.name).get("events") for f in lb.cfg.hosts.frontends}}))
            else:
                assert rec["status"] == status and rec["ttfb_ms"] is not None, (rec, status)
            if line0[1] == "/obj/10m":
                assert rec["fast_path"], rec
            elif line0[1] in ("/obj/1k", "/api/one?q=1"):
                assert not rec["fast_path"], rec
