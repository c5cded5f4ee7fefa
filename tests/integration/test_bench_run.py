"""`miresga bench` end to end on its own testbed: a tiny run (1 s per point, a few workloads) writes
the three files with every system and workload, sane numbers, no errors, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from miresga.bench.report import validate_records
from miresga.bench.workloads import mix_workload

pytestmark = pytest.mark.netns

SYSTEMS = ["direct", "nginx", "haproxy", "miresga"]  # Miresga comes up with the bench by default
WORKLOADS = ["1k-keepalive", "1k-newconn", "1m-keepalive", "1m-newconn", "T2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    miresga = Path(sys.executable).with_name("miresga")
    p = subprocess.run([str(miresga), "bench", "--duration", "1", "--sizes", "1k,1m", "--mixes", "T2",
                        "--connections", "16", "--out", str(out)], capture_output=True, text=True, timeout=180)
    return p, out


def test_bench_writes_every_point(tiny_run):
    p, out = tiny_run
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    # progress: one line per point, and a ratio line per workload
    n = len(SYSTEMS) * len(WORKLOADS)
    assert len(re.findall(rf"^\[bench\]\s+\d+/{n} ", p.stdout, re.M)) == n
    assert len(re.findall(r"vs best peer", p.stdout)) == len(WORKLOADS)
    records = json.loads((out / "report.json").read_text())
    validate_records(records)
    assert sorted((r["system"], r["workload"]) for r in records) == sorted(
        (s, w) for s in SYSTEMS for w in WORKLOADS)
    for r in records:
        where = f"{r['system']}/{r['workload']}"
        assert r["requests"] > 0 and r["requests_per_s"] > 0, where
        assert r["errors"] == 0 and r["failure"] is None, (where, r["errors_by_kind"])
        assert 0 < r["latency_p50_ms"] <= r["latency_p90_ms"] <= r["latency_p99_ms"], where
        assert r["best_peer"] in ("nginx", "haproxy") and r["ratio_to_direct"] is not None, where
        if r["system"] == "miresga":
            assert "fast_path_byte_share" in r["extra"], where
        if r["size_bytes"]:
            # bytes per response: the object, a few hundred bytes of headers, and (wrk counts every byte
            # read) at most one partial response per connection still in flight at the deadline
            per = r["bytes"] / r["requests"]
            in_flight = r["size_bytes"] * r["connections"] / r["requests"]
            assert r["size_bytes"] < per < r["size_bytes"] + 1000 + in_flight, (where, per)
        else:
            # the mix really is the mix: mean bytes per response near its expected mean
            # (loose: the requests still in flight at the deadline are cut off)
            mean = mix_workload(r["workload"]).mean_object_bytes()
            assert 0.5 * mean < r["bytes"] / r["requests"] < 1.5 * mean, (where, r["bytes"] / r["requests"])
    by = {(r["system"], r["workload"]): r for r in records}
    for w in WORKLOADS:
        best = max(("nginx", "haproxy"), key=lambda s: by[s, w]["requests_per_s"])
        assert by[best, w]["ratio_to_best_peer"] == 1.0 and by["direct", w]["ratio_to_direct"] == 1.0


def test_bench_report_and_plot(tiny_run):
    _, out = tiny_run
    md = (out / "report.md").read_text()
    for s in SYSTEMS:
        for w in WORKLOADS:
            assert f"| {w} | {s} | " in md
    png = (out / "throughput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000


def test_bench_tears_down_its_testbed(tiny_run):
    p, _ = tiny_run
    m = re.search(r"testbed (\w+) up", p.stdout)
    assert m, p.stdout[:500]
    inst = m.group(1)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"mg{inst}-" not in namespaces
    assert not Path(f"/run/miresga/{inst}").exists()


def test_bench_killed_mid_run_tears_down(tmp_path):
    """A plain `kill` (SIGTERM) of a running bench still removes the testbed it brought up."""
    miresga = Path(sys.executable).with_name("miresga")
    p = subprocess.Popen([str(miresga), "bench", "--duration", "30", "--sizes", "1k", "--modes", "keepalive",
                          "--mixes", "none", "--out", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        m = re.search(r"testbed (\w+) up", line)
        assert m, line
        time.sleep(1)  # wrk is running now
        os.kill(p.pid, signal.SIGTERM)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"mg{m.group(1)}-" not in namespaces
    assert not Path(f"/run/miresga/{m.group(1)}").exists()
    assert subprocess.run(["pgrep", "-f", f"mg{m.group(1)}-c1 wrk"]).returncode == 1  # no wrk left behind


def test_run_bench_api_on_a_running_testbed(testbed, tmp_path):
    """The Python API the demo and the end-to-end work call: on a given testbed, which stays up."""
    from miresga.bench import System, run_bench
    lines: list[str] = []
    direct = testbed.status()["peers"]["direct"]
    records = run_bench(None, ["nginx", System("be1-direct", direct["address"], direct["port"])],
                        ["64k-keepalive"], 1, 8, tmp_path, testbed=testbed, progress=lines.append, plot=False)
    assert [(r["system"], r["workload"]) for r in records] == [("nginx", "64k-keepalive"),
                                                               ("be1-direct", "64k-keepalive")]
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["connections"] == 8 for r in records)
    assert records[0]["ratio_to_best_peer"] == 1.0 and records[1]["best_peer"] == "nginx"
    assert len([ln for ln in lines if "/2 " in ln]) == 2
    assert (tmp_path / "report.json").exists() and not (tmp_path / "throughput.png").exists()
    # the testbed we were given is still serving
    assert testbed.run("c1", "curl", "-sf", "-o", "/dev/null", f"http://{direct['address']}:{direct['port']}/health")
