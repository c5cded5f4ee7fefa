"""The whole front-end process (packet socket, engine, health checks, metrics) with the real
back-end agent and nginx, in namespaces. The client side of the switch (the SYN cookie
handshake) is played by a raw client built on the same packet I/O: it sends its request with a
valid cookie, as if the switch had answered its SYN, and reads the response from VIP:port."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from frontend_net import BE, C_GW_MAC, FE_GW_MAC, VIP, relay_net  # noqa: F401 (fixture)
from miresga import cookie
from miresga.agent.manager import AgentManager, AgentSettings
from miresga.bpf.netns import in_netns, run
from miresga.control.config import parse_config
from miresga.frontend.metrics import scrape
from miresga.frontend.packetio import PacketIO
from miresga.frontend.segment import ACK, FIN, PSH, Segment, ip_int, seq_add, seq_diff
from miresga.frontend.server import FrontendServer, ServerOptions

pytestmark = pytest.mark.netns

CFG = parse_config(f"""
vip: {{address: {VIP}, port: 80}}
switch:
  cookie: {{secret: "integration-test-secret-0123456789"}}
  control: {{token: "integration-test-token-0123"}}
hosts:
  clients: [{{name: c1, address: 10.99.1.2/24}}]
  frontends: [{{name: fe1, address: 10.99.2.2/24}}]
  backends: [{{name: be1, address: {BE}/24, port: 80, direct_port: 8080}}]
  lb: {{name: lb, address: 10.99.9.2/24}}
rules:
  - {{name: big, match: {{path_prefix: /1m}}, pool: [be1], offload: auto}}
  - {{name: default, pool: [be1], offload: never}}
frontend: {{health_interval_s: 0.2, metrics_port: 9109}}
""")


class RawClient:
    """A TCP client in user space that starts at the first data segment (seq c+1, ack s+1)."""

    def __init__(self, ns: str):
        with in_netns(ns):
            self.io = PacketIO("eth0", C_GW_MAC, filter_spec=("0.0.0.0", 1, [(VIP, 80)]), checksum="software")
            # our kernel has no socket for these connections: it must not reset them
            run(None, "nft", "-f", "-", input=f"""table ip rawclient {{
  chain out {{ type filter hook output priority 0; ip daddr {VIP} tcp flags & rst == rst drop
  }}
}}
""")
        self.ip, self.vip = ip_int("10.99.1.2"), ip_int(VIP)

    def get(self, path: str, port: int, timeout: float = 15.0) -> tuple[bytes, dict]:
        ck = CFG.switch.cookie
        now = cookie.tai_seconds()
        key = cookie.keys_at(ck.secret, now, ck.rotate_seconds)[0]
        s = cookie.make_cookie(key, self.ip, port, self.vip, 80, cookie.bucket_of(now, ck.bucket_seconds),
                               1460, 7, True)
        c = 0x10000000 + port
        req = f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
        me = seq_add(c, 1 + len(req))
        first = Segment(self.ip, port, self.vip, 80, seq_add(c, 1), seq_add(s, 1), ACK | PSH, 502, b"", req)
        self.io.send(first)
        got, expected, fin = bytearray(), seq_add(s, 1), False
        info = {"segments": 0, "max_seg": 0}
        deadline = last = time.monotonic() + 0
        deadline += timeout
        while time.monotonic() < deadline and not fin:
            segs = [x for x in self.io.recv_batch(64) if x.dport == port]
            if not segs:
                if time.monotonic() - last > 1.0 and not got:
                    self.io.send(first)         # our request or its splice got lost: retransmit
                    last = time.monotonic()
                time.sleep(0.0005)
                continue
            for x in segs:
                info["segments"] += 1
                info["max_seg"] = max(info["max_seg"], len(x.payload))
                if x.seq == expected and x.payload:
                    got += x.payload
                    expected = seq_add(expected, len(x.payload))
                elif x.payload and seq_diff(x.seq, expected) < 0 < seq_diff(x.end, expected):
                    cut = seq_diff(expected, x.seq)
                    got += x.payload[cut:]
                    expected = x.end if not x.flags & FIN else seq_add(x.end, -1)
                if x.flags & FIN and seq_add(x.seq, len(x.payload)) == expected:
                    expected = seq_add(expected, 1)
                    fin = True
            self.io.send(Segment(self.ip, port, self.vip, 80, me, expected, ACK, 502))
        if fin:
            self.io.send(Segment(self.ip, port, self.vip, 80, me, expected, ACK | FIN, 502))
        info["fin"] = fin
        return bytes(got), info

    def close(self, ns: str) -> None:
        self.io.close()
        run(ns, "nft", "delete", "table", "ip", "rawclient", check=False)


def body_of(resp: bytes) -> bytes:
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return body


@pytest.fixture
def system(relay_net):
    ns, www = relay_net
    agent = AgentManager(AgentSettings(service_ports=(80,), window_scale=CFG.switch.window_scale),
                         netns=ns["b"], pin=False).attach()
    holder: dict = {}
    ready = threading.Event()

    def serve():
        try:
            with in_netns(ns["fe"]):
                srv = FrontendServer(CFG, ServerOptions(name="fe1", switch_address=""))
                holder["srv"] = srv
                ready.set()
                srv.run()
        except BaseException as e:  # noqa: BLE001
            holder["error"] = e
            ready.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    if "error" in holder:
        agent.detach()
        raise holder["error"]
    client = RawClient(ns["c"])
    try:
        yield ns, www, holder["srv"], agent, client
    finally:
        client.close(ns["c"])
        holder["srv"].stop.set()
        t.join(5)
        agent.detach()


def metrics(ns_fe: str) -> dict:
    with in_netns(ns_fe):
        return scrape(f"http://10.99.2.2:{CFG.frontend.metrics_port}/metrics")


def settle(srv, agent, timeout=8.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and (srv.engine.conns or agent.flows()):
        time.sleep(0.1)


def test_spliced_requests_through_frontend_and_agent(system):
    ns, www, srv, agent, client = system
    for port, name in ((41001, "1k"), (41002, "1m")):
        resp, info = client.get(f"/{name}", port)
        assert info["fin"], info
        body = body_of(resp)
        assert hashlib.sha256(body).digest() == hashlib.sha256((www / name).read_bytes()).digest(), name
    st = srv.engine.stats
    assert st.requests_rule["default"] == 1 and st.requests_rule["big"] == 1
    assert st.offload["requested"] == 1 and st.offload["refused_table_full"] == 1   # no switch: slow path
    c = agent.counters()
    assert c["splice_syn"] == 2 and c["synack"] == 2
    # both connections end cleanly: no engine state, no agent flow
    settle(srv, agent)
    assert not srv.engine.conns and not agent.flows()
    # the front-end's metrics tell the same story
    srv.metrics.publish()
    m = metrics(ns["fe"])
    assert m["requests"]["big"] == 1 and m["backend_requests"]["be1"] == 2
    assert m["backend_healthy"]["be1"] == 1 and m["packets"]["rx"] > 10 and m["packets"]["rx_gso"] > 0
    bad = {k: v for k, v in srv.engine.stats.drops.items() if k not in ("stale_backend",)}
    assert not bad, bad


def test_health_check_takes_backend_out_and_503(system):
    ns, www, srv, agent, client = system
    (www / "health").unlink()                 # nginx now answers 404 on the direct port
    end = time.monotonic() + 5
    while time.monotonic() < end and srv.health.healthy[0]:
        time.sleep(0.05)
    assert not srv.health.healthy[0]
    resp, info = client.get("/1k", 41003)
    assert resp.startswith(b"HTTP/1.1 503 ") and info["fin"]
    (www / "health").write_text("ok\n")
    end = time.monotonic() + 5
    while time.monotonic() < end and not srv.health.healthy[0]:
        time.sleep(0.05)
    resp, _ = client.get("/1k", 41004)
    assert body_of(resp) == (www / "1k").read_bytes()
