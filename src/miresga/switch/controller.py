"""The switch controller's decisions, without I/O (faucet style): every call takes `now` and
returns what the adapter must do; nothing here touches a socket, a clock or a BPF map.

- Offload table: batched writes with a status per entry, a hardware profile's capacity, rate and
  batch latency (operations beyond the rate wait in a FIFO, none is lost), entry states for reads.
- Idle entries: from the data plane's last-hit times.
- Front-end membership: register/heartbeat; a silent front-end loses its buckets to the others;
  one that comes back gets buckets back, moving no more buckets than balance needs.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
from dataclasses import dataclass, field

from miresga.control.config import MAX_SERVICES
from miresga.switch.profiles import Profile

Key = tuple[int, int, int]  # client ip (int, host order), client port, service index (0: the default service)
BUCKETS = 256
MAX_BATCH = 65536


class Status(str, enum.Enum):
    OK = "ok"
    EXISTS = "exists"
    NOT_FOUND = "not_found"
    TABLE_FULL = "table_full"
    QUEUED = "queued"
    UNKNOWN_SERVICE = "unknown_service"


# What each kind of write can answer (metrics export every pair, zeros included).
WRITE_STATUSES = {"insert": (Status.OK, Status.EXISTS, Status.TABLE_FULL, Status.QUEUED, Status.UNKNOWN_SERVICE),
                  "delete": (Status.OK, Status.NOT_FOUND, Status.QUEUED)}


class EntryState(str, enum.Enum):
    INSTALLED = "installed"
    QUEUED = "queued"
    ABSENT = "absent"


class ApiError(Exception):
    """A refused call: `code` is the gRPC status code name, `message` says what and where."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class Op:
    kind: str            # "insert" | "delete"
    key: Key
    backend: int = 0
    cancelled: bool = False


@dataclass
class Actions:
    """What the adapter applies after a call: offload ops in order, bucket re-assignments."""

    ops: list[Op] = field(default_factory=list)
    buckets: dict[int, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ops or self.buckets)


@dataclass
class Member:
    name: str
    state: str = "static"      # static (configured, never registered) | alive | dead
    address: str = ""
    last_seen: float = 0.0


def _check_key(i: int, ip: int, port: int, svc: int) -> Key:
    """A malformed entry refuses the whole call. A service index within the limit that this
    switch does not serve is not malformed: the caller's config may be newer than ours (a
    service added, the front-ends reloaded first); each such entry is answered on its own."""
    if not (0 <= ip <= 0xFFFFFFFF):
        raise ApiError("INVALID_ARGUMENT", f"entry {i}: client ip {ip} is not an IPv4 address")
    if not (1 <= port <= 65535):
        raise ApiError("INVALID_ARGUMENT", f"entry {i}: client port {port} out of range 1..65535")
    if not (0 <= svc < MAX_SERVICES):
        raise ApiError("INVALID_ARGUMENT", f"entry {i}: service {svc} out of range 0..{MAX_SERVICES - 1}")
    return (ip, port, svc)


class OffloadTable:
    """Model of the offload table and its driver queue under a hardware profile. Keys are
    (client ip, client port, service index): one client port may have a connection to each
    service at once."""

    def __init__(self, profile: Profile, n_backends: int, now: float, n_services: int = 1):
        self.profile, self.n_backends, self.n_services = profile, n_backends, n_services
        self.installed: dict[Key, int] = {}                # what the data plane holds
        self.intended: dict[Key, int] = {}                 # after every queued op
        self.pending: collections.deque[Op] = collections.deque()
        self.inflight: collections.deque[tuple[float, list[Op]]] = collections.deque()
        self.pending_insert: dict[Key, Op] = {}
        self.tokens = profile.burst
        self.last_refill = now
        self.stats = collections.Counter()
        self.writes: collections.Counter[tuple[str, str]] = collections.Counter()  # (insert|delete, status)
        self.applied: collections.Counter[str] = collections.Counter()              # insert|delete, by the driver

    # --- API ------------------------------------------------------------------------------
    def write(self, inserts: list[tuple[int, int, int, int]], deletes: list[Key], now: float) -> list[Status]:
        """`inserts`: (client ip, client port, svc, backend); `deletes`: keys. The whole batch is
        refused (ApiError) if one entry is malformed; an insert for a service this switch does not
        serve is answered `unknown_service` (a delete of one, `not_found`) on its own."""
        if len(inserts) + len(deletes) > MAX_BATCH:
            raise ApiError("INVALID_ARGUMENT", f"batch of {len(inserts) + len(deletes)} entries, limit {MAX_BATCH}")
        checked_i = []
        for i, (ip, port, svc, backend) in enumerate(inserts):
            key = _check_key(i, ip, port, svc)
            if not (0 <= backend < self.n_backends):
                raise ApiError("INVALID_ARGUMENT",
                               f"insert {i}: backend index {backend} unknown (have {self.n_backends})")
            checked_i.append((key, backend))
        checked_d = [_check_key(len(inserts) + i, ip, port, svc) for i, (ip, port, svc) in enumerate(deletes)]
        n = self.n_services
        ins = [self._insert(k, b) if k[2] < n else Status.UNKNOWN_SERVICE for k, b in checked_i]
        dels = [self._delete(k) if k[2] < n else Status.NOT_FOUND for k in checked_d]
        for kind, sts in (("insert", ins), ("delete", dels)):
            for s in sts:
                self.stats[s.value] += 1
                self.writes[(kind, s.value)] += 1
        return ins + dels

    def _queued_or_ok(self) -> Status:
        return Status.QUEUED if self.profile.limited else Status.OK

    def _insert(self, key: Key, backend: int) -> Status:
        if key in self.intended:
            return Status.EXISTS
        if len(self.intended) >= self.profile.capacity:
            return Status.TABLE_FULL
        self.intended[key] = backend
        op = Op("insert", key, backend)
        self.pending_insert[key] = op
        self.pending.append(op)
        return self._queued_or_ok()

    def _delete(self, key: Key) -> Status:
        if key not in self.intended:
            return Status.NOT_FOUND
        del self.intended[key]
        op = self.pending_insert.pop(key, None)
        if op is not None:        # never reached the driver: just forget it
            op.cancelled = True
            return Status.OK
        self.pending.append(Op("delete", key))
        return self._queued_or_ok()

    def read(self, keys: list[Key]) -> dict[Key, EntryState]:
        out = {}
        for k in keys:
            if k in self.installed:
                out[k] = EntryState.INSTALLED
            elif k in self.intended:
                out[k] = EntryState.QUEUED
            else:
                out[k] = EntryState.ABSENT
        return out

    # --- time -----------------------------------------------------------------------------
    def tick(self, now: float) -> list[Op]:
        """Hand batches to the driver within the rate; return the ops whose batch is now done."""
        p = self.profile
        if p.limited:
            self.tokens = min(p.burst, self.tokens + (now - self.last_refill) * p.rate)
        self.last_refill = now
        batch: list[Op] = []
        while self.pending:
            op = self.pending[0]
            if op.cancelled:
                self.pending.popleft()
                continue
            if p.limited:
                if self.tokens < 1:
                    break
                self.tokens -= 1
            self.pending.popleft()
            if op.kind == "insert":
                self.pending_insert.pop(op.key, None)
            batch.append(op)
        if batch:
            self.inflight.append((now + p.batch_latency_s, batch))
        done: list[Op] = []
        while self.inflight and self.inflight[0][0] <= now:
            done.extend(self.inflight.popleft()[1])
        for op in done:
            self.applied[op.kind] += 1
            if op.kind == "insert":
                self.installed[op.key] = op.backend
            else:
                self.installed.pop(op.key, None)
        self.stats["applied"] += len(done)
        return done

    def next_due(self) -> float | None:
        """When tick() next has something to do (None: idle)."""
        t = [self.inflight[0][0]] if self.inflight else []
        if self.pending:
            p = self.profile
            need = 0.0 if not p.limited else max(0.0, (1 - self.tokens) / p.rate)
            t.append(self.last_refill + need)
        return min(t) if t else None

    def adopt(self, entries: dict[Key, int]) -> None:
        """Entries already in the data plane (a controller restarted over pinned maps)."""
        self.installed.update(entries)
        self.intended.update(entries)

    def apply_failed(self, op: Op) -> None:
        """The data plane refused an op (e.g. its map is smaller than the profile says)."""
        self.stats["apply_failed"] += 1
        if op.kind == "insert":
            self.installed.pop(op.key, None)
            if self.intended.get(op.key) == op.backend:
                del self.intended[op.key]

    def queue_length(self) -> int:
        return sum(1 for op in self.pending if not op.cancelled) + sum(len(b) for _, b in self.inflight)


def idle_entries(last_hits: dict[Key, int], now_ns: int, idle_timeout_s: float) -> list[Key]:
    """Entries whose last hit is older than the timeout (hardware idle-timeout notification)."""
    limit = int(idle_timeout_s * 1e9)
    return sorted(k for k, t in last_hits.items() if now_ns - t > limit)


def home_assignment(frontends: list[str]) -> list[str]:
    """Initial owner of each bucket (also what the data plane is loaded with): round robin."""
    return [frontends[b % len(frontends)] for b in range(BUCKETS)]


class Membership:
    """Front-ends and the 256 buckets. Configured front-ends start in the table ("static") so
    the switch works before any registers; only a registered one can be declared dead."""

    def __init__(self, names: list[str], now: float, dead_after_s: float = 3.0):
        if not names:
            raise ValueError("need at least one front-end")
        self.order = list(names)
        self.members = {n: Member(n) for n in names}
        self.dead_after_s = dead_after_s
        self.home = home_assignment(names)
        self.assign: list[str | None] = list(self.home)
        self.moves = 0

    def live(self) -> list[str]:
        return [n for n in self.order if self.members[n].state != "dead"]

    def _member(self, name: str) -> Member:
        m = self.members.get(name)
        if m is None:
            raise ApiError("NOT_FOUND", f"front-end {name!r} is not in the configuration "
                                        f"(have {', '.join(self.order)})")
        return m

    def register(self, name: str, address: str, now: float) -> dict[int, str]:
        m = self._member(name)
        if address:
            try:
                ipaddress.IPv4Address(address.split(":")[0])
            except ValueError:
                raise ApiError("INVALID_ARGUMENT", f"address {address!r} is not IPv4[:port]") from None
            m.address = address
        was_dead = m.state == "dead"
        m.state, m.last_seen = "alive", now
        return self.rebalance() if was_dead else {}

    def heartbeat(self, name: str, now: float) -> dict[int, str]:
        return self.register(name, "", now)

    def tick(self, now: float) -> dict[int, str]:
        changed = False
        for m in self.members.values():
            if m.state == "alive" and now - m.last_seen > self.dead_after_s:
                m.state = "dead"
                changed = True
        return self.rebalance() if changed else {}

    def buckets_of(self, name: str) -> list[int]:
        return [b for b, n in enumerate(self.assign) if n == name]

    def rebalance(self) -> dict[int, str]:
        """Give every live front-end floor or ceil of 256/n buckets, moving as few as possible:
        orphans (of dead members) and the excess of over-full members go to under-full ones,
        preferring each bucket's home front-end."""
        live = self.live()
        if not live:
            return {}  # keep the last assignment: better than dropping every client
        count = collections.Counter(n for n in self.assign if n in live)
        base, extra = divmod(BUCKETS, len(live))
        ranked = sorted(live, key=lambda n: (-count[n], self.order.index(n)))
        quota = {n: base + (1 if i < extra else 0) for i, n in enumerate(ranked)}
        pool = [b for b, n in enumerate(self.assign) if n not in live]
        for n in live:
            excess = count[n] - quota[n]
            if excess > 0:
                mine = self.buckets_of(n)
                # give away first the buckets whose home is elsewhere and under-full
                mine.sort(key=lambda b: (self.home[b] == n, b))
                pool.extend(mine[:excess])
        changes: dict[int, str] = {}
        need = {n: quota[n] - count[n] for n in live if quota[n] > count[n]}
        for n in list(need):  # home buckets first
            for b in [b for b in pool if self.home[b] == n][: need[n]]:
                pool.remove(b)
                changes[b] = n
                need[n] -= 1
        for n in live:
            while need.get(n, 0) > 0 and pool:
                changes[pool.pop(0)] = n
                need[n] -= 1
        for b, n in changes.items():
            self.assign[b] = n
        self.moves += len(changes)
        return changes

    def view(self) -> list[dict]:
        return [{"name": n, "state": self.members[n].state, "address": self.members[n].address,
                 "buckets": len(self.buckets_of(n))} for n in self.order]


class Controller:
    """Offload table + membership behind one API, each call with `now` (seconds)."""

    def __init__(self, frontends: list[str], n_backends: int, profile: Profile, idle_timeout_s: float,
                 now: float, dead_after_s: float = 3.0, n_services: int = 1):
        self.table = OffloadTable(profile, n_backends, now, n_services)
        self.members = Membership(frontends, now, dead_after_s)
        self.idle_timeout_s = idle_timeout_s
        self.unauthenticated = 0

    def write(self, inserts, deletes, now: float) -> tuple[list[Status], Actions]:
        st = self.table.write(inserts, deletes, now)
        return st, self.tick(now)

    def read(self, keys: list[Key]) -> dict[Key, EntryState]:
        return self.table.read(keys)

    def register(self, name: str, address: str, now: float) -> tuple[list[int], Actions]:
        changes = self.members.register(name, address, now)
        return self.members.buckets_of(name), Actions(buckets=changes)

    def heartbeat(self, name: str, now: float) -> tuple[list[int], Actions]:
        changes = self.members.heartbeat(name, now)
        return self.members.buckets_of(name), Actions(buckets=changes)

    def tick(self, now: float) -> Actions:
        return Actions(ops=self.table.tick(now), buckets=self.members.tick(now))

    def idle(self, last_hits: dict[Key, int], now_ns: int) -> list[Key]:
        return idle_entries(last_hits, now_ns, self.idle_timeout_s)

    def stats(self) -> dict:
        t = self.table
        return {"profile": t.profile.name, "capacity": t.profile.capacity, "rate": t.profile.rate,
                "installed": len(t.installed), "intended": len(t.intended), "queue": t.queue_length(),
                "ops": dict(t.stats), "unauthenticated": self.unauthenticated,
                "writes": {k: {s.value: t.writes[(k, s.value)] for s in WRITE_STATUSES[k]} for k in WRITE_STATUSES},
                "applied": {k: t.applied[k] for k in WRITE_STATUSES},
                "members": self.members.view(), "bucket_moves": self.members.moves}
