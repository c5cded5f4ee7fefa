"""Table pressure (`miresga bench --pressure`): more concurrent offloaded connections than the
switch's offload table holds. Miresga runs under the `tofino` profile with a table of `capacity`
entries; wrk holds `connections` keep-alive connections (default 2 x capacity) that each ask for an
entry from their second request on (`auto`, `offload_after_requests`). What must hold: the
overflow stays on the slow path with zero errors, sampled responses are byte-exact, and the table
is back to zero entries once the load ends. The report is the switch table over time (occupancy,
refusals, insert queue depth) plus the front-ends' offload counters.

Why a small table: the real one holds 143,360 entries, and one client address can hold at most
~64k connections to VIP:port (one source port each); wrk on one of this machine's two cores does
not hold more than a few thousand busy ones either. The behaviour at the limit is the same.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from miresga.bpf import netns as nsx
from miresga.bench.switchwatch import SwitchWatch, series
from miresga.bench.systems import profile_words, with_profile
from miresga.bench.wrk import WrkOutputError, done_script, parse_wrk_output, wrk_argv
from miresga.control.config import Deployment

DEFAULT_CAPACITY = 1024
SAMPLE_PATHS = ("/obj/1k", "/obj/64k", "/obj/1m")


def _say(msg: str) -> None:
    print(f"[pressure] {msg}", flush=True)


def pressure_config(cfg: Deployment, capacity: int) -> Deployment:
    return with_profile(cfg, "tofino", capacity)


def run_pressure(cfg: Deployment, out_dir: str | Path, *, capacity: int = DEFAULT_CAPACITY,
                 connections: int | None = None, duration: float = 10.0, drain_timeout: float = 60.0,
                 progress: Callable[[str], None] = _say, plot: bool = True) -> dict[str, Any]:
    from miresga.testbed import Testbed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    connections = connections or 2 * capacity
    cfg = pressure_config(cfg, capacity)
    t_up = time.monotonic()
    with Testbed(cfg, lb="miresga") as tb:
        progress(f"testbed {tb.instance} up in {time.monotonic() - t_up:.1f} s; "
                 f"switch {profile_words(tb.cfg.switch)}; {connections} connections for {duration:g} s")
        try:
            result = _run(tb, connections, duration, drain_timeout, progress)
        finally:
            progress(f"tearing down testbed {tb.instance}")
    result["capacity"] = capacity
    (out / "pressure.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "pressure.md").write_text(render_pressure_markdown(result))
    if plot:
        render_pressure_plot(result, out / "pressure.png")
    progress(f"wrote {out / 'pressure.json'}, pressure.md" + (", pressure.png" if plot else ""))
    return result


def _frontend_offload(tb) -> dict[str, float]:
    tot: dict[str, float] = {}
    for f in tb.cfg.hosts.frontends:
        try:
            m = tb.frontend_metrics(f.name)
        except Exception:  # noqa: BLE001 - a report without these counters beats no report
            continue
        for k, v in m.get("offload", {}).items():
            tot[k] = tot.get(k, 0) + v
        for k, v in m.get("local_responses", {}).items():
            tot[f"local_response_{k}"] = tot.get(f"local_response_{k}", 0) + v
    return tot


def _diff(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, int]:
    return {k: int(b.get(k, 0) - a.get(k, 0)) for k in sorted(set(a) | set(b)) if b.get(k, 0) - a.get(k, 0)}


def _run(tb, connections: int, duration: float, drain_timeout: float,
         progress: Callable[[str], None]) -> dict[str, Any]:
    status = tb.status()
    vip = status["vip"]
    sha = {o["path"]: o["sha256"] for o in status["objects"]}
    client = tb.cfg.hosts.clients[0].name
    checks = {"sampled": 0, "exact": 0, "mismatch": [], "failed": []}
    with SwitchWatch(str(tb.run_dir / "config.yaml"), tb.ns_switch, interval=0.1) as watch, \
            tempfile.TemporaryDirectory(prefix="miresga-pressure-") as tmp:
        if not watch.wait_first():
            raise RuntimeError(f"switch controller stats unavailable: {watch.errors[-1:] or 'no sample'}")
        fe_before = _frontend_offload(tb)
        script = Path(tmp) / "done.lua"
        script.write_text(done_script())
        url = f"http://{vip['address']}:{vip['port']}/obj/1k"
        argv = wrk_argv(url, duration_s=duration, connections=connections, threads=1, script=str(script),
                        keepalive=True, timeout_s=10)
        t0 = time.time()
        # wrk needs one descriptor per connection: raise its limit inside the client namespace
        shell = f"ulimit -n {max(4096, connections + 256)} && exec " + " ".join(argv)
        wrk = subprocess.Popen(nsx.ns_cmd(tb.ns(client), ["sh", "-c", shell]),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stop = threading.Event()

        def sample() -> None:   # byte-exact responses through the VIP while the table is full
            i = 0
            time.sleep(min(2.0, duration / 4))
            while not stop.is_set():
                path = SAMPLE_PATHS[i % len(SAMPLE_PATHS)]
                i += 1
                try:
                    body = tb.run_bytes(client, "curl", "-sS", "--max-time", "10",
                                        f"http://{vip['address']}:{vip['port']}{path}", timeout=20)
                    checks["sampled"] += 1
                    if hashlib.sha256(body).hexdigest() == sha[path]:
                        checks["exact"] += 1
                    else:
                        checks["mismatch"].append(f"{path}: {len(body)} bytes")
                except Exception as e:  # noqa: BLE001
                    checks["failed"].append(f"{path}: {str(e)[-160:]}")
                stop.wait(0.5)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stdout, stderr = wrk.communicate(timeout=duration + 60)
        finally:
            stop.set()
            sampler.join(30)
        t_load_end = time.time()
        try:
            res = parse_wrk_output(stdout)
            wrk_out: dict[str, Any] = {"requests": res.requests, "requests_per_s": round(res.requests_per_s, 1),
                                       "errors": res.errors_total, "errors_by_kind": res.errors,
                                       "latency_ms": res.latency_ms, "failure": None}
        except WrkOutputError as e:
            wrk_out = {"requests": 0, "errors": 1, "failure": f"{e}; stderr: {stderr.strip()[-300:]}"}
        progress(f"load done: {wrk_out.get('requests', 0)} requests, {wrk_out.get('errors')} errors; "
                 f"waiting for the table to empty")
        drained_at = None
        deadline = time.time() + drain_timeout
        while time.time() < deadline:
            s = watch.latest()
            if s and s["t"] > t_load_end and s["installed"] == 0 and s["queue"] == 0:
                drained_at = s["t"]
                break
            time.sleep(0.25)
        time.sleep(0.5)
        samples = watch.between(t0, time.time())
        fe_after = _frontend_offload(tb)
    last = samples[-1] if samples else {"installed": None, "queue": None, "ops": {}}
    first = samples[0] if samples else {"ops": {}}
    ops = _diff(first["ops"], last["ops"])
    capacity = int(last.get("capacity") or 0)
    summary = {
        "switch": profile_words(tb.cfg.switch),
        "connections": connections, "duration_s": duration,
        "wrk": wrk_out,
        "peak_installed": max((s["installed"] for s in samples), default=0),
        "peak_queue": max((s["queue"] for s in samples), default=0),
        "table_full_refusals": ops.get("table_full", 0),
        "switch_ops": ops,
        "frontend_offload": _diff(fe_before, fe_after),
        "final_installed": last["installed"], "final_queue": last["queue"],
        "drain_s": None if drained_at is None else round(drained_at - t_load_end, 2),
        "responses_sampled": checks["sampled"], "responses_exact": checks["exact"],
        "response_mismatches": checks["mismatch"], "sample_failures": checks["failed"],
        "load_end_s": round(t_load_end - t0, 3),
        "series": series(samples, t0),
    }
    summary["ok"] = bool(wrk_out.get("failure") is None and wrk_out.get("errors") == 0
                         and summary["final_installed"] == 0 and not checks["mismatch"] and not checks["failed"]
                         and checks["sampled"] > 0 and summary["table_full_refusals"] > 0
                         and summary["peak_installed"] <= (capacity or summary["peak_installed"]))
    return summary


def render_pressure_markdown(r: Mapping[str, Any]) -> str:
    w = r["wrk"]
    lat = w.get("latency_ms") or {}
    lines = ["# Table pressure", "",
             f"- switch: {r['switch']}",
             f"- load: wrk, {r['connections']} keep-alive connections on /obj/1k for {r['duration_s']:g} s; "
             "each asks for an offload entry from its 2nd request (`auto`, `offload_after_requests`)",
             f"- verdict: {'PASS' if r['ok'] else 'FAIL'} (zero errors, sampled responses byte-exact, overflow "
             "refused and served on the slow path, table empty afterwards)", "",
             "| what | value |", "|---|---:|",
             f"| requests completed | {w.get('requests', 0):,} ({w.get('requests_per_s', 0):,.0f}/s) |",
             f"| wrk errors | {w.get('errors')} {w.get('errors_by_kind') or ''} |",
             f"| latency p50 / p99 | {lat.get('p50', 0):.2f} / {lat.get('p99', 0):.2f} ms |",
             f"| table capacity | {r.get('capacity', '?'):,} |",
             f"| peak occupancy | {r['peak_installed']:,} |",
             f"| refusals (`table_full`) | {r['table_full_refusals']:,} |",
             f"| peak insert queue | {r['peak_queue']:,} |",
             f"| entries after the load | {r['final_installed']} (queue {r['final_queue']}) |",
             f"| table empty after | {r['drain_s']} s |",
             f"| responses sampled through the VIP during the load | {r['responses_exact']} byte-exact of "
             f"{r['responses_sampled']} |", ""]
    lines += ["Switch controller write statuses during the run: "
              + ", ".join(f"{k} {v:,}" for k, v in r["switch_ops"].items()), "",
              "Front-ends' offload counters during the run: "
              + (", ".join(f"{k} {v:,}" for k, v in r["frontend_offload"].items()) or "–"), ""]
    if r["response_mismatches"] or r["sample_failures"]:
        lines += ["Sample problems: " + "; ".join(r["response_mismatches"] + r["sample_failures"]), ""]
    lines.append("Over time: `pressure.png`; every sample: `pressure.json` (`series`).")
    return "\n".join(lines) + "\n"


def render_pressure_plot(r: Mapping[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = r["series"]
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    panels = ((axes[0], "installed", "entries in the offload table", "#d62728"),
              (axes[1], "table_full", "inserts refused (table_full), cumulative", "#1f6fb4"),
              (axes[2], "queue", "insert/delete queue depth", "#ff7f0e"))
    for ax, key, label, color in panels:
        ax.plot(s["t"], s[key], color=color, linewidth=1.8)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.axvline(r["load_end_s"], color="#555555", linestyle="--", linewidth=1)
    if r.get("capacity"):
        axes[0].axhline(r["capacity"], color="#555555", linestyle=":", linewidth=1)
        axes[0].text(0, r["capacity"], f" capacity {r['capacity']:,}", va="bottom", fontsize=8)
    axes[2].set_xlabel("seconds since the load started (dashed: load ends)")
    fig.suptitle(f"Table pressure: {r['connections']:,} keep-alive connections, switch {r['switch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
