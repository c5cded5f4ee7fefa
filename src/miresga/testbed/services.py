"""Configuration of the real servers on the testbed: nginx back-ends and the peer load balancers.

Peer tuning (written down as the benchmark promises, and in docs/bench.md): one worker each (the
machine has 2 cores), keep-alive to clients and to upstreams, HTTP/1.1 upstreams with connection
reuse, sendfile on the back-ends, access logs off everywhere. The nginx proxy buffers responses in
memory only (16 x 64 KB per connection, no temporary files): with the defaults it spools every
large response to a temp file on disk, which no one serving large objects would keep. The peers talk to the back-ends' direct port, never the
service port (DESIGN.md §4).
"""

from __future__ import annotations

import resource
from pathlib import Path

from miresga.control.config import Backend, LbHost

_COMMON = """\
worker_processes 1;
daemon on;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {conns}; multi_accept on; }}
"""
PEER_CONNECTIONS = 8000
# Back-ends hold every client connection of the many-connections measurement (10^5 over three);
# the limit costs nothing until used.
BACKEND_CONNECTIONS = 50000

_HTTP = """\
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
"""


def _common(run: Path, conns: int) -> str:
    # nginx may not raise its descriptor limit beyond the hard limit it inherits (no CAP_SYS_RESOURCE
    # in a container): ask for no more, or it logs an alert at every start
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = max(16384, 2 * conns + 1024) if conns > 8000 else 16384
    if hard != resource.RLIM_INFINITY and nofile > hard:
        nofile, conns = hard, min(conns, hard - 1024)
    return _COMMON.format(run=run, conns=conns, nofile=nofile)


def backend_nginx_conf(b: Backend, run: Path, objects_root: Path) -> str:
    listeners = "\n".join(f"        listen {b.ip}:{p} reuseport backlog=4096;" for p in (b.port, b.direct_port))
    return _common(run, BACKEND_CONNECTIONS) + f"""\
http {{
{_HTTP.format(run=run)}
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
{listeners}
        root {objects_root};
        location /obj/ {{ }}
        location /video/ {{ alias {objects_root}/obj/; }}
        location /download/ {{ alias {objects_root}/obj/; }}
        location = /whoami {{ default_type text/plain; return 200 "{b.name}\\n"; }}
        location = /health {{ default_type text/plain; return 200 "ok\\n"; }}
        location /api/ {{ default_type application/json; return 200 '{{"backend":"{b.name}","uri":"$uri"}}\\n'; }}
        location = /echo {{
            default_type text/plain;
            client_max_body_size 64m;
            # reading the body is what makes nginx answer after the whole POST arrived
            proxy_pass http://{b.ip}:{b.direct_port}/echo_sink;
        }}
        location = /echo_sink {{ default_type text/plain; return 200 "{b.name} got $content_length\\n"; }}
    }}
}}
"""


def lb_nginx_conf(lb: LbHost, backends: list[Backend], run: Path) -> str:
    servers = "\n".join(f"        server {b.ip}:{b.direct_port};" for b in backends)
    return _common(run, PEER_CONNECTIONS) + f"""\
http {{
{_HTTP.format(run=run)}
    upstream backends {{
{servers}
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {lb.ip}:{lb.nginx_port} reuseport backlog=4096;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def haproxy_conf(lb: LbHost, backends: list[Backend], run: Path) -> str:
    servers = "\n".join(f"    server {b.name} {b.ip}:{b.direct_port} check inter 2s" for b in backends)
    return f"""\
global
    daemon
    nbthread 1
    maxconn 8000
    pidfile {run}/haproxy.pid
    tune.bufsize 65536

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always

frontend fe
    bind {lb.ip}:{lb.haproxy_port}
    default_backend bes

backend bes
    balance roundrobin
{servers}
"""
