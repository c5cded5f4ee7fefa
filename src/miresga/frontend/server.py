"""The front-end process: the only place with sockets, threads and a clock.

    packet socket ──► Engine.segment ──► actions ──► packet socket (Send)
                                                └──► OffloadWorker ──► switch controller (gRPC)
    OffloadWorker results, switch idle reports, health results ──► queue ──► Engine

The engine runs on the main thread only; other threads talk to it through one queue, so the
engine needs no locks. Metrics are published as a snapshot the Prometheus thread reads.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import selectors
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from miresga import cookie, neighbours
from miresga.control.config import Deployment
from miresga.frontend.engine import Engine, Send
from miresga.frontend.kernel.handover import KernelCheck, KernelHandover, KernelMark, KernelRemove
from miresga.frontend.health import HealthTracker, check_ok, probe
from miresga.frontend.metrics import MetricsPublisher
from miresga.frontend.switch_link import NoSwitch, OffloadWorker

log = logging.getLogger("miresga.frontend")


KERNEL_LIMIT_MARGIN = 64   # new connections the kernel may open between two ticks near the limit
KERNEL_SWEEP_S = 30.0      # how often entries without an engine connection are looked for
KERNEL_POLL_S = 0.002      # the kernel path's events are read at least this often (they never hold data)


# ---------------------------------------------------------------------- kernel guard

GUARD_TABLE = "miresga_fe"


def install_kernel_guard(own_ip: str, iface: str = "eth0") -> None:
    """The spliced traffic is addressed to the VIP and to clients, never to this host: make sure
    this namespace's kernel neither forwards it nor answers it (RST, ICMP). Only on the fabric
    interface: a management interface (SSH) and the host's forwarding setting are left alone —
    packets for other addresses are dropped before routing, so none is ever forwarded."""
    rules = f"""
table ip {GUARD_TABLE} {{
  chain pre {{ type filter hook prerouting priority raw; policy accept;
    iifname "{iface}" ip daddr != {own_ip} counter drop comment "spliced traffic: the front-end's packet socket handles it"
  }}
  chain out {{ type filter hook output priority raw; policy accept;
    oifname "{iface}" ip saddr != {own_ip} counter drop comment "never answer for the VIP or a client"
  }}
}}
"""
    remove_kernel_guard()
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True)


def remove_kernel_guard() -> None:
    subprocess.run(["nft", "delete", "table", "ip", GUARD_TABLE], capture_output=True)


# ---------------------------------------------------------------------- health checks

class HealthWorker(threading.Thread):
    def __init__(self, targets: list[tuple[str, int]], path: str, interval: float, timeout: float,
                 results: queue.SimpleQueue, wake: Callable[[], None]):
        super().__init__(name="health", daemon=True)
        self.targets, self.path, self.interval, self.timeout = targets, path, interval, timeout
        self.results, self.wake = results, wake
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            for i, (host, port) in enumerate(self.targets):
                self.results.put(("health", i, check_ok(probe(host, port, self.path, self.timeout))))
            self.wake()
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))


# ---------------------------------------------------------------------- the loop

GC_THRESHOLDS = (50000, 20, 100)   # default (700, 10, 10)

@dataclass
class ServerOptions:
    name: str
    iface: str = "eth0"
    gateway_mac: str | None = None
    switch_address: str | None = None      # None: derived from the config; "" : no switch
    guard: bool = True
    metrics: bool = True
    health: bool = True
    batch: int = 64
    tick_s: float = 0.1
    config_path: str | None = None         # re-read on reload (SIGHUP: operations.py)
    extra: dict[str, Any] = field(default_factory=dict)


class FrontendServer:
    def __init__(self, cfg: Deployment, opts: ServerOptions, clock: Callable[[], float] = cookie.tai_seconds):
        from miresga.frontend.packetio import PacketIO, capture_spec
        self.cfg, self.opts, self.clock = cfg, opts, clock
        host = next((h for h in cfg.hosts.frontends if h.name == opts.name), None)
        if host is None:
            raise ValueError(f"no front-end named {opts.name!r} in the config")
        self.host = host
        self.kpath = None
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.stop = threading.Event()
        try:
            if opts.guard:
                install_kernel_guard(str(host.ip), opts.iface)
            gw_mac = opts.gateway_mac or neighbours.resolve(str(host.gateway), opts.iface)  # the switch port's
            self.io = PacketIO(opts.iface, gw_mac, filter_spec=capture_spec(cfg),
                               checksum=cfg.frontend.checksum)
            if cfg.frontend.kernel_path:
                from miresga.frontend.kernel.maps import KernelPath
                self.kpath = KernelPath(opts.iface, cfg.vip_endpoints(),
                                        cfg.frontend.max_connections)
            kp = self.kpath
            self.engine = Engine(cfg, kernel=kp is not None, positions=kp.positions if kp is not None else None,
                                 counts=kp.counts(len(cfg.hosts.backends)) if kp is not None else None)
            if self.kpath is not None:
                self._kernel_keys: tuple = ()
                self.kernel_rules()
        except BaseException:   # undo what we made so far
            if self.kpath is not None:
                self.kpath.close()
            if getattr(self, "io", None) is not None:
                self.io.close()
            if opts.guard:
                remove_kernel_guard()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self.health = HealthTracker(len(cfg.hosts.backends), cfg.frontend.health_rise, cfg.frontend.health_fall)
        addr = opts.switch_address
        if addr is None:
            addr = f"{host.gateway}:{cfg.switch.control.port}"
        self.worker = OffloadWorker(self._client_factory(addr), opts.name, str(host.ip), self.results,
                                    self._wake, idle_interval=max(0.2, cfg.switch.idle_timeout_s / 4))
        self.health_worker = HealthWorker([(str(b.ip), b.direct_port) for b in cfg.hosts.backends],
                                          cfg.frontend.health_path, cfg.frontend.health_interval_s,
                                          cfg.frontend.health_timeout_s, self.results, self._wake)
        self.metrics = MetricsPublisher(self.engine, self.io.stats, self.worker.stats, self.health,
                                        [b.name for b in cfg.hosts.backends])
        if self.kpath is not None:
            self.metrics.kernel_stats = self.kpath.stats
        from miresga.frontend.operations import Operations
        try:
            self.ops = Operations(self, opts.config_path)
        except OSError:     # the access log's file: undo what we made
            self.close()
            raise

    def _client_factory(self, addr: str) -> Callable[[], Any]:
        if not addr:
            return NoSwitch
        cfg, name = self.cfg, self.opts.name

        def make() -> Any:  # as this front-end: its certificate when the config has a tls_dir
            from miresga.switch.client import SwitchClient
            return SwitchClient.from_config(cfg, addr, name)
        return make

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed (shutting down)
            pass

    def _do(self, actions: list) -> None:
        io, worker = self.io, self.worker
        for a in actions:
            t = type(a)
            if t is Send:
                io.send(a.seg)
            elif t is KernelHandover:
                if not self.kpath.handover(a.key, a.entry):  # type: ignore[union-attr]
                    self.engine.handover_refused(a.key)
            elif t is KernelRemove:
                if not self.kpath.remove(a.key, a.cli_nxt):  # type: ignore[union-attr]
                    self.engine.stats.events["kernel_remove_reused"] += 1
            elif t is KernelMark:
                self.kpath.mark(a.key)  # type: ignore[union-attr]
            elif t is KernelCheck:
                entry = self._take(a.key)
                self._do(self.engine.kernel_checked(a.key, entry, self.clock()))
            else:
                worker.submit(a)

    def _take(self, key):
        """Remove a connection's kernel entry, then hear what the kernel reported before (while
        the engine still counts the connection as the kernel's): a response copy still in the
        ring would otherwise reach a connection already taken back, be dropped as stale, and its
        header never be read (no `auto` offload, a log line without status). With no entry left,
        the kernel ended the connection itself, and its account is in those records too."""
        entry = self.kpath.take(key)  # type: ignore[union-attr]
        self._kernel_events(self.clock())
        return entry

    def kernel_rules(self) -> None:
        """(Re)load the rules into the kernel path: at start and after a reload."""
        eng, kp = self.engine, self.kpath
        if kp is None:
            return
        kr = kp.load_rules(self.cfg, eng.rulesets, self._kernel_usable())
        if not kr.usable:
            log.warning("the kernel path relays but routes nothing: %s", kr.why)
        self._kernel_limits(self.clock())

    def _kernel_usable(self) -> list[bool]:
        """Back-ends the kernel may send new connections to: healthy and not drained."""
        eng = self.engine
        return [h and not d for h, d in zip(eng.healthy, eng.pools.drain)]

    def _kernel_limits(self, now: float) -> None:
        """What the kernel path must follow as time and load move: the cookie keys (a new
        generation), and whether it may take new connections (not at the engine's limit, which
        counts the kernel's connections too: the engine refuses beyond it, as without the kernel)."""
        kp, eng = self.kpath, self.engine
        keys = eng.keys(now)
        if keys is not self._kernel_keys:
            kp.set_keys(keys)  # type: ignore[union-attr]
            self._kernel_keys = keys
        kp.set_routing(True, len(eng.conns) < self.cfg.frontend.max_connections - KERNEL_LIMIT_MARGIN,  # type: ignore
                       eng.alog is not None)

    def _kernel_events(self, now: float) -> None:
        if self.kpath is None:
            return
        eng = self.engine
        events = self.kpath.events()
        for ev in events:
            self._do(eng.kernel_event(ev, now))
        if events:
            self._kernel_limits(now)

    def _segments(self, segs: list, now: float) -> None:
        eng = self.engine
        if self.kpath is None:
            for seg in segs:
                self._do(eng.segment(seg, now))
            return
        for seg in segs:
            key = eng.kernel_key(seg)
            if key is not None:
                entry = self._take(key)
                self._do(eng.take_back(key, entry, now))
            self._do(eng.segment(seg, now))

    def _drain_results(self, now: float) -> None:
        eng = self.engine
        while True:
            try:
                r = self.results.get_nowait()
            except queue.Empty:
                return
            kind = r[0]
            if kind == "offload":
                self._do(eng.offload_result(r[1], r[2], r[3], r[4], now, r[5]))
            elif kind == "idle":
                self._do(eng.switch_idle(r[1], now))
            elif kind == "health":
                changed = self.health.observe(r[1], r[2])
                if changed is not None:
                    log.info("back-end %s is now %s", self.cfg.hosts.backends[r[1]].name,
                             "healthy" if changed else "unhealthy")
                    eng.set_health(r[1], changed)
                    if self.kpath is not None:
                        self.kpath.set_health(self._kernel_usable())

    def run(self) -> None:
        opts = self.opts
        self.worker.start()
        if opts.health:
            self.health_worker.start()
        if opts.metrics:
            self.metrics.serve(self.cfg.frontend.metrics_port, str(self.cfg.frontend.metrics_address))
        sel = selectors.DefaultSelector()
        sel.register(self.io.fileno(), selectors.EVENT_READ, "io")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self.kpath is not None:
            sel.register(self.kpath.fileno(), selectors.EVENT_READ, "kernel")
        eng, io, clock = self.engine, self.io, self.clock
        next_tick = next_pub = 0.0
        next_sweep = clock() + KERNEL_SWEEP_S
        # Every segment allocates a few objects and tens of thousands of connections stay alive:
        # with the default thresholds the cyclic collector rescans them all the time (a quarter
        # of the engine's time in benchmarks/frontend_microbench.py). Startup objects are frozen out of it.
        # The price of a high gen-0 threshold is a big collection when one comes, so nothing per
        # request may make reference cycles (http.py; tests/unit/test_frontend_cycles.py); the
        # gc_* metrics show it if something does.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        loop = self.metrics.loop
        gc.callbacks.append(loop.gc_callback)
        log.info("front-end %s up on %s (mtu %d)", opts.name, opts.iface, io.codec.mtu)
        for w in self.cfg.service_warnings():
            log.warning("config: %s", w)
        try:
            timeout = opts.tick_s
            while not self.stop.is_set():
                for key, _ in sel.select(timeout=timeout):
                    if key.data == "wake":
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                turn_start = time.perf_counter()
                now = clock()
                for _ in range(16):   # bounded, so timers and results are never starved
                    # the kernel's events first: a request it took comes before what follows it
                    self._kernel_events(now)
                    segs = io.recv_batch(opts.batch)
                    self._segments(segs, now)
                    if len(segs) < opts.batch:
                        break
                self._drain_results(now)
                self.ops.poll()
                held = eng.next_flush()
                if held is not None and held <= now:
                    self._do(eng.flush(now))
                    held = eng.next_flush()
                timeout = opts.tick_s if held is None else min(opts.tick_s, max(0.0, held - now))
                if self.kpath is not None:   # the kernel wakes us only for a batch: poll its events
                    timeout = min(timeout, KERNEL_POLL_S)
                if now >= next_tick:
                    next_tick = now + opts.tick_s
                    self._do(eng.tick(now))
                    if self.kpath is not None:
                        self._kernel_limits(now)
                if self.kpath is not None and now >= next_sweep:
                    next_sweep = now + KERNEL_SWEEP_S
                    gone = self.kpath.sweep(lambda k: k in eng.conns, self.cfg.frontend.idle_timeout_s)
                    if gone:
                        eng.stats.events["kernel_swept"] += gone
                loop.turn(time.perf_counter() - turn_start)
                if now >= next_pub:
                    next_pub = now + 1.0
                    io.poll_kernel_stats()
                    self.metrics.publish()
        finally:
            gc.callbacks.remove(loop.gc_callback)
            self.close()

    def close(self) -> None:
        if getattr(self, "ops", None) is not None:
            self.ops.close()
        self.worker.stop.set()
        self.health_worker.stop.set()
        self.metrics.close()
        if self.kpath is not None:
            self.kpath.close()
            self.kpath = None
        self.io.close()
        if self.opts.guard:
            remove_kernel_guard()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
