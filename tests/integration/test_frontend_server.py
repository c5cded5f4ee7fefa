"""The whole front-end process (packet socket, engine, health checks, metrics) with the real
back-end agent and nginx, in namespaces. The client side of the switch (the SYN cookie
handshake) is played by a raw client built on the same packet I/O: it sends its request with a
valid cookie, as if the switch had answered its SYN, and reads the response from VIP:port. Two
services: VIP:80 and VIP:8080 (ALT_PORT), each with its own rules."""

from __future__ import annotations

import ctypes
import hashlib
import re
import threading
import time

import pytest

from frontend_net import BE, BE2, C_GW_MAC, VIP, relay_net  # noqa: F401 (fixture)
from miresga import cookie
from miresga.agent.manager import AgentManager, AgentSettings
from miresga.bpf.netns import in_netns, run
from miresga.control.config import parse_config
from miresga.frontend.metrics import scrape
from miresga.frontend.packetio import PacketIO
from miresga.frontend.segment import ACK, FIN, PSH, Segment, ip_int, seq_add, seq_diff
from miresga.frontend.server import FrontendServer, ServerOptions

pytestmark = pytest.mark.netns

CFG_TEXT = f"""
vip: {{address: {VIP}, port: 80}}
switch:
  cookie: {{secret: "integration-test-secret-0123456789"}}
  control: {{token: "integration-test-token-0123"}}
hosts:
  clients: [{{name: c1, address: 10.99.1.2/24}}]
  frontends: [{{name: fe1, address: 10.99.2.2/24}}]
  backends:
    - {{name: be1, address: {BE}/24, port: 80, direct_port: 8080}}
    - {{name: be2, address: {BE2}/24, port: 80, direct_port: 8080}}
  lb: {{name: lb, address: 10.99.9.2/24}}
rules:
  - {{name: big, match: {{path_prefix: /1m}}, pool: [be1], offload: auto}}
  - {{name: who, match: {{path_exact: /whoami}}, pool: [be2], offload: never}}
  - {{name: post, match: {{path_exact: /echo, method: POST}}, pool: [be2], offload: never}}
  - {{name: default, pool: [be1], offload: never}}
services:
  - name: alt
    vip: {{address: {VIP}, port: 8080}}
    rules:
      - {{name: alt_who, match: {{path_exact: /whoami}}, pool: [be1], offload: never}}
      - {{name: alt_default, pool: [be2], offload: never}}
frontend: {{health_interval_s: 0.2, metrics_port: 9109}}
"""
ALT_PORT = 8080
CFG = parse_config(CFG_TEXT)


class RawClient:
    """User-space TCP clients that start at the first data segment (seq c+1, ack s+1), as if the
    switch had answered their SYN with the cookie s."""

    def __init__(self, ns: str):
        with in_netns(ns):
            self.io = PacketIO("eth0", C_GW_MAC, filter_spec=([("0.0.0.0", 1)], [(VIP, 80), (VIP, ALT_PORT)]),
                               checksum="software")
            # our kernel has no socket for these connections: it must not reset them
            run(None, "nft", "-f", "-", input=f"""table ip rawclient {{
  chain out {{ type filter hook output priority 0; ip daddr {VIP} tcp flags & rst == rst drop
  }}
}}
""")
        self.ip, self.vip = ip_int("10.99.1.2"), ip_int(VIP)

    def connect(self, port: int, vport: int = 80) -> "RawConn":
        return RawConn(self, port, vport)

    def get(self, path: str, port: int, timeout: float = 15.0) -> tuple[bytes, dict]:
        conn = self.connect(port)
        conn.send(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        resp = conn.read_until_fin(timeout)
        return resp, conn.info

    def close(self, ns: str) -> None:
        self.io.close()
        run(ns, "nft", "delete", "table", "ip", "rawclient", check=False)


class RawConn:
    def __init__(self, client: RawClient, port: int, vport: int = 80):
        ck = CFG.switch.cookie
        now = cookie.tai_seconds()
        key = cookie.keys_at(ck.secret, now, ck.rotate_seconds)[0]
        self.cl, self.port, self.vport = client, port, vport
        self.s = cookie.make_cookie(key, client.ip, port, client.vip, vport,
                                    cookie.bucket_of(now, ck.bucket_seconds), 1460, 7, True)
        self.snd = seq_add(0x10000000 + port + (vport << 16), 1)
        self.rcv = seq_add(self.s, 1)
        self.buf = bytearray()
        self.fin = False
        self.unacked: list[Segment] = []
        self.info = {"segments": 0, "max_seg": 0, "fin": False}

    def _seg(self, flags: int, payload: bytes = b"") -> Segment:
        return Segment(self.cl.ip, self.port, self.cl.vip, self.vport, self.snd, self.rcv, flags, 502, b"", payload)

    def send(self, data: bytes, mss: int = 1400) -> None:
        self.unacked = []
        for i in range(0, len(data), mss):
            seg = self._seg(ACK | PSH, data[i:i + mss])
            self.unacked.append(seg)
            self.cl.io.send(seg)
            self.snd = seq_add(self.snd, len(seg.payload))

    def _pump(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and not done():
            segs = [x for x in self.cl.io.recv_batch(64) if x.dport == self.port and x.sport == self.vport]
            if not segs:
                if time.monotonic() - quiet_since > 1.0:
                    for seg in self.unacked:     # nothing heard: retransmit what we sent last
                        self.cl.io.send(seg)
                    quiet_since = time.monotonic()
                time.sleep(0.0005)
                continue
            quiet_since = time.monotonic()
            for x in segs:
                self.info["segments"] += 1
                self.info["max_seg"] = max(self.info["max_seg"], len(x.payload))
                if x.payload and seq_diff(x.seq, self.rcv) <= 0 < seq_diff(seq_add(x.seq, len(x.payload)), self.rcv):
                    self.buf += x.payload[seq_diff(self.rcv, x.seq):]
                    self.rcv = seq_add(x.seq, len(x.payload))
                if x.payload or x.flags & FIN:
                    self.unacked = []            # the server has our data
                if x.flags & FIN and seq_add(x.seq, len(x.payload)) == self.rcv:
                    self.rcv = seq_add(self.rcv, 1)
                    self.fin = self.info["fin"] = True
            self.cl.io.send(self._seg(ACK))

    def read_response(self, timeout: float = 15.0) -> bytes:
        def complete() -> int:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return 0
            m = re.search(rb"(?i)content-length:\s*(\d+)", self.buf[:head_end])
            n = head_end + 4 + (int(m.group(1)) if m else 0)
            return n if len(self.buf) >= n else 0
        self._pump(lambda: complete() > 0, timeout)
        n = complete()
        assert n, f"incomplete response: {bytes(self.buf[:200])!r}"
        resp, self.buf = bytes(self.buf[:n]), self.buf[n:]
        return resp

    def read_until_fin(self, timeout: float = 15.0) -> bytes:
        self._pump(lambda: self.fin, timeout)
        if self.fin:
            self.cl.io.send(self._seg(ACK | FIN))
            self.snd = seq_add(self.snd, 1)
        resp, self.buf = bytes(self.buf), bytearray()
        return resp


def body_of(resp: bytes) -> bytes:
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return body


@pytest.fixture
def fabric(relay_net):
    """The namespaces with both back-ends' agents attached and the raw client ready."""
    ns, www = relay_net
    settings = AgentSettings(service_ports=(80,), window_scale=CFG.switch.window_scale)
    agent = AgentManager(settings, netns=ns["b"], pin=False).attach()
    try:
        agent2 = AgentManager(settings, netns=ns["b2"], pin=False).attach()
        try:
            client = RawClient(ns["c"])
            try:
                yield ns, www, agent, agent2, client
            finally:
                client.close(ns["c"])
        finally:
            agent2.detach()
    finally:
        agent.detach()


@pytest.fixture(params=["kernel", "python"])
def system(fabric, request):
    """The front-end server in this process (a thread in the fe namespace), without a switch
    controller: offload requests are refused and everything stays on the slow path — relayed by
    the front-end's kernel path, or (kernel_path off) by the Python engine alone."""
    ns, www, agent, agent2, client = fabric
    cfg = CFG.model_copy(update={"frontend": CFG.frontend.model_copy(
        update={"kernel_path": request.param == "kernel"})})
    holder: dict = {}
    ready = threading.Event()

    def serve():
        try:
            with in_netns(ns["fe"]):
                srv = FrontendServer(cfg, ServerOptions(name="fe1", switch_address=""))
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
        raise holder["error"]
    try:
        holder["srv"].agent2 = agent2
        yield ns, www, holder["srv"], agent, client
    finally:
        holder["srv"].stop.set()
        t.join(5)


def metrics(ns_fe: str) -> dict:
    with in_netns(ns_fe):
        return scrape(f"http://{CFG.frontend.metrics_address}:{CFG.frontend.metrics_port}/metrics")


def settle(srv, agent, timeout=8.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and (srv.engine.conns or agent.flows() or srv.agent2.flows()):
        time.sleep(0.1)


def test_spliced_requests_through_frontend_and_agent(system):
    ns, www, srv, agent, client = system
    for port, name in ((41001, "1k"), (41002, "1m")):
        resp, info = client.get(f"/{name}", port)
        assert info["fin"], info
        body = body_of(resp)
        assert hashlib.sha256(body).digest() == hashlib.sha256((www / name).read_bytes()).digest(), name
    st = srv.engine.stats
    # Requests the kernel routed reach the engine's books through the ring buffer, read when its
    # loop next polls (a few ms; the first time, once the loop has started): the client can be
    # done before that.
    end = time.monotonic() + 5
    while sum(st.requests_rule.values()) < 2 and time.monotonic() < end:
        time.sleep(0.05)
    assert st.requests_rule["default"] == 1 and st.requests_rule["big"] == 1
    # The refusal comes back through the worker thread; with the kernel path the 1 MB download
    # can end (its close drops the request) before it does, and it is then a stale answer.
    end = time.monotonic() + 5
    while not (st.offload["refused_table_full"] + st.offload["stale_result"]) and time.monotonic() < end:
        time.sleep(0.05)
    assert st.offload["requested"] == 1   # no switch: slow path
    assert st.offload["refused_table_full"] + st.offload["stale_result"] == 1 and not st.offload["installed"]
    c = agent.counters()
    assert c["splice_syn"] == 2 and c["synack"] == 2
    # both connections end cleanly: no engine state, no agent flow
    settle(srv, agent)
    assert not srv.engine.conns and not agent.flows()
    # the front-end's metrics tell the same story
    srv.metrics.publish()
    m = metrics(ns["fe"])
    assert m["requests"]["big"] == 1 and m["backend_requests"]["be1"] == 2
    assert m["backend_healthy"]["be1"] == 1
    if srv.kpath is None:      # Python relayed every segment, GSO frames included
        assert m["packets"]["rx"] > 10 and m["packets"]["rx_gso"] > 0
    else:                      # the kernel took both requests and relayed the rest: no frame in Python
        k = m["kernel_path"]
        assert m["packets"]["rx"] == 0 and m["packets"]["tx"] == 0 and k["req_first"] == 2
        assert k["to_client"] > 10 and k["to_client_bytes"] >= (1 << 20) and k["connections"] == 0
    bad = {k: v for k, v in srv.engine.stats.drops.items() if k not in ("stale_backend",)}
    assert not bad, bad


def health_seen(srv, backend: int) -> tuple[bool, ...]:
    """A back-end's health as each layer sees it: the tracker, the engine, and (on) the kernel
    path's map. The loop updates them one after the other: a test that waits for the tracker
    alone may send while the kernel still routes by the old state."""
    seen = (srv.health.healthy[backend], srv.engine.healthy[backend])
    if srv.kpath is not None:
        from miresga.bpf.layouts import FeConfig
        raw = srv.kpath.config_map.lookup(ctypes.c_uint32(0))
        seen += (bool(FeConfig.from_buffer_copy(raw).healthy >> backend & 1),)
    return seen


def wait_health(srv, backend: int, healthy: bool, timeout: float = 5) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and set(health_seen(srv, backend)) != {healthy}:
        time.sleep(0.05)
    assert set(health_seen(srv, backend)) == {healthy}, health_seen(srv, backend)


def test_health_check_takes_backend_out_and_503(system):
    ns, www, srv, agent, client = system
    (www / "health").unlink()                 # nginx now answers 404 on the direct port
    wait_health(srv, 0, False)
    resp, info = client.get("/1k", 41003)
    assert resp.startswith(b"HTTP/1.1 503 ") and info["fin"]
    (www / "health").write_text("ok\n")
    wait_health(srv, 0, True)
    resp, _ = client.get("/1k", 41004)
    assert body_of(resp) == (www / "1k").read_bytes()


def test_keepalive_reroutes_between_backends(system):
    """Successive requests on one connection go where their rules say (DESIGN step 8): the old
    back-end connection is reset, a new one continues the client's view of the stream."""
    ns, www, srv, agent, client = system
    conn = client.connect(41010)
    conn.send(b"GET /1k HTTP/1.1\r\nHost: t\r\n\r\n")
    assert body_of(conn.read_response()) == (www / "1k").read_bytes()
    conn.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
    assert body_of(conn.read_response()) == f"{BE2}\n".encode()
    conn.send(b"GET /1m HTTP/1.1\r\nHost: t\r\n\r\n")
    assert body_of(conn.read_response()) == (www / "1m").read_bytes()
    conn.send(b"GET /1k HTTP/1.1\r\nHost: t\r\n\r\n")             # same back-end: no new SYN
    assert body_of(conn.read_response()) == (www / "1k").read_bytes()
    conn.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert body_of(conn.read_until_fin()) == f"{BE2}\n".encode()
    st = srv.engine.stats
    assert st.events["reroute"] == 3
    assert agent.counters()["splice_syn"] + agent.counters()["resplice"] == 2
    assert srv.agent2.counters()["splice_syn"] + srv.agent2.counters()["resplice"] == 2
    settle(srv, agent)
    assert not srv.engine.conns and not agent.flows() and not srv.agent2.flows()


def test_one_client_port_on_two_services(system):
    """One client ip:port with a connection to VIP:80 and one to VIP:8080 at once (as Linux
    clients reuse source ports): each routed by its own service's rules (/whoami: be2 on 80, be1
    on 8080) and answered from its own VIP:port; the second one, its port shared, by the engine."""
    ns, www, srv, agent, client = system
    a = client.connect(41030)
    a.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
    assert body_of(a.read_response()) == f"{BE2}\n".encode()
    b = client.connect(41030, ALT_PORT)
    b.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
    assert body_of(b.read_response()) == f"{BE}\n".encode()
    for conn, who in ((a, BE2), (b, BE)):        # keep-alive: each on its back-end
        conn.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert body_of(conn.read_until_fin()) == f"{who}\n".encode()
    st = srv.engine.stats
    end = time.monotonic() + 5
    while sum(st.requests_rule.values()) < 4 and time.monotonic() < end:
        time.sleep(0.05)
    assert st.requests_rule["who"] == 2 and st.requests_rule["alt/alt_who"] == 2
    if srv.kpath is not None:
        k = srv.kpath.stats()
        assert k["req_first"] == 1 and k["port_shared"] == 1 and k["req_next"] == 2
    settle(srv, agent)
    assert not srv.engine.conns and not agent.flows() and not srv.agent2.flows()


def test_post_body_over_several_segments(system):
    ns, www, srv, agent, client = system
    body = bytes(range(256)) * 20
    conn = client.connect(41020)
    conn.send(f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
              f"Connection: close\r\n\r\n".encode() + body, mss=1000)
    assert body_of(conn.read_until_fin()) == f"{BE2} got {len(body)}\n".encode()
    assert srv.engine.stats.requests_rule["post"] == 1


CONTROL_SCRIPT = """
import signal, sys
from miresga.control.config import load_config
from miresga.switch.server import ControlPlane, ControlServer, MemoryTables
srv = ControlServer(ControlPlane(load_config(sys.argv[1]), MemoryTables()), sys.argv[2]).start()
print("ready", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
srv.stop()
"""

STATS_SCRIPT = """
import json, sys
from miresga.switch.client import SwitchClient
print(json.dumps(SwitchClient(sys.argv[1], sys.argv[2]).stats()))
"""


def test_frontend_command_with_switch_controller(fabric, tmp_path):
    """`miresga frontend` as its own process in the fe namespace, talking gRPC to the switch
    controller's real service: the large response gets an offload entry, which is deleted when
    the connection ends; `--status` reads the metrics."""
    import json
    import subprocess
    import sys
    ns, www, agent, agent2, client = fabric
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(CFG_TEXT)
    addr = "127.0.0.1:50777"
    token = CFG.switch.control.token
    in_fe = ["ip", "netns", "exec", ns["fe"], sys.executable]
    ctl = subprocess.Popen([*in_fe, "-c", CONTROL_SCRIPT, str(cfg_file), addr], stdout=subprocess.PIPE, text=True)
    fe = None
    try:
        assert ctl.stdout.readline().strip() == "ready"
        fe_log = open(tmp_path / "fe.log", "w")
        fe = subprocess.Popen([*in_fe, "-m", "miresga.control.cli", "frontend", "--config", str(cfg_file),
                               "--name", "fe1", "--switch", addr], stdout=fe_log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 10
        m = None
        while time.monotonic() < end:
            try:
                m = metrics(ns["fe"])
                if "registered" in (tmp_path / "fe.log").read_text():
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert m is not None, (tmp_path / "fe.log").read_text()
        assert "registered" in (tmp_path / "fe.log").read_text()
        conn = client.connect(41030)
        conn.send(b"GET /1m HTTP/1.1\r\nHost: t\r\n\r\n")
        assert body_of(conn.read_response()) == (www / "1m").read_bytes()
        end = time.monotonic() + 5
        while time.monotonic() < end and not metrics(ns["fe"]).get("offloaded_connections", {}).get(""):
            time.sleep(0.1)    # metrics are published once a second
        assert metrics(ns["fe"])["offloaded_connections"][""] == 1
        conn.send(b"GET /1k HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert body_of(conn.read_until_fin()) == (www / "1k").read_bytes()

        def switch_stats():
            out = subprocess.run([*in_fe, "-c", STATS_SCRIPT, addr, token], capture_output=True, text=True)
            return json.loads(out.stdout)
        end = time.monotonic() + 8
        while time.monotonic() < end:
            m = metrics(ns["fe"])
            if not any(m["connections"].values()) and m.get("offload", {}).get("deleted"):
                break
            time.sleep(0.2)
        assert m["offload"].get("requested") == 1 and m["offload"].get("installed") == 1, (m, (tmp_path / "fe.log").read_text())
        assert m["offload"]["deleted"] == 1 and not any(m["connections"].values())
        st = switch_stats()
        assert st["installed"] == 0 and [x["name"] for x in st["members"] if x["state"] == "alive"] == ["fe1"], st
        out = subprocess.run([sys.executable, "-m", "miresga.control.cli", "frontend", "--status", "--config",
                              str(cfg_file), "--name", "fe1", "--netns", ns["fe"]], capture_output=True, text=True)
        assert out.returncode == 0 and "big=1" in out.stdout, out.stdout + out.stderr
        assert not agent.flows()
    finally:
        for p in (fe, ctl):
            if p is not None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
    # the front-end removed its kernel guard on the way out
    assert "miresga_fe" not in run(ns["fe"], "nft", "list", "tables").stdout


def test_failed_start_leaves_nothing_behind():
    """A front-end that cannot open its interface removes the kernel guard it installed."""
    import secrets
    import subprocess
    from miresga.control.config import load_config
    ns = "mgt" + secrets.token_hex(2)
    run(None, "ip", "netns", "add", ns)
    try:
        with in_netns(ns):
            with pytest.raises(OSError):
                FrontendServer(load_config(), ServerOptions(name="fe1", iface="nope0"))
        assert run(ns, "nft", "list", "tables").stdout.strip() == ""
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
