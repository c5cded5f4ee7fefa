"""Miresga on the testbed, seen from a client and from a front-end: the switch's control API is
out of a client's reach (every switch-owned address; the data plane drops and counts), the
front-ends' metrics are not on their fabric address, and over mutual TLS the real controller
refuses and counts what it must while the front-ends, with their own certificates, work end to end."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
import time

import pytest

from miresga.control.certs import make_pki

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lb():
    from miresga.testbed import Testbed
    with Testbed(lb="miresga") as tb:
        yield tb


def switch_owned(tb) -> list[str]:
    """Every address the switch answers for: each host network's gateway and the VIP."""
    return sorted({str(h.gateway) for h in tb.cfg.hosts.all()} | {str(tb.cfg.vip.address)})


def guarded_drops(tb) -> int:
    return tb.switch_stats()["counters"]["drop_guarded_port"]


CONNECT_ALL = textwrap.dedent("""
    import json, socket, sys
    from concurrent.futures import ThreadPoolExecutor
    port = int(sys.argv[1])
    def connect(a):
        s = socket.socket(); s.settimeout(1.5)
        try:
            return a, s.connect_ex((a, port))
        finally:
            s.close()
    with ThreadPoolExecutor(16) as ex:
        print(json.dumps(dict(ex.map(connect, sys.argv[2:]))))
""")

RAW_SYN = textwrap.dedent("""
    import sys
    from scapy.all import IP, TCP, sr1
    r = sr1(IP(dst=sys.argv[1]) / TCP(sport=40999, dport=int(sys.argv[2]), flags="S", seq=1), timeout=1.5, verbose=0)
    print("answered" if r is not None else "silent")
""")


def test_client_side_cannot_reach_the_control_api(lb):
    tb, cfg = lb, lb.cfg
    port = cfg.switch.control.port
    addrs = switch_owned(tb)
    before = guarded_drops(tb)
    out = json.loads(tb.run("c1", sys.executable, "-c", CONNECT_ALL, str(port), *addrs, timeout=30).stdout)
    assert all(rc != 0 for rc in out.values()), out          # no answer from any of them
    mid = guarded_drops(tb)
    assert mid - before >= len(addrs)                         # each SYN dropped and counted
    # one raw SYN from the client's side: no SYN-ACK, no RST; exactly one more drop
    fe_gw = str(cfg.hosts.frontends[0].gateway)
    assert tb.run("c1", sys.executable, "-c", RAW_SYN, fe_gw, str(port), timeout=30).stdout.strip() == "silent"
    assert guarded_drops(tb) == mid + 1
    # the front-ends' metrics are not on the fabric address a client reaches
    fe = cfg.hosts.frontends[0]
    out = json.loads(tb.run("c1", sys.executable, "-c", CONNECT_ALL, str(cfg.frontend.metrics_port), str(fe.ip),
                            timeout=30).stdout)
    assert out[str(fe.ip)] != 0
    assert "connections" in tb.frontend_metrics(fe.name)     # ... but on its loopback


STATUS = [sys.executable, "-m", "miresga.control.cli", "status", "--json", "--config"]


def test_frontends_keep_working(lb):
    tb, cfg = lb, lb.cfg
    port = cfg.switch.control.port
    conf = str(tb.run_dir / "config.yaml")
    # a front-end reaches the control API at its gateway and at the other front-end's gateway
    for fe in cfg.hosts.frontends:
        for gw in (h.gateway for h in cfg.hosts.frontends):
            st = json.loads(tb.run(fe.name, *STATUS, conf, "--address", f"{gw}:{port}", timeout=30).stdout)
            assert {m["name"]: m["state"] for m in st["members"]} == {f.name: "alive" for f in cfg.hosts.frontends}
    # clients are served, large objects offloaded: front-ends wrote entries over mutual TLS
    objs = {o["path"]: o["sha256"] for o in tb.status()["objects"]}
    writes = tb.switch_stats()["ops"].get("ok", 0)
    body = tb.run_bytes("c1", "curl", "-s", "--max-time", "30", f"http://{cfg.vip.address}/download/1m")
    assert hashlib.sha256(body).hexdigest() == objs["/obj/1m"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and tb.switch_stats()["ops"].get("ok", 0) == writes:
        time.sleep(0.2)
    assert tb.switch_stats()["ops"].get("ok", 0) > writes


ATTEMPTS = textwrap.dedent("""
    import json, sys, grpc
    from miresga.control.certs import TlsDir
    from miresga.control.config import load_config
    from miresga.switch.client import ClientTls, SwitchClient
    cfg, addr, other = load_config(sys.argv[1]), sys.argv[2], TlsDir(sys.argv[3])
    mine = TlsDir(cfg.switch.control.tls_dir)
    token, sw = cfg.switch.control.token, cfg.switch.name
    tries = {
        "no certificate": (SwitchClient(addr, token, 3, ClientTls(mine.ca_pem(), sw)), lambda c: c.heartbeat("fe1")),
        "unknown CA": (SwitchClient(addr, token, 3, ClientTls(mine.ca_pem(), sw, *other.pair("fe1"))),
                       lambda c: c.heartbeat("fe1")),
        "another front-end": (SwitchClient.from_config(cfg, addr, "fe1"), lambda c: c.register("fe2", "10.0.3.2")),
        "wrong token": (SwitchClient(addr, "wrong-" + token, 3, ClientTls.from_dir(mine.path, "fe1", sw)),
                        lambda c: c.write([(0x0A000102, 1, 0, 0)], [])),
    }
    out = {}
    for what, (c, call) in tries.items():
        try:
            call(c)
            out[what] = ["OK", ""]
        except grpc.RpcError as e:
            out[what] = [e.code().name, e.details()]
        c.close()
    print(json.dumps(out))
""")


def test_control_api_refusals_counted(lb, tmp_path):
    tb, cfg = lb, lb.cfg
    fe = cfg.hosts.frontends[0]
    addr = f"{fe.gateway}:{cfg.switch.control.port}"
    other = make_pki(tmp_path / "other-ca", cfg.switch.name, ["fe1"])  # right names, wrong CA
    before = tb.switch_stats()["refused"]
    out = json.loads(tb.run(fe.name, sys.executable, "-c", ATTEMPTS, str(tb.run_dir / "config.yaml"), addr,
                            str(other.path), timeout=60).stdout)
    assert out["no certificate"][0] == "UNAVAILABLE" and out["unknown CA"][0] == "UNAVAILABLE", out
    assert out["another front-end"] == ["PERMISSION_DENIED",
                                        "Register: front-end fe1 may register only as itself, not as 'fe2'"]
    assert out["wrong token"][0] == "UNAUTHENTICATED"
    after = tb.switch_stats()
    delta = {k: after["refused"][k] - before[k] for k in before}
    assert delta == {"tls": 2, "token": 1, "identity": 1}, delta
    # fe2 was not disturbed by fe1's attempt to speak for it
    assert {m["name"]: m["state"] for m in after["members"]}["fe2"] == "alive"
