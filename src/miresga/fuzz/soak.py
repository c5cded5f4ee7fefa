"""`miresga soak --minutes N --out DIR`: hours of ordinary life in minutes (issue 15, third part).

On a fresh testbed with Miresga, wrk cycles through the mixes T1, T2, T3 with keep-alive and with
a new connection per request (one segment per mix and mode), while faults are injected: a
back-end killed and restarted at 25 % and 75 % of the run, one front-end killed and restarted at
50 %. Every `--sample` seconds: each front-end's RSS and connections, switch entries, agent
flows. Afterwards the load stops and the run waits for the state to drain. Written to DIR:
`soak.json` (samples, wrk segments, faults, verdict), `logs/` (the daemons' logs) and
`soak.png` (each series over time, fault windows shaded). Each sample keeps the front-ends'
counters (connections by state, drops, events, local answers) and the agents' (splices, removals,
drops), so an error can be placed in time and attributed, and how busy the whole machine's CPUs
were (`cpu_busy`, this soak included) and the load average, since the machine may be shared.
Verdict: each
front-end's memory judged against its load (`judge_rss`: per cycle, the highest RSS may rise only
with a new connection high-water mark, and otherwise stays within `--rss-tolerance`), zero wrk
errors in segments that do not overlap a fault window, nothing left at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from miresga.bench.runner import mix_paths
from miresga.bench.workloads import mix_workload
from miresga.bench.wrk import mix_script, parse_wrk_output, wrk_argv

FAULT_WINDOW_S = 25.0    # a fault, and the time its effects may take to settle
RSS_TOLERANCE = 0.10     # a cycle's highest RSS over its baseline at the same load high-water mark
CONN_STEP = 0.10         # more connections than every earlier cycle by this much: a new load peak


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]                      # idle + iowait
    return sum(f[:8]) - idle, sum(f[:8])


def _rss_kb(pid: int) -> int | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, tb, sample_s: float):
        self.tb, self.sample_s = tb, sample_s
        self.t0 = time.monotonic()
        self.samples: list[dict] = []
        self.faults: list[dict] = []
        self.stop = threading.Event()
        self._cpu = _cpu_times()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def sample(self) -> dict:
        tb = self.tb
        s: dict = {"t": self.now()}
        # how busy the whole machine was (this soak and anything else on it) since the last sample
        busy, total = _cpu_times()
        s["cpu_busy"] = round((busy - self._cpu[0]) / max(1, total - self._cpu[1]), 3)
        self._cpu = (busy, total)
        s["loadavg1"] = os.getloadavg()[0]
        try:
            st = tb.switch_stats()
            s["switch_entries"] = st["installed"] + st["queue"]
        except Exception:  # noqa: BLE001 - a sample that failed is recorded as missing
            s["switch_entries"] = None
        for f in tb.cfg.hosts.frontends:
            pid = tb.state["procs"].get(f"frontend-{f.name}")
            s[f"rss_kb_{f.name}"] = _rss_kb(pid) if pid else None
            s[f"pid_{f.name}"] = pid
            try:
                m = tb.frontend_metrics(f.name)
                s[f"conns_{f.name}"] = int(sum(m.get("connections", {}).values()))
                # cumulative counters, to place an error in time: drops by reason, engine events,
                # local responses (503s...), back-ends' health
                s[f"fe_{f.name}"] = {g: m.get(g, {}) for g in ("connections", "drops", "events", "local", "healthy")}
            except Exception:  # noqa: BLE001
                s[f"conns_{f.name}"] = None
        for b in tb.cfg.hosts.backends:
            try:
                a = tb.agent_stats(b.name)
                s[f"flows_{b.name}"] = a["flows"]
                s[f"agent_{b.name}"] = {k: v for k, v in {**a["counters"], **a["drops"]}.items()
                                        if v and not k.startswith(("xlate", "sack", "window"))}
            except Exception:  # noqa: BLE001
                s[f"flows_{b.name}"] = None
        return s

    def sampler(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self.sample())
            self.stop.wait(self.sample_s)

    def kill_backend(self, name: str) -> None:
        tb = self.tb
        t = self.now()
        for p in tb.pids_of(name, "nginx"):
            os.kill(p, signal.SIGKILL)
        time.sleep(5)
        run = tb.run_dir / name
        subprocess.run(["ip", "netns", "exec", tb.ns(name), "nginx", "-c", str(run / "nginx.conf"), "-e",
                        str(run / "error.log")], check=True)
        self.faults.append({"t": t, "what": f"{name} nginx killed, restarted 5 s later"})

    def kill_frontend(self, name: str) -> None:
        tb = self.tb
        t = self.now()
        key = f"frontend-{name}"
        os.kill(tb.state["procs"][key], signal.SIGKILL)
        time.sleep(3)
        conf = tb.run_dir / "config.yaml"
        tb._spawn(key, ["frontend", "--config", str(conf), "--name", name, "--netns", tb.ns(name)])
        self.faults.append({"t": t, "what": f"{name} killed (SIGKILL), restarted 3 s later"})


def run(minutes: float, out_dir: Path, sample_s: float = 5.0, rss_tolerance: float = RSS_TOLERANCE,
        connections: int = 16) -> dict:
    from miresga.testbed import Testbed
    out_dir.mkdir(parents=True, exist_ok=True)
    total = minutes * 60
    segments = [(m, ka) for m in ("T1", "T2", "T3") for ka in (True, False)]
    # Cycles of the six segments repeat; the first cycle is the warm-up (it reaches each mix's
    # working set once), later cycles must stay where it ended.
    seg_s = max(10.0, min(60.0, total / 12))
    with Testbed(lb="miresga") as tb, tempfile.TemporaryDirectory() as tmp:
        paths = {o["size"]: o["path"] for o in tb.status()["objects"]}
        url = f"http://{tb.cfg.vip.address}:{tb.cfg.vip.port}"
        soak = Soak(tb, sample_s)
        th = threading.Thread(target=soak.sampler, daemon=True)
        th.start()
        plan = [(0.25, lambda: soak.kill_backend(tb.cfg.hosts.backends[1].name)),
                (0.50, lambda: soak.kill_frontend(tb.cfg.hosts.frontends[0].name)),
                (0.75, lambda: soak.kill_backend(tb.cfg.hosts.backends[2].name))]
        faults = [threading.Timer(total * f, fn) for f, fn in plan]
        for f in faults:
            f.start()
        wrk_runs = []
        end = time.monotonic() + total
        i = 0
        while time.monotonic() < end - 5:
            mix, ka = segments[i % len(segments)]
            i += 1
            w = mix_workload(mix, keepalive=ka)
            script = Path(tmp) / f"{w.name}.lua"
            script.write_text(mix_script(mix_paths(w, paths)))
            dur = int(min(seg_s, end - time.monotonic()))   # wrk takes whole seconds
            if dur < 5:
                break
            t = soak.now()
            argv = wrk_argv(url + "/", duration_s=dur, connections=connections, threads=1, script=str(script),
                            keepalive=ka, timeout_s=10)
            p = tb.run("c1", *argv, check=False, timeout=dur + 60)
            rec = {"t_start": t, "t_end": soak.now(), "workload": w.name}
            try:
                r = parse_wrk_output(p.stdout)
                rec.update(requests=r.requests, requests_per_s=round(r.requests_per_s, 1), errors=r.errors_total,
                           errors_by_kind={k: v for k, v in r.errors.items() if v}, latency_ms=r.latency_ms)
            except Exception as e:  # noqa: BLE001
                rec.update(failure=str(e)[:200], errors=None)
            wrk_runs.append(rec)
            print(json.dumps(rec), flush=True)
            if sum(1 for r in wrk_runs[-3:] if r.get("failure")) == 3:
                break                                       # the load itself is broken: stop, report
        for f in faults:
            f.join()
        # drain: idle entries and connections go by their timers
        drain_end = time.monotonic() + tb.cfg.frontend.idle_timeout_s + tb.cfg.switch.idle_timeout_s + 30
        last = soak.sample()
        while time.monotonic() < drain_end and any(v for k, v in last.items()
                                                   if k.startswith(("switch_", "conns_", "flows_"))):
            time.sleep(2)
            last = soak.sample()
        soak.stop.set()
        th.join(timeout=30)
        soak.samples.append(last)
        # the daemons' logs go with the testbed: keep them with the report
        (out_dir / "logs").mkdir(exist_ok=True)
        for f in tb.run_dir.glob("*.log"):
            shutil.copyfile(f, out_dir / "logs" / f.name)
    report = {"minutes": minutes, "sample_s": sample_s, "segment_s": seg_s, "segments_per_cycle": len(segments),
              "samples": soak.samples, "wrk": wrk_runs, "faults": soak.faults, "end_state": last}
    report["verdict"] = verdict(report, rss_tolerance)
    (out_dir / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out_dir / "soak.png")
    return report


def cycles(rep: dict) -> list[tuple[float, float]]:
    """(start, end) of each complete cycle of the six segments (T1..T3, keep-alive and not)."""
    n = rep.get("segments_per_cycle", 6)
    w = rep["wrk"]
    return [(w[i]["t_start"], w[i + n - 1]["t_end"]) for i in range(0, len(w) - n + 1, n)]


def judge_rss(samples: list[dict], fe: str, spans: list[tuple[float, float]], tol: float,
              conn_step: float = CONN_STEP) -> dict:
    """Judge one front-end's memory against its load, as an operator reads the plot.

    The process judged is the one alive at the end (a restarted front-end from its own start).
    For each complete cycle it lived through: the highest RSS and the most connections it held.
    The first such cycle is the baseline (it reaches every mix's working set). A later cycle that
    holds more than `conn_step` more connections than every cycle before sets a new load
    high-water mark, and its RSS becomes the baseline (CPython keeps freed memory for the next
    peak: RSS follows the peak load, not time). Every other cycle's highest RSS must stay within
    `tol` of the baseline. A leak grows RSS cycle after cycle at the same load and fails; memory
    that steps up with a new connection peak and then stays there passes."""
    k, kc, kp = f"rss_kb_{fe}", f"conns_{fe}", f"pid_{fe}"
    pids = [s.get(kp) for s in samples if s.get(k)]
    if not pids:
        return {"judged": False, "why": "no samples"}
    pid = pids[-1]                                  # None in reports that did not record pids
    mine = [s for s in samples if s.get(kp) == pid and s.get(k)]
    born = mine[0]["t"]
    out: dict = {"pid": pid, "first_kb": mine[0][k], "last_kb": mine[-1][k], "cycles": []}
    for a, b in spans:
        if a < born:
            continue
        inside = [s for s in mine if a <= s["t"] < b]
        if inside:
            out["cycles"].append({"t": a, "rss_max_kb": max(s[k] for s in inside),
                                  "conns_max": max(s.get(kc) or 0 for s in inside)})
    cyc = out["cycles"]
    if len(cyc) < 2:
        out.update(judged=False, why="fewer than two complete cycles in this process's life")
        return out
    base, conn_hwm, worst = cyc[0]["rss_max_kb"], cyc[0]["conns_max"], 0.0
    for c in cyc[1:]:
        if c["conns_max"] > conn_hwm * (1 + conn_step):
            c["new_load_peak"] = True
            conn_hwm, base = c["conns_max"], max(base, c["rss_max_kb"])
            continue
        conn_hwm = max(conn_hwm, c["conns_max"])
        c["growth"] = round(c["rss_max_kb"] / base - 1, 3)
        worst = max(worst, c["growth"])
    out.update(judged=True, worst_growth=round(worst, 3), flat=worst <= tol)
    return out


def verdict(rep: dict, tol: float) -> dict:
    fault_t = [f["t"] for f in rep["faults"]]

    def in_fault(r):
        return any(r["t_start"] - FAULT_WINDOW_S <= t <= r["t_end"] for t in fault_t)
    errors_outside = sum(r.get("errors") or 0 for r in rep["wrk"] if not in_fault(r))
    errors_inside = sum(r.get("errors") or 0 for r in rep["wrk"] if in_fault(r))
    failed_outside = [r["workload"] for r in rep["wrk"] if r.get("failure") and not in_fault(r)]
    spans = cycles(rep)
    rss = {}
    for k in sorted({k for s in rep["samples"] for k in s if k.startswith("rss_kb_")}):
        rss[k[7:]] = judge_rss(rep["samples"], k[7:], spans, tol)
    ok_rss = all(r.get("flat", True) for r in rss.values())
    left = {k: v for k, v in rep["end_state"].items() if k.startswith(("switch_", "conns_", "flows_")) and v}
    return {"rss": rss, "rss_tolerance": tol, "rss_flat": ok_rss, "errors_inside_faults": errors_inside,
            "errors_outside_faults": errors_outside, "failed_segments_outside_faults": failed_outside,
            "left_at_end": left, "ok": ok_rss and errors_outside == 0 and not failed_outside and not left}


def plot(rep: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = rep["samples"]
    t = [x["t"] for x in s]
    fig, ax = plt.subplots(5, 1, figsize=(9, 12), sharex=True)
    groups = [("front-end RSS (MB)", "rss_kb_", 1 / 1024), ("front-end connections", "conns_", 1),
              ("agent flows", "flows_", 1), ("switch entries", "switch_entries", 1),
              ("machine CPU busy (all processes, 2 cores = 1.0)", "cpu_busy", 1)]
    for a, (title, prefix, scale) in zip(ax, groups):
        for k in sorted({k for x in s for k in x if k.startswith(prefix)}):
            a.plot(t, [x[k] * scale if x.get(k) is not None else None for x in s], label=k.replace(prefix, "") or k)
        a.set_title(title)
        a.legend(loc="upper left", fontsize=7)
        for f in rep["faults"]:
            a.axvspan(f["t"], f["t"] + FAULT_WINDOW_S, color="red", alpha=0.12)
    for r in rep["wrk"]:
        ax[0].annotate(r["workload"], (r["t_start"], 0), fontsize=6, rotation=90, va="bottom")
    ax[-1].set_xlabel("seconds (red: fault windows)")
    v = rep["verdict"]
    fig.suptitle(f"soak {rep['minutes']} min: {'OK' if v['ok'] else 'NOT OK'} — errors outside faults "
                 f"{v['errors_outside_faults']}, left {v['left_at_end'] or 'nothing'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
