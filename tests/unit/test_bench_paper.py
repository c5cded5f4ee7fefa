"""The bench's prism system, hardware profiles, the paper's ratios and plots, the switch table
sampler's summaries and the table-pressure report: the pure parts, with records as plain data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from miresga.bench.paper import claim_rows, load_claims, ratio_rows, render_paper_markdown, write_paper
from miresga.bench.pressure import render_pressure_markdown, render_pressure_plot
from miresga.bench.report import RECORD_FIELDS, add_ratios, make_record, render_markdown, validate_records
from miresga.bench.switchwatch import series, summarize
from miresga.bench.systems import (PRISM_HOST, offload_policy, prism_host, profile_words, rule_for_path,
                                   systems_from_status, with_objects, with_prism, with_profile)
from miresga.bench.workloads import workload_by_name
from miresga.bench.wrk import WrkResult, wrk_argv
from miresga.control.config import load_config
from miresga.testbed.objects import PAPER_SIZES, size_name

PNG = b"\x89PNG\r\n\x1a\n"


def _rec(system, workload, rps, p50=1.0, **kw):
    w = workload_by_name(workload)
    r = WrkResult(1.0, int(rps), int(rps * w.mean_object_bytes()),
                  {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
                  {"p50": p50, "p90": p50 * 2, "p99": p50 * 3, "mean": p50, "max": p50 * 5})
    return make_record(system, w, r, connections=32, threads=1, **kw)


# ---------------------------------------------------------------- systems and configs

def test_prism_appears_with_its_rule_and_host_header():
    cfg = with_prism(load_config())
    rules = [r.model_dump(mode="json") for r in cfg.rules]
    assert rules[0]["match"]["host"] == PRISM_HOST and rules[0]["offload"] == "always" and rules[0]["offload_wait"]
    assert with_prism(cfg) == cfg   # once
    status = {"vip": {"address": "10.0.100.1", "port": 80}, "rules": rules,
              "peers": {"nginx": {"address": "10.0.9.2", "port": 80}}}
    found = systems_from_status(status)
    assert list(found) == ["nginx", "miresga", "prism"]
    assert found["prism"].headers == (f"Host: {PRISM_HOST}",) and found["prism"].port == 80
    assert "prism" not in systems_from_status({**status, "rules": rules[1:]})
    assert prism_host([{"offload": "always", "match": {"host": "x"}}]) is None   # no wait: not Prism


def test_wrk_sends_the_system_headers():
    argv = wrk_argv("http://a:80/obj/1k", duration_s=1, connections=4, threads=1, script="s.lua",
                    keepalive=False, timeout_s=10, headers=("Host: prism.bench",))
    assert argv[-1] == "http://a:80/obj/1k"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-H"] == ["Host: prism.bench", "Connection: close"]
    with pytest.raises(ValueError):
        wrk_argv("http://a/", duration_s=1, connections=1, threads=1, script="s", keepalive=True, timeout_s=1,
                 headers=("Host: x\r\nEvil: 1",))


def test_profiles_capacity_and_objects():
    cfg = with_profile(load_config(), "tofino", 1000)
    assert cfg.switch.profile == "tofino" and cfg.switch.offload_capacity == 1000
    assert profile_words(cfg.switch) == "tofino (1,000 entries, 17,000 ops/s, 1 ms per batch)"
    assert profile_words(load_config().switch).startswith("software (143,360 entries, no rate limit")
    assert with_profile(load_config()) == load_config()
    more = with_objects(load_config(), PAPER_SIZES)
    assert set(PAPER_SIZES) <= set(more.objects.sizes) and 100 << 20 in more.objects.sizes
    assert [size_name(s) for s in PAPER_SIZES] == ["1k", "4k", "16k", "64k", "256k", "1m", "4m", "8m"]


def test_offload_policy_words():
    rules = [r.model_dump(mode="json") for r in with_prism(load_config()).rules]
    assert offload_policy(rules[0]).startswith("always, request held until its entry is installed")
    default = rule_for_path(rules, "/obj/")
    assert default["name"] == "default"
    assert offload_policy(default) == "auto (>= 64 KB still to come, or from a connection's request 2 on)"
    assert rule_for_path(rules, "/download/x")["name"] == "download"
    assert offload_policy(None).startswith("auto") and offload_policy({"offload": "never"}) == "never"


def test_records_carry_profile_and_offload():
    r = _rec("prism", "1k-newconn", 100, profile="tofino (...)", offload="always")
    assert tuple(r) == RECORD_FIELDS and r["profile"] == "tofino (...)" and r["offload"] == "always"
    peer = _rec("haproxy", "1k-newconn", 200)
    assert peer["profile"] is None and peer["offload"] is None
    validate_records(add_ratios([r, peer]))
    md = render_markdown([r, peer], {})
    assert "- `prism`: profile tofino (...); offload always" in md
    bad = dict(r, profile=3)
    with pytest.raises(ValueError, match="profile"):
        validate_records([bad])


# ---------------------------------------------------------------- the paper's ratios

def _paper_records():
    recs = []
    for w, m, h, p in (("1k-newconn", 10000, 5000, 2000), ("1k-keepalive", 20000, 10000, 4000),
                       ("8m-keepalive", 100, 50, 100), ("8m-newconn", 90, 60, 90), ("T2", 500, 400, 250)):
        recs += [_rec("miresga", w, m, p50=1.0), _rec("haproxy", w, h, p50=2.0), _rec("prism", w, p, p50=5.0),
                 _rec("direct", w, m * 2, p50=0.5)]
    return add_ratios(recs)


def test_ratio_rows_per_workload():
    rows = {r["workload"]: r for r in ratio_rows(_paper_records())}
    assert rows["1k-newconn"]["throughput_vs_haproxy"] == 2.0 and rows["1k-newconn"]["latency_vs_haproxy"] == 0.5
    assert rows["1k-newconn"]["throughput_vs_prism"] == 5.0 and rows["1k-newconn"]["latency_vs_prism"] == 0.2
    assert rows["8m-keepalive"]["throughput_vs_prism"] == 1.0
    recs = [r for r in _paper_records() if not (r["system"] == "prism" and r["workload"] == "T2")]
    assert {r["workload"]: r for r in ratio_rows(recs)}["T2"]["throughput_vs_prism"] is None


def test_claims_are_data_with_their_source_and_compare():
    claims = load_claims()
    assert claims["source"]["doi"] == "10.1145/3696410.3714809" and "Miresga" in claims["source"]["citation"]
    by = {c["id"]: c for c in claims["claims"]}
    assert (by["vs_software"]["throughput_ratio"], by["vs_software"]["latency_ratio"]) == (3.9, 0.4)
    assert (by["vs_prism_small"]["throughput_ratio"], by["vs_prism_small"]["latency_ratio"]) == (5.0, 0.2)
    rows = {c["id"]: c for c in claim_rows(ratio_rows(_paper_records()), claims)}
    assert rows["vs_software"]["ours_throughput"] == 2.0 and rows["vs_software"]["ours_latency"] == 0.5
    assert rows["vs_prism_small"]["ours_throughput"] == 5.0 and rows["vs_prism_small"]["ours_latency"] == 0.2
    assert "1k-newconn" in rows["vs_prism_small"]["where"] and "8m" not in rows["vs_prism_small"]["where"]
    assert rows["vs_prism_large"]["ours_throughput"] == 1.0


def test_paper_markdown_and_plots(tmp_path):
    recs = _paper_records()
    md = render_paper_markdown(recs, load_claims(), {"switch profile": "tofino"})
    assert "| vs Prism, small objects | 5.0x | 5.00x | 0.2x | 0.20x |" in md
    assert "| 1k-newconn | 2.00x | 0.50x | 5.00x | 0.20x |" in md and "doi:10.1145/3696410.3714809" in md
    paths = write_paper(recs, tmp_path, {"switch profile": "tofino"})
    for k in ("throughput", "latency"):
        png = paths[k].read_bytes()
        assert png[:8] == PNG and len(png) > 20_000


# ---------------------------------------------------------------- switch table samples, pressure

SAMPLES = [{"t": 100.0, "installed": 0, "queue": 0, "capacity": 4, "ops": {"ok": 10, "table_full": 1}},
           {"t": 101.0, "installed": 4, "queue": 3, "capacity": 4, "ops": {"ok": 14, "queued": 6, "table_full": 5,
                                                                          "applied": 8}},
           {"t": 102.0, "installed": 2, "queue": 0, "capacity": 4, "ops": {"ok": 16, "queued": 6, "table_full": 9,
                                                                          "applied": 16}}]


def test_switch_summary_of_a_point():
    s = summarize(SAMPLES)
    assert s == {"switch_inserts_per_s": 6.0, "switch_applied_per_s": 8.0, "switch_table_full": 8,
                 "switch_queue_peak": 3, "switch_installed_peak": 4}
    assert summarize(SAMPLES[:1]) == {}
    assert series(SAMPLES, 99.5) == {"t": [0.5, 1.5, 2.5], "installed": [0, 4, 2], "queue": [0, 3, 0],
                                     "table_full": [0, 4, 8]}


def test_pressure_report(tmp_path):
    r = {"switch": "tofino (4 entries, ...)", "connections": 8, "duration_s": 2.0, "capacity": 4,
         "wrk": {"requests": 1000, "requests_per_s": 500.0, "errors": 0, "errors_by_kind": {},
                 "latency_ms": {"p50": 1.0, "p99": 9.0}, "failure": None},
         "peak_installed": 4, "peak_queue": 3, "table_full_refusals": 8, "switch_ops": {"table_full": 8, "ok": 6},
         "frontend_offload": {"refused_table_full": 8}, "final_installed": 0, "final_queue": 0, "drain_s": 1.2,
         "responses_sampled": 3, "responses_exact": 3, "response_mismatches": [], "sample_failures": [],
         "load_end_s": 2.0, "series": series(SAMPLES, 99.5), "ok": True}
    md = render_pressure_markdown(r)
    assert "verdict: PASS" in md and "| refusals (`table_full`) | 8 |" in md and "3 byte-exact of 3" in md
    render_pressure_plot(r, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG


def test_cli_help_lists_the_new_flags():
    p = subprocess.run([sys.executable, "-m", "miresga.control.cli", "bench", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0
    for flag in ("--paper", "--profile", "--pressure", "--capacity"):
        assert flag in p.stdout


def test_cli_refuses_prism_without_miresga(tmp_path):
    p = subprocess.run([sys.executable, "-m", "miresga.control.cli", "bench", "--systems", "prism", "--lb", "none",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "needs --lb miresga" in p.stderr
    json.dumps(p.returncode)


# ---------------------------------------------------------------- many connections

def test_connhold_pure_parts():
    from miresga.bench.connhold import _complete, per_connection, render_connections_markdown, split
    assert split(100000) == [16667] * 4 + [16666] * 2 and split(10) == [10] and sum(split(50001)) == 50001
    assert max(split(100000)) <= 18000
    assert _complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert not _complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab")
    assert not _complete(b"HTTP/1.1 200 OK\r\nContent-Len")
    assert per_connection({"rss": 1000}, {"rss": 41000}, 10) == 4000.0 and per_connection({}, {}, 0) is None
    r = {"state": "keep-alive after one response", "max_connections": 1000, "frontends": 2, "idle_s": 3.0,
         "results": [{"count": 3000, "connections_held": 2000, "bytes_per_connection": 4159.5, "idle_cpu_pct": 3.0,
                      "setup_s": 1.2, "cleaned_up": True,
                      "generator": {"opened": 3000, "held": 2000, "reset": 1000, "timeout": 0},
                      "frontends": {"fe1": {"connections": 1000, "kernel_connections": 1000, "rss_before_mb": 69.8,
                                            "rss_held_mb": 73.7, "bytes_per_connection": 4169.7,
                                            "setup_cpu_s": 0.2, "idle_cpu_pct": 1.3, "conn_limit_drops": 504}}}]}
    md = render_connections_markdown(r)
    assert "| 3,000 | 2,000 | 1,000 | 4159.5 | 3.0 | 1.2 s | 1,000 | 0 | yes |" in md
    assert "refused at the limit 504" in md
