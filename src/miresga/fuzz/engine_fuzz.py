"""Fuzz target: the front-end engine (src/miresga/frontend/engine/) with its frame codec, sans I/O.

Frames go in as the packet socket would hand them (`FrameCodec.parse`), the engine's actions come
out, and every segment it sends is built by the codec (software checksums) and checked. Epochs of
a few hundred events each start from a fresh engine: clients with valid cookies (and strangers
without) send random and mutated HTTP requests in one or several segments, in order or not,
retransmitted, pipelined, with FINs and RSTs; back-ends answer the splice SYN (or not, or wrongly),
send responses large and small, FINs, RSTs, and forged segments arrive from back-end addresses;
time jumps, held ACKs are flushed, a fake switch controller answers offload requests (ok, queued,
table full, exists) and reports idle entries, back-ends fall ill and recover. A share of the
frames is mutated at the byte level (`mutate.mutate`). Half of the epochs run the config as given,
half with two more services (`services_config`): one client ip:port then talks to two or three
VIPs at once, and back-ends are used by one service or by several, so that a back-end's data for
a connection nobody holds is adopted for its only service or dropped (`adopt_ambiguous`).

Checked after every event:
- no exception;
- checksums: every frame the engine sends has a valid IP and TCP checksum (a GSO frame the
  pseudo-header sum the kernel completes), and no frame beyond the MTU leaves as one packet;
- addresses: to a back-end only at a configured back-end's service ip:port; to a client only
  from a service's VIP:port, and only to an ip:port that spoke to that service (or whose data came
  from a back-end only that service uses: adoption); a back-end's RST relayed to the ip:port it
  names;
- state: connections only for clients with a valid cookie or a back-end's data (adoption), at
  most `max_connections`; held, reordered and out-of-order bytes within their bounds; back-end
  connection counts equal to the connections on them; never two connections of one client
  ip:port on one back-end (it would see one 4-tuple twice); held ACKs only of live connections;
- counted: a segment that makes no action and changes no connection moves a counter;
- at the end of an epoch (all clients reset, timers and the controller run out): no connection,
  no offload entry, no connection counted on any back-end.
"""

from __future__ import annotations

import ipaddress
import random
import traceback

from miresga import cookie
from miresga.control.config import Deployment
from miresga.frontend.engine import Engine, OffloadCheck, OffloadDelete, OffloadInsert, Send
from miresga.frontend.packetio import FrameCodec
from miresga.fuzz.harness import Harness, Input, Violation
from miresga.fuzz.mutate import Pools, mutate
from miresga.fuzz.wire import ACK, FIN, PSH, RST, SYN, URG, Layout, ip_residue, l4_residue, tcp_frame

M32 = 0xFFFFFFFF
EPOCH_EVENTS = 400
VNET_PLAIN = bytes(10)
CMAC, FMAC = bytes.fromhex("02530a000201"), bytes.fromhex("024d0a000202")
METHODS = [b"GET", b"GET", b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"PATCH", b"TRACE",
           b"G", b"get", b"BREW", b""]
PATHS = [b"/", b"/api/x", b"/api/", b"/video/a.mp4", b"/download/1m", b"/dl/f", b"/big/x", b"/x?y=1", b"*",
         b"http://a/", b"/%00", b"/" + b"a" * 3000, b"/\xff\xfe", b""]
VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1x", b"", b"http/1.1"]
HEADERS = [b"Host: a.example", b"Host: static.example", b"Host: static.example:80", b"Host: www.two.example",
           b"Connection: close", b"Connection: keep-alive", b"Connection: Upgrade", b"Upgrade: websocket",
           b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999999999999999999",
           b"Content-Length: 3", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
           b"X-A: " + b"b" * 700, b"Expect: 100-continue", b" folded", b"Bad Header: x", b"X: \x00",
           b"Cookie: a=b"]


GOOD_PATHS = [b"/", b"/api/x", b"/video/a.mp4", b"/download/1m", b"/x?y=1", b"/index.html"]
GOOD_HEADERS = [b"Host: a.example", b"Host: static.example", b"Connection: keep-alive", b"Accept: */*",
                b"User-Agent: fuzz", b"X-Forwarded-For: 10.0.0.1"]


def http_request(rng: random.Random) -> bytes:
    """A request from a small grammar: mostly valid, sometimes broken on purpose."""
    if rng.random() < 0.7:
        m = rng.choice([b"GET", b"GET", b"GET", b"HEAD", b"POST"])
        hdrs = [b"Host: " + rng.choice([b"a.example", b"static.example", b"www.two.example"])]
        hdrs += rng.sample(GOOD_HEADERS, rng.randrange(0, 3))
        body = b""
        if m == b"POST":
            body = rng.randbytes(rng.choice([0, 5, 1000, 3000]))
            hdrs.append(b"Content-Length: %d" % len(body))
        return m + b" " + rng.choice(GOOD_PATHS) + b" HTTP/1.1\r\n" + b"\r\n".join(hdrs) + b"\r\n\r\n" + body
    line = rng.choice(METHODS) + b" " + rng.choice(PATHS) + b" " + rng.choice(VERSIONS)
    hdrs = [rng.choice(HEADERS) for _ in range(rng.choice([1, 1, 2, 3, 5]))]
    eol = b"\r\n" if rng.random() < 0.95 else b"\n"
    req = line + eol + eol.join(hdrs) + eol + eol
    if any(h.startswith(b"Content-Length: 5") for h in hdrs):
        req += b"hello"
    elif any(b"chunked" in h for h in hdrs):
        req += rng.choice([b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"3\r\nab"])
    if rng.random() < 0.1:
        req = bytearray(req)
        for _ in range(rng.randrange(1, 4)):
            req[rng.randrange(len(req))] = rng.randrange(256)
        req = bytes(req)
    if rng.random() < 0.05:
        req = rng.randbytes(rng.randrange(1, 200))
    return req


def services_config(cfg: Deployment) -> Deployment:
    """`cfg` with two more services (kept as it is when it has some): `api` on the VIP's address,
    port 8080, over be2 and be3 (which the default service's rules use too: their orphans are
    ambiguous); `alt` on another address over a fourth back-end of its own (its orphans are
    adopted for it). be1 stays the default service's alone."""
    if cfg.services:
        return cfg
    d = cfg.model_dump(mode="json")
    names = [b["name"] for b in d["hosts"]["backends"]]
    hosts = [h for sec in d["hosts"].values() if sec for h in (sec if isinstance(sec, list) else [sec])]
    taken = {ipaddress.ip_interface(h["address"]).network for h in hosts}
    vip = cfg.vip.address
    net = next(n for n in ipaddress.ip_network("10.0.0.0/16").subnets(new_prefix=24)
               if n not in taken and vip not in n and vip + 7 not in n and n.network_address.packed[2] > 0)
    d["hosts"]["backends"].append({"name": "be4", "address": f"{net.network_address + 2}/24", "port": 80})
    d["services"] = [
        {"name": "api", "vip": {"address": str(vip), "port": 8080},
         "rules": [{"name": "api-all", "pool": names[1:3] or names[:1], "policy": "round_robin",
                    "offload": "never"}]},
        {"name": "alt", "vip": {"address": str(vip + 7), "port": 80},
         "rules": [{"name": "alt-dl", "match": {"path_prefix": "/dl/"}, "pool": ["be4"], "offload": "always"},
                   {"name": "alt-rest", "pool": ["be4"], "offload": "auto"}]}]
    return Deployment.model_validate(d)


class FakeSwitch:
    """The controller's offload table: inserts may be refused, queued or found existing."""

    def __init__(self):
        self.table: dict[tuple[int, int, int], int] = {}
        self.queued: dict[tuple[int, int, int], tuple[int, int]] = {}
        self.pending: list[tuple[int, int, int, str, int]] = []
        self.mode = "ok"

    def apply(self, actions, mode: str | None = None):
        mode = mode or self.mode
        for a in actions:
            if isinstance(a, OffloadInsert):
                key = a.key
                if mode == "full":
                    st = "table_full"
                elif key in self.table:
                    st = "exists"
                elif mode == "queue":
                    self.queued[key] = (a.backend, a.gen)
                    st = "queued"
                else:
                    self.table[key] = a.backend
                    st = "ok"
                self.pending.append((a.client_ip, a.client_port, a.gen, st, a.svc))
            elif isinstance(a, OffloadDelete):
                key = a.key
                self.table.pop(key, None)
                self.queued.pop(key, None)
            elif isinstance(a, OffloadCheck):
                key = a.key
                self.pending.append((a.client_ip, a.client_port, a.gen, "installed" if key in self.table else "absent", a.svc))

    def install_queued(self):
        for key, (b, gen) in list(self.queued.items()):
            self.table[key] = b
            self.pending.append((key[0], key[1], gen, "installed", key[2]))
        self.queued.clear()


class Client:
    """A client that did its handshake with the switch (or, `forged`, one that did not)."""

    def __init__(self, h: "EngineHarness", rng: random.Random, port: int, now: float, ip: int | None = None,
                 svc: int = 0):
        self.ip = ip if ip is not None else h.client_ip if rng.random() < 0.8 else h.client_ip2
        self.port = port
        self.svc = svc
        self.vip, self.vport = h.services[svc]
        self.c = rng.choice([rng.getrandbits(32), (M32 - rng.randrange(4000)) & M32])
        self.forged = rng.random() < 0.08
        keys = h.keys_at(now)
        b = cookie.bucket_of(now, h.cfg.switch.cookie.bucket_seconds)
        self.s = cookie.make_cookie(keys[0], self.ip, port, self.vip, self.vport, b, rng.choice([536, 1220, 1460]),
                                    rng.choice([None, 0, 7, 14]), rng.random() < 0.7)
        if self.forged:
            self.s = rng.getrandbits(32)
        self.born = now
        self.sent = 0          # client stream bytes (and FIN) sent
        self.rcv = 0           # server stream bytes received (from the front-end's sends)
        self.pending: list[tuple[int, bytes]] = []   # (offset, bytes) segments not yet sent

    @property
    def key(self):
        return (self.ip, self.port, self.svc)


class EngineHarness(Harness):
    name = "engine"

    def __init__(self, cfg: Deployment, max_connections: int = 48):
        fe = cfg.frontend.model_copy(update={"max_connections": max_connections, "max_header_bytes": 2048,
                                             "max_held_bytes": 16384})
        cfg = cfg.model_copy(update={"frontend": fe})
        super().__init__(cfg)
        self.configs = (cfg, services_config(cfg))       # the config as given; with several services
        # per back-end, the services whose rules use it: the config's reading, not the engine's
        self.users = [c.backend_services() for c in self.configs]
        self.codec = FrameCodec(FMAC, CMAC, mtu=1500, checksum="software")
        self.client_ip = int(cfg.hosts.clients[0].ip)
        self.client_ip2 = self.client_ip + 75
        every = self.configs[1]
        self.pools = Pools([*(int(v) for v, _ in every.vip_endpoints()), self.client_ip, self.client_ip2,
                            *(int(b.ip) for b in every.hosts.backends), 0],
                           [*(p for _, p in every.vip_endpoints()), *(b.port for b in every.hosts.backends),
                            40000, 8080, 0])
        self._keys: dict[int, tuple] = {}
        self.events: list[tuple] = []      # this epoch's events, for a saved case
        self.epochs = 0
        self.segments = 0
        self.start_epoch(random.Random(0))

    # ------------------------------------------------------------------ epochs

    def keys_at(self, now: float):
        g = int(now // self.cfg.switch.cookie.rotate_seconds)
        if g not in self._keys:
            self._keys[g] = cookie.keys_at(self.cfg.switch.cookie.secret, now, self.cfg.switch.cookie.rotate_seconds)
        return self._keys[g]

    def start_epoch(self, rng: random.Random, now: float | None = None, several: bool | None = None) -> None:
        self.several = rng.random() < 0.5 if several is None else several
        cfg = self.configs[self.several]
        self.eng = Engine(cfg)
        self.services = [(int(v), p) for v, p in cfg.vip_endpoints()]
        self.by_vip = {ep: i for i, ep in enumerate(self.services)}
        self.backends = [(int(b.ip), b.port) for b in cfg.hosts.backends]
        self.backend_set = set(self.backends)
        self.vip_addrs = {v for v, _ in self.services}
        self.sole = [next(iter(u)) if len(u) == 1 else None for u in self.users[self.several]]
        self.sw = FakeSwitch()
        self.now = now if now is not None else 1_800_000_000.0 + rng.randrange(10 ** 6)
        self.clients: list[Client] = []
        self.next_port = 30000 + rng.randrange(20000)
        self.seen: set[tuple[int, int, int]] = set()  # (ip, port, service) that spoke to it or was adopted for it
        self.rst_named: set[tuple[int, int]] = set()  # ip:port a back-end's RST named
        self.justified: set[tuple[int, int]] = set()
        self.bsent: dict[tuple, int] = {}             # (key, backend, s) -> back-end bytes sent
        self.brcv: dict[tuple, int] = {}              # (key, backend) -> client bytes the back-end got
        self.events = [("epoch", self.now, self.several)]
        self.n_epoch = 0

    def new_client(self, rng: random.Random) -> Client:
        n = len(self.services)
        keys = {c.key for c in self.clients}
        other = [c for c in self.clients if n > 1 and not c.forged] if rng.random() < 0.3 else []
        if other:   # the same client ip:port towards another service (Linux clients do that)
            o = rng.choice(other)
            svc = rng.choice([i for i in range(n) if (o.ip, o.port, i) not in keys] or [o.svc])
            c = Client(self, rng, o.port, self.now, o.ip, svc)
        else:
            self.next_port = 1024 + (self.next_port + rng.choice([1, 1, 7, 1000])) % 64000
            c = Client(self, rng, self.next_port, self.now, svc=rng.randrange(n))
        if not c.forged:
            self.justified.add(c.key)
        if len(self.clients) >= 8:
            self.clients.pop(rng.randrange(len(self.clients)))
        self.clients.append(c)
        return c

    # ------------------------------------------------------------------ inputs

    def generate(self, rng: random.Random) -> Input:
        self.n_epoch += 1
        if self.n_epoch > EPOCH_EVENTS:
            return Input("engine", extra={"ev": ("end_epoch",)})
        r = rng.random()
        if r < 0.42:
            return self._client_input(rng)
        if r < 0.80:
            return self._backend_input(rng)
        if r < 0.86:
            steps = [0.001, 0.006, 0.05, 0.3]
            if rng.random() < 0.3:
                steps += [1.0, 2.0, 6.0, 12.0, 70.0]
            return Input("engine", extra={"ev": ("tick", rng.choice(steps))})
        if r < 0.89:
            return Input("engine", extra={"ev": ("flush",)})
        if r < 0.94:
            return Input("engine", extra={"ev": ("deliver",)})
        if r < 0.96:
            return Input("engine", extra={"ev": ("install",)})
        if r < 0.97:
            return Input("engine", extra={"ev": ("idle",)})
        if r < 0.98:
            return Input("engine", extra={"ev": ("health", rng.randrange(len(self.backends)), rng.random() < 0.6)})
        return Input("engine", extra={"ev": ("mode", rng.choice(["ok", "ok", "queue", "full"]))})

    def _frame_input(self, rng, frame: bytearray, kind: str) -> Input:
        ops = [kind]
        if rng.random() < 0.2:
            m = mutate(rng, bytes(frame), self.pools, max_ops=2)
            frame, ops = m.data, [kind, *m.names]
        return Input("engine", VNET_PLAIN + bytes(frame), 0, ops, {"ev": ("seg",)})

    def _client_input(self, rng) -> Input:
        live = [c for c in self.clients if self.now - c.born < 100]
        if not live or rng.random() < 0.12:
            cl = self.new_client(rng)
        else:
            cl = rng.choice(live)
        s_ack = (cl.s + 1 + cl.rcv) & M32
        r = rng.random()
        flags, off, payload = ACK | PSH, cl.sent, b""
        if cl.pending and r < 0.5:
            i = 0 if rng.random() < 0.7 else rng.randrange(len(cl.pending))   # in order, or not
            off, payload = cl.pending.pop(i)
            kind = "c_piece"
        elif r < 0.62:
            req = http_request(rng)
            if rng.random() < 0.05:
                req = req * rng.randrange(2, 6)        # pipelined
            cuts = sorted(rng.sample(range(1, len(req)), min(len(req) - 1, rng.choice([0, 0, 1, 2, 3]))))
            pieces = [req[a:b] for a, b in zip([0, *cuts], [*cuts, len(req)])]
            base = cl.sent
            at = base
            cl.pending = []
            for p in pieces:
                cl.pending.append((at, p))
                at += len(p)
            cl.sent = at
            off, payload = cl.pending.pop(0)
            kind = "c_request"
        elif r < 0.78:
            flags, payload, kind = ACK, b"", "c_ack"
        elif r < 0.84:
            flags, kind = FIN | ACK, "c_fin"
            cl.sent += 1
        elif r < 0.88:
            flags, kind = rng.choice([RST, RST | ACK]), "c_rst"
        elif r < 0.94:
            off = max(0, cl.sent - rng.randrange(1, 3000))          # a retransmission
            payload = rng.randbytes(rng.randrange(0, 300))
            kind = "c_retrans"
        else:
            flags, kind = rng.choice([SYN, SYN | ACK, 0, PSH, ACK | URG | PSH]), "c_odd"
            payload = rng.randbytes(rng.choice([0, 10]))
        seq = (cl.c + 1 + off) & M32
        frame = tcp_frame(CMAC, FMAC, cl.ip, cl.vip, cl.port, cl.vport, seq, s_ack, flags,
                          rng.choice([502, 0, 65535]), rng.choice([b"", b"", b"\x01\x01\x08\x0a" + rng.randbytes(8)]),
                          payload)
        return self._frame_input(rng, frame, kind)

    def _backend_input(self, rng) -> Input:
        eng = self.eng
        conns = [c for c in eng.conns.values() if c.backend is not None]
        if conns and rng.random() < 0.85:
            conn = rng.choice(conns)
            b = conn.backend if rng.random() < 0.95 else rng.randrange(len(self.backends))
            key, s, c = conn.key, conn.s, conn.c
        else:   # a forged or orphan segment from a back-end's address
            b = rng.randrange(len(self.backends))
            cl = rng.choice(self.clients) if self.clients and rng.random() < 0.7 else None
            key = cl.key if cl else (rng.choice([self.client_ip, rng.getrandbits(32)]), rng.randrange(1, 65536), 0)
            s, c = rng.getrandbits(32), rng.getrandbits(32)
        bip, bport = self.backends[b]
        sent_key = (key, b, s)
        sent = self.bsent.get(sent_key, 0)
        got = self.brcv.get((key, b), 0)
        r = rng.random()
        seq, payload, flags = (s + 1 + sent) & M32, b"", ACK
        if r < 0.25:
            flags, seq, kind = SYN | ACK, s, "b_synack"
            if rng.random() < 0.1:
                seq = (s + rng.choice([1, -1, 1 << 31])) & M32
            ack = (c + 1) & M32
        else:
            ack = (c + 1 + got) & M32
            if r < 0.65:
                if sent == 0 or rng.random() < 0.2:
                    n = rng.choice([100, 5000, 70000, 10 ** 7, 0])
                    payload = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n
                               + rng.randbytes(rng.choice([0, 50, 1400])))
                else:
                    payload = rng.randbytes(rng.choice([1, 1448, 1448, 2896, 9000]))
                flags, kind = ACK | PSH, "b_data"
            elif r < 0.82:
                kind = "b_ack"
            elif r < 0.9:
                flags, kind = FIN | ACK, "b_fin"
            elif r < 0.95:
                flags, kind = rng.choice([RST, RST | ACK]), "b_rst"
            else:
                seq, payload, kind = (seq - rng.randrange(1, 5000)) & M32, rng.randbytes(100), "b_retrans"
            self.bsent[sent_key] = sent + len(payload) + (1 if flags & FIN else 0)
        frame = tcp_frame(CMAC, FMAC, bip, key[0], bport, key[1], seq, ack, flags, rng.choice([500, 0, 65535]),
                          b"\x02\x04\x05\xb4" if flags & SYN else b"", payload)
        return self._frame_input(rng, frame, kind)

    # ------------------------------------------------------------------ running and checking

    def execute(self, inp: Input) -> list[Violation]:
        ev = inp.extra["ev"]
        if ev[0] == "seg":
            self.events.append(("seg", inp.data.hex()))
        else:
            self.events.append(ev)
        try:
            return self._execute(ev, inp)
        except Exception as e:  # noqa: BLE001 - any exception is a finding
            tb = traceback.extract_tb(e.__traceback__)[-1]
            return [Violation("exception", f"{type(e).__name__}: {e} at {tb.filename.split('/')[-1]}:{tb.lineno}")]

    def _execute(self, ev: tuple, inp: Input) -> list[Violation]:
        eng, sw = self.eng, self.sw
        kind = ev[0]
        self.inputs[kind] += 1
        st = self.stats["engine"]
        if kind == "seg":
            seg = self.codec.parse(memoryview(inp.data))
            if seg is None:
                st["codec_refused"] += 1
                return []
            self.segments += 1
            svc = self.by_vip.get((seg.dst, seg.dport))
            if svc is not None:
                keys = [(seg.src, seg.sport, svc)]
                self.seen.add(keys[0])
            else:
                keys = [(seg.dst, seg.dport, i) for i in range(len(self.services))]
                if (seg.src, seg.sport) in self.backend_set:
                    sole = self.sole[self.backends.index((seg.src, seg.sport))]
                    if sole is not None and (seg.payload or seg.flags & FIN):
                        # adoption: a back-end's data for a connection we lost, for the only
                        # service that uses that back-end (with several, no other may adopt it)
                        self.justified.add(keys[sole])
                        self.seen.add(keys[sole])
                    if seg.flags & RST:
                        self.rst_named.add((seg.dst, seg.dport))   # relayed to the client it names
            before = [self._fingerprint(k) for k in keys]
            total = self._counted()
            acts = eng.segment(seg, self.now)
            v = self._check_actions(acts)
            if not acts and self._counted() == total and [self._fingerprint(k) for k in keys] == before:
                if seg.payload or seg.flags & (SYN | FIN | RST):
                    v.append(Violation("uncounted", f"segment {seg!r} changed nothing and counted nothing"))
                else:
                    st["pure_ack_absorbed"] += 1     # an ACK that told us nothing new is no drop
        elif kind == "tick":
            self.now += ev[1]
            acts = eng.tick(self.now)
            v = self._check_actions(acts)
        elif kind == "flush":
            acts = eng.flush(self.now)
            v = self._check_actions(acts)
        elif kind == "deliver":
            acts, v = [], []
            pend, sw.pending = sw.pending, []
            for r in pend:
                a = eng.offload_result(r[0], r[1], r[2], r[3], self.now, r[4])
                v += self._check_actions(a)
                acts += a
        elif kind == "install":
            sw.install_queued()
            acts, v = [], []
        elif kind == "idle":
            acts = eng.switch_idle(list(sw.table), self.now)
            v = self._check_actions(acts)
        elif kind == "health":
            eng.set_health(ev[1], ev[2])
            acts, v = [], []
        elif kind == "mode":
            sw.mode = ev[1]
            acts, v = [], []
        elif kind == "end_epoch":
            v = self.end_epoch()
            self.start_epoch(random.Random(self.epochs * 7919), self.now + 1000)
            return v
        else:
            raise ValueError(f"unknown event {ev}")
        sw.apply(acts)
        self._observe(acts)
        return v + self._check_state()

    def _fingerprint(self, key):
        c = self.eng.conns.get(key)
        if c is None:
            return None
        return (c.state, c.nxt, c.held_bytes, c.ooo_bytes, len(c.ooo), c.cli_ack, c.srv_end, c.cli_fin, c.srv_fin,
                c.deadline, c.offload, c.resp_acked, c.backend, c.parser_idle, c.bad_request,
                None if c.ack_held is None else tuple(id(x) for x in c.ack_held))

    def _counted(self) -> int:
        s = self.eng.stats
        return (sum(s.drops.values()) + sum(s.events.values()) + sum(s.offload.values()) + sum(s.requests_rule.values())
                + sum(s.responses_local.values()))

    def _observe(self, acts) -> None:
        """What the peers received: the client's view of the server stream, the back-end's of the client's."""
        for a in acts:
            if isinstance(a, Send):
                seg = a.seg
                if a.to == "client":
                    key = (seg.dst, seg.dport, self.by_vip.get((seg.src, seg.sport)))
                    for cl in self.clients:
                        if cl.key == key and not cl.forged:
                            end = (seg.end - cl.s - 1) & M32
                            if end < 1 << 30 and end > cl.rcv:
                                cl.rcv = end
                else:
                    b = self.backends.index((seg.dst, seg.dport))
                    for conn in self._conns_of(seg.src, seg.sport):
                        if conn.backend != b:
                            continue
                        got = (seg.end - conn.c - 1) & M32
                        if got < 1 << 30:
                            k = (conn.key, b)
                            self.brcv[k] = max(self.brcv.get(k, 0), got)

    def _conns_of(self, ip: int, port: int) -> list:
        conns = self.eng.conns
        return [c for i in range(len(self.services)) if (c := conns.get((ip, port, i))) is not None]

    def _check_actions(self, acts) -> list[Violation]:
        v: list[Violation] = []
        backends = self.backends
        for a in acts:
            if isinstance(a, Send):
                seg = a.seg
                if a.to == "backend":
                    if (seg.dst, seg.dport) not in backends:
                        v.append(Violation("address", f"to a back-end address the config does not name: {seg!r}"))
                    if not any((seg.src, seg.sport, i) in self.seen for i in range(len(self.services))):
                        v.append(Violation("address", f"to a back-end for a client nobody saw: {seg!r}"))
                elif a.to == "client":
                    svc = self.by_vip.get((seg.src, seg.sport))
                    if svc is None:
                        v.append(Violation("address", f"to a client not from a service's VIP:port: {seg!r}"))
                    elif seg.dst in self.vip_addrs or not (
                            (seg.dst, seg.dport, svc) in self.seen
                            or seg.flags & RST and (seg.dst, seg.dport) in self.rst_named):
                        v.append(Violation("address", f"to a client that never spoke to service {svc} "
                                           f"(nor was adopted for it): {seg!r}"))
                else:
                    v.append(Violation("address", f"send to {a.to!r}"))
                v += self._check_frame(seg)
            elif isinstance(a, OffloadInsert):
                conn = self.eng.conns.get(a.key)
                if not 0 <= a.backend < len(backends) or conn is None:
                    v.append(Violation("state", f"offload insert without a connection: {a}"))
        return v

    def _check_frame(self, seg) -> list[Violation]:
        hdr, payload = self.codec.build(seg)
        frame = hdr[10:] + payload
        lay = Layout(frame)
        if not lay.tcp_ok:
            return [Violation("checksum", f"built frame does not parse: {seg!r}")]
        if hdr[0] & 1:    # VIRTIO_NET_HDR_F_NEEDS_CSUM: the pseudo-header sum for the kernel to complete
            check = int.from_bytes(frame[lay.l4 + 16:lay.l4 + 18], "big")
            pseudo = _pseudo_sum(frame, lay)
            if check != (pseudo % 0xFFFF or 0xFFFF) or ip_residue(frame, lay):
                return [Violation("checksum", f"partial checksum wrong: {seg!r}")]
            return []
        if len(frame) > 1514:
            return [Violation("mtu", f"{len(frame)}-byte frame without GSO: {seg!r}")]
        if ip_residue(frame, lay) or l4_residue(frame, lay):
            return [Violation("checksum", f"checksum wrong: {seg!r}")]
        return []

    def _check_state(self) -> list[Violation]:
        eng, fe = self.eng, self.eng.fe
        v: list[Violation] = []
        if len(eng.conns) > fe.max_connections:
            v.append(Violation("state", f"{len(eng.conns)} connections > max_connections"))
        active = [0] * len(self.backends)
        on_backend: dict[tuple[int, int, int], tuple] = {}
        for key, c in eng.conns.items():
            if key not in self.justified:
                # not one of ours: the engine must have verified a cookie for it
                if not self._cookie_ok(key, c):
                    v.append(Violation("state", f"connection {key} without a valid cookie or back-end data"))
                else:
                    self.justified.add(key)
            if c.held_bytes > fe.max_held_bytes + fe.max_header_bytes + 65536 or c.ooo_bytes > fe.max_held_bytes:
                v.append(Violation("state", f"{key}: held {c.held_bytes} / out of order {c.ooo_bytes} bytes"))
            if c.backend is not None:
                active[c.backend] += 1
                pair = (key[0], key[1], c.backend)
                if pair in on_backend:
                    v.append(Violation("state", f"{key} and {on_backend[pair]} on one back-end {c.backend}: "
                                       "it would see one 4-tuple twice"))
                on_backend[pair] = key
        if active != eng.active:
            v.append(Violation("state", f"back-end counts {eng.active}, connections say {active}"))
        for key, (_t, c) in eng._held.items():
            if eng.conns.get(key) is not c or c.ack_held is None:
                v.append(Violation("state", f"held ACK of a connection that is gone: {key}"))
        if len(eng._recent) > 65536:
            v.append(Violation("state", "recently-closed list unbounded"))
        return v

    def _cookie_ok(self, key, conn) -> bool:
        for back in range(0, 200, 10):   # the connection may be older than this instant
            t = self.now - back
            if cookie.check_cookie(conn.s0, self.keys_at(t), key[0], key[1], *self.services[key[2]],
                                   cookie.bucket_of(t, self.cfg.switch.cookie.bucket_seconds)) is not None:
                return True
        return conn.adopted != 0

    def end_epoch(self) -> list[Violation]:
        """Every client resets; timers, results and idle reports run out: nothing may be left."""
        eng, sw = self.eng, self.sw
        v: list[Violation] = []
        self.epochs += 1
        try:
            for key in list(eng.conns):
                seg_acts = eng.segment(_rst(self, key), self.now)
                v += self._check_actions(seg_acts)
                sw.apply(seg_acts, "ok")
            for _ in range(6):
                sw.install_queued()
                pend, sw.pending = sw.pending, []
                for r in pend:
                    sw.apply(eng.offload_result(r[0], r[1], r[2], r[3], self.now, r[4]), "ok")
                self.now += 1000
                sw.apply(eng.tick(self.now), "ok")
                sw.apply(eng.flush(self.now), "ok")
                sw.apply(eng.switch_idle(list(sw.table), self.now), "ok")
        except Exception as e:  # noqa: BLE001
            tb = traceback.extract_tb(e.__traceback__)[-1]
            return v + [Violation("exception", f"{type(e).__name__}: {e} at {tb.filename.split('/')[-1]}:{tb.lineno}")]
        for name in ("drops", "events", "offload", "responses_local", "requests_rule"):
            self.stats[f"engine.{name}"].update({str(k): n for k, n in getattr(eng.stats, name).items()})
        if eng.conns:
            v.append(Violation("state", f"{len(eng.conns)} connections left after the end: {list(eng.conns)[:3]}"))
        if sw.table:
            v.append(Violation("state", f"{len(sw.table)} offload entries left after the end"))
        if any(eng.active):
            v.append(Violation("state", f"back-end counts {eng.active} after the end"))
        if eng._held:
            v.append(Violation("state", "held ACKs after the end"))
        return v

    def finish(self) -> list[Violation]:
        return self.end_epoch()

    def case_state(self) -> dict:
        return {"events": list(self.events)}

    def replay(self, inp: Input, state: dict) -> list[Violation]:
        """Replay a saved epoch: every event before the failing one, then the failing one."""
        v: list[Violation] = []
        events = state["events"]
        self.start_epoch(random.Random(0), events[0][1], bool(events[0][2]) if len(events[0]) > 2 else False)
        for ev in events[1:]:
            if ev[0] == "seg":
                v = self.execute(Input("engine", bytes.fromhex(ev[1]), extra={"ev": ("seg",)}))
            else:
                v = self.execute(Input("engine", extra={"ev": tuple(ev)}))
        return v



def _pseudo_sum(frame, lay) -> int:
    l3 = lay.l3
    return (int.from_bytes(frame[l3 + 12:l3 + 14], "big") + int.from_bytes(frame[l3 + 14:l3 + 16], "big")
            + int.from_bytes(frame[l3 + 16:l3 + 18], "big") + int.from_bytes(frame[l3 + 18:l3 + 20], "big")
            + 6 + (lay.tot - lay.ihl))


def _rst(h: EngineHarness, key):
    from miresga.frontend.segment import Segment
    conn = h.eng.conns[key]
    if conn.adopted:
        # an adopted connection's client: the one RST a back-end could also send
        b = h.backends[conn.backend] if conn.backend is not None else h.backends[0]
        return Segment(b[0], b[1], key[0], key[1], conn.srv_end, 0, RST, 0)
    return Segment(key[0], key[1], *h.services[key[2]], (conn.nxt or 0), 0, RST, 0)

