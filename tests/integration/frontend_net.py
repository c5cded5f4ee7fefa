"""A small namespace fabric for the front-end's integration tests (until/besides the testbed).

    c (10.99.1.2) ── sw (kernel routing, ip_forward) ── fe (10.99.2.2)
                         └── b (nginx on 10.99.3.2:80 and :8080)
The switch namespace steers what the eBPF switch would steer to the front-end: traffic to the
VIP, and the back-end's replies from its service port (policy routing). Switch ports have the
testbed's MACs (02:53:<gateway ip>). Everything is removed in the fixture's teardown.
"""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from miresga.bpf.netns import run

VIP, VPORT = "10.99.100.1", 80
BE = "10.99.3.2"
FE_GW_MAC = "02:53:0a:63:02:01"
C_GW_MAC = "02:53:0a:63:01:01"


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
            run(sw, "ip", "link", "set", f"p-{host}", "address", f"02:53:0a:63:0{i}:01")
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
        (www / "health").write_text("ok\n")
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""user root; worker_processes 1; daemon on; pid {nginx_pid}; error_log {tmp_path}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path {tmp_path}/b; proxy_temp_path {tmp_path}/p; fastcgi_temp_path {tmp_path}/f;
  uwsgi_temp_path {tmp_path}/u; scgi_temp_path {tmp_path}/s;
  server {{ listen {BE}:80; listen {BE}:8080; root {www}; }} }}
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


