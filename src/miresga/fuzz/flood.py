"""Floods on the testbed while real clients download (issue 15, second part).

    python -m miresga.fuzz.flood run --seconds 8 --out DIR     # brings a testbed up and down

For each flood — spoofed-port SYNs to the VIP, random ACKs and RSTs to the VIP, segments forged
"from a back-end" (its service ip:port, sent from the client's port), garbage frames, connections
that send half a request header and stay silent, connections that send garbage — a flooder runs
in the client namespace for `--seconds` while a legitimate client there downloads objects over
new connections, checking every byte (sha256). Recorded: what the flooder sent (packets/s or
connections), what the client saw (responses, errors, latency percentiles), the switch's counters
that moved, and what state is left afterwards (switch entries, agent flows, front-end connections).

The roles `send`, `hold` and `client` run inside a namespace (`ip netns exec`) and print JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

from miresga.fuzz.wire import ACK, RST, SYN, tcp_frame

ETH_P_ALL = 0x0003


def _mac(s: str) -> bytes:
    return bytes(int(x, 16) for x in s.split(":"))


# ------------------------------------------------------------------ roles (inside a namespace)

def role_send(kind: str, seconds: float, smac: str, dmac: str, src: str, vip: str, vport: int,
              backend: str, bport: int, seed: int) -> dict:
    """Raw frames on eth0 as fast as one Python process can send them."""
    rng = random.Random(seed)
    sm, dm = _mac(smac), _mac(dmac)
    s_ip, v_ip, b_ip = (int.from_bytes(socket.inet_aton(a), "big") for a in (src, vip, backend))
    frames = []
    for _ in range(4096):
        port = rng.randrange(1024, 65536)
        if kind == "syn":
            f = tcp_frame(sm, dm, s_ip, v_ip, port, vport, rng.getrandbits(32), 0, SYN, 64240,
                          b"\x02\x04\x05\xb4\x04\x02\x01\x03\x03\x07")
        elif kind == "ackrst":
            f = tcp_frame(sm, dm, s_ip, v_ip, port, vport, rng.getrandbits(32), rng.getrandbits(32),
                          rng.choice([ACK, RST, RST | ACK]), 502)
        elif kind == "forged_backend":
            f = tcp_frame(sm, dm, b_ip, s_ip, bport, port, rng.getrandbits(32), rng.getrandbits(32), ACK | 0x08, 500,
                          b"", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforge")
        else:   # garbage: an IPv4 ethertype and random bytes
            f = bytearray(dm + sm + b"\x08\x00" + rng.randbytes(rng.randrange(20, 200)))
        frames.append(bytes(f))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind(("eth0", 0))
    sent = errors = 0
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        for f in frames[:512]:
            try:
                s.send(f)
                sent += 1
            except OSError:
                errors += 1
        frames = frames[512:] + frames[:512]
    dt = time.monotonic() - t0
    return {"kind": kind, "sent": sent, "send_errors": errors, "seconds": round(dt, 2), "pps": round(sent / dt)}


def role_hold(kind: str, n: int, seconds: float, vip: str, vport: int, seed: int) -> dict:
    """`n` connections that send half a header (or garbage) and stay silent for `seconds`."""
    rng = random.Random(seed)
    socks, failed = [], 0
    for _ in range(n):
        try:
            c = socket.create_connection((vip, vport), timeout=2)
            c.sendall(b"GET /obj/1k HTTP/1.1\r\nHost: a.example\r\nX-Slow: " if kind == "half_header"
                      else rng.randbytes(rng.randrange(1, 300)))
            socks.append(c)
        except OSError:
            failed += 1
    time.sleep(seconds)
    answered = closed = reset = silent = 0
    statuses: dict[str, int] = {}
    for c in socks:
        c.setblocking(False)
        got, state = b"", "open"
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    state = "closed"
                    break
                got += chunk
        except BlockingIOError:
            pass
        except ConnectionResetError:
            state = "reset"
        except OSError:
            state = "reset"
        if got:
            answered += 1
            st = got.split(b"\r\n", 1)[0].decode("latin-1")[:40]
            statuses[st] = statuses.get(st, 0) + 1
        closed += state == "closed"
        reset += state == "reset"
        silent += not got and state == "open"
        c.close()
    return {"kind": kind, "opened": len(socks), "connect_failed": failed, "answered": answered,
            "answers": statuses, "closed_by_peer": closed, "reset_by_peer": reset, "still_open": silent}


def role_client(seconds: float, vip: str, vport: int, objects: dict[str, str]) -> dict:
    """New connection per request, alternating objects; every body checked against its sha256."""
    lat, ok, bad, errors = [], 0, 0, {}
    paths = sorted(objects)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        path = paths[i % len(paths)]
        i += 1
        t = time.monotonic()
        try:
            c = http.client.HTTPConnection(vip, vport, timeout=10)
            c.request("GET", path, headers={"Host": "a.example"})
            body = c.getresponse().read()
            c.close()
        except Exception as e:  # noqa: BLE001 - what the client saw, by kind
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            continue
        lat.append(time.monotonic() - t)
        if hashlib.sha256(body).hexdigest() == objects[path]:
            ok += 1
        else:
            bad += 1
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None
    return {"responses_ok": ok, "responses_bad": bad, "errors": errors, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] * 1000, 1) if lat else None}


# ------------------------------------------------------------------ orchestration (root namespace)

def _in_ns(ns: str, role: str, args: dict, timeout: float) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "miresga.fuzz.flood", role,
                             json.dumps(args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(p: subprocess.Popen, timeout: float) -> dict:
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        return {"failed": err.strip()[-500:]}
    return json.loads(out)


def _counters(tb) -> dict[str, int]:
    st = tb.switch_stats()
    return dict(st.get("counters", {}))


def _leftovers(tb) -> dict[str, int]:
    return tb.leftovers()


def run(seconds: float, out_dir: Path, holders: int = 1000) -> dict:
    from miresga.control.config import load_config
    from miresga.testbed import Testbed
    cfg = load_config()
    # Short timers, so that "nothing left" is judged within seconds: a client that gave up
    # mid-flood leaves a connection the front-end ends on its idle timer.
    fe = cfg.frontend.model_copy(update={"header_timeout_s": 5.0, "idle_timeout_s": 15.0})
    cfg = cfg.model_copy(update={"frontend": fe})
    report: dict = {"seconds_per_flood": seconds, "floods": []}
    with Testbed(cfg, lb="miresga") as tb:
        c1 = tb.ns("c1")
        host = next(h for h in tb.status()["hosts"] if h["name"] == "c1")
        vip, vport = str(tb.cfg.vip.address), tb.cfg.vip.port
        be = tb.cfg.hosts.backends[0]
        objects = {o["path"]: o["sha256"] for o in tb.status()["objects"] if o["size"] in (1024, 1 << 20)}
        gw = str(next(tb.cfg.hosts.clients[0].address.network.hosts()))
        dmac = "02:53:" + ":".join(f"{int(x):02x}" for x in gw.split("."))
        send_args = {"smac": host["mac"], "dmac": dmac, "src": str(tb.cfg.hosts.clients[0].ip), "vip": vip,
                     "vport": vport, "backend": str(be.ip), "bport": be.port}
        for kind in ["none", "syn", "ackrst", "forged_backend", "garbage", "half_header", "garbage_conn"]:
            before = _counters(tb)
            client = _in_ns(c1, "client", {"seconds": seconds, "vip": vip, "vport": vport, "objects": objects},
                            seconds + 30)
            flooder = None
            if kind in ("syn", "ackrst", "forged_backend", "garbage"):
                flooder = _in_ns(c1, "send", {"kind": kind, "seconds": seconds, "seed": 1, **send_args}, seconds + 30)
            elif kind != "none":
                flooder = _in_ns(c1, "hold", {"kind": kind, "n": holders, "seconds": seconds, "vip": vip,
                                              "vport": vport, "seed": 1}, seconds + 120)
            rec = {"flood": kind, "client": _result(client, seconds + 60)}
            if flooder is not None:
                rec["flooder"] = _result(flooder, seconds + 180)
            after = _counters(tb)
            rec["switch_counters"] = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
            # an adopted orphan may take up to three idle periods (check, slow path, expiry)
            ended = time.monotonic()
            deadline = ended + 3 * fe.idle_timeout_s + fe.header_timeout_s + 10
            left = _leftovers(tb)
            while any(left.values()) and time.monotonic() < deadline:
                time.sleep(1)
                left = _leftovers(tb)
            rec["left_after"] = left
            rec["seconds_to_clean"] = round(time.monotonic() - ended, 1)
            print(json.dumps(rec), flush=True)
            report["floods"].append(rec)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "floods.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("send", "hold", "client"):
        fn = {"send": role_send, "hold": role_hold, "client": role_client}[argv[0]]
        print(json.dumps(fn(**json.loads(argv[1]))))
        return 0
    ap = argparse.ArgumentParser(prog="python -m miresga.fuzz.flood")
    ap.add_argument("cmd", choices=["run"])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--holders", type=int, default=1000)
    ap.add_argument("--out", default="flood-out")
    a = ap.parse_args(argv)
    run(a.seconds, Path(a.out), a.holders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
