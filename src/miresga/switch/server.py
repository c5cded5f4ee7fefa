"""The controller's adapter to the world: the gRPC service (mutual TLS, identities, token), the
clock, and the tables it applies decisions to (BPF maps, or memory for tests). Decisions live in
controller.py.

Who may call what (with TLS): the client certificate's name is the caller. A front-end may
Register, Heartbeat and Write only as itself; `admin` (operators) may only read (Read, Idle,
Stats); any other name nothing. The token stays a second factor on every call.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict
from concurrent import futures
from typing import Any, Callable, Protocol

import grpc

from miresga import cookie
from miresga._proto import control_pb2 as pb
from miresga._proto import control_pb2_grpc as pb_grpc
from miresga.control.certs import ADMIN, TlsDir
from miresga.switch.controller import Actions, ApiError, Controller, EntryState, Key, Op, Status
from miresga.switch.maps import OFFLOAD_FULL_ERRNOS, Hop, SwitchMaps, monotonic_ns
from miresga.switch.profiles import profile_from_config

log = logging.getLogger("miresga.switch")

STATUS_PB = {Status.OK: pb.WRITE_OK, Status.EXISTS: pb.WRITE_EXISTS, Status.NOT_FOUND: pb.WRITE_NOT_FOUND,
             Status.TABLE_FULL: pb.WRITE_TABLE_FULL, Status.QUEUED: pb.WRITE_QUEUED,
             Status.UNKNOWN_SERVICE: pb.WRITE_UNKNOWN_SERVICE}
STATE_PB = {EntryState.ABSENT: pb.ENTRY_ABSENT, EntryState.QUEUED: pb.ENTRY_QUEUED,
            EntryState.INSTALLED: pb.ENTRY_INSTALLED}
TLS_PEERS_MAX = 4096  # connections remembered as having called (refused.tls = handshakes - those)


class Tables(Protocol):
    """Where the controller's actions land."""

    def apply(self, actions: Actions) -> list[Op]: ...          # returns the ops that failed
    def last_hits(self) -> dict[Key, int]: ...
    def entries(self) -> dict[Key, int]: ...                     # offload key -> back-end index
    def counters(self) -> dict[str, int]: ...
    def set_cookie_key(self, key: cookie.CookieKey) -> None: ...


class MemoryTables:
    """Tables in memory: for tests of the service without a data plane, and for measuring the
    control path alone."""

    def __init__(self, capacity: int = 1 << 30):
        self.offload: dict[Key, tuple[int, int]] = {}
        self.buckets: dict[int, str] = {}
        self.capacity = capacity
        self.key: cookie.CookieKey | None = None

    def apply(self, actions: Actions) -> list[Op]:
        failed = []
        for op in actions.ops:
            if op.kind == "insert":
                if len(self.offload) >= self.capacity:
                    failed.append(op)
                else:
                    self.offload[op.key] = (op.backend, monotonic_ns())
            else:
                self.offload.pop(op.key, None)
        self.buckets.update(actions.buckets)
        return failed

    def last_hits(self) -> dict[Key, int]:
        return {k: t for k, (_, t) in self.offload.items()}

    def entries(self) -> dict[Key, int]:
        return {k: b for k, (b, _) in self.offload.items()}

    def counters(self) -> dict[str, int]:
        return {}

    def set_cookie_key(self, key: cookie.CookieKey) -> None:
        self.key = key


class MapTables:
    """The BPF maps of a loaded switch (SwitchMaps); `frontend_hops` maps front-end name -> hop."""

    def __init__(self, maps: SwitchMaps, frontend_hops: dict[str, Hop]):
        self.maps, self.hops = maps, frontend_hops

    def apply(self, actions: Actions) -> list[Op]:
        failed = []
        m = self.maps
        now = monotonic_ns()
        for op in actions.ops:
            ip, port, svc = op.key
            if op.kind == "insert":
                err = m.offload_insert(ip, port, op.backend, now, svc)
                if err:
                    if err not in OFFLOAD_FULL_ERRNOS:
                        log.warning("offload insert %s: errno %d", op.key, err)
                    failed.append(op)
            else:
                m.offload_delete(ip, port, svc)
        for b, name in actions.buckets.items():
            m.set_bucket(b, self.hops[name])
        return failed

    def last_hits(self) -> dict[Key, int]:
        return {k: e.last_hit_ns for k, e in self.maps.offload_items()}

    def entries(self) -> dict[Key, int]:
        return {k: e.backend for k, e in self.maps.offload_items()}

    def counters(self) -> dict[str, int]:
        return self.maps.read_counters()

    def set_cookie_key(self, key: cookie.CookieKey) -> None:
        self.maps.set_key((key.k0, key.k1))


class ControlPlane:
    """Controller + tables + clock, thread-safe: the servicer and the ticker share it."""

    def __init__(self, cfg, tables: Tables, clock: Callable[[], float] = time.monotonic,
                 dead_after_s: float = 3.0, tai: Callable[[], float] = cookie.tai_seconds):
        self.cfg, self.tables, self.clock, self.tai = cfg, tables, clock, tai
        self.profile = profile_from_config(cfg.switch)
        self.ctl = Controller([h.name for h in cfg.hosts.frontends], len(cfg.hosts.backends), self.profile,
                              cfg.switch.idle_timeout_s, clock(), dead_after_s, len(cfg.all_services()))
        self.lock = threading.Lock()
        self.idle_cache: list[Key] = []
        self.key: cookie.CookieKey | None = None
        self.initial_buckets = Actions(buckets={b: n for b, n in enumerate(self.ctl.members.assign)})
        # Refusals outside the controller's logic: TLS connections without a trusted client
        # certificate (handshakes minus connections that made a call) and PERMISSION_DENIED calls.
        self.tls_handshakes = 0
        self.tls_callers: OrderedDict[str, None] = OrderedDict()  # recent connections (peer) that called
        self.tls_identified = 0                                     # connections that made a call, ever
        self.identity_refused = 0
        self.peers_lock = threading.Lock()

    def set_services(self, cfg) -> None:
        """A reload added services (`miresga switch` SIGHUP; call under `lock`): offloads of
        the new service indices are accepted from now on."""
        self.cfg = cfg
        self.ctl.table.n_services = len(cfg.all_services())

    def tls_caller(self, peer: str) -> None:
        """A call arrived on this TLS connection: its handshake succeeded. The set of peers is
        bounded (least recently calling first out); front-ends call every heartbeat and stay."""
        with self.peers_lock:
            if peer in self.tls_callers:
                self.tls_callers.move_to_end(peer)
                return
            self.tls_callers[peer] = None
            self.tls_identified += 1
            if len(self.tls_callers) > TLS_PEERS_MAX:
                self.tls_callers.popitem(last=False)

    def _apply(self, actions: Actions) -> None:
        if actions:
            for op in self.tables.apply(actions):
                self.ctl.table.apply_failed(op)

    def start_tables(self) -> None:
        """Adopt offload entries already installed, write the initial buckets and cookie key."""
        existing = self.tables.entries()
        with self.lock:
            self.ctl.table.adopt(existing)
            self._apply(self.initial_buckets)
        if existing:
            log.info("adopted %d offload entries already in the data plane", len(existing))
        self.rotate_key()

    def rotate_key(self) -> bool:
        cur, _ = cookie.keys_at(self.cfg.switch.cookie.secret, self.tai(), self.cfg.switch.cookie.rotate_seconds)
        if cur != self.key:
            self.tables.set_cookie_key(cur)
            self.key = cur
            return True
        return False

    def write(self, inserts, deletes) -> list[Status]:
        with self.lock:
            statuses, actions = self.ctl.write(inserts, deletes, self.clock())
            self._apply(actions)
        if Status.QUEUED in statuses and self.profile.batch_latency_s < 0.1:
            statuses = self._await_batch(inserts, deletes, statuses)
        return statuses

    def _await_batch(self, inserts, deletes, statuses) -> list[Status]:
        """A batch within the rate is installed one batch latency later: wait that long, as a
        synchronous driver call would, so only operations beyond the rate stay QUEUED."""
        deadline = self.clock() + self.profile.batch_latency_s * 2 + 0.002
        n_ins = len(inserts)
        keys = [(ip, port, svc) for ip, port, svc, _ in inserts] + list(deletes)
        while True:
            with self.lock:
                self._apply(self.ctl.tick(self.clock()))
                states = self.ctl.read(keys)
            out = []
            for i, (st, k) in enumerate(zip(statuses, keys)):
                if st == Status.QUEUED:
                    done = states[k] == (EntryState.INSTALLED if i < n_ins else EntryState.ABSENT)
                    out.append(Status.OK if done else st)
                else:
                    out.append(st)
            if Status.QUEUED not in out or self.clock() >= deadline:
                return out
            time.sleep(0.0005)

    def read(self, keys: list[Key]) -> dict[Key, EntryState]:
        with self.lock:
            return self.ctl.read(keys)

    def register(self, name: str, address: str) -> list[int]:
        with self.lock:
            buckets, actions = self.ctl.register(name, address, self.clock())
            self._apply(actions)
        if actions.buckets:
            log.info("front-end %s back: %d buckets moved to it", name, len(actions.buckets))
        return buckets

    def heartbeat(self, name: str) -> list[int]:
        with self.lock:
            buckets, actions = self.ctl.heartbeat(name, self.clock())
            self._apply(actions)
        return buckets

    def tick(self) -> float | None:
        with self.lock:
            actions = self.ctl.tick(self.clock())
            self._apply(actions)
            due = self.ctl.table.next_due()
        if actions.buckets:
            log.warning("membership change: %d buckets moved (%s)", len(actions.buckets),
                        ", ".join(f"{m['name']}={m['state']}" for m in self.ctl.members.view()))
        return due

    def scan_idle(self) -> list[Key]:
        hits = self.tables.last_hits()  # map read outside the lock: it may take a while
        with self.lock:
            self.idle_cache = self.ctl.idle(hits, monotonic_ns())
        return self.idle_cache

    def idle(self) -> list[Key]:
        """The last scan's idle entries that are still installed (a delete since then hides one)."""
        with self.lock:
            installed = self.ctl.table.installed
            return [k for k in self.idle_cache if k in installed]

    def stats(self) -> dict:
        with self.lock:
            s = self.ctl.stats()
        s["counters"] = self.tables.counters()
        with self.peers_lock:
            identified = self.tls_identified
        s["refused"] = {"tls": max(0, self.tls_handshakes - identified),
                        "token": s["unauthenticated"], "identity": self.identity_refused}
        return s


class TokenAuth(grpc.ServerInterceptor):
    """Refuse calls without "authorization: Bearer <token>" with UNAUTHENTICATED, and count them."""

    def __init__(self, token: str, on_refused: Callable[[], None], on_call: Callable[[Any], None] = lambda c: None):
        self._want = f"Bearer {token}".encode()
        self._on_refused = on_refused

        def refuse(request, context):
            on_call(context)  # the TLS handshake itself succeeded
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (authorization: Bearer ...)")
        self._refuse = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation, details):
        got = dict(details.invocation_metadata or ()).get("authorization", "")
        if isinstance(got, str):
            got = got.encode()
        if hmac.compare_digest(got, self._want):
            return continuation(details)
        self._on_refused()
        return self._refuse


# method -> (who may call it, the request field that names a front-end). "frontend": a front-end
# of the config, and when a field is named, only for itself; "any": a front-end or an operator.
POLICY = {"Register": ("frontend", "name"), "Heartbeat": ("frontend", "name"), "Write": ("frontend", None),
          "Read": ("any", None), "Idle": ("any", None), "Stats": ("any", None)}


def caller_names(context) -> set[str]:
    """The names in the peer's verified certificate (SAN DNS names, else the CN)."""
    return {x.decode() if isinstance(x, bytes) else x for x in (context.peer_identities() or ())}


def refusal(method: str, names: set[str], request, frontends: set[str], admins: set[str]) -> str | None:
    """Why a caller named `names` may not make this call, or None (pure: tested with plain data)."""
    who, field = POLICY.get(method, ("frontend", None))
    fe = sorted(names & frontends)
    if not fe:
        if names & admins and who == "any":
            return None
        shown = ", ".join(sorted(names)) or "(none)"
        if names & admins:
            return f"{method}: certificate {shown} is read-only (Read, Idle, Stats)"
        return f"{method}: certificate {shown} names no front-end of the config"
    if len(fe) > 1:
        return f"{method}: certificate names several front-ends ({', '.join(fe)}); one identity per certificate"
    if field is not None:
        claimed = getattr(request, field)
        if claimed not in fe:
            return f"{method}: front-end {fe[0]} may {method.lower()} only as itself, not as {claimed!r}"
    return None


class IdentityGuard(grpc.ServerInterceptor):
    """With mutual TLS: refuse calls the caller's certificate does not allow (POLICY) with
    PERMISSION_DENIED and a message, and count them."""

    def __init__(self, frontends: set[str], admins: set[str], on_refused: Callable[[], None],
                 on_call: Callable[[Any], None]):
        self.frontends, self.admins = frontends, admins
        self._on_refused, self._on_call = on_refused, on_call

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return None  # only unary calls are guarded; anything else is not served (UNIMPLEMENTED)
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def guarded(request, context):
            self._on_call(context)
            why = refusal(method, caller_names(context), request, self.frontends, self.admins)
            if why is not None:
                self._on_refused()
                log.warning("refused: %s (peer %s)", why, context.peer())
                context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
            return inner(request, context)
        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


class Servicer(pb_grpc.SwitchControlServicer):
    def __init__(self, cp: ControlPlane):
        self.cp = cp

    def _guard(self, context, fn):
        try:
            return fn()
        except ApiError as e:
            context.abort(getattr(grpc.StatusCode, e.code), e.message)

    def Write(self, request, context):
        ins = [(e.client_ip, e.client_port, e.service, e.backend) for e in request.inserts]
        dels = [(k.client_ip, k.client_port, k.service) for k in request.deletes]
        st = self._guard(context, lambda: self.cp.write(ins, dels))
        return pb.WriteReply(statuses=[STATUS_PB[s] for s in st])

    def Read(self, request, context):
        keys = [(k.client_ip, k.client_port, k.service) for k in request.keys]
        states = self.cp.read(keys)
        return pb.ReadReply(states=[STATE_PB[states[k]] for k in keys])

    def Idle(self, request, context):
        return pb.IdleReply(keys=[pb.FlowKey(client_ip=ip, client_port=port, service=svc)
                                  for ip, port, svc in self.cp.idle()])

    def Register(self, request, context):
        b = self._guard(context, lambda: self.cp.register(request.name, request.address))
        return pb.RegisterReply(buckets=b, dead_after_ms=int(self.cp.ctl.members.dead_after_s * 1000))

    def Heartbeat(self, request, context):
        b = self._guard(context, lambda: self.cp.heartbeat(request.name))
        return pb.RegisterReply(buckets=b, dead_after_ms=int(self.cp.ctl.members.dead_after_s * 1000))

    def Stats(self, request, context):
        s = self.cp.stats()
        return pb.StatsReply(
            profile=s["profile"], capacity=s["capacity"], installed=s["installed"], queue=s["queue"],
            rate=s["rate"] or 0.0, counters=s["counters"], ops={k: int(v) for k, v in s["ops"].items()},
            members=[pb.Member(**m) for m in s["members"]], unauthenticated=s["unauthenticated"],
            bucket_moves=s["bucket_moves"], refused=s["refused"])


def internal_addresses(cfg) -> list[str]:
    """Where the control API listens: switch.control.listen, by default loopback and the switch's
    gateway address on each front-end's network — never an address meant for clients (and the
    data plane drops what reaches these from anywhere but a front-end: DROP_GUARDED_PORT)."""
    port = cfg.switch.control.port
    if cfg.switch.control.listen is not None:
        return [f"{a}:{port}" for a in cfg.switch.control.listen]
    return [f"127.0.0.1:{port}"] + [f"{h.gateway}:{port}" for h in cfg.hosts.frontends]


def server_tls(cfg) -> TlsDir | None:
    """The control API's certificates from the config (None: token only, in clear)."""
    d = cfg.switch.control.tls_dir
    return TlsDir(d) if d is not None else None


class ControlServer:
    """gRPC server + ticker thread (queue, membership, key rotation, idle scan). Context manager.

    `tls`: serve mutual TLS with <switch.name>.crt/.key of that directory, trusting only its
    ca.crt, and enforce identities (IdentityGuard); None: plaintext with the token alone."""

    def __init__(self, cp: ControlPlane, address: str | list[str], workers: int = 8, tls: TlsDir | None = None):
        self.cp = cp

        def refused() -> None:
            with cp.lock:
                cp.ctl.unauthenticated += 1

        def identity_refused() -> None:
            with cp.lock:
                cp.identity_refused += 1

        def on_call(context) -> None:
            if tls is not None:
                cp.tls_caller(context.peer())
        interceptors: list = [TokenAuth(cp.cfg.switch.control.token, refused, on_call)]
        if tls is not None:
            interceptors.append(IdentityGuard({h.name for h in cp.cfg.hosts.frontends}, {ADMIN}, identity_refused,
                                              on_call))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=interceptors)
        pb_grpc.add_SwitchControlServicer_to_server(Servicer(cp), self.server)
        for a in [address] if isinstance(address, str) else address:
            try:  # one credentials object per port: each takes its initial configuration once
                self.port = (self.server.add_secure_port(a, self._credentials(tls, cp)) if tls is not None
                             else self.server.add_insecure_port(a))
            except RuntimeError as e:
                raise OSError(f"cannot listen on {a}: {e}") from None
            if self.port == 0:
                raise OSError(f"cannot listen on {a}")
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._ticker, name="switch-ticker", daemon=True)

    @staticmethod
    def _credentials(tls: TlsDir, cp: ControlPlane) -> grpc.ServerCredentials:
        key, chain = tls.pair(cp.cfg.switch.name)
        config = grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=tls.ca_pem())

        def fetch():  # called once per new connection, before its handshake: count them
            with cp.lock:
                cp.tls_handshakes += 1
            return None  # keep the configuration
        return grpc.dynamic_ssl_server_credentials(config, fetch, require_client_authentication=True)

    def _ticker(self) -> None:
        sw = self.cp.cfg.switch
        idle_every = max(0.2, sw.idle_timeout_s / 4)
        next_idle = next_key = 0.0
        while not self.stop_event.is_set():
            due = self.cp.tick()
            now = time.monotonic()
            if now >= next_key:
                next_key = now + 1.0
                if self.cp.rotate_key():
                    log.info("cookie key rotated")
            if now >= next_idle:
                next_idle = now + idle_every
                try:
                    self.cp.scan_idle()
                except OSError as e:
                    log.warning("idle scan: %s", e)
            wait = 0.1 if due is None else max(0.0, min(0.1, due - self.cp.clock()))
            self.stop_event.wait(wait)

    def start(self) -> "ControlServer":
        self.cp.start_tables()
        self.server.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.server.stop(grace=0.5).wait()
        if self.thread.is_alive():
            self.thread.join(timeout=2)

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
