"""Several VIPs, each with its own rules, served at once (issue 12): real clients through the eBPF
switch, the front-ends (kernel path on) and the agents to nginx, on both testbed layouts.

The config adds two services to the default one: `api` on the default VIP's address, port 8080
(every request to be2 or be3), and `alt` on a second address, port 80 (every request to be1,
offloaded at once). The default service keeps default.yaml's rules. One client ip:port talks to
two services at once: the switch, the front-end (engine and kernel path) and the agent must keep
the two connections apart, and never give both to one back-end (it would see one 4-tuple twice).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from test_e2e import e2e_config, layout_testbed, name_of, objects, sha
from miresga.bpf.netns import in_netns
from miresga.control.config import Endpoint, Rule, Service

pytestmark = pytest.mark.netns


def services_config(path=None):
    cfg = e2e_config(path)
    vip = cfg.vip.address
    api = Service(name="api", vip=Endpoint(address=vip, port=8080),
                  rules=[Rule(name="api-pool", pool=["be2", "be3"], offload="never")])
    alt = Service(name="alt", vip=Endpoint(address=ipaddress.IPv4Address(int(vip) + 1), port=80),
                  rules=[Rule(name="be1-only", pool=["be1"], offload="always")])
    return cfg.model_copy(update={"services": [api, alt]})


@pytest.fixture(scope="module", params=["classic", "realistic"])
def tb(request):
    with layout_testbed(request.param, services_config) as t:
        yield t


def endpoint(tb, name: str) -> tuple[str, int]:
    svc = next(s for s in tb.cfg.all_services() if s.name == name)
    return str(svc.vip.address), svc.vip.port


def connect(tb, name: str, local_port: int = 0, timeout: float = 30) -> http.client.HTTPConnection:
    """A keep-alive connection to service `name` (call inside the client's namespace); with
    `local_port`, from that port (SO_REUSEADDR: several connections may share it)."""
    host, port = endpoint(tb, name)
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(timeout)
    s.bind(("", local_port))
    s.connect((host, port))
    c.sock = s
    return c


def get(c: http.client.HTTPConnection, path: str) -> bytes:
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, (path, r.status, body[:200])
    assert not r.will_close
    return body


def test_each_service_routes_by_its_own_rules(tb):
    with in_netns(tb.ns("c1")):
        conns = {name: connect(tb, name) for name in ("default", "api", "alt")}
        try:
            seen = {name: {get(c, "/whoami").decode().strip() for _ in range(6)} for name, c in conns.items()}
            # default.yaml's rules: Host static.example goes to be3 on the default VIP only
            host_rule = {}
            for name, c in conns.items():
                c.request("GET", "/whoami", headers={"Host": "static.example"})
                host_rule[name] = c.getresponse().read().decode().strip()
        finally:
            for c in conns.values():
                c.close()
    assert seen["alt"] == {"be1"}
    assert seen["api"] <= {"be2", "be3"} and seen["api"]
    assert host_rule["default"] == "be3" and host_rule["alt"] == "be1" and host_rule["api"] in ("be2", "be3")
    # fresh connections: the default service spreads over all three (round robin)
    with in_netns(tb.ns("c1")):
        names = set()
        for _ in range(9):
            c = connect(tb, "default")
            names.add(get(c, "/whoami").decode().strip())
            c.close()
    assert names == {"be1", "be2", "be3"}


def read_paced(r: http.client.HTTPResponse, rate: float = 10e6) -> bytes:
    """The body at about `rate` bytes/s: the e2e config's switch installs entries after 300 ms, so
    an unpaced download may end before it takes the fast path."""
    chunks, t0, got = [], time.monotonic(), 0
    while chunk := r.read(65536):
        chunks.append(chunk)
        got += len(chunk)
        time.sleep(max(0.0, t0 + got / rate - time.monotonic()))
    return b"".join(chunks)


def test_one_client_port_two_services_byte_exact(tb):
    """The same client ip:port downloads from two VIPs at once, one offloaded (alt, always) and one
    on the front-end (api, never): both byte-exact, each answered from its own VIP:port."""
    objs = objects(tb)
    port = 47311
    fast0 = tb.switch_stats()["counters"]["to_client"]
    with in_netns(tb.ns("c1")):
        a, b = connect(tb, "alt", port), connect(tb, "api", port)
        try:
            assert a.sock.getsockname()[1] == b.sock.getsockname()[1] == port
            for size in (1 << 20, 1024, 8 << 20):
                # both requests are in flight before either response is read
                a.request("GET", f"/download/{name_of(size)}")
                b.request("GET", f"/download/{name_of(size)}")
                ra, rb = a.getresponse(), b.getresponse()
                body_b = rb.read()
                body_a = read_paced(ra)
                assert ra.status == rb.status == 200
                assert sha(body_a) == sha(body_b) == objs[size]["sha256"], size
            assert get(a, "/whoami") == b"be1\n"
            assert get(b, "/whoami") in (b"be2\n", b"be3\n")
        finally:
            a.close()
            b.close()
    # api offloads never: the switch's rewritten back-end frames are alt's, from alt's VIP:port
    # (frames: veth's segmentation offload makes them up to 64 KB each)
    fast = tb.switch_stats()["counters"]["to_client"] - fast0
    assert fast > 20, f"alt's downloads hardly took the fast path ({fast} frames)"


def test_one_client_port_never_twice_on_one_backend(tb):
    """`alt` holds be1 for client port P; `default` (round robin over be1-be3) on the same port must
    then pick another back-end (be1 would see the same 4-tuple twice), and `alt` keeps working."""
    picked = []
    with in_netns(tb.ns("c1")):
        for port in range(47320, 47326):
            a = connect(tb, "alt", port)
            try:
                assert get(a, "/whoami") == b"be1\n"
                d = connect(tb, "default", port)
                try:
                    picked.append(get(d, "/whoami").decode().strip())
                    picked.append(get(d, "/whoami").decode().strip())
                finally:
                    d.close()
                assert get(a, "/whoami") == b"be1\n"
            finally:
                a.close()
    # without the rule, round robin would have given be1 to a third of them
    assert len(picked) == 12 and "be1" not in picked, picked


def test_reload_adds_a_service_while_another_serves(tb, tmp_path):
    """`miresga reload` with a service appended (`late`, on the VIP's address, port 8081, every
    request to be3, offloaded at once): the switch (SIGHUP) and the front-ends take it without a
    restart, it is served by its own rule and offloaded, and a download on `api` running across
    the reload completes byte-exact. (Last in this module: the instance keeps the added service.)"""
    objs = objects(tb)
    pids = dict(tb.state["procs"])
    got: dict[str, object] = {}

    def download() -> None:
        with in_netns(tb.ns("c1")):
            c = connect(tb, "api")
        try:
            c.request("GET", f"/download/{name_of(8 << 20)}")
            r = c.getresponse()
            got["body"] = read_paced(r, 2e6)      # ~4 s: the reload happens meanwhile
        except (OSError, http.client.HTTPException) as e:
            got["error"] = e
        finally:
            c.close()

    reader = threading.Thread(target=download)
    reader.start()
    time.sleep(1.0)
    data = yaml.safe_load((tb.run_dir / "config.yaml").read_text())
    vip = str(tb.cfg.vip.address)
    data["services"].append({"name": "late", "vip": {"address": vip, "port": 8081},
                             "rules": [{"name": "late-all", "pool": ["be3"], "offload": "always"}]})
    f = tmp_path / "late.yaml"
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "miresga.control.cli", "reload", "--instance", tb.instance,
                        "--config", str(f)], capture_output=True, text=True, timeout=60)
    assert reader.is_alive(), "the download ended before the reload: nothing was tested"
    assert r.returncode == 0, r.stdout + r.stderr
    assert "switch: reload applied: services" in r.stdout and "late " + vip + ":8081" in r.stdout, r.stdout
    assert r.stdout.count(": applied") == len(tb.cfg.hosts.frontends), r.stdout
    with in_netns(tb.ns("c1")):
        answers = []
        for _ in range(6):
            c = http.client.HTTPConnection(vip, 8081, timeout=10)
            try:
                answers.append(get(c, "/whoami").decode().strip())
            finally:
                c.close()
    assert answers == ["be3"] * 6, answers
    # and offloaded (`always`): the switch accepts the new service's entries and rewrites its
    # back-end's frames to come from VIP:8081 (the client would drop them otherwise)
    fast0 = tb.switch_stats()["counters"]["to_client"]
    with in_netns(tb.ns("c1")):
        c = http.client.HTTPConnection(vip, 8081, timeout=30)
        try:
            c.request("GET", f"/download/{name_of(8 << 20)}")
            body = read_paced(c.getresponse(), 8e6)
        finally:
            c.close()
    assert sha(body) == objs[8 << 20]["sha256"]
    fast = tb.switch_stats()["counters"]["to_client"] - fast0
    assert fast > 20, f"the new service's download hardly took the fast path ({fast} frames)"
    reader.join(30)
    assert "error" not in got, got.get("error")
    assert sha(got["body"]) == objs[8 << 20]["sha256"]
    for key, pid in pids.items():            # nothing was restarted
        with open(f"/proc/{pid}/stat") as st:
            assert st.read().split()[2] != "Z", f"{key} exited"
