"""Many connections (`miresga bench --connections-held 10000,100000`): what a front-end costs per
idle connection, and `frontend.max_connections` enforced.

A generator in the client namespace (`python -m miresga.bench.connhold hold ...`) opens N
connections to the VIP, sends one `GET /obj/1k` on each, reads the whole response and then keeps
the connection open, idle (a keep-alive client between requests). One client address has ~28k
source ports (the namespace's ephemeral range), so beyond that it adds addresses of the client's
network to its interface and spreads the connections over them. At most `window` connections are
in their first request at a time (the front-ends set up new connections at a few thousand per
second; a burst of 10^5 SYNs would only fill the back-ends' accept queues).

Around it the runner reads each front-end process's resident memory and CPU time (/proc) and its
metrics (connections by state, connections the kernel path holds): before, once all connections
are held, and after `idle_s` seconds of idling. Bytes per connection = RSS growth / connections the
front-ends hold.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

PORTS_PER_SOURCE = 25000
PER_PROCESS = 18000   # below this container's hard limit of 20,000 descriptors per process


# ---------------------------------------------------------------- the generator (client namespace)

def _complete(buf: bytes | bytearray) -> bool:
    head, sep, body = bytes(buf).partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v.strip())
    return False


def hold(vip: str, port: int, count: int, sources: Sequence[str], window: int, path: str,
         timeout: float = 30.0, out=sys.stdout, partial: bool = False) -> None:
    """`partial`: send the request without its final CRLF and hold the connection right away (the
    front-end keeps it in its header state: engine state, no back-end connection)."""
    want = count + 2048
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    req = f"GET {path} HTTP/1.1\r\nHost: {vip}\r\n\r\n".encode()
    if partial:
        req = req[:-2]
    sel = selectors.DefaultSelector()
    held: list[socket.socket] = []
    counts = {"opened": 0, "held": 0, "reset": 0, "timeout": 0, "error": 0}
    pending: dict[socket.socket, list] = {}   # sock -> [deadline, phase, buffer]
    t0 = last = time.monotonic()

    def fail(s: socket.socket, kind: str) -> None:
        counts[kind] += 1
        sel.unregister(s)
        pending.pop(s, None)
        s.close()

    while counts["opened"] < count or pending:
        while len(pending) < window and counts["opened"] < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            # the port is picked at connect() for the whole 4-tuple: binding a source address
            # alone would search the port range for each of tens of thousands of sockets
            s.setsockopt(socket.SOL_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            s.bind((sources[(counts["opened"] // PORTS_PER_SOURCE) % len(sources)], 0))
            rc = s.connect_ex((vip, port))
            counts["opened"] += 1
            if rc not in (0, errno.EINPROGRESS):
                counts["error"] += 1
                s.close()
                continue
            pending[s] = [time.monotonic() + timeout, "connect", bytearray()]
            sel.register(s, selectors.EVENT_WRITE)
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            st = pending.get(s)  # type: ignore[arg-type]
            if st is None:
                continue
            try:
                if st[1] == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
                    if err:
                        fail(s, "reset" if err == errno.ECONNRESET else "error")  # type: ignore[arg-type]
                        continue
                    s.send(req)  # type: ignore[union-attr]
                    if partial:
                        sel.unregister(s)
                        del pending[s]  # type: ignore[arg-type]
                        held.append(s)  # type: ignore[arg-type]
                        counts["held"] += 1
                        continue
                    st[1] = "response"
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                data = s.recv(65536)  # type: ignore[union-attr]
            except ConnectionResetError:
                fail(s, "reset")  # type: ignore[arg-type]
                continue
            except OSError:
                fail(s, "error")  # type: ignore[arg-type]
                continue
            if not data:
                fail(s, "reset")  # type: ignore[arg-type]
                continue
            st[2] += data
            if _complete(st[2]):
                sel.unregister(s)
                del pending[s]  # type: ignore[arg-type]
                held.append(s)  # type: ignore[arg-type]
                counts["held"] += 1
        now = time.monotonic()
        for s, st in list(pending.items()):
            if now > st[0]:
                fail(s, "timeout")
        if now - last >= 1.0:
            last = now
            print(json.dumps({"progress": counts, "t": round(now - t0, 2)}), file=out, flush=True)
    print(json.dumps({"done": counts, "t": round(time.monotonic() - t0, 2)}), file=out, flush=True)
    sys.stdin.read()   # hold until the runner closes our stdin
    for s in held:
        s.close()


# ---------------------------------------------------------------- the runner (root namespace)

def proc_usage(pid: int) -> dict[str, float]:
    """Resident memory (bytes) and CPU time (s, user + system, all threads) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return {"rss": rss, "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")}


def per_connection(before: Mapping[str, float], after: Mapping[str, float], conns: int) -> float | None:
    return None if conns <= 0 else round((after["rss"] - before["rss"]) / conns, 1)


def _frontends(tb) -> dict[str, int]:
    return {k.removeprefix("frontend-"): int(v) for k, v in tb.state.get("procs", {}).items()
            if k.startswith("frontend-")}


def _fe_state(tb) -> dict[str, dict[str, Any]]:
    out = {}
    for name, pid in _frontends(tb).items():
        u = proc_usage(pid)
        try:
            m = tb.frontend_metrics(name)
            conns = int(sum(m.get("connections", {}).values()))
            kernel = int(m.get("kernel_path", {}).get("connections", 0))
            refused = int(m.get("drops", {}).get("conn_limit", 0))
        except Exception:  # noqa: BLE001 - memory and CPU still say something
            conns = kernel = refused = -1
        out[name] = {**u, "connections": conns, "kernel_connections": kernel, "conn_limit_drops": refused}
    return out


def client_sources(tb, need: int) -> list[str]:
    """The client's own address, plus further addresses of its network: `need` in all."""
    import ipaddress
    c = tb.cfg.hosts.clients[0]
    net = c.address.network
    taken = {h.ip for h in tb.cfg.hosts.all()} | {net.network_address + 1}
    extra = [ip for ip in net.hosts() if ip not in taken][:need - 1]
    for ip in extra:
        tb.run(c.name, "ip", "addr", "replace", f"{ip}/{net.prefixlen}", "dev", "eth0")
    return [str(c.ip)] + [str(ipaddress.ip_address(ip)) for ip in extra]


def split(count: int, per: int = PER_PROCESS) -> list[int]:
    """Connections per generator process."""
    n = max(1, -(-count // per))
    return [count // n + (1 if i < count % n else 0) for i in range(n)]


def measure_count(tb, count: int, idle_s: float, window: int, progress: Callable[[str], None],
                  path: str = "/obj/1k", partial: bool = False) -> dict[str, Any]:
    vip = tb.status()["vip"]
    client = tb.cfg.hosts.clients[0].name
    parts = split(count)
    sources = client_sources(tb, len(parts))   # one address per process: < 25k ports each
    before = _fe_state(tb)
    procs = []
    t0 = time.monotonic()
    for i, n in enumerate(parts):
        argv = [sys.executable, "-m", "miresga.bench.connhold", "hold", "--vip", vip["address"], "--port",
                str(vip["port"]), "--count", str(n), "--sources", sources[i], "--window",
                str(max(1, window // len(parts))), "--path", path, *(["--partial"] if partial else [])]
        procs.append(subprocess.Popen(["ip", "netns", "exec", tb.ns(client), *argv], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True))
    done: dict[str, Any] = {"done": {}}
    for p in procs:
        assert p.stdout is not None
        for line in p.stdout:
            d = json.loads(line)
            if "done" in d:
                for k, v in d["done"].items():
                    done["done"][k] = done["done"].get(k, 0) + v
                break
            if int(d["t"]) % 5 == 0:
                progress(f"  {count:,}: {d['progress']} after {d['t']:.0f} s (one generator of {len(parts)})")
    setup_s = time.monotonic() - t0
    time.sleep(1.0)  # the last hand-overs and ACKs
    held_state = _fe_state(tb)
    t_idle = time.monotonic()
    time.sleep(idle_s)
    idle_state = _fe_state(tb)
    idle_wall = time.monotonic() - t_idle
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()   # the generator closes every connection and exits
    for p in procs:
        p.wait(120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:   # until the front-ends forgot them (FIN, linger)
        after = _fe_state(tb)
        if all(v["connections"] <= 0 for v in after.values()):
            break
        time.sleep(1.0)
    held = sum(v["connections"] for v in held_state.values())
    res = {"count": count, "state": "header (partial request)" if partial else "keep-alive after one response",
           "sources": len(sources), "generator": done.get("done", {}), "setup_s": round(setup_s, 1),
           "frontends": {}}
    for name in held_state:
        b, h, i = before[name], held_state[name], idle_state[name]
        res["frontends"][name] = {
            "connections": h["connections"], "kernel_connections": h["kernel_connections"],
            "rss_before_mb": round(b["rss"] / 2**20, 1), "rss_held_mb": round(h["rss"] / 2**20, 1),
            "bytes_per_connection": per_connection(b, h, h["connections"] - max(0, b["connections"])),
            "idle_cpu_pct": round(100 * (i["cpu_s"] - h["cpu_s"]) / idle_wall, 1),
            "setup_cpu_s": round(h["cpu_s"] - b["cpu_s"], 1),
            "conn_limit_drops": h["conn_limit_drops"] - max(0, b["conn_limit_drops"]),
        }
    res["connections_held"] = held
    tot_b = sum(before[n]["rss"] for n in held_state)
    tot_h = sum(held_state[n]["rss"] for n in held_state)
    res["bytes_per_connection"] = round((tot_h - tot_b) / held, 1) if held > 0 else None
    res["idle_cpu_pct"] = round(sum(v["idle_cpu_pct"] for v in res["frontends"].values()), 1)
    res["cleaned_up"] = all(v["connections"] <= 0 for v in after.values())
    return res


def run_connections(cfg, out_dir: str | Path, counts: Sequence[int], *, idle_s: float = 10.0, window: int = 1000,
                    max_connections: int | None = None, progress: Callable[[str], None] = print,
                    partial: bool = False) -> dict[str, Any]:
    """Bring up a testbed, hold each count of connections in turn, write connections.json/.md."""
    from miresga.bench.systems import with_objects
    from miresga.testbed import Testbed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = with_objects(cfg, [1024]).model_dump(mode="json")
    if max_connections:
        d["frontend"]["max_connections"] = max_connections
    # idle longer than the set-up of 10^5 connections takes: the measurement is about holding them
    d["frontend"]["idle_timeout_s"] = max(d["frontend"]["idle_timeout_s"], 600.0)
    d["agent"]["idle_timeout_s"] = max(d["agent"]["idle_timeout_s"], 600.0)
    if partial:   # held in the header state for the whole measurement
        d["frontend"]["header_timeout_s"] = max(d["frontend"]["header_timeout_s"], 600.0)
    from miresga.control.config import Deployment
    cfg = Deployment.model_validate(d)
    results = []
    with Testbed(cfg, lb="miresga") as tb:
        progress(f"testbed {tb.instance} up; frontend.max_connections {cfg.frontend.max_connections:,}")
        for n in counts:
            r = measure_count(tb, n, idle_s, window, progress, partial=partial)
            progress(f"{n:,} connections: {r['connections_held']:,} held by the front-ends, "
                     f"{r['bytes_per_connection']} bytes each, idle CPU {r['idle_cpu_pct']} %, generator "
                     f"{r['generator']}")
            results.append(r)
    report = {"state": "header (partial request)" if partial else "keep-alive after one response",
              "max_connections": cfg.frontend.max_connections, "frontends": len(cfg.hosts.frontends),
              "idle_s": idle_s, "results": results}
    (out / "connections.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "connections.md").write_text(render_connections_markdown(report))
    return report


def render_connections_markdown(r: Mapping[str, Any]) -> str:
    lines = ["# Connections held by the front-ends", "",
             f"- connections held in the front-end state: {r.get('state', '?')}",
             f"- {r['frontends']} front-ends, `frontend.max_connections` {r['max_connections']:,} each; "
             f"idle for {r['idle_s']:g} s after the last connection was set up", "",
             "| connections opened | held by front-ends | in kernel path | bytes / connection | idle CPU % (all "
             "front-ends) | set-up time | refused (reset) | timeouts | front-ends clean after |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for x in r["results"]:
        g = x["generator"]
        kern = sum(f["kernel_connections"] for f in x["frontends"].values())
        lines.append(f"| {x['count']:,} | {x['connections_held']:,} | {kern:,} | {x['bytes_per_connection']} | "
                     f"{x['idle_cpu_pct']} | {x['setup_s']} s | {g.get('reset', 0):,} | {g.get('timeout', 0):,} | "
                     f"{'yes' if x['cleaned_up'] else 'no'} |")
    lines += ["", "Per front-end:", ""]
    for x in r["results"]:
        for name, f in x["frontends"].items():
            lines.append(f"- {x['count']:,} / {name}: {f['connections']:,} connections, RSS {f['rss_before_mb']} -> "
                         f"{f['rss_held_mb']} MB, {f['bytes_per_connection']} B/conn, set-up CPU {f['setup_cpu_s']} s, "
                         f"idle CPU {f['idle_cpu_pct']} %, refused at the limit {f['conn_limit_drops']:,}")
    return "\n".join(lines) + "\n"


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="hold many idle HTTP keep-alive connections")
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--vip", required=True)
    h.add_argument("--port", type=int, default=80)
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--sources", required=True)
    h.add_argument("--window", type=int, default=1000)
    h.add_argument("--path", default="/obj/1k")
    h.add_argument("--partial", action="store_true")
    a = ap.parse_args(argv)
    hold(a.vip, a.port, a.count, a.sources.split(","), a.window, a.path, partial=a.partial)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
