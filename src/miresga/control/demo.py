"""`miresga demo`: the main job on the built-in default config.

Brings the whole system up on the testbed (eBPF switch and its controller, two front-ends, three
nginx back-ends with agents, the peer load balancers), drives a short scripted mix through the VIP
with curl and wrk, prints a summary (requests per rule and back-end, fast-path vs slow-path bytes,
switch table occupancy, agent flows), writes a quick benchmark report with its plot, and tears
everything down, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from miresga.control.config import load_config


def _step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


SCRIPT = [  # (what it shows, method, path, Host header)
    ("a large video object: rule video, offloaded to the switch", "GET", "/video/8m", None),
    ("a download: rule download, offloaded", "GET", "/download/1m", None),
    ("a small API answer: rule api, stays on the slow path", "GET", "/api/items/42", None),
    ("a second site by Host: rule static-site, only on be3", "GET", "/whoami", "static.example"),
    ("a POST whose body spans many segments", "POST", "/echo", None),
    ("a 100 MB download, byte-exact", "GET", "/download/100m", None),
]


def _frontend_totals(tb) -> dict[str, Counter]:
    tot: dict[str, Counter] = {}
    for f in tb.cfg.hosts.frontends:
        for metric, values in tb.frontend_metrics(f.name).items():
            tot.setdefault(metric, Counter()).update(values)
    return tot


def _scripted(tb, objs: dict[str, dict]) -> bool:
    vip = f"http://{tb.cfg.vip.address}:{tb.cfg.vip.port}"
    ok_all = True
    for what, method, path, host in SCRIPT:
        args = ["curl", "-s", "--max-time", "60", "-w", "\n%{http_code} %{size_download} %{time_total}"]
        if host:
            args += ["-H", f"Host: {host}"]
        if method == "POST":
            args += ["--data-binary", "@-"]
        out = tb.run_bytes("c1", *args, f"{vip}{path}", input=b"x" * 200_000 if method == "POST" else None)
        body, _, tail = out.rpartition(b"\n")
        code, size, secs = tail.decode().split()
        name = path.rsplit("/", 1)[1]
        check = ""
        if path.startswith(("/video/", "/download/")):
            good = hashlib.sha256(body).hexdigest() == objs[f"/obj/{name}"]["sha256"]
            ok_all &= good
            check = "sha256 ok" if good else "sha256 MISMATCH"
        else:
            check = body.decode(errors="replace").strip()[:60]
        ok_all &= code == "200"
        _step(f"{method} {path}{' (Host ' + host + ')' if host else ''}: {code}, {int(size):,} B in "
              f"{float(secs) * 1000:.0f} ms — {check}  [{what}]")
    return ok_all


def _summary(tb) -> None:
    fe = _frontend_totals(tb)
    sw = tb.switch_stats()
    print()
    print("requests per rule:     " + ", ".join(f"{k} {int(v)}" for k, v in sorted(fe.get("requests", {}).items())))
    print("requests per back-end: " + ", ".join(f"{k} {int(v)}" for k, v in
                                                sorted(fe.get("backend_requests", {}).items())))
    c = sw["counters"]
    st = tb.status()
    be_tx = sum((h["counters"] or {}).get("egress", {}).get("bytes", 0) for h in st["hosts"] if h["role"] == "backend")
    fe_rx = sum((h["counters"] or {}).get("ingress", {}).get("bytes", 0) for h in st["hosts"] if h["role"] == "frontend")
    share = 1 - fe_rx / be_tx if be_tx else 0.0
    print(f"bytes:                 back-ends sent {be_tx / 1e6:,.1f} MB; {share:.1%} took the switch fast path, "
          f"{fe_rx / 1e6:,.1f} MB passed a front-end (slow path)")
    print(f"switch:                offload table {sw['installed']}/{sw['capacity']} entries, queue {sw['queue']}, "
          f"profile {sw['profile']}; SYN-ACKs {c.get('synack', 0):,}, to front-ends {c.get('to_frontend', 0):,}, "
          f"fast path to clients {c.get('to_client', 0):,} / to back-ends {c.get('to_backend', 0):,} frames")
    print("front-ends:            " + ", ".join(f"{m['name']} {m['state']} ({m['buckets']} buckets)"
                                               for m in sw["members"]))
    flows = {b.name: tb.agent_stats(b.name) for b in tb.cfg.hosts.backends}
    print("agents:                " + ", ".join(f"{n} {s['flows']} flows, {s['translations']:,} translations"
                                               for n, s in flows.items()))
    drops = {k: int(v) for k, v in fe.get("drops", {}).items() if v}
    print(f"front-end drops:       {drops or 'none'}")
    print()


def run_demo(args: argparse.Namespace) -> int:
    from miresga.bench.runner import run_bench
    from miresga.bench.workloads import build_workloads
    from miresga.testbed import Testbed
    cfg = load_config(args.config)
    out = Path(args.out)
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the testbed's teardown
    _step("bringing up Miresga on the testbed: eBPF switch + controller, 2 front-ends, 3 nginx back-ends "
          "with agents, and the peers (nginx, HAProxy)")
    with Testbed(cfg, lb="miresga", verbose=True) as tb:
        st = tb.status()
        _step(f"VIP {st['vip']['address']}:{st['vip']['port']}; rules: "
              + ", ".join(r.name for r in tb.cfg.rules))
        objs = {o["path"]: o for o in st["objects"]}
        ok = _scripted(tb, objs)
        _step(f"quick benchmark ({args.seconds:g} s per point): Miresga against direct, nginx and HAProxy")
        workloads = build_workloads(sizes=(1024, 1 << 20), modes=("keepalive",), mixes=("T2",))
        records = run_bench(tb.cfg, None, workloads, args.seconds, 32, out, testbed=tb)
        _summary(tb)
        bad = [r for r in records if r.get("failure")]
        _step(f"benchmark report: {out}/report.md, {out}/throughput.png"
              + (f" ({len(bad)} points failed)" if bad else ""))
        _step(f"tearing down testbed {tb.instance}")
    _step(f"done in {time.monotonic() - t0:.0f} s; nothing left behind")
    return 0 if ok and not bad else 1


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="run the demo on the built-in default config")
    d.add_argument("--config")
    d.add_argument("--seconds", type=float, default=3, help="wrk duration per benchmark point")
    d.add_argument("--out", default="demo-out", help="where the quick benchmark report goes")
    d.set_defaults(func=run_demo)
