"""`miresga reload` and `miresga backend list|add|remove|drain|undrain|set`: change a running
deployment without a restart.

Both work on the config file the processes run (a testbed instance's, `--instance ID`, or any
`--config FILE` with the front-ends' `--pid`s). A change is validated here first — the schema, and
`pools.check_reload` against the file in place — and refused as a whole with the reason, leaving
the file and the processes as they were; otherwise the file is replaced (atomically) and every
front-end gets SIGHUP and applies it (operations.py), each checking again. With `--instance` the
command waits for each front-end's answer (its `reload_ok` / `reload_refused` events).

`backend` edits the YAML as data (comments in the file are not kept): `remove` takes the back-end
out of every rule's pool and drains it (it stays in hosts.backends: its position indexes the
switch's tables); `add NAME --rule R` puts it (back) into rule R's pool and undrains it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from miresga.control.config import ConfigError, Deployment, load_config, parse_config


class Target:
    """Where the running config lives and which processes apply it."""

    def __init__(self, args: argparse.Namespace):
        self.instance = getattr(args, "instance", None)
        self.pids: list[int] = list(getattr(args, "pid", None) or [])
        self.state: dict[str, Any] | None = None
        if self.instance:
            from miresga.testbed.testbed import RUN_ROOT
            run = RUN_ROOT / self.instance
            self.state = json.loads((run / "state.json").read_text())
            self.path = run / "config.yaml"
            self.frontends = {k.removeprefix("frontend-"): pid for k, pid in self.state.get("procs", {}).items()
                              if k.startswith("frontend-")}
            self.pids += list(self.frontends.values())
            self.switch_pid: int | None = self.state.get("procs", {}).get("switch")
            self.switch_log = run / "switch.log"
        elif getattr(args, "config", None):
            self.path = Path(args.config)
            self.frontends = {}
            self.switch_pid = None
        else:
            raise SystemExit("give --instance ID (a testbed) or --config FILE (with --pid of each front-end)")

    def running(self) -> Deployment:
        return load_config(self.path)

    def metrics(self, cfg: Deployment) -> dict[str, dict[str, dict[str, float]]]:
        """name -> scraped metrics of each front-end of a testbed instance (empty otherwise)."""
        if not self.instance:
            return {}
        from miresga.bpf.netns import in_netns
        from miresga.frontend.metrics import scrape
        out = {}
        for name in self.frontends:
            try:
                with in_netns(f"mg{self.instance}-{name}"):
                    out[name] = scrape(f"http://{cfg.frontend.metrics_address}:{cfg.frontend.metrics_port}/metrics")
            except OSError:
                out[name] = {}
        return out


def _events(m: dict[str, dict[str, float]], name: str) -> float:
    return m.get("events", {}).get(name, 0.0)


def apply_text(target: Target, text: str, wait_s: float = 10.0, source: str | None = None) -> int:
    """Validate `text` against the running config, install it, signal the front-ends; 0 if applied."""
    from miresga.frontend.pools import check_reload
    try:
        new = parse_config(text, source or str(target.path), target.path.parent)
        old = target.running()
    except ConfigError as e:
        print(f"reload refused, nothing changed:\n{e}", file=sys.stderr)
        return 1
    why = check_reload(old, new)
    if why:
        print("reload refused, nothing changed:\n  " + "\n  ".join(why), file=sys.stderr)
        return 1
    before = target.metrics(old)
    if text != target.path.read_text():
        tmp = target.path.with_name(target.path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.stat(target.path).st_mode & 0o777)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target.path)
        if target.state is not None:   # the instance's description (testbed status) follows
            from miresga.testbed.testbed import RUN_ROOT, _write_private
            target.state["config"] = new.model_dump(mode="json")
            _write_private(RUN_ROOT / target.instance / "state.json", json.dumps(target.state, indent=1))
    if target.switch_pid is not None and not _switch_reload(target, wait_s):
        return 1
    if not target.pids:
        print(f"{target.path}: written; no front-end signalled (give --pid PID of each, or --instance ID)")
        return 0
    for pid in target.pids:
        os.kill(pid, signal.SIGHUP)
    if not target.frontends:
        print(f"signalled {len(target.pids)} process(es); each logs 'reload applied' or 'reload refused'")
        return 0
    deadline = time.monotonic() + wait_s
    pending = dict(target.frontends)
    failed = []
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        now = target.metrics(new)
        for name in list(pending):
            ok = _events(now.get(name, {}), "reload_ok") - _events(before.get(name, {}), "reload_ok")
            bad = _events(now.get(name, {}), "reload_refused") - _events(before.get(name, {}), "reload_refused")
            if ok > 0 or bad > 0:
                del pending[name]
                if bad > 0:
                    failed.append(name)
    for name in target.frontends:
        state = "no answer" if name in pending else "refused (see its log)" if name in failed else "applied"
        print(f"front-end {name}: {state}")
    return 0 if not pending and not failed else 1


def _switch_reload(target: Target, wait_s: float) -> bool:
    """A testbed's switch first (it adds the services appended to the config, so that they are
    answered once the front-ends know them): signalled, and its answer read from its log."""
    log = target.switch_log
    seen = log.stat().st_size if log.exists() else 0
    os.kill(target.switch_pid, signal.SIGHUP)   # type: ignore[arg-type]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        with open(log, "rb") as f:
            f.seek(seen)
            for line in f.read().decode(errors="replace").splitlines():
                if line.startswith("miresga switch: reload"):
                    print(f"switch: {line.removeprefix('miresga switch: ')}")
                    return "refused" not in line
    print("switch: no answer to SIGHUP", file=sys.stderr)
    return False


# ---------------------------------------------------------------------- commands

def _reload(args: argparse.Namespace) -> int:
    target = Target(args)
    if args.instance and args.config:
        text = Path(args.config).read_text()      # install this file as the instance's config
        return apply_text(target, text, args.wait, args.config)
    return apply_text(target, target.path.read_text(), args.wait)   # the file was edited in place


def _edit(args: argparse.Namespace) -> int:
    target = Target(args)
    data = yaml.safe_load(target.path.read_text())
    backends = data.get("hosts", {}).get("backends", [])
    entry = next((b for b in backends if b.get("name") == args.name), None)
    if entry is None:
        print(f"no back-end named {args.name!r} in hosts.backends of {target.path}", file=sys.stderr)
        return 2
    op = args.backend_cmd
    if op in ("drain", "undrain"):
        entry["drain"] = op == "drain"
    elif op == "remove":
        entry["drain"] = True
        for r in data.get("rules", []):
            r["pool"] = [n for n in r.get("pool", []) if n != args.name]
    elif op == "add":
        entry.pop("drain", None)
        rules = data.get("rules", [])
        names = {r.get("name") for r in rules}
        unknown = [r for r in args.rule if r != "all" and r not in names]
        if unknown:
            print(f"no rule named {unknown} (have {sorted(names)})", file=sys.stderr)
            return 2
        for r in rules:
            if ("all" in args.rule or r.get("name") in args.rule) and args.name not in r.get("pool", []):
                r["pool"] = [*r.get("pool", []), args.name]
    elif op == "set":
        if args.weight is not None:
            entry["weight"] = args.weight
        if args.max_connections is not None:
            entry["max_connections"] = args.max_connections
    return apply_text(target, yaml.safe_dump(data, sort_keys=False), args.wait,
                      f"{target.path} after `backend {op} {args.name}`")


def _list(args: argparse.Namespace) -> int:
    target = Target(args)
    cfg = target.running()
    m = target.metrics(cfg)
    rows = []
    for b in cfg.hosts.backends:
        pools = [r.name for r in cfg.rules if b.name in r.pool]
        key = b.name
        per_fe = {fe: {"healthy": bool(x.get("backend_healthy", {}).get(key, 0)),
                       "active": int(x.get("backend_active", {}).get(key, 0))} for fe, x in m.items()}
        rows.append({"name": b.name, "address": str(b.ip), "port": b.port, "weight": b.weight,
                     "drain": b.drain, "max_connections": b.max_connections, "rules": pools, "frontends": per_fe})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':8} {'address':21} {'weight':>6} {'drain':>5} {'max_conn':>8}  rules  [front-end: health active]")
    for r in rows:
        fes = " ".join(f"{fe}:{'up' if v['healthy'] else 'DOWN'} {v['active']}" for fe, v in r["frontends"].items())
        print(f"{r['name']:8} {r['address'] + ':' + str(r['port']):21} {r['weight']:>6} {'yes' if r['drain'] else 'no':>5} "
              f"{r['max_connections'] or '-':>8}  {','.join(r['rules']) or '-'}  {fes}")
    return 0


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instance", help="a testbed instance (its config and front-ends)")
    p.add_argument("--config", help="the config file the front-ends run (without --instance)")
    p.add_argument("--pid", type=int, action="append", help="a front-end's process id (repeat; without --instance)")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the front-ends' answers")


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reload", help="apply a changed config to running front-ends (or refuse it as a whole)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _target_args(r)
    r.set_defaults(func=_reload)
    b = sub.add_parser("backend", help="list back-ends; add/remove/drain/undrain/set one at run time",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bs = b.add_subparsers(dest="backend_cmd", required=True)
    lp = bs.add_parser("list", help="back-ends, their pools, drain and limits (and per front-end: health, connections)")
    _target_args(lp)
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=_list)
    for op, doc in (("add", "put NAME into rules' pools (and undrain it)"),
                    ("remove", "take NAME out of every pool and drain it"),
                    ("drain", "no new connections to NAME; established ones finish"),
                    ("undrain", "NAME takes new connections again"),
                    ("set", "change NAME's weight or max_connections")):
        p = bs.add_parser(op, help=doc)
        p.add_argument("name")
        _target_args(p)
        if op == "add":
            p.add_argument("--rule", action="append", required=True, help="rule name (repeat), or 'all'")
        if op == "set":
            p.add_argument("--weight", type=int)
            p.add_argument("--max-connections", type=int)
        p.set_defaults(func=_edit)
