"""Differential tests of the front-end's kernel path: same segments in, same segments out.

Two front-ends see the same segments at the same `now`:
- the *reference*: the Python engine alone (`Engine(kernel=False)`), the executable specification;
- the *system*: `bpf/frontend.bpf.c` run through BPF_PROG_TEST_RUN on the real frame, plus the
  engine with `kernel=True`, wired exactly as `server.py` wires them (hand-over into the map,
  take-back before the engine sees a segment, ring-buffer events to the engine).
After every segment both must have emitted the same TCP segments (whole segments: addresses,
ports, sequence numbers, flags, window, options, payload; the kernel's checksums verified by
scapy; IP id/TTL are not part of a segment) and the same switch-table requests, and their
connections must agree. Scenarios are data; a hypothesis test runs random segment sequences.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import Ether

from frontend_helpers import ACK, FIN, NOW, PSH, RST, RULES, SYN, Backend, Client, get, make_cfg, seq_add
from miresga.bpf.layouts import FeConn, FeKey
from miresga.cookie import tai_seconds
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.bpf.testrun import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, checksums_ok
from miresga.frontend.engine import Engine, Send
from miresga.frontend.kernel.handover import KernelCheck, KernelHandover, KernelMark, KernelRemove, Phase
from miresga.frontend.kernel.maps import FeStat, KernelMaps, decode_entry, fe_key
from miresga.frontend.packetio import FrameCodec, mac_bytes
from miresga.frontend.rules import RuleSet
from miresga.frontend.segment import Segment
from miresga.frontend.engine.states import State

pytestmark = pytest.mark.netns   # root: loads BPF programs

CFG = make_cfg(RULES.replace("syn_retries: 2}", "syn_retries: 2, ack_coalesce_ms: 0}"))
SW_MAC, FE_MAC = "02:53:0a:00:02:01", "02:4d:0a:00:02:02"
_IN = FrameCodec(mac_bytes(SW_MAC), mac_bytes(FE_MAC), checksum="software")   # frames as the switch sends them
_PARSE = FrameCodec(mac_bytes(FE_MAC), mac_bytes(SW_MAC))


def loaded(cfg):
    """The kernel path's program and maps for `cfg`'s services (a module fixture's body)."""
    with BpfObject(object_path("frontend")) as obj:
        maps = KernelMaps(obj, cfg.vip_endpoints())
        yield obj.program("frontend_ingress"), maps
        maps.close()


@pytest.fixture(scope="module")
def bpf():
    yield from loaded(CFG)


def frame(seg: Segment) -> bytes:
    hdr, payload = _IN.build(seg)
    return hdr[10:] + payload       # without the virtio-net header


class System:
    """The kernel path and the engine that owns what the kernel passes up."""

    def __init__(self, prog, maps: KernelMaps, cfg=None, now: float = NOW):
        cfg = cfg or CFG
        self.prog, self.maps = prog, maps
        maps.conns.clear()
        maps.held.clear()
        maps.events()
        for i in range(64):
            maps.positions.map.update(ctypes.c_uint32(i), ctypes.c_uint64(0))
        self.eng = Engine(cfg, kernel=True, positions=maps.positions, counts=maps.counts(len(cfg.hosts.backends)))
        maps.load_rules(cfg, self.eng.rulesets, self.eng.healthy)
        maps.set_keys(self.eng.keys(now))
        maps.set_routing(True, True)
        self.verdicts: list[int] = []
        # The kernel stamps entries with its own clock; the test runs on simulated time, so it
        # keeps the simulated time of each entry's last segment and reports idleness from it.
        self.seen: dict = {}

    def _apply(self, actions, out: list, now: float) -> None:
        for a in actions:
            if isinstance(a, KernelHandover):
                if self.maps.handover(a.key, a.entry):
                    self.seen[a.key] = now - a.entry.idle_s
                else:
                    self.eng.handover_refused(a.key)
            elif isinstance(a, KernelRemove):
                if not self.maps.remove(a.key, a.cli_nxt):
                    self.eng.stats.events["kernel_remove_reused"] += 1
            elif isinstance(a, KernelMark):
                self.maps.mark(a.key)
            elif isinstance(a, KernelCheck):
                entry = self._take(a.key, out, now)
                self._apply(self.eng.kernel_checked(a.key, entry, now), out, now)
            else:
                out.append(a)

    def _events(self, out: list, now: float) -> None:
        for ev in self.maps.events():
            self._apply(self.eng.kernel_event(ev, now), out, now)

    def _take(self, key, out, now):
        entry = self.maps.take(key)
        if entry is None:
            self._events(out, now)
        else:
            entry.idle_s = now - self.seen.get(key, now)
        return entry

    def segment(self, seg: Segment, now: float) -> list:
        out: list = []
        key = self.entry_key(seg)
        if key is not None:
            self.seen[key] = now
        r = self.prog.test_run(frame(seg))
        self.verdicts.append(r.retval)
        self._events(out, now)      # a request the kernel took comes before what follows it
        if r.retval == TC_ACT_REDIRECT:
            got = Ether(r.data)
            assert checksums_ok(got), f"bad checksum out of the kernel for {seg}"
            assert (got.src, got.dst) == (FE_MAC, SW_MAC), "relayed frames go back to the switch port"
            out.append(Send(_PARSE.parse(memoryview(b"\0" * 10 + r.data)), "?"))
        elif r.retval == TC_ACT_OK:
            key = self.eng.kernel_key(seg)
            if key is not None:
                self._apply(self.eng.take_back(key, self._take(key, out, now), now), out, now)
            self._apply(self.eng.segment(seg, now), out, now)
        else:
            assert r.retval == TC_ACT_SHOT, r.retval
        self._events(out, now)
        return out

    def tick(self, now: float) -> list:
        out: list = []
        self._apply(self.eng.tick(now), out, now)
        return out

    def entry_key(self, seg: Segment):
        """The key of the kernel entry `seg` belongs to, found as the kernel finds it: by the VIP:port
        it is addressed to, or (a back-end's) the service whose entry has the sending back-end."""
        svc = self.eng.by_vip.get((seg.dst, seg.dport))
        if svc is not None:
            key = (seg.src, seg.sport, svc)
            return key if self.maps.conns.lookup(fe_key(key)) is not None else None
        for svc in range(len(self.eng.services)):
            raw = self.maps.conns.lookup(fe_key((seg.dst, seg.dport, svc)))
            if raw is not None:
                e = decode_entry(FeConn.from_buffer_copy(raw), 0)
                if (e.backend_ip, e.backend_port) == (seg.src, seg.sport):
                    return (seg.dst, seg.dport, svc)
        return None


def relay_entries(maps: KernelMaps) -> list[bytes]:
    """Keys of the entries the kernel relays or routes for (not the engine's markers)."""
    return [bytes(k) for k, v in maps.conns.items() if FeConn.from_buffer_copy(v).phase != Phase.PYTHON]


def normal(actions) -> tuple[list, list]:
    """What a front-end did, comparable across the two: the segments it sent, in order, and its
    switch-table requests, in order. Not their interleaving: the kernel relays a response segment
    first and the engine asks for its offload after reading the copy (the relay never waits)."""
    return [a.seg for a in actions if isinstance(a, Send)], [a for a in actions if not isinstance(a, Send)]


class Twin:
    """Reference and system side by side; every step is compared."""

    def __init__(self, prog, maps, cfg=None, now: float = NOW):
        self.ref = Engine(cfg or CFG)
        self.sys = System(prog, maps, cfg, now)

    def segment(self, seg: Segment, now: float = NOW) -> list:
        want = normal(self.ref.segment(seg, now))
        got = normal(self.sys.segment(seg, now))
        assert got == want, f"{seg}:\n  kernel path: {got}\n  engine:      {want}"
        self.agree()
        return got[0] + got[1]

    def tick(self, now: float) -> list:
        want, got = normal(self.ref.tick(now)), normal(self.sys.tick(now))
        assert got == want, f"tick {now}:\n  kernel path: {got}\n  engine:      {want}"
        self.agree()
        return got[0] + got[1]

    def agree(self) -> None:
        a, b = self.ref.conns, self.sys.eng.conns
        assert a.keys() == b.keys()
        for k, c in a.items():
            d = b[k]
            fins, state = (d.cli_fin, d.srv_fin), d.state
            if d.kernel:    # what the kernel relayed since the hand-over is in its entry
                e = decode_entry(FeConn.from_buffer_copy(self.sys.maps.conns.lookup(fe_key(k))), 0)
                fins = (d.cli_fin or e.cli_fin, d.srv_fin or e.srv_fin)
                if state is State.SYN_SENT and e.phase is Phase.RELAY:
                    state = State.SPLICED   # the kernel released the request; the engine hears later
            assert (c.state, c.cli_fin, c.srv_fin, c.offload, c.backend) == \
                (state, *fins, d.offload, d.backend), k
        entries = {bytes(k): FeConn.from_buffer_copy(v).phase for k, v in self.sys.maps.conns.items()}
        held = {bytes(fe_key(k)) for k, c in b.items() if c.kernel}
        assert {k for k, p in entries.items() if p != Phase.PYTHON} == held, "kernel entries == connections it holds"
        assert {k for k, p in entries.items() if p == Phase.PYTHON} <= {bytes(fe_key(k)) for k in b}, \
            "a marker only for a connection the engine holds"


# ---------------------------------------------------------------------------- scenarios as data

RESP_1K = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024
RESP_1M_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + b"y" * 1400


@dataclass
class Conn:
    cl: Client
    be: Backend


def opened(t: Twin, path: str = "/", backend: int = 0) -> Conn:
    """One-segment GET, splice SYN, SYN-ACK: the connection is established (and handed over)."""
    cl = Client(t.ref)
    t.segment(cl.seg(get(path)))
    be = Backend(t.ref, backend, cl)
    t.segment(be.synack())
    assert t.sys.eng.conns[cl.key].kernel, "an established connection is the kernel's"
    return Conn(cl, be)


def sack_ack(c: Conn, left: int, right: int) -> Segment:
    s = c.cl.seg(b"", flags=ACK)
    blk = struct.pack("!BBBBII", 1, 1, 5, 10, seq_add(c.cl.s, 1 + left), seq_add(c.cl.s, 1 + right))
    return Segment(s.src, s.sport, s.dst, s.dport, s.seq, s.ack, s.flags, s.window, blk)


def _respond(c: Conn, body: bytes = RESP_1K, flags: int = ACK | PSH) -> Segment:
    seg = c.be.seg(body, flags)
    c.cl.acked += len(body) + (1 if flags & FIN else 0)
    return seg


Step = Callable[[Conn], Segment]
SCENARIOS: list[tuple[str, str, list[Step]]] = [
    ("response, client ACK", "/", [
        lambda c: _respond(c), lambda c: c.cl.seg(b"", flags=ACK)]),
    ("ACK with a SACK block", "/", [
        lambda c: _respond(c), lambda c: sack_ack(c, 2000, 3000)]),
    ("client closes first", "/", [
        lambda c: _respond(c), lambda c: c.cl.seg(b"", flags=ACK | FIN),
        lambda c: _respond(c, b"", ACK | FIN), lambda c: c.cl.seg(b"", flags=ACK)]),
    ("back-end closes first", "/", [
        lambda c: _respond(c, RESP_1K, ACK | PSH | FIN), lambda c: c.cl.seg(b"", flags=ACK),
        lambda c: c.cl.seg(b"", flags=ACK | FIN), lambda c: c.be.seg(b"", ACK)]),
    ("client FIN retransmitted", "/", [
        lambda c: c.cl.seg(b"", flags=ACK | FIN), lambda c: c.cl.seg(b"", off=c.cl.sent - 1, flags=ACK | FIN)]),
    # found by the random sequences: a retransmitted FIN acknowledging more is relayed, but its
    # ack is not taken as the client's latest (the engine's RST on idle expiry uses the older one)
    ("client FIN retransmitted after more response", "/", [
        lambda c: c.cl.seg(b"", flags=ACK | FIN), lambda c: _respond(c),
        lambda c: c.cl.seg(b"", off=c.cl.sent - 1, flags=ACK | FIN, advance=False),
        lambda c: c.cl.seg(b"", flags=ACK)]),
    ("client RST", "/", [lambda c: _respond(c), lambda c: c.cl.seg(b"", flags=RST | ACK)]),
    ("back-end RST", "/", [lambda c: c.be.seg(b"", RST | ACK)]),
    ("back-end retransmission", "/", [
        lambda c: _respond(c), lambda c: Segment(c.be.ip, c.be.port, c.cl.ip, c.cl.port, seq_add(c.be.s, 1),
                                                 seq_add(c.be.c, 1 + c.cl.sent), ACK | PSH, 500, b"", RESP_1K)]),
    ("out-of-window client ACK", "/", [lambda c: c.cl.seg(b"", flags=ACK, ack=seq_add(c.cl.s, 1 << 30))]),
    ("back-end SYN-ACK again", "/", [lambda c: c.be.synack()]),
    ("next request, same back-end", "/", [
        lambda c: _respond(c), lambda c: c.cl.seg(get("/two")), lambda c: _respond(c)]),
    ("next request re-routed", "/", [
        lambda c: _respond(c), lambda c: c.cl.seg(get("/api/x"))]),
    ("auto offload from the response header", "/big/1m", [lambda c: _respond(c, RESP_1M_HEAD)]),
    ("out-of-order client FIN", "/", [lambda c: c.cl.seg(b"", off=c.cl.sent + 100, flags=ACK | FIN)]),
    ("another back-end speaks for the client", "/", [
        lambda c: Backend(c.be.eng, 2, c.cl).seg(b"stray", ACK)]),
    ("client SYN on an established connection", "/", [
        lambda c: Segment(c.cl.ip, c.cl.port, c.be.eng.vip, c.be.eng.vport, 7, 0, SYN, 1000)]),
]


@pytest.mark.parametrize("name,path,steps", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_kernel_path_equals_engine(bpf, name, path, steps):
    t = Twin(*bpf)
    c = opened(t, path)
    for step in steps:
        t.segment(step(c))
    assert TC_ACT_REDIRECT in t.sys.verdicts or TC_ACT_SHOT in t.sys.verdicts or name.startswith(
        ("next request", "out-of-order", "another", "client SYN")), "the kernel took part"


def test_relay_takes_no_python(bpf):
    """Response, ACKs and both FINs of an established connection: all in the kernel, none in the
    engine (its counters do not move), and the close reaches the engine as one event."""
    t = Twin(*bpf)
    c = opened(t)
    before = dict(t.sys.eng.stats.events)
    for step in SCENARIOS[2][2]:
        t.segment(step(c))
    assert t.sys.verdicts[-4:] == [TC_ACT_REDIRECT] * 4
    assert t.sys.eng.stats.events["kernel_take_back"] == before.get("kernel_take_back", 0)
    assert t.sys.eng.conns[c.cl.key].state is State.CLOSING
    stats = t.sys.maps.stats()
    assert stats["closing"] >= 1 and stats["to_client"] >= 2 and stats["to_backend"] >= 2
    # the close linger ends in the engine: both forget, the kernel entry goes
    t.tick(NOW + CFG.frontend.close_linger_s + 0.1)
    assert not t.sys.eng.conns and not list(t.sys.maps.conns.keys())   # nor a marker


def test_idle_expiry(bpf):
    """Idle past idle_timeout_s: only the kernel knows, so the engine asks (KernelCheck)."""
    t = Twin(*bpf)
    c = opened(t)
    t.segment(_respond(c))
    raw = t.sys.maps.conns.lookup(fe_key(c.cl.key))
    entry = FeConn.from_buffer_copy(raw)
    entry.last_seen_ns = 1      # long ago
    t.sys.maps.conns.update(fe_key(c.cl.key), entry)
    out = t.tick(NOW + CFG.frontend.idle_timeout_s + 1)
    assert sum(1 for s in out if isinstance(s, Segment) and s.flags & RST) == 2, out
    assert not t.sys.eng.conns


def test_active_connection_not_expired(bpf):
    """The engine's timer fires (it set it at the hand-over), but the kernel relayed a moment
    ago: the connection stays, with the kernel, its timer set from the kernel's last segment."""
    t = Twin(*bpf)
    c = opened(t)
    idle = CFG.frontend.idle_timeout_s
    t.segment(_respond(c), NOW + idle - 1)
    takes = t.sys.eng.stats.events["kernel_take_back"]
    assert t.tick(NOW + idle + 1) == []
    conn = t.sys.eng.conns[c.cl.key]
    assert t.sys.eng.stats.events["kernel_take_back"] == takes + 1 and conn.kernel
    assert conn.deadline == pytest.approx(NOW + 2 * idle - 1)
    assert t.tick(NOW + 2 * idle) != []        # and then it does expire, on both


def test_full_table_keeps_connection_in_python():
    """A kernel table with no room refuses the hand-over (E2BIG); the engine keeps relaying."""
    with BpfObject(object_path("frontend"), max_entries={"fe_conns": 1}) as obj:
        maps = KernelMaps(obj, CFG.vip_endpoints())
        try:
            s = System(obj.program("frontend_ingress"), maps)
            other = Client(s.eng, port=50000)
            s.segment(other.seg(get("/")), NOW)
            s.segment(Backend(s.eng, 0, other).synack(), NOW)      # takes the only slot
            cl = Client(s.eng)
            s.segment(cl.seg(get("/")), NOW)
            s.segment(Backend(s.eng, 0, cl).synack(), NOW)
            assert s.eng.conns[other.key].kernel and not s.eng.conns[cl.key].kernel
            assert s.eng.stats.events["kernel_full"] == 1
            assert list(maps.conns.keys()) == [bytes(fe_key(other.key))]
            # the engine relays it itself
            out = s.segment(Backend(s.eng, 0, cl).seg(RESP_1K), NOW)
            assert s.verdicts[-1] == TC_ACT_OK
            assert [a.seg.payload for a in out if isinstance(a, Send)] == [RESP_1K]
        finally:
            maps.close()


# ---------------------------------------------------------------------------- random sequences

KINDS = ["resp", "resp_fin", "cli_ack", "cli_sack", "cli_fin", "be_ack", "cli_rst", "be_rst", "cli_req",
         "cli_req_api", "be_rtx", "cli_fin_rtx", "synack"]


def _step(kind: str, c: Conn) -> Segment:
    if kind == "resp":
        return _respond(c)
    if kind == "resp_fin":
        return _respond(c, b"", ACK | FIN)
    if kind == "cli_ack":
        return c.cl.seg(b"", flags=ACK)
    if kind == "cli_sack":
        return sack_ack(c, 100, 200)
    if kind == "cli_fin":
        return c.cl.seg(b"", flags=ACK | FIN)
    if kind == "be_ack":
        return c.be.seg(b"", ACK)
    if kind == "cli_rst":
        return c.cl.seg(b"", flags=RST | ACK)
    if kind == "be_rst":
        return c.be.seg(b"", RST | ACK)
    if kind == "cli_req":
        return c.cl.seg(get("/again"))
    if kind == "cli_req_api":
        return c.cl.seg(get("/api/y"))
    if kind == "be_rtx":
        return Segment(c.be.ip, c.be.port, c.cl.ip, c.cl.port, seq_add(c.be.s, 1), seq_add(c.be.c, 1),
                       ACK | PSH, 500, b"", b"again")
    if kind == "cli_fin_rtx":
        return c.cl.seg(b"", off=max(0, c.cl.sent - 1), flags=ACK | FIN, advance=False)
    return c.be.synack()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=12),
       ticks=st.lists(st.floats(0.0, 3.0), min_size=12, max_size=12))
def test_random_sequences_equal(bpf, kinds, ticks):
    t = Twin(*bpf)
    c = opened(t)
    now = NOW
    for kind, dt in zip(kinds, ticks):
        if c.cl.key not in t.ref.conns:
            break
        now += dt
        t.segment(_step(kind, c), now)
        t.tick(now)
    # whatever happened, nothing outlives the connection
    t.tick(now + CFG.frontend.idle_timeout_s + CFG.frontend.close_linger_s + 10)
    if not t.ref.conns:
        assert not list(t.sys.maps.conns.keys())


def test_counters_name_every_stat():
    assert [s.value for s in FeStat] == list(range(len(FeStat)))


def test_restart_replaces_a_dead_predecessors_program():
    """A front-end killed with SIGKILL leaves its TC filter behind; the next one takes its place
    (no EEXIST), and a clean stop leaves no program on the interface."""
    from miresga.bpf.netns import in_netns
    from miresga.frontend.kernel.maps import KernelPath
    ns = f"mgkt{os.getpid() % 100000}"

    def sh(*a):
        subprocess.run(a, check=True, capture_output=True)

    def filters() -> int:
        out = subprocess.run(["ip", "netns", "exec", ns, "bpftool", "-j", "net", "show", "dev", "eth0"],
                             capture_output=True, text=True, check=True).stdout
        return sum(1 for d in json.loads(out) for p in d.get("tc", []) if p["name"].startswith("frontend_ingres"))
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        with in_netns(ns):
            first = KernelPath("eth0", CFG.vip_endpoints(), 1024)
            first.ring.close()          # "dies": its filter stays attached
            second = KernelPath("eth0", CFG.vip_endpoints(), 1024)
        assert filters() == 1
        with in_netns(ns):
            second.close()
        assert filters() == 0
        first.obj.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_offloaded_connection_goes_back_to_the_kernel(bpf):
    """Once the switch carries a connection (entry installed), only its requests and its close
    reach the front-end: a request the engine had to route (offload: always is the engine's),
    and then the connection is the kernel's again, its next requests routed there."""
    t = Twin(*bpf)
    c = opened(t, "/dl/x", backend=2)            # offload: always -> insert at the splice
    for eng in (t.ref, t.sys.eng):
        gen = eng.conns[c.cl.key].offload_gen
        assert eng.offload_result(c.cl.ip, c.cl.port, gen, "ok", NOW) == []
    t.segment(_respond(c))
    assert t.sys.eng.conns[c.cl.key].kernel      # handed over before the entry was confirmed
    t.segment(c.cl.seg(get("/dl/y")))             # offload always: the engine routes it ...
    assert t.sys.verdicts[-1] == TC_ACT_OK and t.sys.eng.conns[c.cl.key].kernel   # ... and gives it back
    t.segment(_respond(c))
    t.segment(c.cl.seg(get("/two")))              # the default rule, same back-end: the kernel's


# ---------------------------------------------------------------------------- requests routed in the kernel
# First requests need a cookie the kernel accepts: made at the kernel's clock (TAI now), which the
# engines are then given as their `now`.

LIVE = tai_seconds()


@pytest.fixture(autouse=True)
def _live_clock():
    """Each test reads the clock anew: a cookie is valid for two buckets of the kernel's clock."""
    global LIVE
    LIVE = tai_seconds()


def _req(line: str, *headers: str) -> bytes:
    return (line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1")


H = "Host: a.example"
# (request, where the kernel path must route it: "kernel" or "python") — the engine routes both
# ways the same; the table says which layer does it.
FIRST_REQUESTS: list[tuple[str, bytes, str]] = [
    ("GET /", _req("GET / HTTP/1.1", H), "kernel"),
    ("HEAD /", _req("HEAD / HTTP/1.1", H), "kernel"),
    ("query string", _req("GET /a?b=c&d=/e?f HTTP/1.1", H), "kernel"),
    ("HTTP/1.0", _req("GET / HTTP/1.0", H), "kernel"),
    ("Connection: close", _req("GET / HTTP/1.1", H, "Connection: close"), "kernel"),
    ("Connection: keep-alive, 1.0", _req("GET / HTTP/1.0", H, "Connection: Keep-Alive"), "kernel"),
    ("no Host", _req("GET / HTTP/1.1"), "kernel"),
    ("prefix /big/ exactly", _req("GET /big/ HTTP/1.1", H), "kernel"),
    ("prefix /big without slash", _req("GET /big HTTP/1.1", H), "kernel"),
    ("prefix, other case", _req("GET /BIG/x HTTP/1.1", H), "kernel"),
    ("host rule", _req("GET / HTTP/1.1", "Host: www.two.example"), "kernel"),
    ("host rule, case and port", _req("GET / HTTP/1.1", "Host: WWW.Two.Example:8080"), "kernel"),
    ("host rule, longer host", _req("GET / HTTP/1.1", "Host: xwww.two.example"), "kernel"),
    ("many headers", _req("GET /x HTTP/1.1", H, "User-Agent: wrk", "Accept: */*", "X-A: b c\td"), "kernel"),
    ("least_conn rule", _req("GET /api/x HTTP/1.1", H), "kernel"),
    ("offload always: Python", _req("GET /dl/x HTTP/1.1", H), "python"),
    ("POST", _req("POST / HTTP/1.1", H, "Content-Length: 0"), "python"),
    ("Content-Length on GET", _req("GET / HTTP/1.1", H, "Content-Length: 0"), "python"),
    ("Transfer-Encoding", _req("GET / HTTP/1.1", H, "Transfer-Encoding: chunked"), "python"),
    ("Upgrade", _req("GET / HTTP/1.1", H, "Connection: Upgrade", "Upgrade: websocket"), "python"),
    ("duplicate Host", _req("GET / HTTP/1.1", H, "Host: b.example"), "python"),
    ("Host with a space", _req("GET / HTTP/1.1", "Host: a.example x"), "python"),
    ("Host IPv6", _req("GET / HTTP/1.1", "Host: [::1]:80"), "python"),
    ("absolute-form target", _req("GET http://www.two.example/ HTTP/1.1", H), "python"),
    ("'//' target", _req("GET //x HTTP/1.1", H), "python"),
    ("percent in target", _req("GET /a%20b HTTP/1.1", H), "python"),
    ("folded header", _req("GET / HTTP/1.1", H, "X-A: b", " c"), "python"),
    ("bad byte in a value", _req("GET / HTTP/1.1", H, "X-A: b\x01"), "python"),
    ("lower-case method", _req("get / HTTP/1.1", H), "python"),
    ("HTTP/2.0", _req("GET / HTTP/2.0", H), "python"),
    ("header not finished", _req("GET / HTTP/1.1", H)[:-2], "python"),
    ("two requests in one segment", _req("GET / HTTP/1.1", H) * 2, "python"),
    ("LF without CR", b"GET / HTTP/1.1\nHost: a\n\n", "python"),
    ("Connection: other", _req("GET / HTTP/1.1", H, "Connection: foo"), "python"),
]


def live_twin(bpf) -> Twin:
    t = Twin(*bpf)
    t.sys = System(*bpf, now=LIVE)
    return t


@pytest.mark.parametrize("name,req,where", FIRST_REQUESTS, ids=[r[0] for r in FIRST_REQUESTS])
def test_first_request_equals_engine(bpf, name, req, where):
    """The request, the splice SYN (or whatever the engine answers), the SYN-ACK and the
    released request, a response and the close: the same segments out, step by step."""
    t = live_twin(bpf)
    cl = Client(t.ref, now=LIVE)
    t.segment(cl.seg(req), LIVE)
    assert t.sys.verdicts[-1] == (TC_ACT_REDIRECT if where == "kernel" else TC_ACT_OK), name
    if cl.key not in t.ref.conns or t.ref.conns[cl.key].state is not State.SYN_SENT:
        return                          # refused (400, 503): the engine's, as it was
    be = Backend(t.ref, t.ref.conns[cl.key].backend, cl)
    t.segment(be.synack(), LIVE)
    c = Conn(cl, be)
    for step in SCENARIOS[2][2]:        # response, client FIN, back-end FIN, last ACK
        t.segment(step(c), LIVE)
    t.tick(LIVE + CFG.frontend.close_linger_s + 0.1)
    assert not t.sys.eng.conns and not list(t.sys.maps.conns.keys()) and not list(t.sys.maps.held.keys())


def test_new_connection_takes_no_python_frame(bpf):
    """A 1 KB request and response on a new connection: every frame in the kernel (request ->
    SYN, SYN-ACK -> request, response, ACKs, FINs); the engine hears three events."""
    t = live_twin(bpf)
    before = t.sys.maps.stats()
    cl = Client(t.ref, now=LIVE)
    t.segment(cl.seg(_req("GET /x HTTP/1.1", H, "Connection: close")), LIVE)
    be = Backend(t.ref, t.ref.conns[cl.key].backend, cl)
    t.segment(be.synack(), LIVE)
    c = Conn(cl, be)
    for step in SCENARIOS[2][2]:
        t.segment(step(c), LIVE)
    assert t.sys.verdicts == [TC_ACT_REDIRECT] * 6, t.sys.verdicts
    stats = {k: v - before[k] for k, v in t.sys.maps.stats().items()}
    assert stats["req_first"] == 1 and stats["released"] == 1 and stats["pass_data"] == 0, stats
    assert t.sys.eng.stats.requests_rule["default"] == 1 and t.sys.eng.stats.events["new_conn"] == 1


def test_keepalive_requests_take_no_python_frame(bpf):
    """Keep-alive requests on the same back-end: relayed by the kernel, counted by the engine."""
    t = live_twin(bpf)
    before = t.sys.maps.stats()["req_next"]
    cl = Client(t.ref, now=LIVE)
    t.segment(cl.seg(get("/one")), LIVE)
    be = Backend(t.ref, t.ref.conns[cl.key].backend, cl)
    t.segment(be.synack(), LIVE)
    c = Conn(cl, be)
    for path in ("/two", "/three", "/big/x"):
        t.segment(_respond(c), LIVE)
        t.segment(cl.seg(get(path)), LIVE)
    # the second request is the one the rule offloads from (offload_after_requests: 2): the
    # engine's; the kernel routes the others
    assert t.sys.verdicts == [TC_ACT_REDIRECT] * 3 + [TC_ACT_OK] + [TC_ACT_REDIRECT] * 4, t.sys.verdicts
    assert t.sys.maps.stats()["req_next"] - before == 2
    assert t.sys.eng.conns[cl.key].requests == t.ref.conns[cl.key].requests == 4
    t.segment(cl.seg(get("/api/x")), LIVE)      # another rule's pool: the engine re-routes
    assert t.sys.verdicts[-1] == TC_ACT_OK


def test_syn_unanswered_engine_takes_over(bpf):
    """The back-end never answers the kernel's SYN: the engine's timers resend it and then answer
    503, with the request the kernel held."""
    t = live_twin(bpf)
    cl = Client(t.ref, now=LIVE)
    t.segment(cl.seg(get("/")), LIVE)
    now = LIVE
    for _ in range(CFG.frontend.syn_retries + 1):
        now += 10
        t.tick(now)
    assert t.ref.stats.responses_local[503] == t.sys.eng.stats.responses_local[503] == 1
    t.segment(cl.seg(get("/again"), flags=ACK | PSH), now)   # after the 503: both ignore it alike


def test_backend_refuses_kernel_syn(bpf):
    t = live_twin(bpf)
    cl = Client(t.ref, now=LIVE)
    t.segment(cl.seg(get("/")), LIVE)
    be = Backend(t.ref, t.ref.conns[cl.key].backend, cl)
    t.segment(Segment(be.ip, be.port, cl.ip, cl.port, 0, seq_add(cl.c, 1), RST | ACK, 0), LIVE)
    assert t.sys.eng.stats.responses_local[503] == 1


def test_client_retransmits_request_while_syn_out(bpf):
    t = live_twin(bpf)
    cl = Client(t.ref, now=LIVE)
    req = get("/")
    t.segment(cl.seg(req), LIVE)
    t.segment(cl.seg(req, off=0), LIVE + 0.3)       # the same request again: the engine's now
    be = Backend(t.ref, t.ref.conns[cl.key].backend, cl)
    t.segment(be.synack(), LIVE + 0.4)             # the engine releases what the kernel held


HOSTS = ["a.example", "b.example", "x.a.example", "A.EXAMPLE", "example", ""]
PATHS = ["/", "/a", "/a/", "/a/b", "/ab", "/b/a", "/A/b"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rules=st.lists(st.tuples(st.sampled_from([None, "a.example", "*.example", "*.a.example", "example"]),
                                st.sampled_from([None, "/a", "/a/", "/", "/b"]),
                                st.sampled_from([None, "/a", "/a/b", "/"]),
                                st.sampled_from([None, "GET", "HEAD", "POST", "GET,HEAD"]),
                                st.sampled_from(["round_robin", "weighted", "least_conn", "hash_client"]),
                                st.sampled_from(["auto", "never", "always"]),
                                st.booleans()),
                      min_size=1, max_size=5),
       reqs=st.lists(st.tuples(st.sampled_from(["GET", "HEAD"]), st.sampled_from(PATHS),
                               st.sampled_from(HOSTS)), min_size=1, max_size=6))
def test_random_rules_and_requests_equal(bpf, rules, reqs):
    """Random rule sets (host exact and suffix, path prefix and exact, methods, policies,
    offloads, a regex now and then) and requests: the kernel path and the engine route each
    request the same (same SYN to the same back-end), or the kernel leaves it to the engine."""
    lines = ["rules:"]
    for i, (host, prefix, exact, method, policy, offload, regex) in enumerate(rules):
        match = {k: v for k, v in (("host", host), ("path_prefix", prefix), ("path_exact", exact),
                                   ("method", method)) if v is not None}
        if regex:
            match["path_regex"] = "^/a"
        pool = "[be1, be2, be3]" if i % 2 == 0 else "[be2, be3]"
        lines.append(f"  - {{name: r{i}, match: {json.dumps(match)}, pool: {pool}, policy: {policy}, "
                     f"offload: {offload}}}")
    cfg = make_cfg("\n".join(lines) + "\nfrontend: {max_header_bytes: 1024, syn_retries: 2, ack_coalesce_ms: 0}\n")
    ref = Engine(cfg)
    sys_ = System(*bpf, cfg=cfg, now=LIVE)
    for n, (method, path, host) in enumerate(reqs):
        cl = Client(ref, port=41000 + n, now=LIVE)
        hdrs = [f"Host: {host}"] if host else []
        seg = cl.seg(_req(f"{method} {path} HTTP/1.1", *hdrs))
        want = normal(ref.segment(seg, LIVE))
        got = normal(sys_.segment(seg, LIVE))
        assert got == want, f"{method} {path} {host}: kernel path {got}, engine {want}"


@pytest.mark.parametrize("first_live", [True, False], ids=["old-in-kernel", "old-from-python"])
def test_port_reused_while_lingering(bpf, first_live):
    """A client reuses its port while the closed connection still lingers: the new request
    starts a new connection, on both (the kernel takes it when it can)."""
    t = live_twin(bpf)
    cl = Client(t.ref, now=LIVE)
    now = LIVE
    t.segment(cl.seg(get("/" if first_live else "/dl/x")), now)     # offload always: the engine's
    be = Backend(t.ref, t.ref.conns[cl.key].backend, cl)
    t.segment(be.synack(), now)
    c = Conn(cl, be)
    for step in SCENARIOS[2][2]:
        t.segment(step(c), now)
    assert t.ref.conns[cl.key].state is State.CLOSING
    again = Client(t.ref, now=LIVE, c=0x12345678)
    t.segment(again.seg(get("/x")), now + 0.5)
    be2 = Backend(t.ref, t.ref.conns[again.key].backend, again)
    t.segment(be2.synack(), now + 0.5)
    assert t.ref.stats.events["port_reused"] == t.sys.eng.stats.events["port_reused"] == 1
    t.tick(now + 0.6)


def test_linger_end_spares_the_new_connection_on_the_port(bpf):
    """The engine's linger on a closed connection ends after the kernel took a new connection on
    the reused port but before the engine read that record: the new entry (and its held request)
    stays, the back-end's SYN-ACK still releases the request, and the engine then knows the new
    connection. (Seen under load: one short connection in ~30,000 hung until the client's timeout.)"""
    sys_ = System(*bpf, now=LIVE)
    cl = Client(sys_.eng, now=LIVE)
    sys_.segment(cl.seg(get("/")), LIVE)
    be = Backend(sys_.eng, sys_.eng.conns[cl.key].backend, cl)
    sys_.segment(be.synack(), LIVE)
    c = Conn(cl, be)
    for step in SCENARIOS[2][2]:
        sys_.segment(step(c), LIVE)
    assert sys_.eng.conns[cl.key].state is State.CLOSING and sys_.verdicts == [TC_ACT_REDIRECT] * 6
    again = Client(sys_.eng, now=LIVE, c=seq_add(cl.c, 32 << 20))   # Linux: the same port's ISN, later
    r = sys_.prog.test_run(frame(again.seg(get("/x"))))        # the kernel's: the splice SYN ...
    assert r.retval == TC_ACT_REDIRECT
    sys_.tick(LIVE + CFG.frontend.close_linger_s + 0.1)      # ... and the old linger ends first
    assert cl.key not in sys_.eng.conns and sys_.eng.stats.events["kernel_remove_reused"] == 1
    assert decode_entry(FeConn.from_buffer_copy(sys_.maps.conns.lookup(fe_key(cl.key))), 0).phase is Phase.SYN_SENT
    out: list = []
    sys_._events(out, LIVE + 2.2)                               # now the engine reads the record
    assert sys_.eng.conns[cl.key].state is State.SYN_SENT
    be2 = Backend(sys_.eng, sys_.eng.conns[cl.key].backend, again)
    sys_.segment(be2.synack(), LIVE + 2.2)
    assert sys_.verdicts[-1] == TC_ACT_REDIRECT, "the held request was not released"
    out = sys_.tick(LIVE + 2.2 + CFG.frontend.syn_retransmit_s + 0.1)   # the engine asks the kernel
    assert not any(isinstance(a, Send) for a in out), out                   # no SYN again
    assert sys_.eng.conns[cl.key].state is State.SPLICED


@pytest.mark.parametrize("policy", ["least_conn", "hash_client", "weighted", "round_robin"])
def test_kernel_picks_as_the_engine(bpf, policy):
    """Twelve clients from four addresses, connections left open (least connections sees them):
    the kernel path sends each splice SYN to the back-end the engine picks."""
    cfg = make_cfg(f"""
rules:
  - {{name: all, pool: [be1, be2, be3], policy: {policy}, offload: never}}
frontend: {{max_header_bytes: 1024, syn_retries: 2, ack_coalesce_ms: 0}}
""")
    ref, sys_ = Engine(cfg), System(*bpf, cfg=cfg, now=LIVE)
    for n in range(12):
        cl = Client(ref, ip=f"10.0.1.{2 + n % 4}", port=42000 + n, now=LIVE)
        seg = cl.seg(get(f"/{n}"))
        want, got = normal(ref.segment(seg, LIVE)), normal(sys_.segment(seg, LIVE))
        assert got == want and sys_.verdicts[-1] == TC_ACT_REDIRECT, (n, got, want)
    assert len({c.backend for c in sys_.eng.conns.values()}) > 1
    assert list(sys_.eng.active) == ref.active


def test_bare_segments_of_no_connection_dropped_in_the_kernel(bpf):
    """ACKs, RSTs and SYNs to the VIP of no connection (a flood of them, or strays): the engine
    would only count them; the kernel drops them, so they never reach Python."""
    t = live_twin(bpf)
    cl = Client(t.ref, now=LIVE)
    for seg in (cl.seg(b"", flags=ACK, ack=12345), cl.seg(b"", flags=RST), cl.handshake_ack(),
                Segment(cl.ip, cl.port, t.ref.vip, t.ref.vport, 7, 0, SYN, 1000)):
        assert t.segment(seg, LIVE) == [] and t.sys.verdicts[-1] == TC_ACT_SHOT


def test_engine_connection_keeps_its_bare_acks(bpf):
    """A header in two segments is the engine's (the kernel leaves a marker with the first): the
    client's bare ACK in between reaches the engine, and the request goes on as the engine's."""
    t = live_twin(bpf)
    cl = Client(t.ref, now=LIVE)
    req = get("/x")
    t.segment(cl.seg(req[:10]), LIVE)
    assert t.sys.verdicts[-1] == TC_ACT_OK
    t.segment(cl.seg(b"", flags=ACK), LIVE)
    assert t.sys.verdicts[-1] == TC_ACT_OK
    t.segment(cl.seg(req[10:]), LIVE)
    be = Backend(t.ref, t.ref.conns[cl.key].backend, cl)
    t.segment(be.synack(), LIVE)


def test_sweep_removes_entries_nobody_knows(bpf):
    t = live_twin(bpf)
    t.sys.maps.mark((0x0A000102, 50001, 0))           # a marker the engine never took up
    assert t.sys.maps.sweep(lambda k: False, 0.0) == 1 and not list(t.sys.maps.conns.keys())


def test_full_ring_leaves_requests_to_the_engine():
    """Python behind and the ring full: the kernel takes no request it could not tell the engine
    of (a lost record would leave an entry nobody times out, and a connection the engine never
    counted); those requests go up the slow path and are served as before."""
    with BpfObject(object_path("frontend"), max_entries={"fe_events": 4096}) as obj:   # one page
        maps = KernelMaps(obj, CFG.vip_endpoints())
        try:
            sys_ = System(obj.program("frontend_ingress"), maps, now=LIVE)
            lost0 = maps.stats()["events_lost"]
            clients = [Client(sys_.eng, port=42000 + i, now=LIVE) for i in range(120)]
            segs = [cl.seg(get("/")) for cl in clients]
            verdicts = [sys_.prog.test_run(frame(s)).retval for s in segs]      # nobody reads the ring
            taken = verdicts.count(TC_ACT_REDIRECT)
            assert 0 < taken < len(segs) and maps.stats()["events_lost"] > lost0, verdicts
            assert set(verdicts) == {TC_ACT_REDIRECT, TC_ACT_OK}
            out: list = []
            sys_._events(out, LIVE)                                             # Python catches up
            kernel_keys = {(socket.ntohl(k.addr), socket.ntohs(k.port), k.svc)
                           for k in map(FeKey.from_buffer_copy, relay_entries(maps))}
            assert len(kernel_keys) == taken and kernel_keys <= set(sys_.eng.conns), "an entry nobody knows"
            for seg, v in zip(segs, verdicts):
                if v == TC_ACT_OK:      # what the kernel passed up: the engine's, as without the kernel
                    sys_._apply(sys_.eng.segment(seg, LIVE), out, LIVE)
            assert len(sys_.eng.conns) == len(segs)
            assert all(c.state is State.SYN_SENT for c in sys_.eng.conns.values())
        finally:
            maps.close()


def test_full_ring_closing_reported_at_the_next_segment():
    """Both FINs relayed while the ring is full: the closing record is made again at the
    connection's next segment (the last ACK), so the engine ends the connection on time."""
    with BpfObject(object_path("frontend"), max_entries={"fe_events": 4096}) as obj:
        maps = KernelMaps(obj, CFG.vip_endpoints())
        try:
            sys_ = System(obj.program("frontend_ingress"), maps, now=LIVE)
            cl = Client(sys_.eng, now=LIVE)
            sys_.segment(cl.seg(get("/")), LIVE)
            c = Conn(cl, Backend(sys_.eng, sys_.eng.conns[cl.key].backend, cl))
            sys_.segment(c.be.synack(), LIVE)
            lost = maps.stats()["events_lost"]
            for i in range(200):            # others' requests fill the ring; nobody reads it
                sys_.prog.test_run(frame(Client(sys_.eng, port=43000 + i, now=LIVE).seg(get("/"))))
            assert maps.stats()["events_lost"] > lost
            steps = SCENARIOS[2][2]     # client closes first: response, client FIN, back-end FIN, ACK
            for step in steps[:3]:
                assert sys_.prog.test_run(frame(step(c))).retval == TC_ACT_REDIRECT
            e = FeConn.from_buffer_copy(maps.conns.lookup(fe_key(cl.key)))
            assert e.cli_fin and e.srv_fin and not e.closing and maps.stats()["closing"] == 0
            sys_._events([], LIVE)          # Python catches up: no closing heard of yet
            assert sys_.eng.conns[cl.key].state is not State.CLOSING
            sys_.segment(steps[3](c), LIVE)
            assert maps.stats()["closing"] == 1 and sys_.eng.conns[cl.key].state is State.CLOSING
        finally:
            maps.close()


CLOSE_EARLY = b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n" + b"z" * 1000


@pytest.mark.parametrize("path", ["/", "/big/x"])
@pytest.mark.parametrize("resp", [RESP_1K, CLOSE_EARLY], ids=["1k", "10m-claimed"])
def test_response_with_fin_ends_the_watch(bpf, path, resp):
    """A watched response whose segment carries the back-end's FIN is over: nothing is left to
    offload, so the kernel copies nothing up and the engine asks for nothing — even when its
    Content-Length claims 10 MB more (a back-end that closes early)."""
    t = live_twin(bpf)
    before = t.sys.maps.stats()["copies"]
    cl = Client(t.ref, now=LIVE)
    t.segment(cl.seg(get(path)), LIVE)
    be = Backend(t.ref, t.ref.conns[cl.key].backend, cl)
    t.segment(be.synack(), LIVE)
    t.segment(_respond(Conn(cl, be), resp, ACK | PSH | FIN), LIVE)
    assert t.sys.verdicts[-1] == TC_ACT_REDIRECT
    assert t.sys.maps.stats()["copies"] == before
    assert t.ref.stats.offload["requested"] == t.sys.eng.stats.offload["requested"] == 0


def test_fin_ends_the_watch_unless_a_rule_offloads_at_zero():
    assert RuleSet(CFG).fin_ends_watch
    zero = make_cfg(RULES.replace("offload_threshold: 65536", "offload_threshold: 0"))
    assert not RuleSet(zero).fin_ends_watch
