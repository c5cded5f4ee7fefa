"""Front-end metrics for Prometheus: a snapshot of the engine's counters, published by the main
loop once a second and read by prometheus_client's HTTP thread (so the engine is never read
while it changes)."""

from __future__ import annotations

import threading
import time
from typing import Any

from miresga.metrics import Endpoint, family, scrape_samples

P = "miresga_frontend_"


class LoopStats:
    """Whether the main loop keeps up: its longest turn (work between two waits) since the last
    publish, and the cyclic garbage collector's runs, pauses and the objects it freed. The engine
    frees what a connection allocated by reference counting; objects the collector has to free
    mean a reference cycle per request or connection somewhere, whose collections stop the loop
    (a cycle per request once cost 100-540 ms pauses every ~0.4 s: docs/frontend.md)."""

    def __init__(self) -> None:
        self.turn_max = 0.0
        self.collections = [0, 0, 0]
        self.collected = 0
        self.pause_s = 0.0
        self._started: float | None = None

    def turn(self, seconds: float) -> None:
        if seconds > self.turn_max:
            self.turn_max = seconds

    def gc_callback(self, phase: str, info: dict) -> None:
        """For gc.callbacks (runs in whichever thread triggered the collection)."""
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.pause_s += time.perf_counter() - self._started
            self._started = None
            self.collections[info["generation"]] += 1
            self.collected += info["collected"]


class MetricsPublisher:
    def __init__(self, engine, io_stats, worker_stats: dict, health, backend_names: list[str]):
        self.engine, self.io_stats, self.worker_stats, self.health = engine, io_stats, worker_stats, health
        self.names = backend_names
        self.kernel_stats = None   # callable -> {counter: n} of the kernel path, when it runs
        self.loop = LoopStats()
        self._snap: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._endpoint: Endpoint | None = None
        self.publish()

    def publish(self) -> None:
        e, st = self.engine, self.engine.stats
        snap = {
            "connections": e.conns_by_state(),
            "offloaded": e.offloaded(),
            "requests_rule": dict(st.requests_rule),
            "requests_backend": {self.names[b]: n for b, n in st.requests_backend.items()},
            "offload": dict(st.offload),
            "bytes": dict(st.bytes),
            "drops": dict(st.drops),
            "events": dict(st.events),
            "local": {"400": 0, "431": 0, "503": 0, **{str(k): v for k, v in st.responses_local.items()}},
            "packets": {"rx": self.io_stats.rx, "tx": self.io_stats.tx, "rx_gso": self.io_stats.rx_gso,
                        "tx_gso": self.io_stats.tx_gso, "tx_errors": self.io_stats.tx_errors,
                        "kernel_drops": self.io_stats.kernel_drops},
            "switch_rpc": dict(self.worker_stats),
            "healthy": {self.names[i]: int(h) for i, h in enumerate(self.health.healthy)},
            "active": {self.names[i]: n for i, n in enumerate(e.active)},
            "drained": {self.names[i]: int(d) for i, d in enumerate(e.pools.drain)},
            "kernel": dict(self.kernel_stats()) if self.kernel_stats is not None else {},
            "loop_turn_max": self.loop.turn_max,
            "gc_collections": {str(g): n for g, n in enumerate(self.loop.collections)},
            "gc_collected": self.loop.collected,
            "gc_pause": self.loop.pause_s,
        }
        self.loop.turn_max = 0.0
        k = snap["kernel"]
        k["connections"] = e.kernel_held()
        # Bytes the kernel path relayed took the slow path too (through this front-end).
        b = snap["bytes"]
        for path, counter in (("slow_to_client", "to_client_bytes"), ("slow_to_backend", "to_backend_bytes")):
            if k.get(counter):
                b[path] = b.get(path, 0) + k[counter]
        with self._lock:
            self._snap = snap

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snap

    def collect(self):
        s = self.snapshot()

        def fam(kind, name, doc, label, values):
            return family(kind, P + name, doc, [label], values)

        yield fam("g", "connections", "connections by state", "state", s["connections"])
        yield family("g", P + "offloaded_connections", "connections with a confirmed switch entry",
                     values=s["offloaded"])
        yield fam("c", "requests", "requests per rule", "rule", s["requests_rule"])
        yield fam("c", "backend_requests", "requests per back-end", "backend", s["requests_backend"])
        yield fam("c", "offload", "offload requests and outcomes", "event", s["offload"])
        yield fam("c", "bytes", "payload bytes by path (offloaded_est: acknowledged minus relayed)", "path",
                  s["bytes"])
        yield fam("c", "drops", "segments dropped, by reason", "reason", s["drops"])
        yield fam("c", "events", "engine events", "event", s["events"])
        yield fam("c", "local_responses", "responses the front-end sent itself", "status", s["local"])
        yield fam("c", "packets", "packet socket counters", "counter", s["packets"])
        yield fam("c", "switch_rpc", "switch controller calls", "counter", s["switch_rpc"])
        yield fam("g", "backend_healthy", "1 if the back-end is in its pools", "backend", s["healthy"])
        yield fam("g", "backend_active", "connections per back-end", "backend", s["active"])
        yield fam("g", "backend_drained", "1 if the back-end is drained (no new connections)", "backend",
                  s["drained"])
        yield fam("c", "kernel_path", "front-end kernel path: segments and bytes relayed, passed up, events "
                  "(connections: held by the kernel now)", "counter", s["kernel"])
        yield family("g", P + "loop_turn_max_seconds", "longest main-loop turn in the last second",
                     values=s["loop_turn_max"])
        yield fam("c", "gc_collections", "cyclic garbage collector runs", "generation", s["gc_collections"])
        yield family("c", P + "gc_collected_objects", "objects the cyclic collector freed (near 0 when "
                     "nothing makes reference cycles)", values=s["gc_collected"])
        yield family("c", P + "gc_pause_seconds", "time spent in the cyclic collector", values=s["gc_pause"])

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        self._endpoint = Endpoint(self, port, addr)

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()


def scrape(url: str, timeout: float = 2.0) -> dict[str, dict[str, float]]:
    """Read a front-end's metrics endpoint into {metric: {label value: number}} (for `status`)."""
    out: dict[str, dict[str, float]] = {}
    for name, samples in scrape_samples(url, timeout).items():
        if name.startswith(P):
            for labels, value in samples.items():
                out.setdefault(name[len(P):].removesuffix("_total"), {})[labels[0][1] if labels else ""] = value
    return out


SUMMARY = ("connections", "offloaded_connections", "requests", "backend_requests", "backend_healthy",
           "offload", "bytes", "local_responses", "drops", "packets", "kernel_path", "switch_rpc")


def format_summary(m: dict[str, dict[str, float]]) -> list[str]:
    """Lines for a human (used by `miresga frontend --status`; `miresga status` may show them)."""
    lines = []
    for name in SUMMARY:
        vals = m.get(name, {})
        shown = ", ".join(f"{k or 'value'}={int(v)}" for k, v in sorted(vals.items()) if v) or "-"
        lines.append(f"  {name:22s} {shown}")
    return lines
