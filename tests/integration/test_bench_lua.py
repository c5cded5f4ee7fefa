"""The generated wrk Lua scripts, run by the real wrk against a tiny recording HTTP server in a
throw-away namespace: a mix requests exactly the schedule, in order, on keep-alive and on new
connections, and done() reports what the server saw."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections import Counter

import pytest

from miresga.bench.runner import mix_paths
from miresga.bench.workloads import mix_workload
from miresga.bench.wrk import done_script, mix_script, parse_wrk_output, wrk_argv

pytestmark = pytest.mark.netns

# Answers every GET with a small body and appends "<path> <Connection header>" to a log file.
SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

log = open(sys.argv[2], "a", buffering=1)

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        conn = self.headers.get("Connection", "")
        log.write(f"{self.path} {conn or '-'}\n")
        body = b"x" * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if conn.lower() == "close":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

PATHS = {1024: "/obj/1k", 10240: "/obj/10k", 1 << 20: "/obj/1m", 10 << 20: "/obj/10m"}


@pytest.fixture
def recorder(tmp_path):
    ns = f"mgt{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        (tmp_path / "server.py").write_text(SERVER)
        log = tmp_path / "requests.log"
        log.touch()
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(tmp_path / "server.py"), "8000",
                                 str(log)])
        deadline = time.monotonic() + 5
        while subprocess.run(["ip", "netns", "exec", ns, "curl", "-sf", "-o", "/dev/null",
                              "http://127.0.0.1:8000/ready"]).returncode != 0:
            assert time.monotonic() < deadline, "recording server did not start"
            time.sleep(0.05)
        log.write_text("")
        yield ns, log, tmp_path
    finally:
        if proc:
            proc.terminate()
            proc.wait(5)
        subprocess.run(["ip", "netns", "del", ns])


def _wrk(ns, script_text, tmp, keepalive):
    script = tmp / "s.lua"
    script.write_text(script_text)
    argv = wrk_argv("http://127.0.0.1:8000/", duration_s=1, connections=1, threads=1, script=str(script),
                    keepalive=keepalive, timeout_s=5)
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return parse_wrk_output(p.stdout)


@pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive", "newconn"])
def test_mix_script_requests_the_schedule_in_order(recorder, keepalive):
    ns, log, tmp = recorder
    cycle = mix_paths(mix_workload("T2"), PATHS)
    res = _wrk(ns, mix_script(cycle), tmp, keepalive)
    seen = [ln.split() for ln in log.read_text().splitlines()]
    paths = [p for p, _ in seen]
    assert len(paths) >= 2 * len(cycle), f"too few requests for the test to mean anything: {len(paths)}"
    # One connection: the server sees exactly the schedule, cycle after cycle. wrk calls request()
    # once on thread 0 before the run (to detect pipelining), so the stream starts one step in.
    assert paths == [cycle[(i + 1) % len(cycle)] for i in range(len(paths))]
    full = len(paths) // len(cycle) * len(cycle)
    assert Counter(paths[:full]) == {p: n * full // 100 for p, n in
                                     (("/obj/1k", 70), ("/obj/10k", 20), ("/obj/1m", 8), ("/obj/10m", 2))}
    assert {c for _, c in seen} == ({"-"} if keepalive else {"close"})
    # done() counted what the server answered (the last request may be cut off by the deadline)
    assert len(paths) - 1 <= res.requests <= len(paths)
    assert res.errors_total == 0 and res.latency_ms["p50"] > 0


def test_done_script_alone_reports_counts(recorder):
    ns, log, tmp = recorder
    res = _wrk(ns, done_script(), tmp, keepalive=True)
    n = len(log.read_text().splitlines())
    assert n > 100 and n - 1 <= res.requests <= n
    assert res.bytes >= res.requests * 100 and res.duration_s == pytest.approx(1.0, abs=0.3)
    assert os.path.exists(tmp / "s.lua")
