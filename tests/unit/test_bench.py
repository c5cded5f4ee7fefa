"""The pure parts of the benchmark: wrk result parsing, mix schedules and scripts, ratios, the
report.json contract, the markdown table and the plot file."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from miresga.bench.report import (RECORD_FIELDS, add_ratios, make_record, pick_median, render_markdown,
                                  validate_records,
                                  write_report)
from miresga.bench.probes import fast_path_probe, fast_path_share, role_bytes
from miresga.bench.runner import mix_paths, object_paths
from miresga.bench.systems import System, SystemSpecError, resolve_systems, systems_from_status
from miresga.bench.workloads import (MIXES, Workload, WorkloadError, build_workloads, mix_workload, parse_size,
                                     size_workload, smooth_schedule, workload_by_name)
from miresga.bench.wrk import MARK, WrkOutputError, WrkResult, mix_script, parse_wrk_output, wrk_argv

KiB, MiB = 1024, 1 << 20

# What wrk 4.1 prints with DONE_LUA loaded (human text first, then our line).
WRK_STDOUT = """Running 3s test @ http://10.0.4.2:8080/obj/1k
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.29ms  600.00us   8.90ms   90.00%
    Req/Sec    26.67k     1.00k   28.00k    70.00%
  80133 requests in 3.10s, 97.67MB read
Requests/sec:  25818.22
Transfer/sec:     31.47MB
MIRESGA_WRK {"duration_us":3103730,"requests":80133,"bytes":102409974,"errors":{"connect":0,"read":2,"write":0,"status":3,"timeout":1},"latency_us":{"p50":1156.0,"p90":1715.0,"p99":5285.0,"mean":1290.6,"max":8900.0}}
"""


# ---------------------------------------------------------------- wrk output

def test_parse_wrk_output_reads_the_json_line():
    r = parse_wrk_output(WRK_STDOUT)
    assert r.requests == 80133 and r.bytes == 102409974
    assert r.duration_s == pytest.approx(3.10373)
    assert r.requests_per_s == pytest.approx(80133 / 3.10373)
    assert r.bytes_per_s == pytest.approx(102409974 / 3.10373)
    assert r.latency_ms == {"p50": 1.156, "p90": 1.715, "p99": 5.285, "mean": pytest.approx(1.2906), "max": 8.9}
    assert r.errors == {"connect": 0, "read": 2, "write": 0, "status": 3, "timeout": 1}
    assert r.errors_total == 6


def test_parse_wrk_output_takes_the_last_line():
    later = WRK_STDOUT.replace('"requests":80133', '"requests":5')
    r = parse_wrk_output(WRK_STDOUT + later.splitlines()[-1] + "\n")
    assert r.requests == 5


@pytest.mark.parametrize("text", [
    "Running 1s test\nRequests/sec: 100\n",                       # done() not loaded: no scraping fallback
    MARK + '{"duration_us": 1, "requests": 2}\n',                   # fields missing
    MARK + '{"duration_us": 1, "requests": \n',                     # truncated JSON
    WRK_STDOUT.replace('"bytes":102409974', '"bytes":-1'),           # impossible counts
])
def test_parse_wrk_output_rejects_bad_output(text):
    with pytest.raises(WrkOutputError):
        parse_wrk_output(text)


def test_zero_duration_gives_zero_rates_not_a_crash():
    r = WrkResult(0.0, 0, 0)
    assert r.requests_per_s == 0 and r.bytes_per_s == 0


def test_wrk_argv_new_connection_sends_connection_close():
    ka = wrk_argv("http://a:1/x", duration_s=5, connections=32, threads=1, script="s.lua", keepalive=True,
                  timeout_s=10)
    nc = wrk_argv("http://a:1/x", duration_s=0.5, connections=8, threads=2, script="s.lua", keepalive=False,
                  timeout_s=10)
    assert ka == ["wrk", "-t1", "-c32", "-d5s", "--timeout", "10s", "-s", "s.lua", "http://a:1/x"]
    assert "Connection: close" not in ka
    assert nc[nc.index("-H") + 1] == "Connection: close" and nc[-1] == "http://a:1/x"
    assert "-d500ms" in nc and "-t2" in nc and "-c8" in nc


# ---------------------------------------------------------------- workloads and mixes

@pytest.mark.parametrize("name", list(MIXES))
def test_schedule_counts_are_the_mix_weights(name):
    weights = [w for _, w in MIXES[name]]
    sched = smooth_schedule(weights)
    counts = Counter(sched)
    scale = len(sched) / sum(weights)
    assert {i: counts[i] for i in range(len(weights))} == {i: w * scale for i, w in enumerate(weights)}


def test_schedule_is_reduced_and_smooth():
    for weights, cycle in (([70, 20, 8, 2], 50), ([50, 30, 15, 5], 20)):
        sched = smooth_schedule(weights)
        assert len(sched) == cycle  # reduced by the gcd
        # every item is spread out: its gaps (cyclically) stay within 2 of the even spacing
        for i, w in enumerate(weights):
            pos = [k for k, x in enumerate(sched) if x == i]
            gaps = [(b - a) % cycle or cycle for a, b in zip(pos, pos[1:] + pos[:1])]
            even = cycle / len(pos)
            assert all(abs(g - even) <= 2 for g in gaps), (weights, i, gaps)
        assert smooth_schedule(weights) == sched  # deterministic


@pytest.mark.parametrize("weights", [[], [0, 0], [3, -1]])
def test_schedule_rejects_bad_weights(weights):
    with pytest.raises(WorkloadError):
        smooth_schedule(weights)


def test_mix_paths_and_script_follow_the_schedule():
    paths = {KiB: "/obj/1k", 10 * KiB: "/obj/10k", MiB: "/obj/1m", 10 * MiB: "/obj/10m"}
    w = mix_workload("t3")
    cycle = mix_paths(w, paths)
    assert len(cycle) == 20
    assert Counter(cycle) == {"/obj/1k": 10, "/obj/10k": 6, "/obj/1m": 3, "/obj/10m": 1}
    script = mix_script(cycle)
    assert "local paths = {" + ", ".join(f'"{p}"' for p in cycle) + "}" in script
    assert "request = function()" in script and "done = function(" in script and MARK in script
    with pytest.raises(ValueError):
        mix_script(['/obj/1k"; os.execute("x'])
    with pytest.raises(ValueError):
        mix_script([])


def test_mean_object_bytes_of_mixes():
    assert mix_workload("T1").mean_object_bytes() == KiB
    assert mix_workload("T2").mean_object_bytes() == pytest.approx(
        0.70 * KiB + 0.20 * 10 * KiB + 0.08 * MiB + 0.02 * 10 * MiB)
    assert size_workload(64 * KiB, True).mean_object_bytes() == 64 * KiB


def test_build_workloads_names_round_trip():
    wls = build_workloads()
    names = [w.name for w in wls]
    assert names == ["1k-keepalive", "1k-newconn", "64k-keepalive", "64k-newconn", "1m-keepalive", "1m-newconn",
                     "8m-keepalive", "8m-newconn", "T1", "T2", "T3"]
    assert [workload_by_name(n) for n in names] == wls
    assert workload_by_name("T2-newconn") == Workload("T2-newconn", False, mix=MIXES["T2"])
    assert build_workloads([MiB], ["newconn"], []) == [Workload("1m-newconn", False, size_bytes=MiB)]
    for bad in ("1k", "T9", "1k-slow", "T2-keepalive-x"):
        with pytest.raises(WorkloadError):
            workload_by_name(bad)
    with pytest.raises(WorkloadError):
        build_workloads([KiB], ["pipelined"], [])


@pytest.mark.parametrize("text,size", [("1k", KiB), ("64K", 64 * KiB), ("1m", MiB), ("8MB", 8 * MiB), ("1000", 1000)])
def test_parse_size(text, size):
    assert parse_size(text) == size


# ---------------------------------------------------------------- systems

STATUS = {
    "vip": None,
    "peers": {"haproxy": {"address": "10.0.9.2", "port": 81}, "direct": {"address": "10.0.4.2", "port": 8080},
              "nginx": {"address": "10.0.9.2", "port": 80}},
    "objects": [{"path": "/obj/1k", "size": 1024, "sha256": "x"}, {"path": "/obj/1m", "size": MiB, "sha256": "y"}],
}


def test_systems_from_status_orders_and_adds_the_vip():
    assert list(systems_from_status(STATUS)) == ["direct", "nginx", "haproxy"]
    with_vip = systems_from_status({**STATUS, "vip": {"address": "10.0.100.1", "port": 80}})
    assert list(with_vip) == ["direct", "nginx", "haproxy", "miresga"]
    assert with_vip["miresga"].url("/obj/1k") == "http://10.0.100.1:80/obj/1k"
    assert object_paths(STATUS) == {1024: "/obj/1k", MiB: "/obj/1m"}


def test_resolve_systems():
    avail = systems_from_status(STATUS)
    assert [s.name for s in resolve_systems(["haproxy", "direct"], avail)] == ["haproxy", "direct"]
    assert resolve_systems(None, avail) == list(avail.values())
    extra = resolve_systems({"nginx": avail["nginx"], "other": ("10.0.7.2", 8000)}, avail)
    assert extra[1] == System("other", "10.0.7.2", 8000)
    with pytest.raises(SystemSpecError, match="miresga"):
        resolve_systems(["miresga"], avail)
    with pytest.raises(SystemSpecError, match="twice"):
        resolve_systems(["nginx", "nginx"], avail)


# ---------------------------------------------------------------- records, ratios, report

def _rec(system, workload, rps, **kw):
    w = workload_by_name(workload)
    size = w.mean_object_bytes()
    r = WrkResult(1.0, int(rps), int(rps * size), {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
                  {"p50": 1.0, "p90": 2.0, "p99": 3.0, "mean": 1.2, "max": 5.0})
    return make_record(system, w, r, connections=32, threads=1, **kw)


def test_ratios_to_best_peer_and_direct():
    recs = [_rec("direct", "1k-keepalive", 50000), _rec("nginx", "1k-keepalive", 30000),
            _rec("haproxy", "1k-keepalive", 25000), _rec("miresga", "1k-keepalive", 45000),
            _rec("direct", "T2", 8000), _rec("nginx", "T2", 2000), _rec("haproxy", "T2", 4000)]
    add_ratios(recs)
    by = {(r["system"], r["workload"]): r for r in recs}
    assert {r["best_peer"] for r in recs if r["workload"] == "1k-keepalive"} == {"nginx"}
    assert by["miresga", "1k-keepalive"]["ratio_to_best_peer"] == 1.5
    assert by["miresga", "1k-keepalive"]["ratio_to_direct"] == 0.9
    assert by["haproxy", "1k-keepalive"]["ratio_to_best_peer"] == pytest.approx(0.833)
    assert by["direct", "T2"]["ratio_to_best_peer"] == 2.0 and by["haproxy", "T2"]["ratio_to_best_peer"] == 1.0
    assert by["nginx", "T2"]["ratio_to_direct"] == 0.25


def test_ratios_without_a_usable_reference_are_none():
    failed_peer = make_record("nginx", workload_by_name("1m-newconn"), None, connections=32, threads=1,
                              failure="wrk exited 1")
    recs = add_ratios([_rec("direct", "1m-newconn", 900), failed_peer])
    assert all(r["best_peer"] is None and r["ratio_to_best_peer"] is None for r in recs)
    assert recs[1]["ratio_to_direct"] == 0.0 and recs[0]["ratio_to_direct"] == 1.0
    only_peers = add_ratios([_rec("nginx", "1k-newconn", 10)])
    assert only_peers[0]["ratio_to_direct"] is None and only_peers[0]["ratio_to_best_peer"] == 1.0


def test_failed_point_counts_as_an_error():
    r = make_record("haproxy", workload_by_name("8m-keepalive"), None, connections=32, threads=1, failure="boom")
    assert r["errors"] == 1 and r["requests_per_s"] == 0 and r["latency_p50_ms"] is None and r["failure"] == "boom"
    validate_records([r])


def test_record_schema():
    r = _rec("nginx", "T2", 100, extra={"fast_path_byte_share": 0.97})
    assert tuple(r) == RECORD_FIELDS
    assert r["size_bytes"] is None and r["mix"] == [[KiB, 70], [10 * KiB, 20], [MiB, 8], [10 * MiB, 2]]
    assert r["keepalive"] is True and r["extra"] == {"fast_path_byte_share": 0.97}
    single = _rec("nginx", "64k-newconn", 100)
    assert single["size_bytes"] == 64 * KiB and single["mix"] is None and single["keepalive"] is False
    validate_records(add_ratios([r, single]))
    json.loads(json.dumps([r, single]))  # serialisable as is


@pytest.mark.parametrize("mutate,msg", [
    (lambda r: r.pop("latency_p99_ms"), "missing"),
    (lambda r: r.update(errors=True), "errors"),
    (lambda r: r.update(requests_per_s="fast"), "requests_per_s"),
    (lambda r: r.update(keepalive=1), "keepalive"),
    (lambda r: r.update(size_bytes=1024), "size_bytes"),
])
def test_validate_records_names_the_problem(mutate, msg):
    r = _rec("nginx", "T1", 100)
    mutate(r)
    with pytest.raises(ValueError, match=msg):
        validate_records([r])


def test_markdown_has_every_point_and_the_extra_columns():
    recs = add_ratios([_rec(s, w, rps, extra={"fast_path_byte_share": 0.5} if s == "miresga" else None)
                       for w in ("1k-keepalive", "T3") for s, rps in
                       (("direct", 4000), ("nginx", 1000), ("haproxy", 2000), ("miresga", 3000))])
    md = render_markdown(recs, {"date (UTC)": "now"})
    rows = [ln for ln in md.splitlines() if ln.startswith("| 1k-keepalive | ") or ln.startswith("| T3 | ")]
    assert len(rows) == 8 + 2  # 8 points + 2 rows of the ratio matrix
    assert "fast_path_byte_share" in md and "50.0%" in md
    assert "| T3 | miresga | 3,000 |" in md and "| 1.50x | 0.75x | 50.0% |" in md
    assert "| T3 | 2.00x | 0.50x | 1.00x | 1.50x | haproxy |" in md


def test_write_report_writes_three_files(tmp_path):
    recs = add_ratios([_rec(s, w, rps) for w in ("1k-keepalive", "1k-newconn", "1m-keepalive", "T1", "T2")
                       for s, rps in (("direct", 900), ("nginx", 300), ("haproxy", 400))])
    paths = write_report(recs, tmp_path / "out", {"title": "unit"})
    assert json.loads(paths["json"].read_text()) == recs
    assert paths["md"].read_text().count(" | direct | ") == 5 + 1  # 5 rows + the ratio matrix header
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_pick_median_keeps_every_run_and_every_error():
    a, b, c = _rec("nginx", "1k-keepalive", 300), _rec("nginx", "1k-keepalive", 100), _rec("nginx", "1k-keepalive", 200)
    c["errors"], c["errors_by_kind"]["read"] = 2, 2
    m = pick_median([a, b, c])
    assert m["requests_per_s"] == 200 and m["runs"] == [300, 100, 200]
    assert m["errors"] == 2 and m["errors_by_kind"]["read"] == 2
    assert pick_median([a, b])["requests_per_s"] == 100  # lower median of an even count
    assert pick_median([a]) == a
    md = render_markdown(add_ratios([m, pick_median([_rec("haproxy", "1k-keepalive", 400)])]), {})
    assert "runs ±" in md and "| 1k-keepalive | nginx | 200 | 50% |" in md
    assert "runs ±" not in render_markdown(add_ratios([a]), {})


def test_no_completed_request_has_no_latency():
    r = make_record("miresga", workload_by_name("1k-keepalive"),
                    WrkResult(3.0, 0, 0, {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
                              {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}),
                    connections=32, threads=1, failure="no response completed in 3.0 s")
    assert r["latency_p50_ms"] is None and r["errors"] == 1 and r["requests_per_s"] == 0


def test_fast_path_share_from_host_counters():
    def status(fe_in, be_out, c_in=0):
        hosts = [{"name": "fe1", "role": "frontend", "counters": {"ingress": {"bytes": fe_in // 2}, "egress": {"bytes": 7}}},
                 {"name": "fe2", "role": "frontend", "counters": {"ingress": {"bytes": fe_in - fe_in // 2}}},
                 {"name": "be1", "role": "backend", "counters": {"egress": {"bytes": be_out}}},
                 {"name": "c1", "role": "client", "counters": None}]
        return {"hosts": hosts}
    before = role_bytes(status(1000, 5000))
    assert before == {"frontend_ingress": 1000, "frontend_egress": 7, "backend_ingress": 0, "backend_egress": 5000,
                      "client_ingress": 0, "client_egress": 0}
    # 10 MB sent by back-ends, 200 KB of it seen by the front-ends: 98 % fast path
    assert fast_path_share(before, role_bytes(status(1000 + 200_000, 5000 + 10_000_000))) == 0.98
    assert fast_path_share(before, role_bytes(status(1000 + 50_000, 5000 + 40_000))) == 0.0  # slow path, clamped
    assert fast_path_share(before, before) is None  # nothing sent: no share
    # as a probe around a point
    seq = iter([status(0, 0), status(100, 1000)])
    finish = fast_path_probe(lambda: next(seq))()
    assert finish() == {"fast_path_byte_share": 0.9}
