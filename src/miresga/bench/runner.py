"""Run the benchmark: every workload against every system, wrk in the client namespace.

Workloads are the outer loop and systems the inner one, so the systems compared in one workload
are measured minutes apart at most (drift in the machine's load hits them alike). Partial results
are written after every workload; the plot at the end. The testbed this brings up, it tears down.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from miresga.bench.interference import Meter
from miresga.bench.probes import fast_path_probe
from miresga.bench.report import BUSY_PCT, add_ratios, make_record, pick_median, write_report
from miresga.bench.switchwatch import SwitchWatch, switch_probe
from miresga.bench.systems import (MIRESGA, PRISM, System, offload_policy, profile_words, resolve_systems,
                                   rule_for_path, systems_from_status, with_objects, with_prism, with_profile)
from miresga.bench.workloads import Workload, smooth_schedule, workload_by_name
from miresga.bench.wrk import WrkOutputError, done_script, mix_script, parse_wrk_output, wrk_argv
from miresga.control.config import Deployment

Progress = Callable[[str], None]


class BenchError(RuntimeError):
    pass


def _say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def object_paths(status: Mapping[str, Any]) -> dict[int, str]:
    return {int(o["size"]): o["path"] for o in status.get("objects", [])}


def mix_paths(workload: Workload, paths_by_size: Mapping[int, str]) -> list[str]:
    """The request paths of one schedule cycle of a mix."""
    assert workload.mix is not None
    sizes = [s for s, _ in workload.mix]
    return [paths_by_size[sizes[i]] for i in smooth_schedule([w for _, w in workload.mix])]


def run_bench(cfg: Deployment | None, systems: Sequence[str | System] | Mapping[str, Any] | None,
              workloads: Sequence[Workload | str], duration: float, connections: int, out_dir: str | Path,
              testbed=None, *, threads: int = 1, timeout_s: float = 10.0, repeat: int = 1,
              progress: Progress = _say, plot: bool = True, lb: str | None = None, retries: int = 0,
              max_other_cpu: float = BUSY_PCT, profile: str | None = None,
              capacity: int | None = None, insert_rate: int | None = None, meta_extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Measure `workloads` x `systems`; write report.json, report.md, throughput.png into out_dir and
    return the records. `systems`: names from the testbed status (None: all it offers), System
    objects (with a probe for extra columns), or a mapping name -> (address, port).
    With `repeat` > 1 every point runs that many times (in rounds over the systems) and the run with
    the median requests/s is reported, all runs' requests/s in its `runs` field.
    With `retries` > 0 a point during which processes outside the testbed used more than
    `max_other_cpu` % CPU is measured again (up to `retries` times); the least disturbed run counts.
    With `testbed=None` a testbed is brought up from `cfg` (with `lb="miresga"`: Miresga too, so
    the `miresga` system appears on the VIP) and always torn down; `profile` / `capacity` set the
    switch's hardware profile / offload table size of that testbed, "prism" among `systems` adds
    the rule that makes the `prism` system, and the workloads' object sizes are added to its catalog.
    A running `testbed` must already be what is asked for."""
    wls = [w if isinstance(w, Workload) else workload_by_name(w) for w in workloads]
    if not wls:
        raise BenchError("no workloads selected")
    if connections < threads:
        raise BenchError(f"wrk needs at least one connection per thread ({connections} < {threads})")
    if repeat < 1:
        raise BenchError(f"repeat must be at least 1 (got {repeat})")
    args = (systems, wls, duration, connections, Path(out_dir), threads, timeout_s, repeat, progress, plot,
            retries, max_other_cpu, meta_extra or {})
    if testbed is not None:
        have = testbed.cfg.switch
        if ((profile and profile != have.profile) or (capacity and capacity != have.offload_capacity)
                or (insert_rate and insert_rate != have.insert_rate)):
            raise BenchError(f"testbed {testbed.instance} runs the switch profile {have.profile} "
                             f"(capacity {have.offload_capacity or 'default'}); bring one up with the profile wanted")
        return _run(testbed, *args)
    from miresga.testbed import Testbed
    from miresga.control.config import load_config
    cfg = with_objects(with_profile(cfg or load_config(), profile, capacity, insert_rate),
                       sorted({s for w in wls for s in w.sizes}))
    if systems is not None and any((x.name if isinstance(x, System) else x) == PRISM for x in systems):
        cfg = with_prism(cfg)
    t0 = time.monotonic()
    with Testbed(cfg, **({"lb": lb} if lb else {})) as tb:
        progress(f"testbed {tb.instance} up in {time.monotonic() - t0:.1f} s")
        try:
            return _run(tb, *args)
        finally:
            progress(f"tearing down testbed {tb.instance}")


def _run(tb, systems, wls: list[Workload], duration: float, connections: int, out_dir: Path, threads: int,
         timeout_s: float, repeat: int, progress: Progress, plot: bool, retries: int,
         max_other_cpu: float, meta_extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    status = tb.status()
    chosen = resolve_systems(systems, systems_from_status(status))
    if not chosen:
        raise BenchError("no systems selected")
    watch = None
    if status.get("vip") and any(s.name in (MIRESGA, PRISM) for s in chosen):
        watch = SwitchWatch(str(tb.run_dir / "config.yaml"), tb.ns_switch)
    with watch or _Nothing():
        if watch is not None and not watch.wait_first():
            progress("switch controller stats unavailable: no switch columns" + (f" ({watch.errors[-1]})"
                                                                                   if watch.errors else ""))
            watch = None
        chosen = [_through_switch(tb, s, status, watch) for s in chosen]
        return _measure(tb, chosen, status, wls, duration, connections, out_dir, threads, timeout_s, repeat,
                        progress, plot, retries, max_other_cpu, meta_extra)


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def _through_switch(tb, s: System, status: Mapping[str, Any], watch: SwitchWatch | None) -> System:
    """Miresga and prism: their profile and offload policy, and their own columns (the share of
    response bytes that took the switch fast path; the switch table's insert rate, refusals,
    queue and occupancy during the point)."""
    if s.name not in (MIRESGA, PRISM):
        return s
    rules = status.get("rules", [])
    if s.name == PRISM:
        rule = next((r for r in rules if r.get("offload_wait") and r.get("offload") == "always"), None)
    else:
        rule = rule_for_path(rules, "/obj/")
    probes = [p for p in (s.probe or fast_path_probe(tb.status), switch_probe(watch) if watch else None) if p]
    return replace(s, probe=_all_of(probes), profile=s.profile or profile_words(tb.cfg.switch),
                   offload=s.offload or offload_policy(rule))


def _all_of(probes):
    def begin():
        ends = [p() for p in probes]
        return lambda: {k: v for e in ends for k, v in e().items()}
    return begin


def _measure(tb, chosen: list[System], status: Mapping[str, Any], wls: list[Workload], duration: float,
             connections: int, out_dir: Path, threads: int, timeout_s: float, repeat: int, progress: Progress,
             plot: bool, retries: int, max_other_cpu: float, meta_extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    paths = object_paths(status)
    missing = sorted({s for w in wls for s in w.sizes if s not in paths})
    if missing:
        raise BenchError(f"the testbed serves no object of size(s) {missing}; it has {sorted(paths)}")
    client = tb.cfg.hosts.clients[0].name
    meter = Meter([ns for names in status.get("namespaces", {}).values() for ns in names],
                  [int(p) for p in getattr(tb, "state", {}).get("procs", {}).values()])
    meta = {**_meta(tb, chosen, duration, connections, threads, repeat), **meta_extra}
    if retries:
        meta["contended points"] = (f"re-measured up to {retries} times while other processes used "
                                    f"> {max_other_cpu:g} % CPU")
    records: list[dict[str, Any]] = []
    total = len(wls) * len(chosen) * repeat
    n = 0
    with tempfile.TemporaryDirectory(prefix="miresga-bench-") as tmp:
        scripts = _write_scripts(Path(tmp), wls, paths)
        for w in wls:
            tries: dict[str, list[dict[str, Any]]] = {s.name: [] for s in chosen}
            for rnd in range(repeat):  # rounds over all systems: slow drift in load hits every system
                for s in chosen:
                    n += 1
                    path = paths[w.size_bytes] if w.size_bytes is not None else "/"
                    tag = f"  (run {rnd + 1}/{repeat})" if repeat > 1 else ""
                    rec = None
                    for attempt in range(retries + 1):
                        new = run_point(tb, client, s, w, s.url(path), scripts[w.name], duration=duration,
                                        connections=connections, threads=threads, timeout_s=timeout_s, meter=meter)
                        progress(f"{n:>3}/{total} " + point_line(new) + tag
                                 + (f"  (retry {attempt})" if attempt else ""))
                        if rec is None or (new["other_cpu_pct"] or 0) < (rec["other_cpu_pct"] or 0):
                            rec = new  # keep the least disturbed attempt
                        if (rec["other_cpu_pct"] or 0) <= max_other_cpu:
                            break
                        if attempt < retries:
                            time.sleep(1.0)  # let the neighbours' burst pass
                    tries[s.name].append(rec)
            records.extend(pick_median(t) for t in tries.values())
            add_ratios(records)
            progress(ratio_line(w.name, [r for r in records if r["workload"] == w.name]))
            write_report(records, out_dir, meta, plot=False)
    meta["load average at end"] = _loadavg()
    write_report(records, out_dir, meta, plot=plot)
    progress(f"wrote {out_dir / 'report.json'}, report.md" + (", throughput.png" if plot else ""))
    return records


def _write_scripts(tmp: Path, wls: list[Workload], paths: Mapping[int, str]) -> dict[str, str]:
    done = tmp / "done.lua"
    done.write_text(done_script())
    out = {}
    for w in wls:
        if w.is_mix:
            f = tmp / f"mix-{w.name}.lua"
            f.write_text(mix_script(mix_paths(w, paths)))
            out[w.name] = str(f)
        else:
            out[w.name] = str(done)
    return out


def run_point(tb, client: str, system: System, w: Workload, url: str, script: str, *, duration: float,
              connections: int, threads: int, timeout_s: float, meter: Meter | None = None) -> dict[str, Any]:
    """One wrk run; a wrk that fails or prints no result gives a record with `failure` set."""
    argv = wrk_argv(url, duration_s=duration, connections=connections, threads=threads, script=script,
                    keepalive=w.keepalive, timeout_s=timeout_s, headers=system.headers)
    finish = system.probe() if system.probe else None
    others = meter.start() if meter else None
    failure = None
    result = None
    try:
        p = tb.run(client, *argv, check=False, timeout=duration + timeout_s + 30)
        if p.returncode != 0:
            failure = f"wrk exited {p.returncode}: {(p.stderr or p.stdout).strip()[-200:]}"
        else:
            result = parse_wrk_output(p.stdout)
            if result.requests == 0:  # wrk counts no error for a request that never got an answer
                failure = (f"no response completed in {result.duration_s:.1f} s "
                           f"(wrk errors: {result.errors_total}, bytes read: {result.bytes})")
    except (WrkOutputError, subprocess.TimeoutExpired) as e:
        failure = str(e)
    other_cpu = others() if others else None
    extra = finish() if finish else {}
    return make_record(system.name, w, result, connections=connections, threads=threads, failure=failure,
                       extra=extra, other_cpu_pct=other_cpu, profile=system.profile, offload=system.offload)


def point_line(r: Mapping[str, Any]) -> str:
    lat = (f"p50 {r['latency_p50_ms']:.2f} p90 {r['latency_p90_ms']:.2f} p99 {r['latency_p99_ms']:.2f} ms"
           if r["latency_p50_ms"] is not None else "no latency")
    s = (f"{r['workload']:<15} {r['system']:<8} {r['requests_per_s']:>10,.0f} req/s "
         f"{r['bytes_per_s'] / 1e6:>9,.1f} MB/s  {lat}  errors {r['errors']}")
    if r["other_cpu_pct"] is not None:
        s += f"  other CPU {r['other_cpu_pct']:.0f}%"
    if r["failure"]:
        s += f"  FAILED: {r['failure']}"
    for k, v in r["extra"].items():
        s += f"  {k} {v:.3g}" if isinstance(v, float) else f"  {k} {v}"
    return s


def ratio_line(workload: str, group: list[Mapping[str, Any]]) -> str:
    parts = []
    for key, label in (("ratio_to_best_peer", f"vs best peer ({group[0]['best_peer'] if group else None})"),
                       ("ratio_to_direct", "vs direct")):
        vals = [f"{r['system']} {r[key]:.2f}x" for r in group if r[key] is not None]
        if vals:
            parts.append(f"{label}: " + ", ".join(vals))
    return f"{workload}: " + ("; ".join(parts) if parts else "no reference system measured")


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _meta(tb, systems: list[System], duration: float, connections: int, threads: int, repeat: int) -> dict[str, Any]:
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return {
        "title": f"Miresga bench: wrk {threads} thread(s), {connections} connections, {duration:g} s per point",
        "date (UTC)": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "testbed instance": tb.instance,
        "systems": ", ".join(f"{s.name} ({s.address}:{s.port}" + "".join(f", {h}" for h in s.headers) + ")"
                             for s in systems),
        "switch profile": profile_words(tb.cfg.switch),
        "wrk": f"{wrk_v[0].split(' [')[0] if wrk_v else 'wrk'}; -t{threads} -c{connections} -d{duration:g}s, "
               "new connection per request = -H 'Connection: close'",
        "repetitions": f"{repeat} per point, median reported" if repeat > 1 else "1 per point",
        "machine": f"{os.cpu_count()} CPUs; load average at start {_loadavg()}",
        "peer tuning": "docs/bench.md",
    }
