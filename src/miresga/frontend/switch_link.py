"""The front-end's link to the switch controller: offload inserts and deletes batched into
Writes, queued inserts polled until installed, idle reports and heartbeats.

`OffloadBatcher` decides (pure: actions and `now` in, controller calls and engine results out);
`OffloadWorker` is the thread that owns the queue, the clock and the gRPC client. Results go to
the engine as tuples: ("offload", ip, port, gen, status, svc) — for
`engine.offload_result(ip, port, gen, status, now, svc)` — and ("idle", [keys]) for
`engine.switch_idle(keys, now)`. A key is (client ip, client port, svc): one client port may hold a
connection (and an offload entry) to each service at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

from miresga.frontend.engine import Key, OffloadCheck, OffloadDelete, OffloadInsert

log = logging.getLogger("miresga.frontend")

# ---------------------------------------------------------------------- calls to the controller

@dataclass(frozen=True)
class Register:
    name: str
    address: str


@dataclass(frozen=True)
class Write:
    inserts: tuple[tuple[int, int, int, int], ...]   # client ip, client port, svc, backend
    deletes: tuple[Key, ...]


@dataclass(frozen=True)
class Read:
    keys: tuple[Key, ...]


@dataclass(frozen=True)
class FetchIdle:
    pass


@dataclass(frozen=True)
class Heartbeat:
    name: str


Call = Register | Write | Read | FetchIdle | Heartbeat


# ---------------------------------------------------------------------- decisions

class OffloadBatcher:
    """One cycle at a time: `start(actions, now)`, then `next_call()` / `answer(reply)` until
    `next_call()` is None; when a call fails, `failed()` ends the cycle. Every call made while not
    registered is preceded by a Register (the link was lost or never made)."""

    def __init__(self, name: str, address: str, idle_interval: float = 1.0, heartbeat_interval: float = 1.0):
        self.name, self.address = name, address
        self.idle_interval, self.heartbeat_interval = idle_interval, heartbeat_interval
        self.registered = False
        self.queued: dict[Key, int] = {}      # key -> gen, inserts the controller queued
        self.retry_deletes: list[Key] = []
        self.stats: dict[str, int] = {"rpc_errors": 0, "writes": 0, "batched_ops": 0}
        self.next_idle = self.next_beat = 0.0
        self._batch: list[OffloadInsert | OffloadDelete] = []
        self._checks: list[OffloadCheck] = []
        self._steps: deque[str] = deque()       # what this cycle still has to do, in order
        self._calls: deque[tuple[str, Call, Any]] = deque()   # calls of the current step
        self._in_flight: tuple[str, Call, Any] | None = None
        self._retrying: list[Key] = []          # this cycle's retried deletes
        self._answered: set[int] = set()        # gens of this cycle's inserts the controller answered
        self._deleted: Counter[Key] = Counter()   # this cycle's deletes the controller answered, per key

    def start(self, actions: list[Any], now: float) -> None:
        # What failed() consults is this cycle's alone, from before the first call: a failed
        # reconnect must not see the last cycle's answers (a reused client ip:port's delete
        # would look answered and never be retried).
        self._answered, self._deleted = set(), Counter()
        self._retrying, self.retry_deletes = list(dict.fromkeys(self.retry_deletes)), []
        self._checks = [a for a in actions if isinstance(a, OffloadCheck)]
        self._batch = [a for a in actions if not isinstance(a, OffloadCheck)]
        self._steps = deque()
        self._calls = deque()
        if self._batch or self._retrying:
            self._steps.append("write")
        if self._checks:
            self._steps.append("check")
        self._steps.append("poll")
        if now >= self.next_idle:
            self.next_idle = now + self.idle_interval
            self._steps.append("idle")
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat_interval
            self._steps.append("heartbeat")

    def next_call(self) -> Call | None:
        while not self._calls:
            if not self._steps:
                self._in_flight = None
                return None
            step = self._steps[0]
            if not self.registered and (step != "poll" or self.queued):
                break
            self._calls.extend(self._expand(self._steps.popleft()))
        if not self.registered:
            self._in_flight = ("register", Register(self.name, self.address), None)
        else:
            self._in_flight = self._calls.popleft()
        return self._in_flight[1]

    def _expand(self, step: str) -> list[tuple[str, Call, Any]]:
        if step == "write":
            return self._writes()
        if step == "check":
            return [("check", Read(tuple(a.key for a in self._checks)), None)]
        if step == "poll":
            return [("poll", Read(tuple(self.queued)), None)] if self.queued else []
        if step == "idle":
            return [("idle", FetchIdle(), None)]
        return [("heartbeat", Heartbeat(self.name), None)]

    def _writes(self) -> list[tuple[str, Call, Any]]:
        """In order per key, in as few Writes as the order allows. The controller applies a
        Write's inserts before its deletes, so a key's second operation goes one Write after its
        first (rounds); other keys share the Writes (a request-per-entry pattern, delete k then
        insert k for many keys, takes two Writes instead of one per key)."""
        rounds: list[tuple[list[OffloadInsert], list[Key]]] = [([], list(self._retrying))]
        last = {k: 0 for k in self._retrying}   # key -> round of its latest operation
        for a in self._batch:
            key = a.key
            r = last[key] + 1 if key in last else 0
            if r == len(rounds):
                rounds.append(([], []))
            # a queued insert keeps being polled: if it lands after its delete, the engine
            # hears "installed" for a gone connection and deletes it again
            (rounds[r][0].append(a) if isinstance(a, OffloadInsert) else rounds[r][1].append(key))
            last[key] = r
        return [("write", Write(tuple((*a.key, a.backend) for a in ins), tuple(dels)), ins)
                for ins, dels in rounds if ins or dels]

    def answer(self, reply: Any) -> list[tuple]:
        """The reply to the call in flight; returns results for the engine."""
        assert self._in_flight is not None, "answer() without a call in flight"
        kind, call, ins = self._in_flight
        self._in_flight = None
        out: list[tuple] = []
        if kind == "register":
            self.registered = True
        elif kind == "write":
            self.stats["writes"] += 1
            self.stats["batched_ops"] += len(call.inserts) + len(call.deletes)
            for a, st in zip(ins, map(_status, reply[:len(ins)])):
                if st == "queued":
                    self.queued[a.key] = a.gen
                out.append(_result(a.key, a.gen, st))
                self._answered.add(a.gen)
            self._deleted.update(call.deletes)
        elif kind == "check":
            for a in self._checks:
                out.append(_result(a.key, a.gen, _status(reply.get(a.key, "absent"))))
        elif kind == "poll":
            for key in call.keys:
                st = _status(reply.get(key, "absent"))
                if st in ("installed", "absent") and key in self.queued:
                    out.append(_result(key, self.queued.pop(key), st))
        elif kind == "idle":
            keys = [tuple(k) for k in reply or ()]
            if keys:
                out.append(("idle", keys))
        return out

    def failed(self) -> list[tuple]:
        """The call in flight failed: the link is lost, the rest of the cycle is dropped.
        Unanswered inserts: the engine keeps the slow path; the call may still have reached the
        controller, so delete them too. Deletes are retried until answered."""
        self.stats["rpc_errors"] += 1
        self.registered = False
        self._in_flight = None
        self._steps.clear()
        self._calls.clear()
        out: list[tuple] = []
        answered = self._deleted     # a key's deletes go out in order: the answered are its first ones

        def unanswered(key: Key) -> bool:
            if answered[key]:
                answered[key] -= 1
                return False
            return True
        self.retry_deletes += [k for k in self._retrying if unanswered(k)]
        for a in self._batch:
            key = a.key
            if isinstance(a, OffloadInsert) and a.gen not in self._answered:
                out.append(_result(key, a.gen, "error"))
                self.retry_deletes.append(key)
            elif isinstance(a, OffloadDelete) and unanswered(key):
                self.retry_deletes.append(key)
        self._batch, self._retrying = [], []
        return out


# ---------------------------------------------------------------------- the thread

class OffloadWorker(threading.Thread):
    """The adapter around OffloadBatcher: takes what the engine submits from a queue, makes the
    batcher's calls on a SwitchClient, puts the results on `results` and wakes the main loop."""

    def __init__(self, make_client: Callable[[], Any], name: str, address: str, results: queue.SimpleQueue,
                 wake: Callable[[], None], idle_interval: float = 1.0, poll_interval: float = 0.02):
        super().__init__(name="offload", daemon=True)
        self.make_client = make_client
        self.results, self.wake = results, wake
        self.poll_interval = poll_interval
        self.link = OffloadBatcher(name, address, idle_interval)
        self.stats = self.link.stats
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.stop = threading.Event()
        self.client: Any = None

    def submit(self, action: OffloadInsert | OffloadDelete | OffloadCheck) -> None:
        self.q.put(action)

    def run(self) -> None:
        while not self.stop.is_set():
            batch: list[Any] = []
            try:
                batch.append(self.q.get(timeout=self.poll_interval))
                while len(batch) < 1024:
                    batch.append(self.q.get_nowait())
            except queue.Empty:
                pass
            self.link.start(batch, time.monotonic())
            try:
                while (call := self.link.next_call()) is not None:
                    self._emit(self.link.answer(self._call(call)))
            except Exception as e:  # noqa: BLE001 - any RPC failure: report, keep the slow path
                log.warning("switch controller: %s", e)
                self.client = None
                self._emit(self.link.failed())
                self.wake()
                self.stop.wait(0.5)

    def _call(self, call: Call) -> Any:
        if isinstance(call, Register):
            self.client = self.make_client()
            self.client.register(call.name, call.address)
            log.info("registered with the switch controller")
            return None
        if isinstance(call, Write):
            return self.client.write(list(call.inserts), list(call.deletes))
        if isinstance(call, Read):
            return self.client.read(list(call.keys))
        if isinstance(call, FetchIdle):
            return self.client.idle()
        return self.client.heartbeat(call.name)

    def _emit(self, results: list[tuple]) -> None:
        for r in results:
            self.results.put(r)
        if results:
            self.wake()


def _result(key: Key, gen: int, status: str) -> tuple:
    """("offload", client ip, client port, gen, status, svc): the arguments of the engine's
    offload_result in its order (svc last, after `now`)."""
    return ("offload", key[0], key[1], gen, status, key[2])


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
