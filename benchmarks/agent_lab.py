"""A two-namespace lab for the agent alone: a "client" namespace and a "backend" namespace joined
by one veth pair, nginx in the back-end serving generated objects on a service and a direct port.

No switch and no front-end: a raw-packet peer in the client namespace (tests/support/agent_peer.py) plays
both. The client namespace's own kernel would reset connections it never opened, so an nftables
rule there drops back-end segments addressed to the peer's port range in the input hook; AF_PACKET
sees them before netfilter does. Everything built is recorded and removed on exit, also after a
failure half way.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from miresga.bpf.netns import run

PEER_PORTS = (61000, 65000)  # the raw peer's client ports; the kernel's own stay below
CLIENT_IP, BACKEND_IP = "10.77.0.1", "10.77.0.2"
CLIENT_MAC, BACKEND_MAC = "02:4d:0a:4d:00:01", "02:4d:0a:4d:00:02"


def _nginx_conf(run_dir: Path, root: Path, service_port: int, direct_port: int) -> str:
    return f"""\
worker_processes 1;
daemon off;
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {run_dir}/body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;
    server {{
        listen {BACKEND_IP}:{service_port} backlog=1024;
        listen {BACKEND_IP}:{direct_port} backlog=1024;
        root {root};
    }}
}}
"""


class AgentLab:
    """`with AgentLab() as lab:` -> lab.client_ns, lab.backend_ns, lab.objects {name: sha256}."""

    def __init__(self, service_port: int = 80, direct_port: int = 8080, backend_rmem_max: int | None = None,
                 sizes: dict[str, int] | None = None):
        tag = secrets.token_hex(3)
        self.client_ns, self.backend_ns = f"mgt{tag}-c", f"mgt{tag}-b"
        self.service_port, self.direct_port = service_port, direct_port
        self.backend_rmem_max = backend_rmem_max
        self.sizes = sizes or {"1m": 1 << 20}
        self.objects: dict[str, str] = {}
        self.tmp: Path | None = None
        self.nginx: subprocess.Popen | None = None
        self._made: list[str] = []

    def __enter__(self) -> "AgentLab":
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _up(self) -> None:
        c, b = self.client_ns, self.backend_ns
        for ns in (c, b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self._made.append(ns)
        run(c, "ip", "link", "add", "eth0", "address", CLIENT_MAC, "type", "veth",
            "peer", "name", "eth0", "address", BACKEND_MAC, "netns", b)
        for ns, addr in ((c, CLIENT_IP), (b, BACKEND_IP)):
            run(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
            run(ns, "ip", "link", "set", "lo", "up")
            run(ns, "ip", "link", "set", "eth0", "up")
        run(c, "sysctl", "-qw", f"net.ipv4.ip_local_port_range=32768 {PEER_PORTS[0] - 1}")
        if self.backend_rmem_max:
            run(b, "sysctl", "-qw", f"net.ipv4.tcp_rmem=4096 131072 {self.backend_rmem_max}")
        run(c, "nft", "-f", "-", input=f"""
table inet mgt_agent_peer {{
    chain input {{
        type filter hook input priority 0; policy accept;
        ip saddr {BACKEND_IP} tcp dport {PEER_PORTS[0]}-{PEER_PORTS[1]} drop
    }}
}}
""")
        self.tmp = Path(tempfile.mkdtemp(prefix="mgt-agent-"))
        self.tmp.chmod(0o755)  # nginx's worker runs as an unprivileged user and reads the objects
        root = self.tmp / "www"
        root.mkdir()
        for name, size in self.sizes.items():
            data = os.urandom(size)
            (root / name).write_bytes(data)
            self.objects[name] = hashlib.sha256(data).hexdigest()
        (self.tmp / "run").mkdir()
        conf = self.tmp / "nginx.conf"
        conf.write_text(_nginx_conf(self.tmp / "run", root, self.service_port, self.direct_port))
        self.nginx = subprocess.Popen(["ip", "netns", "exec", b, "nginx", "-c", str(conf), "-p", str(self.tmp)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.nginx.stderr.read().decode(errors='replace')}")
            p = run(self.client_ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1",
                    f"http://{BACKEND_IP}:{self.direct_port}/{next(iter(self.sizes))}", check=False)
            if p.stdout.strip() == "200":
                return
            time.sleep(0.1)
        raise TimeoutError("nginx did not start listening")

    def close(self) -> None:
        if self.nginx and self.nginx.poll() is None:
            os.killpg(self.nginx.pid, signal.SIGTERM)  # our own process group only
            try:
                self.nginx.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.nginx.pid, signal.SIGKILL)
                self.nginx.wait(5)
        self.nginx = None
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def loss(self, percent: int) -> None:
        """Drop `percent`% of the service-port segments on the client-side veth, both ways.

        This kernel has no netem, so nftables' netdev hooks on the client's eth0 do it: egress
        (client -> back-end, before the agent sees them) and ingress (back-end -> client, after the
        agent). The peer's packet socket is bound to ETH_P_IP, so it is served after the ingress
        hook and never sees a dropped segment; its own frames pass the egress hook."""
        run(self.client_ns, "nft", "-f", "-", input=f"""
table netdev mgt_agent_loss {{
    chain in {{
        type filter hook ingress device eth0 priority 0; policy accept;
        ip saddr {BACKEND_IP} tcp sport {self.service_port} numgen random mod 100 < {percent} counter drop
    }}
    chain out {{
        type filter hook egress device eth0 priority 0; policy accept;
        ip daddr {BACKEND_IP} tcp dport {self.service_port} numgen random mod 100 < {percent} counter drop
    }}
}}
""")

    def loss_counts(self) -> dict[str, int]:
        """Packets dropped by loss() so far: {"in": n, "out": n}."""
        out = json.loads(run(self.client_ns, "nft", "-j", "list", "table", "netdev", "mgt_agent_loss").stdout)
        counts = {}
        for item in out["nftables"]:
            rule = item.get("rule")
            if rule:
                for e in rule["expr"]:
                    if "counter" in e:
                        counts[rule["chain"]] = e["counter"]["packets"]
        return counts

    def offloads(self, ns: str, on: bool) -> None:
        """Segmentation and transmit checksum offload of ns's eth0. Off: the kernel segments and
        completes checksums in software after TC egress, so frames on the wire carry full checksums
        computed over the agent's rewrite (which is what a peer can verify)."""
        state = "on" if on else "off"
        run(ns, "ethtool", "-K", "eth0", "tx", state, "tso", state, "gso", state)
