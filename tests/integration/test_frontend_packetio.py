"""The packet I/O adapter in real namespaces: a NAT relay built on it carries real TCP (curl,
wrk against nginx) byte-exact, including the GSO super-frames and partial checksums of veth, and
its packets per second are measured.

    c (10.99.1.2) ── sw (kernel routing) ── fe (PacketIO relay, 10.99.2.2)
                         └── b (nginx, 10.99.3.2:80)
The switch namespace steers VIP traffic and the back-end's port-80 replies to fe (as the eBPF
switch does); the relay rewrites dst VIP->b and src b->VIP, like the engine's slow path.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import select
import subprocess
import threading
import time
from pathlib import Path

import pytest

from miresga.bpf.netns import in_netns, run
from miresga.frontend.packetio import PacketIO
from miresga.frontend.segment import ip_int
from miresga.frontend.server import install_kernel_guard, remove_kernel_guard

pytestmark = pytest.mark.netns

VIP, VPORT = "10.99.100.1", 80
BE = "10.99.3.2"
FE_GW_MAC = "02:53:0a:63:02:01"


@pytest.fixture
def relay_net(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = "mgt" + secrets.token_hex(2)
    ns = {r: f"{p}-{r}" for r in ("c", "sw", "fe", "b")}
    made: list[str] = []
    nginx_pid = tmp_path / "nginx.pid"
    try:
        for n in ns.values():
            run(None, "ip", "netns", "add", n)
            made.append(n)
            run(n, "ip", "link", "set", "lo", "up")
        sw = ns["sw"]
        for i, host in ((1, "c"), (2, "fe"), (3, "b")):
            run(None, "ip", "-n", sw, "link", "add", f"p-{host}", "type", "veth", "peer", "name", "eth0",
                "netns", ns[host])
            if host == "fe":
                run(sw, "ip", "link", "set", f"p-{host}", "address", FE_GW_MAC)
            run(sw, "ip", "addr", "add", f"10.99.{i}.1/24", "dev", f"p-{host}")
            run(sw, "ip", "link", "set", f"p-{host}", "up")
            run(ns[host], "ip", "addr", "add", f"10.99.{i}.2/24", "dev", "eth0")
            run(ns[host], "ip", "link", "set", "eth0", "up")
            run(ns[host], "ip", "route", "add", "default", "via", f"10.99.{i}.1")
        for k in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            run(sw, "sysctl", "-qw", k)
        for host in ("c", "fe", "b"):
            run(sw, "sysctl", "-qw", f"net.ipv4.conf.p-{host}.rp_filter=0")
        run(sw, "ip", "route", "add", f"{VIP}/32", "via", "10.99.2.2")
        run(sw, "ip", "rule", "add", "from", BE, "ipproto", "tcp", "sport", "80", "lookup", "100")
        run(sw, "ip", "route", "add", "default", "via", "10.99.2.2", "table", "100")
        www = tmp_path / "www"
        www.mkdir()
        (www / "1k").write_bytes(os.urandom(1024))
        (www / "1m").write_bytes(os.urandom(1 << 20))
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""user root; worker_processes 1; daemon on; pid {nginx_pid}; error_log {tmp_path}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path {tmp_path}/b; proxy_temp_path {tmp_path}/p; fastcgi_temp_path {tmp_path}/f;
  uwsgi_temp_path {tmp_path}/u; scgi_temp_path {tmp_path}/s;
  server {{ listen {BE}:80; root {www}; }} }}
""")
        run(ns["b"], "nginx", "-c", str(conf))
        yield ns, www
    finally:
        if nginx_pid.exists():
            try:
                os.kill(int(nginx_pid.read_text().strip()), 15)
            except (OSError, ValueError):
                pass
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


class Relay:
    """NAT relay on PacketIO in the fe namespace (a thread; the engine's slow path in miniature)."""

    def __init__(self, ns: str, checksum: str):
        self.ns, self.checksum = ns, checksum
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.io: PacketIO | None = None
        self.t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.t.start()
        assert self.ready.wait(10), self.error
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join(5)
        if self.error:
            raise self.error

    def _run(self):
        vip, be = ip_int(VIP), ip_int(BE)
        try:
            with in_netns(self.ns):
                install_kernel_guard("10.99.2.2")
                try:
                    with PacketIO("eth0", FE_GW_MAC, filter_spec=(VIP, VPORT, [(BE, 80)]),
                                  checksum=self.checksum) as io:
                        self.io = io
                        self.ready.set()
                        while not self.stop.is_set():
                            select.select([io], [], [], 0.05)
                            while True:
                                segs = io.recv_batch(64)
                                for s in segs:
                                    if s.dst == vip and s.dport == VPORT:
                                        s.dst, s.dport = be, 80
                                    elif s.src == be and s.sport == 80:
                                        s.src, s.sport = vip, VPORT
                                    else:
                                        continue
                                    io.send(s)
                                if len(segs) < 64:
                                    break
                finally:
                    remove_kernel_guard()
        except BaseException as e:  # noqa: BLE001
            self.error = e
            self.ready.set()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def curl(ns: str, url: str) -> bytes:
    p = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "20", "-o", "-", url],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("checksum", ["offload", "software"])
def test_relay_carries_real_tcp_byte_exact(relay_net, checksum):
    ns, www = relay_net
    with Relay(ns["fe"], checksum) as r:
        for name in ("1k", "1m"):
            assert sha(curl(ns["c"], f"http://{VIP}/{name}")) == sha((www / name).read_bytes())
        st = r.io.stats
        assert st.rx_gso > 0 and st.tx_gso > 0, "the 1 MB response should arrive as GSO super-frames"
        assert st.tx_errors == 0
    # the front-end namespace's kernel stayed out of it
    out = run(ns["fe"], "nstat", "-az", "TcpOutRsts", "IcmpOutMsgs").stdout
    assert all(int(v) == 0 for v in re.findall(r"^\w+\s+(\d+)", out, re.M)), out


def test_relay_packets_per_second(relay_net, record_property):
    ns, www = relay_net
    with Relay(ns["fe"], "offload") as r:
        t0 = time.monotonic()
        rx0, tx0 = r.io.stats.rx, r.io.stats.tx
        p = run(ns["c"], "wrk", "-t1", "-c16", "-d3s", f"http://{VIP}/1k", timeout=30)
        dt = time.monotonic() - t0
        rx, tx = r.io.stats.rx - rx0, r.io.stats.tx - tx0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", p.stdout).group(1))
    pps = (rx + tx) / 2 / dt
    print(f"\nrelay: {rps:.0f} req/s (1 KB keep-alive, 16 conns), {pps:.0f} packets/s relayed "
          f"(rx {rx}, tx {tx} in {dt:.1f}s)")
    record_property("relay_pps", pps)
    record_property("relay_rps", rps)
    assert "Non-2xx" not in p.stdout and "Socket errors" not in p.stdout, p.stdout
    assert rx == tx and pps > 2000
