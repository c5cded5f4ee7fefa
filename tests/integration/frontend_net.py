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


BE2 = "10.99.4.2"


def _nginx_conf(tmp, ip: str, www, pid) -> str:
    return f"""user root; worker_processes 1; daemon on; pid {pid}; error_log {tmp}/error-{ip}.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path {tmp}/b-{ip}; proxy_temp_path {tmp}/p-{ip}; fastcgi_temp_path {tmp}/f-{ip};
  uwsgi_temp_path {tmp}/u-{ip}; scgi_temp_path {tmp}/s-{ip};
  server {{ listen {ip}:80; listen {ip}:8080; root {www};
    location = /whoami {{ default_type text/plain; return 200 "{ip}\\n"; }}
    location = /echo {{ client_max_body_size 16m; proxy_pass http://{ip}:8080/echo_sink; }}
    location = /echo_sink {{ default_type text/plain; return 200 "{ip} got $content_length\\n"; }}
  }} }}
"""


@pytest.fixture
def relay_net(tmp_path):
    """Namespaces c, sw, fe, b (nginx at BE) and b2 (nginx at BE2); yields (names, www dir)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = "mgt" + secrets.token_hex(2)
    ns = {r: f"{p}-{r}" for r in ("c", "sw", "fe", "b", "b2")}
    made: list[str] = []
    pids = [tmp_path / "nginx-b.pid", tmp_path / "nginx-b2.pid"]
    try:
        for n in ns.values():
            run(None, "ip", "netns", "add", n)
            made.append(n)
            run(n, "ip", "link", "set", "lo", "up")
        sw = ns["sw"]
        for i, host in ((1, "c"), (2, "fe"), (3, "b"), (4, "b2")):
            run(None, "ip", "-n", sw, "link", "add", f"p-{host}", "type", "veth", "peer", "name", "eth0",
                "netns", ns[host])
            run(sw, "ip", "link", "set", f"p-{host}", "address", f"02:53:0a:63:0{i}:01")
            run(sw, "ip", "addr", "add", f"10.99.{i}.1/24", "dev", f"p-{host}")
            run(sw, "ip", "link", "set", f"p-{host}", "up")
            run(ns[host], "ip", "addr", "add", f"10.99.{i}.2/24", "dev", "eth0")
            run(ns[host], "ip", "link", "set", "eth0", "up")
            run(ns[host], "ip", "route", "add", "default", "via", f"10.99.{i}.1")
            run(sw, "sysctl", "-qw", f"net.ipv4.conf.p-{host}.rp_filter=0")
        for k in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            run(sw, "sysctl", "-qw", k)
        run(sw, "ip", "route", "add", f"{VIP}/32", "via", "10.99.2.2")
        for be in (BE, BE2):
            run(sw, "ip", "rule", "add", "from", be, "ipproto", "tcp", "sport", "80", "lookup", "100")
        run(sw, "ip", "route", "add", "default", "via", "10.99.2.2", "table", "100")
        www = tmp_path / "www"
        www.mkdir()
        (www / "1k").write_bytes(os.urandom(1024))
        (www / "1m").write_bytes(os.urandom(1 << 20))
        (www / "health").write_text("ok\n")
        for host, ip, pid in (("b", BE, pids[0]), ("b2", BE2, pids[1])):
            conf = tmp_path / f"nginx-{host}.conf"
            conf.write_text(_nginx_conf(tmp_path, ip, www, pid))
            run(ns[host], "nginx", "-c", str(conf))
        yield ns, www
    finally:
        for pid in pids:
            if pid.exists():
                try:
                    os.kill(int(pid.read_text().strip()), 15)
                except (OSError, ValueError):
                    pass
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
