"""`miresga demo`: the main job on the built-in default config.

Brings the testbed up, shows the peers serving real traffic (byte-exact downloads with curl, a short
wrk load against each), prints a summary and tears everything down, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time

from miresga.control.config import load_config


def _step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _wrk(tb, url: str, seconds: int) -> tuple[float, str]:
    p = tb.run("c1", "wrk", "-t1", "-c32", f"-d{seconds}s", url, timeout=seconds + 30)
    m = re.search(r"Requests/sec:\s+([\d.]+)", p.stdout)
    t = re.search(r"Transfer/sec:\s+(\S+)", p.stdout)
    return (float(m.group(1)) if m else 0.0), (t.group(1) if t else "?")


def run_demo(args: argparse.Namespace) -> int:
    from miresga.testbed import Testbed
    cfg = load_config(args.config)
    t0 = time.monotonic()
    _step("bringing the testbed up (namespaces, switch host, nginx back-ends, peer load balancers)")
    with Testbed(cfg, verbose=True) as tb:
        st = tb.status()
        objs = {o["size"]: o for o in st["objects"]}
        rows = []
        for name, peer in st["peers"].items():
            base = f"http://{peer['address']}:{peer['port']}"
            who = tb.run("c1", "curl", "-sf", f"{base}/whoami").stdout.strip()
            o = objs[1 << 20]
            body = tb.run_bytes("c1", "curl", "-sf", f"{base}{o['path']}")
            ok = hashlib.sha256(body).hexdigest() == o["sha256"]
            _step(f"{name:8} {base}: /whoami answered by {who}; {o['path']} sha256 {'ok' if ok else 'MISMATCH'}")
            rps, tput = _wrk(tb, f"{base}{objs[1024]['path']}", args.seconds)
            _, big = _wrk(tb, f"{base}{objs[1 << 20]['path']}", args.seconds)
            rows.append((name, who, ok, rps, big))
        print()
        print(f"{'system':8}  {'sha256':6}  {'1 KB keep-alive req/s':>22}  {'1 MB keep-alive transfer/s':>27}")
        for name, who, ok, rps, big in rows:
            print(f"{name:8}  {'ok' if ok else 'BAD':6}  {rps:>22,.0f}  {big:>27}")
        print()
        _step(f"tearing down testbed {tb.instance}")
    _step(f"done in {time.monotonic() - t0:.0f} s; nothing left behind")
    return 0 if all(r[2] for r in rows) else 1


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="run the demo on the built-in default config")
    d.add_argument("--config")
    d.add_argument("--seconds", type=int, default=3, help="wrk duration per point")
    d.set_defaults(func=run_demo)
