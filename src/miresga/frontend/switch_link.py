"""The front-end's link to the switch controller: offload inserts and deletes batched into
Writes, queued inserts polled until installed, idle reports and heartbeats. Results go back to
the engine's queue as tuples."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from miresga.frontend.engine import OffloadCheck, OffloadDelete, OffloadInsert

log = logging.getLogger("miresga.frontend")


class OffloadWorker(threading.Thread):
    """Batches offload inserts/deletes to the switch controller, polls queued inserts until
    installed, fetches idle reports and heartbeats. Results go to `results` as tuples:
    ("offload", ip, port, gen, status) and ("idle", [keys])."""

    def __init__(self, make_client: Callable[[], Any], name: str, address: str, results: queue.SimpleQueue,
                 wake: Callable[[], None], idle_interval: float = 1.0, poll_interval: float = 0.02):
        super().__init__(name="offload", daemon=True)
        self.make_client = make_client
        self.fe_name, self.fe_address = name, address
        self.results, self.wake = results, wake
        self.idle_interval, self.poll_interval = idle_interval, poll_interval
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.stop = threading.Event()
        self.queued: dict[tuple[int, int], int] = {}      # key -> gen, inserts the controller queued
        self.retry_deletes: list[tuple[int, int]] = []
        self.stats: dict[str, int] = {"rpc_errors": 0, "writes": 0, "batched_ops": 0}
        self.client = None
        self._answered: set[int] = set()
        self._deleted: set[tuple[int, int]] = set()

    def submit(self, action: OffloadInsert | OffloadDelete | OffloadCheck) -> None:
        self.q.put(action)

    def _connect(self) -> Any:
        if self.client is None:
            self.client = self.make_client()
            self.client.register(self.fe_name, self.fe_address)
        return self.client

    def run(self) -> None:
        next_idle = next_beat = 0.0
        try:
            self._connect()     # register at once: the first offload should not pay for it
            log.info("registered with the switch controller")
        except Exception as e:  # noqa: BLE001
            log.warning("switch controller not reachable yet: %s", e)
            self.client = None
        while not self.stop.is_set():
            batch: list[Any] = []
            try:
                batch.append(self.q.get(timeout=self.poll_interval))
                while len(batch) < 1024:
                    batch.append(self.q.get_nowait())
            except queue.Empty:
                pass
            checks = [a for a in batch if isinstance(a, OffloadCheck)]
            batch = [a for a in batch if not isinstance(a, OffloadCheck)]
            try:
                if batch or self.retry_deletes:
                    self._write(batch)
                if checks:
                    got = self._connect().read([(a.client_ip, a.client_port) for a in checks])
                    for a in checks:
                        st = _status(got.get((a.client_ip, a.client_port), "absent"))
                        self.results.put(("offload", a.client_ip, a.client_port, a.gen, st))
                if self.queued:
                    self._poll_queued()
                now = time.monotonic()
                if now >= next_idle:
                    next_idle = now + self.idle_interval
                    idle = self._connect().idle()
                    if idle:
                        self.results.put(("idle", [tuple(k) for k in idle]))
                        self.wake()
                if now >= next_beat:
                    next_beat = now + 1.0
                    self._connect().heartbeat(self.fe_name)
            except Exception as e:  # noqa: BLE001 - any RPC failure: report, keep the slow path
                self.stats["rpc_errors"] += 1
                log.warning("switch controller: %s", e)
                self.client = None
                # Unanswered inserts: the engine keeps the slow path; the call may still have
                # reached the controller, so delete them too. Deletes are retried until answered.
                for a in batch:
                    key = (a.client_ip, a.client_port)
                    if isinstance(a, OffloadInsert) and a.gen not in self._answered:
                        self.results.put(("offload", a.client_ip, a.client_port, a.gen, "error"))
                        self.retry_deletes.append(key)
                    elif isinstance(a, OffloadDelete) and key not in self._deleted:
                        self.retry_deletes.append(key)
                self.wake()
                self.stop.wait(0.5)

    def _write(self, batch: list[Any]) -> None:
        """Send in order per key, in as few Writes as the order allows. The controller applies a
        Write's inserts before its deletes, so a key's second operation goes one Write after its
        first (rounds); other keys share the Writes (a request-per-entry pattern, delete k then
        insert k for many keys, takes two Writes instead of one per key)."""
        client = self._connect()
        self._answered: set[int] = set()
        self._deleted: set[tuple[int, int]] = set()
        rounds: list[tuple[list[OffloadInsert], list[tuple[int, int]]]] = [([], list(self.retry_deletes))]
        last = {k: 0 for k in self.retry_deletes}   # key -> round of its latest operation
        self.retry_deletes = []
        for a in batch:
            key = (a.client_ip, a.client_port)
            r = last[key] + 1 if key in last else 0
            if r == len(rounds):
                rounds.append(([], []))
            # a queued insert keeps being polled: if it lands after its delete, the engine
            # hears "installed" for a gone connection and deletes it again
            (rounds[r][0].append(a) if isinstance(a, OffloadInsert) else rounds[r][1].append(key))
            last[key] = r
        for ins, dels in rounds:
            if not ins and not dels:
                continue
            statuses = client.write([(a.client_ip, a.client_port, a.backend) for a in ins], list(dels))
            self.stats["writes"] += 1
            self.stats["batched_ops"] += len(ins) + len(dels)
            for a, st in zip(ins, map(_status, statuses[:len(ins)])):
                if st == "queued":
                    self.queued[(a.client_ip, a.client_port)] = a.gen
                self.results.put(("offload", a.client_ip, a.client_port, a.gen, st))
                self._answered.add(a.gen)
            self._deleted.update(dels)
            if ins:
                self.wake()
        self.wake()

    def _poll_queued(self) -> None:
        keys = list(self.queued)
        got = self._connect().read(keys)
        for key in keys:
            st = _status(got.get(key, "absent"))
            if st in ("installed", "absent"):
                gen = self.queued.pop(key)
                self.results.put(("offload", key[0], key[1], gen, st))
        self.wake()


def _status(s: Any) -> str:
    """Statuses may come as str enums; the engine wants their plain values."""
    return str(getattr(s, "value", s))


class NoSwitch:
    """Stand-in when no controller is configured: every insert is refused, so all stays slow path."""

    def register(self, name: str, address: str) -> None: ...
    def heartbeat(self, name: str) -> None: ...
    def idle(self) -> list: return []
    def read(self, keys) -> dict: return {k: "absent" for k in keys}

    def write(self, inserts, deletes) -> list[str]:
        return ["table_full"] * len(inserts) + ["not_found"] * len(deletes)
