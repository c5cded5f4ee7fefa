"""`miresga bench` with the prism system under the tofino profile, and a small table-pressure run,
each on its own short-lived testbed: every point answered without errors, the profile and offload
policy in the report, prism's requests went through the switch table and Miresga's short ones
did not; the pressure run overflowed its table without errors and left it empty."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from miresga.bench.report import validate_records

pytestmark = pytest.mark.netns
MIRESGA = str(Path(sys.executable).with_name("miresga"))


def test_prism_and_miresga_under_tofino(tmp_path):
    p = subprocess.run([MIRESGA, "bench", "--systems", "miresga,prism", "--sizes", "1k", "--modes", "newconn",
                        "--mixes", "none", "--profile", "tofino", "--duration", "1", "--connections", "8",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    records = json.loads((tmp_path / "report.json").read_text())
    validate_records(records)
    by = {r["system"]: r for r in records}
    assert set(by) == {"miresga", "prism"}
    for r in records:
        assert r["requests"] > 0 and r["errors"] == 0 and r["failure"] is None, r
        assert r["profile"].startswith("tofino (143,360 entries, 17,000 ops/s")
    assert by["prism"]["offload"].startswith("always, request held until its entry is installed")
    assert by["miresga"]["offload"].startswith("auto")
    # prism: an insert (and a delete) per request; Miresga leaves 1 KB new connections on the slow path
    assert by["prism"]["extra"]["switch_inserts_per_s"] >= by["prism"]["requests_per_s"] * 0.5
    assert by["miresga"]["extra"]["switch_inserts_per_s"] == 0
    assert by["prism"]["extra"]["switch_table_full"] == 0
    md = (tmp_path / "report.md").read_text()
    assert "- `prism`: profile tofino" in md and "- `miresga`: profile tofino" in md


def test_table_pressure_small_table(tmp_path):
    p = subprocess.run([MIRESGA, "bench", "--pressure", "--capacity", "64", "--connections", "160",
                        "--duration", "3", "--out", str(tmp_path)], capture_output=True, text=True, timeout=150)
    r = json.loads((tmp_path / "pressure.json").read_text())
    assert p.returncode == 0 and r["ok"], p.stdout[-2000:] + p.stderr[-2000:]
    assert r["wrk"]["errors"] == 0 and r["wrk"]["requests"] > 0
    assert r["peak_installed"] == 64 and r["table_full_refusals"] > 0
    assert r["final_installed"] == 0 and r["responses_exact"] == r["responses_sampled"] > 0
    assert (tmp_path / "pressure.png").read_bytes()[:4] == b"\x89PNG"
